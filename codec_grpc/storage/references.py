"""External Storage references: the one module that knows their shapes.

Temporal's SDKs (temporalio 1.35 ``converter.ExternalStorage``, the Go SDK's
``converter.ExternalStorage``) run the payload converter, then the payload codec
(our encryption), then a storage driver that uploads every payload over a size
threshold and leaves a small *reference* in the history. So a stored object holds
a payload as the codec left it: encrypted. The shapes a reference takes:

* **Reference** (what temporalio 1.35 writes): metadata ``encoding: json/protobuf``,
  ``messageType: temporal.api.sdk.v1.ExternalStorageReference``; data the compact
  proto JSON of that message, ``{"claimData": {...}, "driverName": "..."}``; field 3
  ``external_payloads`` carries the stored payload's size, which the Web UI shows.
  It is not encrypted, so whoever can write history controls it: everything in it
  is checked before use.
* **Marked** (later releases): the reference passed through the codec (encrypted),
  with metadata ``__temporal_external_storage_reference: "true"`` outside (and
  inside) and ``external_payloads`` copied outside. Readers strip the outer marker
  and ``external_payloads``, decode, and find a reference.
* **Legacy** (still read by the SDK, for workflows in flight): ``encoding:
  json/external-storage-reference``, data ``{"driver_name": ..., "driver_claim":
  {"claim_data": {...}}}``.

An S3 claim (``temporalio.contrib.aws.s3driver``; the driver's *name* is the
user's choice, so it is not matched) has ``bucket``, ``key``, ``hash_algorithm``
(``sha256``) and ``hash_value``: the lower-case hex SHA-256 of the stored bytes.
Keys are ``v0[/ns/<ns>][/wt/<type>/wi/<id>/ri/<run>|/at/…/ai/…/ri/…]/d/sha256/<hex>``
with percent-encoded segments, ``null`` for a missing one.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from google.protobuf.message import DecodeError

from codec_grpc.storage.errors import StorageReferenceError
from codec_grpc.v1.codec_pb2 import Payload

MESSAGE_TYPE = b"temporal.api.sdk.v1.ExternalStorageReference"
JSON_PROTOBUF = b"json/protobuf"
LEGACY_ENCODING = b"json/external-storage-reference"
MARKER_KEY = "__temporal_external_storage_reference"
MARKER_VALUE = b"true"
DRIVER_NAME = "aws.s3driver"  # temporalio's default name for its S3 driver
HASH_ALGORITHM = "sha256"

# A payload holding none of these bytes cannot be a reference of any form: most payloads are
# classified by a substring search, without a parse.
_SIGNS = (MESSAGE_TYPE, MARKER_KEY.encode(), LEGACY_ENCODING)
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_S3_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!-_.*'()")
_MAX_CLAIM_TEXT = 2048  # S3 keys are at most 1,024 bytes; bucket names 63 (ARNs of access points more)


class Kind(enum.Enum):
    ORDINARY = "ordinary"
    REFERENCE = "reference"  # readable as it is (the 1.35 or the legacy form)
    MARKED = "marked"  # encoded by a codec: decode it first


@dataclass(frozen=True)
class S3Claim:
    """Where a stored payload is, and the SHA-256 its bytes must have."""

    bucket: str
    key: str
    sha256: str

    @property
    def namespace(self) -> str | None:
        """The namespace the key is scoped to (``v0/ns/<ns>/…``); None for a key scoped to none."""
        parts = self.key.split("/")
        if len(parts) < 3 or parts[0] != "v0" or parts[1] != "ns":
            return None
        name = unquote(parts[2], errors="strict")
        return None if name in ("", "null") else name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def kind(raw: bytes) -> Kind:
    """The shape of a serialized payload; one that does not parse is ORDINARY (the codec words its error)."""
    if not any(sign in raw for sign in _SIGNS):
        return Kind.ORDINARY
    try:
        return kind_of(Payload.FromString(raw))
    except DecodeError:
        return Kind.ORDINARY


def kind_of(payload: Payload) -> Kind:
    metadata = payload.metadata
    encoding = metadata.get("encoding")
    if (encoding == JSON_PROTOBUF and metadata.get("messageType") == MESSAGE_TYPE) or encoding == LEGACY_ENCODING:
        return Kind.REFERENCE  # a decoded marked reference keeps its inner marker: it is readable
    if metadata.get(MARKER_KEY) == MARKER_VALUE:
        return Kind.MARKED
    return Kind.ORDINARY


def unmarked(raw: bytes) -> bytes:
    """A marked reference as its codec wrote it: without the outer marker and ``external_payloads``."""
    payload = Payload.FromString(raw)
    del payload.metadata[MARKER_KEY]
    del payload.external_payloads[:]
    return payload.SerializeToString()


def with_size_of(decoded: bytes, marked: bytes) -> bytes:
    """A decoded marked reference, given the outer ``external_payloads`` when it has none (the UI shows it)."""
    reference = Payload.FromString(decoded)
    if reference.external_payloads:
        return decoded
    reference.external_payloads.extend(Payload.FromString(marked).external_payloads)
    return reference.SerializeToString()


def s3_claim(index: int, raw: bytes) -> S3Claim:
    """The S3 claim of a readable reference (:data:`Kind.REFERENCE`); StorageReferenceError otherwise."""
    try:
        payload = Payload.FromString(raw)
    except DecodeError:
        raise StorageReferenceError("not a serialized Payload", index) from None
    if kind_of(payload) is not Kind.REFERENCE:
        raise StorageReferenceError("not an external storage reference", index)
    if payload.metadata.get("encoding") == LEGACY_ENCODING:
        claim = _legacy_claim(index, payload.data)
    else:
        claim = _claim(index, payload.data)
    return _s3(index, claim)


def _document(index: int, data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StorageReferenceError("the reference is not valid JSON", index) from None
    if not isinstance(document, dict):
        raise StorageReferenceError("the reference is not a JSON object", index)
    return document


def _claim(index: int, data: bytes) -> Any:
    """claimData of ExternalStorageReference's proto JSON (json_format accepts both field spellings)."""
    document = _document(index, data)
    unknown = sorted(set(document) - {"driverName", "driver_name", "claimData", "claim_data"})
    if unknown:
        raise StorageReferenceError(f"unknown field {unknown[0][:40]!r} in the reference", index)
    return document.get("claimData", document.get("claim_data"))


