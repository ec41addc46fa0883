"""The committed test vectors pin the encrypted payload format (v1) byte for byte."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.core.envelope import AuthenticationFailed, DataKey, associated_data
from codec_grpc.v1.codec_pb2 import Payload
from tests.support.fakes import OneKey, vector_key
from tests.support.paths import VECTORS

VECTORS = json.loads((VECTORS / "format_v1.json").read_text())["vectors"]


def _documented_aad(vector: dict[str, Any]) -> bytes:
    """The associated data exactly as docs/format-v1.md describes it."""
    fields = [
        b"binary/encrypted",
        b"AES-256-GCM",
        vector["key_id"].encode(),
        bytes.fromhex(vector["encrypted_data_key"]),
        (vector["namespace"] or "").encode(),
    ]
    return b"temporal-codec/v1" + b"".join(struct.pack(">I", len(f)) + f for f in fields)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_encode_reproduces_vector(vector: dict[str, Any]) -> None:
    nonce = bytes.fromhex(vector["nonce"])
    codec = EnvelopeCodec(
        OneKey(vector_key(vector)), bind_namespace=vector["namespace"] is not None, nonces=lambda n: nonce
    )
    inner = Payload.FromString(bytes.fromhex(vector["inner_payload"]))
    (encoded,) = codec.encode([inner], vector["namespace"] or "default")
    assert encoded.data.hex() == vector["data"]
    assert {k: v.hex() for k, v in encoded.metadata.items()} == vector["metadata"]
    assert (
        associated_data(vector["key_id"], bytes.fromhex(vector["encrypted_data_key"]), vector["namespace"]).hex()
        == (vector["associated_data"])
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decrypts_with_documented_layout_only(vector: dict[str, Any]) -> None:
    """An independent reader built from the documentation alone decrypts the vector."""
    data = bytes.fromhex(vector["data"])
    aad = _documented_aad(vector)
    assert aad.hex() == vector["associated_data"]
    assert data[:12].hex() == vector["nonce"]
    plaintext = AESGCM(bytes.fromhex(vector["data_key"])).decrypt(data[:12], data[12:], aad)
    assert plaintext.hex() == vector["inner_payload"]
    metadata = {k: bytes.fromhex(v) for k, v in vector["metadata"].items()}
    assert metadata["encoding"] == b"binary/encrypted"
    assert metadata["encryption-algorithm"] == b"AES-256-GCM"
    assert metadata["encryption-key-id"] == vector["key_id"].encode()
    assert metadata["encrypted-data-key"].hex() == vector["encrypted_data_key"]
    assert metadata.get("encryption-namespace") == (vector["namespace"].encode() if vector["namespace"] else None)
    assert len(data) == 12 + len(plaintext) + 16


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_vector(vector: dict[str, Any]) -> None:
    # The vectors include a payload written unbound: it decodes under the migration switch.
    codec = EnvelopeCodec(OneKey(vector_key(vector)), bind_namespace=True, accept_unbound=True)
    payload = Payload(
        metadata={k: bytes.fromhex(v) for k, v in vector["metadata"].items()}, data=bytes.fromhex(vector["data"])
    )
    (decoded,) = codec.decode([payload], vector["namespace"] or "default")
    assert decoded.SerializeToString(deterministic=True).hex() == vector["inner_payload"]


def test_data_key_rejects_wrong_length_and_hides_material() -> None:
    with pytest.raises(ValueError, match="data key must be 32 bytes, got 16"):
        DataKey(b"k" * 16, "arn", b"edk", None)
    key = DataKey(bytes(range(32)), "arn:key", b"edk", "ns")
    assert repr(key) == "DataKey(key_id='arn:key', namespace='ns')"
    assert "plaintext" not in dir(key)


def test_associated_data_is_unambiguous() -> None:
    """Moving bytes between adjacent fields changes the associated data (length prefixes)."""
    assert associated_data("ab", b"c", "ns") != associated_data("a", b"bc", "ns")
    assert associated_data("a", b"b", None) != associated_data("a", b"b", "x")


@pytest.mark.parametrize(
    "other",
    [("arn:other", b"edk", "ns"), ("arn:key", b"edk2", "ns"), ("arn:key", b"edk", "ns2"), ("arn:key", b"edk", None)],
)
def test_gcm_authenticates_every_envelope_field(other: tuple[str, bytes, str | None]) -> None:
    """Same key material, any other metadata value: authentication fails."""
    material = bytes(range(32))
    data = DataKey(material, "arn:key", b"edk", "ns").encrypt(b"secret", bytes(12))
    with pytest.raises(AuthenticationFailed):
        DataKey(material, *other).decrypt(data)
    assert DataKey(material, "arn:key", b"edk", "ns").decrypt(data) == b"secret"
