"""The test vectors of payload format v2 (``tests/vectors/format_v2.json``): how they were made.

Everything but the compressed bytes follows from the fixed inputs below: keys, nonces and inner
payloads are constants, and :func:`vector` builds a vector from them and the compressed bytes with
the documented layout (docs/format-v2.md), not with the codec. The compressed bytes came from
zstandard and zlib once (``python -m tests.support.vectors_v2 --write``, which refuses to replace the
file): another library version may compress the same input to other bytes, and any of them is valid,
so the committed file keeps those it was made with. ``tests/unit/test_envelope_v2.py`` rebuilds every
vector from its inputs and its committed compressed bytes, and checks the codec against them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from codec_grpc.v1.codec_pb2 import Payload
from tests.support.paths import VECTORS

FILE = VECTORS / "format_v2.json"
FORMAT = "temporal-codec/v2"
NOTE = (
    "Pinned by tests/unit/test_envelope_v2.py and tests/docs/test_format_v2_doc.py; made by "
    "tests/support/vectors_v2.py. Never regenerate: a change here is a wire-format break."
)
ARN_US = "arn:aws:kms:us-east-1:111122223333:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
ARN_EU = "arn:aws:kms:eu-west-1:111122223333:key/11111111-2222-3333-4444-555555555555"


def orders(count: int) -> bytes:
    """A JSON document of ``count`` orders: alike in shape, different in values, as workflow inputs are."""
    records = []
    for index in range(count):
        digest = hashlib.sha256(f"order {index}".encode()).hexdigest()
        records.append(
            {
                "orderId": f"ord-{digest[:16]}",
                "customer": {"id": f"cus-{digest[16:28]}", "tier": ("gold", "silver", "bronze")[index % 3]},
                "lines": [{"sku": f"SKU-{digest[28 + k : 34 + k]}", "qty": (index + k) % 7 + 1} for k in range(2)],
                "amountCents": int(digest[40:46], 16) % 100_000,
                "currency": "EUR",
                "status": "PENDING",
            }
        )
    return json.dumps({"orders": records}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Spec:
    name: str
    compression: str
    level: int
    data_key: bytes
    key_id: str
    encrypted_data_key: bytes
    namespace: str | None
    nonce: bytes
    inner: Payload


SPECS = (
    Spec(
        "zstd, bound namespace, json payload",
        "zstd",
        3,
        bytes(range(32)),
        ARN_US,
        bytes(range(1, 17)) * 4,
        "payments",
        bytes(range(12)),
        Payload(metadata={"encoding": b"json/plain"}, data=orders(12)),
    ),
    Spec(
        "zlib, bound namespace, json payload",
        "zlib",
        6,
        bytes(range(32)),
        ARN_US,
        bytes(range(1, 17)) * 4,
        "payments",
        bytes(range(1, 13)),
        Payload(metadata={"encoding": b"json/plain"}, data=orders(12)),
    ),
    Spec(
        "zstd, unbound (NAMESPACE_BINDING=false)",
        "zstd",
        3,
        b"\xaa" * 32,
        ARN_EU,
        b"\x01\x02\x03wrapped-data-key",
        None,
        b"\xff" * 12,
        Payload(metadata={"encoding": b"json/plain"}, data=orders(6)),
    ),
    Spec(
        "zlib, external payload details and several metadata entries",
        "zlib",
        9,
        bytes(range(100, 132)),
        ARN_US,
        b"edk-" + bytes(range(60)),
        "orders.prod",
        bytes(range(10, 22)),
        Payload(
            metadata={"encoding": b"json/plain", "messageType": b"orders.v1.Batch", "x-trace": b"4bf92f3577b34da6"},
            data=orders(8),
            external_payloads=[Payload.ExternalPayloadDetails(size_bytes=2_097_152)],
        ),
    ),
    Spec(
        "zstd, level 19, a large and repetitive payload",
        "zstd",
        19,
        b"\x07" * 32,
        ARN_US,
        bytes(range(1, 17)) * 4,
        "payments",
        bytes(12),
        Payload(metadata={"encoding": b"json/plain"}, data=orders(10) * 4),
    ),
)


def compress(spec: Spec, data: bytes) -> bytes:
    if spec.compression == "zstd":
        return zstandard.ZstdCompressor(level=spec.level, write_content_size=True).compress(data)
    return zlib.compress(data, spec.level)


def field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def vector(spec: Spec, compressed: bytes) -> dict[str, Any]:
    """A vector from its inputs and the compressed inner payload, by the documented layout."""
    metadata = {
        "encoding": b"binary/encrypted",
        "encryption-key-id": spec.key_id.encode(),
        "encrypted-data-key": spec.encrypted_data_key,
        "encryption-algorithm": b"AES-256-GCM",
        "encryption-compression": spec.compression.encode(),
    }
    if spec.namespace is not None:
        metadata["encryption-namespace"] = spec.namespace.encode()
    aad = b"temporal-codec/v2" + b"".join(
        field(metadata.get(name, b""))
        for name in (
            "encoding",
            "encryption-algorithm",
            "encryption-key-id",
            "encrypted-data-key",
            "encryption-namespace",
            "encryption-compression",
        )
    )
    data = spec.nonce + AESGCM(spec.data_key).encrypt(spec.nonce, compressed, aad)
    return {
        "name": spec.name,
        "data_key": spec.data_key.hex(),
        "key_id": spec.key_id,
        "encrypted_data_key": spec.encrypted_data_key.hex(),
        "namespace": spec.namespace,
        "nonce": spec.nonce.hex(),
        "compression": spec.compression,
        "inner_payload": spec.inner.SerializeToString(deterministic=True).hex(),
        "compressed": compressed.hex(),
        "associated_data": aad.hex(),
        "metadata": {name: value.hex() for name, value in sorted(metadata.items())},
        "data": data.hex(),
    }


def document(vectors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "note": NOTE, "vectors": vectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {FILE} (only when it does not exist)")
    args = parser.parse_args()
    vectors = [vector(spec, compress(spec, spec.inner.SerializeToString(deterministic=True))) for spec in SPECS]
    text = json.dumps(document(vectors), indent=2) + "\n"
    if not args.write:
        sys.stdout.write(text)
    elif FILE.exists():
        sys.exit(f"{FILE} exists: the vectors never change (a new format gets a new file)")
    else:
        FILE.write_text(text)


if __name__ == "__main__":
    main()
