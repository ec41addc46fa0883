"""The committed test vectors pin payload format v2 byte for byte (the compressed bytes as committed)."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
import zstandard

from codec_grpc import errors
from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.core.compression import CompressionPolicy
from codec_grpc.core.envelope import associated_data
from codec_grpc.v1.codec_pb2 import Payload
from tests.support import vectors_v2
from tests.support.fakes import OneKey, vector_key
from tests.support.paths import VECTORS

DOCUMENT = json.loads((VECTORS / "format_v2.json").read_text())
V2 = DOCUMENT["vectors"]
V1 = json.loads((VECTORS / "format_v1.json").read_text())["vectors"]
IDS = [v["name"] for v in V2]


def _payload(vector: dict[str, Any]) -> Payload:
    return Payload(
        metadata={k: bytes.fromhex(v) for k, v in vector["metadata"].items()}, data=bytes.fromhex(vector["data"])
    )


def test_the_file_is_what_its_generator_makes_from_its_inputs() -> None:
    """Every vector follows from the generator's fixed inputs and its committed compressed bytes."""
    assert DOCUMENT["format"] == "temporal-codec/v2"
    assert [spec.name for spec in vectors_v2.SPECS] == IDS
    for spec, committed in zip(vectors_v2.SPECS, V2, strict=True):
        assert vectors_v2.vector(spec, bytes.fromhex(committed["compressed"])) == committed
    assert {v["compression"] for v in V2} == {"zstd", "zlib"}
    assert {v["namespace"] is None for v in V2} == {True, False}


@pytest.mark.parametrize("vector", V2, ids=IDS)
def test_the_compressed_bytes_are_the_inner_payload(vector: dict[str, Any]) -> None:
    compressed, inner = bytes.fromhex(vector["compressed"]), bytes.fromhex(vector["inner_payload"])
    if vector["compression"] == "zstd":
        assert zstandard.get_frame_parameters(compressed).content_size == len(inner)
        assert zstandard.ZstdDecompressor().decompress(compressed) == inner
    else:
        assert zlib.decompress(compressed) == inner
    assert len(compressed) < len(inner) / 2


@pytest.mark.parametrize("vector", V2, ids=IDS)
def test_the_data_key_reproduces_the_vector_from_its_compressed_bytes(vector: dict[str, Any]) -> None:
    key, algorithm = vector_key(vector), vector["compression"]
    namespace = vector["namespace"]
    aad = associated_data(vector["key_id"], bytes.fromhex(vector["encrypted_data_key"]), namespace, algorithm)
    assert aad.hex() == vector["associated_data"]
    assert {k: v.hex() for k, v in key.envelope(algorithm).items()} == vector["metadata"]
    compressed, nonce = bytes.fromhex(vector["compressed"]), bytes.fromhex(vector["nonce"])
    assert key.encrypt(compressed, nonce, algorithm).hex() == vector["data"]
    assert key.seal(compressed, nonce, algorithm) == _payload(vector).SerializeToString(deterministic=True)


@pytest.mark.parametrize("vector", V2, ids=IDS)
@pytest.mark.parametrize("compression", [None, "zstd", "zlib"])
def test_the_codec_decodes_every_vector_whatever_it_compresses(vector: dict[str, Any], compression: str | None) -> None:
    codec = EnvelopeCodec(OneKey(vector_key(vector)), accept_unbound=True, compression=CompressionPolicy(compression))
    namespace = vector["namespace"] or "default"
    (decoded,) = codec.decode([_payload(vector)], namespace)
    assert decoded.SerializeToString(deterministic=True).hex() == vector["inner_payload"]
    (fast,) = codec.decode_serialized([_payload(vector).SerializeToString()], namespace)
    assert fast.hex() == vector["inner_payload"]


@pytest.mark.parametrize("vector", V2, ids=IDS)
def test_the_codec_encodes_the_vectors_inner_payload_into_the_same_envelope(vector: dict[str, Any]) -> None:
    """The codec's own compressor may give other compressed bytes than the committed ones (another library
    version): the envelope is the same, and what it wrote decodes to the same inner payload."""
    nonce = bytes.fromhex(vector["nonce"])
    policy = CompressionPolicy(vector["compression"], min_bytes=0)  # its own level: the vectors use others too
    key = vector_key(vector)
    codec = EnvelopeCodec(
        OneKey(key), bind_namespace=vector["namespace"] is not None, compression=policy, nonces=lambda n: nonce
    )
    inner = Payload.FromString(bytes.fromhex(vector["inner_payload"]))
    (encoded,) = codec.encode([inner], vector["namespace"] or "default")
    assert {k: v.hex() for k, v in encoded.metadata.items()} == vector["metadata"]
    assert encoded.data[:12] == nonce
    assert codec.decode([encoded], vector["namespace"] or "default") == [inner]


@pytest.mark.parametrize("vector", V1, ids=[v["name"] for v in V1])
def test_version_1_vectors_decode_with_compression_on(vector: dict[str, Any]) -> None:
    codec = EnvelopeCodec(OneKey(vector_key(vector)), accept_unbound=True, compression=CompressionPolicy("zstd"))
    (decoded,) = codec.decode([_payload(vector)], vector["namespace"] or "default")
    assert decoded.SerializeToString(deterministic=True).hex() == vector["inner_payload"]


@pytest.mark.parametrize("vector", V2, ids=IDS)
def test_a_vector_with_its_algorithm_swapped_or_dropped_fails_authentication(vector: dict[str, Any]) -> None:
    codec = EnvelopeCodec(OneKey(vector_key(vector)), accept_unbound=True)
    other = {"zstd": b"zlib", "zlib": b"zstd"}[vector["compression"]]
    swapped = _payload(vector)
    swapped.metadata["encryption-compression"] = other
    dropped = _payload(vector)
    del dropped.metadata["encryption-compression"]
    for altered in (swapped, dropped):
        with pytest.raises(errors.DecryptionError):
            codec.decode([altered], vector["namespace"] or "default")