def _legacy_claim(index: int, data: bytes) -> Any:
    claim = _document(index, data).get("driver_claim")
    return claim.get("claim_data") if isinstance(claim, dict) else None


def _s3(index: int, claim: Any) -> S3Claim:
    if not isinstance(claim, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) <= _MAX_CLAIM_TEXT for k, v in claim.items()
    ):
        raise StorageReferenceError("the reference's claim data must be an object of short strings", index)
    missing = [name for name in ("bucket", "key", "hash_algorithm", "hash_value") if not claim.get(name)]
    if missing:
        raise StorageReferenceError(f"not an S3 claim: {missing[0]!r} is missing", index)
    if claim["hash_algorithm"] != HASH_ALGORITHM:
        shown = claim["hash_algorithm"][:20]
        raise StorageReferenceError(f"unsupported hash algorithm {shown!r}: expected sha256", index)
    if not _HEX_DIGEST.match(claim["hash_value"]):
        raise StorageReferenceError("hash_value is not a lower-case hex SHA-256 digest", index)
    result = S3Claim(claim["bucket"], claim["key"], claim["hash_value"])
    try:
        result.namespace  # noqa: B018 - a key whose namespace segment is not percent-encoded UTF-8 is refused here
    except UnicodeDecodeError:
        raise StorageReferenceError("the key's namespace segment is not percent-encoded UTF-8", index) from None
    return result


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def object_key(namespace: str, hex_digest: str) -> str:
    """Where /encode stores a payload: the S3 driver's key for a namespace and no workflow."""
    return f"v0/ns/{_percent_encoded(namespace)}/d/{HASH_ALGORITHM}/{hex_digest}"


def reference_payload(claim: S3Claim, size: int) -> bytes:
    """The serialized reference payload for a stored payload of ``size`` bytes, byte for byte as
    temporalio 1.35 writes it (compact JSON, sorted keys), so that every SDK reads it."""
    claim_data: Mapping[str, str] = {
        "bucket": claim.bucket,
        "hash_algorithm": HASH_ALGORITHM,
        "hash_value": claim.sha256,
        "key": claim.key,
    }
    data = json.dumps({"claimData": claim_data, "driverName": DRIVER_NAME}, separators=(",", ":"), sort_keys=True)
    payload = Payload(metadata={"encoding": JSON_PROTOBUF, "messageType": MESSAGE_TYPE}, data=data.encode())
    payload.external_payloads.add().size_bytes = size
    return payload.SerializeToString()


def _percent_encoded(text: str) -> str:
    return "".join(chr(byte) if byte in _S3_SAFE else f"%{byte:02X}" for byte in text.encode())
