"""JSON bodies of the HTTP gateway: proto3 JSON ``{"payloads": [...]}`` in and out.

This is the reference path: the mapping itself is ``google.protobuf.json_format``
(``jsonwire`` has the fast path for common bodies). Before it runs, every
bytes field is checked the way Go's protojson decodes it, because Python's
json_format silently drops characters outside the base64 alphabet: a UI or
script sending ``"encoding": "json/plain"`` would otherwise have garbage
encrypted instead of hearing that its request is wrong.
"""

from __future__ import annotations

import binascii
import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from codec_grpc.v1 import codec_pb2

M = TypeVar("M", bound=Message)

_PAYLOAD_FIELDS = frozenset({"metadata", "data", "externalPayloads", "external_payloads"})


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
SEXTET = {char: index for index, char in enumerate(_ALPHABET)}


class BodyError(ValueError):
    """The request body is not a valid payloads document; the message names the field."""


def parse_request(body: bytes, message: M) -> M:
    """Fill ``message`` (an Encode or Decode request) from a ``{"payloads": [...]}`` body."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("body is not a payloads document: nested too deeply") from None
    if not isinstance(document, dict):
        raise BodyError('body must be a JSON object like {"payloads": [...]}')
    unknown = sorted(set(document) - {"payloads"})
    if unknown:
        raise BodyError(f'unknown field {unknown[0]!r}: the body is {{"payloads": [...]}}')
    payloads = document.get("payloads")
    if payloads is None:
        payloads = []
    if not isinstance(payloads, list):
        raise BodyError("payloads: must be an array")
    for index, payload in enumerate(payloads):
        _check_payload(f"payloads[{index}]", payload)
    try:
        return json_format.ParseDict({"payloads": payloads}, message)
    except json_format.ParseError as exc:
        raise BodyError(f"invalid payloads: {exc}") from None


def _check_payload(path: str, payload: Any) -> None:
    if not isinstance(payload, dict):
        raise BodyError(f"{path}: must be an object")
    unknown = sorted(set(payload) - _PAYLOAD_FIELDS)
    if unknown:
        raise BodyError(f"{path}: unknown field {unknown[0]!r}")
    metadata = payload.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise BodyError(f"{path}.metadata: must be an object of base64 strings")
        for key, value in metadata.items():
            check_base64(f"{path}.metadata[{json.dumps(key)}]", value)
    if payload.get("data") is not None:
        check_base64(f"{path}.data", payload["data"])


def check_base64(path: str, value: Any) -> None:
    """Accept what Go's protojson accepts for a bytes field, in canonical form only.

    Like protojson: the URL-safe alphabet when the text contains ``-`` or ``_``,
    the standard one otherwise; no padding when the length is not a multiple of
    4; no skipped characters. Stricter on one point: the unused bits of the last
    character must be zero, as every encoder writes them. Without that rule
    ``"json/plain"`` would pass as 7 bytes of binary: exactly the mistake
    (a plain string where base64 belongs) this check exists to catch.
    """
    if not isinstance(value, str):
        raise BodyError(f"{path}: must be a base64 string")
    text = value
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            raise BodyError(f"{path}: not valid base64 (mixes the standard and URL-safe alphabets)")
        text = text.replace("-", "+").replace("_", "/")
    if len(text) % 4:
        if "=" in text:
            raise BodyError(f"{path}: not valid base64")
        text += "=" * (-len(text) % 4)
    try:
        binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        raise BodyError(f"{path}: not valid base64") from None
    padding = len(text) - len(text.rstrip("="))
    if padding and SEXTET[text[-padding - 1]] & (0b1111 if padding == 2 else 0b11):
        raise BodyError(f"{path}: not valid base64 (non-zero bits after the last byte: is it base64-encoded?)")


def go_duration(seconds: float) -> str:
    """Whole seconds in Go's ``time.Duration`` notation, as the seed's /stats showed: ``25m30s``."""
    hours, rest = divmod(round(max(seconds, 0.0)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def stats_json(stats: codec_pb2.StatsResponse) -> dict[str, Any]:
    """The /stats document: the seed's four fields first, then every counter as a number."""
    document: dict[str, Any] = {
        "cached_keys_count": stats.cached_keys_count,
        "current_key_age": go_duration(stats.current_key_age_seconds),
        "current_key_expires_in": go_duration(stats.current_key_expires_in_seconds),
        "current_key_expired": stats.current_key_expired,
        "current_key_present": stats.current_key_present,
        "namespace": stats.namespace,
    }
    skipped = {"current_key_age_seconds", "current_key_expires_in_seconds", "current_keys", *document}
    for field in stats.DESCRIPTOR.fields:
        if field.name not in skipped:
            document[field.name] = getattr(stats, field.name)
    document["current_keys"] = [
        {
            "key_alias": key.key_alias,
            "key_arn": key.key_arn,
            "namespace": key.namespace,
            "age": go_duration(key.age_seconds),
            "expires_in": go_duration(key.expires_in_seconds),
            "expired": key.expired,
            "encryptions": key.encryptions,
        }
        for key in stats.current_keys
    ]
    return document
