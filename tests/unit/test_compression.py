"""Compression before encryption (format v2): what is compressed, that the algorithm is authenticated,
and that decompression is bounded and refuses bad streams with the service's own errors."""

from __future__ import annotations

import hashlib
import json
import os
import random
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from codec_grpc import errors
from codec_grpc.core import compression, envelope
from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.core.compression import CompressionPolicy
from codec_grpc.core.envelope import DataKey
from codec_grpc.errors import ConfigError
from codec_grpc.runtime.config import load_config
from codec_grpc.runtime.wiring import compression_policy
from codec_grpc.v1.codec_pb2 import Payload
from tests.support.fakes import StaticKeys
from tests.support.fuzzing import examples

MiB = 1024 * 1024
ALGORITHMS = ("zstd", "zlib")


def json_payload(size: int) -> Payload:
    """A JSON payload of about ``size`` bytes: records alike in shape, different in values."""
    records, length, index = [], 0, 0
    while length < size:
        digest = hashlib.sha256(str(index).encode()).hexdigest()
        record = {"id": f"order-{index:06}", "customer": digest[:12], "amount": index * 37 % 10_000, "ok": True}
        records.append(record)
        length += len(json.dumps(record)) + 2
        index += 1
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(records).encode())


def codec(algorithm: str | None = "zstd", keys: StaticKeys | None = None, **policy: Any) -> EnvelopeCodec:
    return EnvelopeCodec(keys or StaticKeys(), compression=CompressionPolicy(algorithm, **policy))


def sealed(key: DataKey, inner: bytes, algorithm: str | None) -> Payload:
    """An encrypted payload of ``inner`` (already compressed), authenticated as the writer made it."""
    return Payload.FromString(key.seal(inner, os.urandom(12), algorithm))


def static_key(keys: StaticKeys, namespace: str = "ns") -> DataKey:
    return keys.encryption_key(namespace, namespace, 1)


# --- what encode compresses


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_json_is_compressed_into_format_v2_and_decodes_on_both_paths(algorithm: str) -> None:
    original = json_payload(64 * 1024)
    encoder = codec(algorithm)
    (encoded,) = encoder.encode([original], "ns")
    assert encoded.metadata[envelope.COMPRESSION_KEY] == algorithm.encode()
    assert len(encoded.SerializeToString()) < len(original.SerializeToString()) / 4
    assert encoder.decode([encoded], "ns") == [original]
    (fast,) = encoder.encode_serialized([original.SerializeToString(deterministic=True)], "ns")
    assert Payload.FromString(fast).metadata == encoded.metadata
    assert encoder.decode_serialized([fast], "ns") == [original.SerializeToString(deterministic=True)]


def test_compression_off_writes_version_1_byte_for_byte() -> None:
    nonce = bytes(12)
    raw = json_payload(8 * 1024).SerializeToString(deterministic=True)
    off = EnvelopeCodec(StaticKeys(), nonces=lambda n: nonce).encode_serialized([raw], "ns")
    key = StaticKeys()._key("ns")
    assert off == [key.seal(raw, nonce)]
    assert envelope.COMPRESSION_KEY not in Payload.FromString(off[0]).metadata


@pytest.mark.parametrize(
    ("payload", "policy", "why"),
    [
        (json_payload(3000), {}, "below COMPRESSION_MIN_BYTES (4096)"),
        (json_payload(8192), {"min_bytes": 16384}, "below a higher minimum"),
        (Payload(data=os.urandom(64 * 1024)), {}, "random bytes do not shrink"),
        (Payload(data=bytes(64 * 1024)), {}, "zeros shrink beyond COMPRESSION_MAX_RATIO (100)"),
        (json_payload(64 * 1024), {"max_decompressed_bytes": 32 * 1024}, "larger than a reader decompresses"),
    ],
    ids=["small", "min-bytes", "random", "ratio", "too-large"],
)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_payloads_compression_would_not_serve_stay_version_1(
    algorithm: str, payload: Payload, policy: dict[str, int], why: str
) -> None:
    encoder = codec(algorithm, None, **policy)
    (encoded,) = encoder.encode([payload], "ns")
    assert envelope.COMPRESSION_KEY not in encoded.metadata, why
    assert encoder.decode([encoded], "ns") == [payload]


def test_a_payload_that_shrinks_by_less_than_its_envelope_entry_stays_version_1() -> None:
    """Compression must pay for the ``encryption-compression`` entry it adds (32 bytes for zstd)."""
    assert envelope.compression_overhead("zstd") == 32
    raw = random.Random(1).randbytes(1000) + b"a" * 50  # zstd saves 28 bytes, frame included
    packed = zstandard.ZstdCompressor(level=3).compress(raw)
    assert len(packed) < len(raw) <= len(packed) + 32
    with CompressionPolicy("zstd", min_bytes=0).compressor() as compressor:
        assert compressor is not None
        assert compressor.shrink(raw) is None
        assert compressor.shrink(raw + b"a" * 10) is not None  # 38 bytes saved: more than the entry


def test_each_payload_of_a_batch_is_decided_alone() -> None:
    batch = [json_payload(16 * 1024), Payload(data=b"{}"), Payload(data=os.urandom(8192)), json_payload(5000)]
    encoder = codec("zlib")
    encoded = encoder.encode(batch, "ns")
    assert [p.metadata.get(envelope.COMPRESSION_KEY) for p in encoded] == [b"zlib", None, None, b"zlib"]
    assert encoder.decode(encoded, "ns") == batch


@pytest.mark.parametrize("level", [1, 9])
def test_every_zstd_level_offered_stays_within_the_readers_window(level: int) -> None:
    """Levels 1-9 need at most an 8 MiB window whatever the payload's size (so would 10-19)."""
    for size in (MiB, 16 * MiB, 2**31 - 1):
        window = zstandard.ZstdCompressionParameters.from_level(level, source_size=size).window_log
        assert 2**window <= compression.ZSTD_MAX_WINDOW
    original = json_payload(128 * 1024)
    encoder = codec("zstd", level=level)
    assert encoder.decode(encoder.encode([original], "ns"), "ns") == [original]


def test_version_2_payloads_decode_with_compression_off() -> None:
    """Turning compression off (or rolling back to it) never strands what was written with it."""
    keys = StaticKeys()
    encoded = codec("zstd", keys).encode([json_payload(8192)], "ns")
    assert codec(None, keys).decode(encoded, "ns") == [json_payload(8192)]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"algorithm": "brotli"}, "compression must be one of zstd, zlib or None, got 'brotli'"),
        ({"algorithm": None, "level": 3}, "a compression level needs a compression algorithm"),
        ({"algorithm": "zlib", "level": 10}, "zlib levels are 1 to 9, got 10"),
        ({"algorithm": "zstd", "level": 10}, "zstd levels are 1 to 9, got 10"),
        ({"min_bytes": -1}, "min_bytes must be at least 0, got -1"),
        ({"max_ratio": 0}, "max_ratio must be at least 1, got 0"),
        ({"max_decompressed_bytes": 0}, "max_decompressed_bytes must be at least 1, got 0"),
    ],
)
def test_the_policy_refuses_what_it_cannot_do(policy: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        CompressionPolicy(**policy)  # type: ignore[arg-type]
    assert str(refused.value) == message


# --- the algorithm is authenticated


@pytest.mark.parametrize(
    "alter",
    [
        lambda md: md.__setitem__(envelope.COMPRESSION_KEY, b"zlib"),
        lambda md: md.__delitem__(envelope.COMPRESSION_KEY),
    ],
    ids=["zstd-to-zlib", "removed"],
)
def test_altering_the_algorithm_fails_authentication(alter: Callable[[dict[str, bytes]], None]) -> None:
    keys = StaticKeys()
    (encoded,) = codec("zstd", keys).encode([json_payload(8192)], "ns")
    metadata = dict(encoded.metadata)
    alter(metadata)
    altered = Payload(metadata=metadata, data=encoded.data)
    with pytest.raises(errors.DecryptionError) as refused:
        codec("zstd", keys).decode([Payload(data=b"x"), altered], "ns")
    assert str(refused.value).startswith("payload 1: decryption failed")


def test_adding_an_algorithm_to_a_version_1_payload_fails_authentication() -> None:
    keys = StaticKeys()
    (encoded,) = codec(None, keys).encode([json_payload(8192)], "ns")
    metadata = {**encoded.metadata, envelope.COMPRESSION_KEY: b"zstd"}
    with pytest.raises(errors.DecryptionError):
        codec(None, keys).decode([Payload(metadata=metadata, data=encoded.data)], "ns")


def test_an_unknown_algorithm_is_refused_before_any_key_is_asked_for() -> None:
    keys = StaticKeys()
    (encoded,) = codec("zstd", keys).encode([json_payload(8192)], "ns")
    keys.unwrapped.clear()
    metadata = {**encoded.metadata, envelope.COMPRESSION_KEY: b"br"}
    with pytest.raises(errors.PayloadError) as refused:
        codec("zstd", keys).decode([Payload(metadata=metadata, data=encoded.data)], "ns")
    assert str(refused.value) == "payload 0: unsupported encryption-compression (b'br'); this codec supports zstd, zlib"
    assert keys.unwrapped == []


def test_the_version_2_associated_data_is_version_1_with_another_prefix_and_the_algorithm() -> None:
    v1 = envelope.associated_data("arn:k", b"edk", "ns")
    v2 = envelope.associated_data("arn:k", b"edk", "ns", "zstd")
    assert v1.startswith(b"temporal-codec/v1")
    assert v2 == b"temporal-codec/v2" + v1[len(b"temporal-codec/v1") :] + b"\x00\x00\x00\x04zstd"
    assert envelope.associated_data("arn:k", b"edk", "ns", "zlib") != v2


# --- bombs: refused, with at most the limit decompressed


def zlib_bomb(size: int) -> bytes:
    """``size`` zero bytes through zlib in 1 MiB steps (never all of them in memory)."""
    stream = zlib.compressobj(9)
    chunk = bytes(MiB)
    return b"".join(stream.compress(chunk) for _ in range(size // MiB)) + stream.flush()


def zstd_declaring(size: int, body: bytes = b"", window_log: int = 20) -> bytes:
    """A zstd frame header (RFC 8878 3.1.1.1) that declares ``size`` bytes of content, then ``body``."""
    descriptor = 0b1100_0000  # Frame_Content_Size_flag 3 (an 8-byte field), not single segment, no checksum
    window = (window_log - 10) << 3  # Window_Descriptor: exponent, mantissa 0
    return compression.ZSTD_MAGIC + bytes((descriptor, window)) + size.to_bytes(8, "little") + body


@pytest.mark.parametrize(
    ("algorithm", "bomb", "policy", "message"),
    [
        ("zlib", lambda: zlib_bomb(64 * MiB), {}, "100 times its 65"),
        ("zlib", lambda: zlib_bomb(64 * MiB), {"max_ratio": 10_000}, f"{16 * MiB} bytes (DECOMPRESSED_MAX_BYTES)"),
        ("zstd", lambda: zstd_declaring(2**30), {"max_ratio": 10**7}, f"{16 * MiB} bytes (DECOMPRESSED_MAX_BYTES)"),
        ("zstd", lambda: zstd_declaring(2**30), {}, "100 times its 14 compressed bytes (COMPRESSION_MAX_RATIO)"),
    ],
    ids=["zlib-ratio", "zlib-size", "zstd-size", "zstd-ratio"],
)
def test_a_bomb_is_refused_naming_its_index_and_the_limit(
    algorithm: str, bomb: Callable[[], bytes], policy: dict[str, int], message: str
) -> None:
    keys = StaticKeys()
    payload = sealed(static_key(keys), bomb(), algorithm)
    with pytest.raises(errors.DecompressionLimitError) as refused:
        codec(None, keys, **policy).decode([Payload(data=b"plain"), payload], "ns")
    assert str(refused.value).startswith(f"payload 1: decompresses to more than {message}")
    assert str(refused.value).endswith(": refused as a decompression bomb")


def test_the_size_limit_is_for_all_the_payloads_of_a_call_together() -> None:
    keys = StaticKeys()
    key = static_key(keys)
    inner = Payload(data=bytes(600 * 1024)).SerializeToString()
    piece = zlib.compress(inner, 9)
    batch = [sealed(key, piece, "zlib") for _ in range(4)]
    bounded = codec(None, keys, max_ratio=10_000, max_decompressed_bytes=2 * MiB)
    assert len(bounded.decode(batch[:3], "ns")) == 3
    with pytest.raises(errors.DecompressionLimitError) as refused:
        bounded.decode(batch, "ns")
    assert str(refused.value) == (
        f"payload 3: decompresses to more than the {2 * MiB - 3 * len(inner)} bytes left of DECOMPRESSED_MAX_BYTES "
        f"({2 * MiB} bytes for all the payloads of a request): refused as a decompression bomb"
    )
    assert len(bounded.decode(batch[:3], "ns")) == 3  # the budget is per call


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_decompression_stops_at_the_limit(algorithm: str) -> None:
    data = zlib_bomb(64 * MiB) if algorithm == "zlib" else zstandard.ZstdCompressor(level=1).compress(bytes(64 * MiB))
    with pytest.raises(compression.TooLarge):
        compression.decompress(algorithm, data, MiB)
    assert len(compression.decompress(algorithm, data, 64 * MiB)) == 64 * MiB


# --- malformed compressed bytes: the service's error, never a crash


def zstd_frame(data: bytes = b'{"a": 1}' * 100, *, write_content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=write_content_size).compress(data)


MALFORMED = {
    "zstd": {
        "not a frame": (b"garbage!" * 4, "not a zstd frame"),
        "magic only": (compression.ZSTD_MAGIC, "not a zstd frame"),
        "skippable frame": (b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd", "not a zstd frame"),
        "no content size": (zstd_frame(write_content_size=False), "the zstd frame does not declare its content size"),
        "truncated": (zstd_frame()[:-4], "the zstd frame is corrupt, truncated"),
        "trailing bytes": (zstd_frame() + b"\x00", "the zstd frame is corrupt, truncated"),
        "two frames": (zstd_frame() + zstd_frame(), "the zstd frame is corrupt, truncated"),
        "declares less": (zstd_declaring(10, zstd_frame()[6:]), "the zstd frame is corrupt"),
        # One raw block of 3 bytes, the last (Block_Header: Last_Block 1, Block_Type 0, Block_Size 3).
        "empty declared, data follows": (zstd_declaring(0, b"\x19\x00\x00abc"), "the zstd frame is corrupt"),
        "window over 8 MiB": (zstd_declaring(100, b"\x19\x00\x00abc", 24), "the zstd frame needs a window above"),
    },
    "zlib": {
        "not a stream": (b"garbage!" * 4, "not a well-formed zlib stream"),
        "raw deflate": (zlib.compress(b"x" * 100)[2:-4], "not a well-formed zlib stream"),
        "truncated": (zlib.compress(b'{"a": 1}' * 100)[:-4], "the zlib stream is truncated"),
        "trailing bytes": (zlib.compress(b'{"a": 1}' * 100) + b"\x00", "the zlib stream is followed by other bytes"),
        "bad checksum": (zlib.compress(b'{"a": 1}' * 100)[:-1] + b"\x00", "not a well-formed zlib stream"),
        "empty": (b"", "the zlib stream is truncated"),
    },
}
CASES = [(algorithm, name, *case) for algorithm, cases in MALFORMED.items() for name, case in cases.items()]


@pytest.mark.parametrize(("algorithm", "name", "data", "reason"), CASES, ids=[f"{a}-{n}" for a, n, *_ in CASES])
def test_malformed_compressed_bytes_are_an_invalid_payload(algorithm: str, name: str, data: bytes, reason: str) -> None:
    keys = StaticKeys()
    payload = sealed(static_key(keys), data, algorithm)
    with pytest.raises(errors.PayloadError) as refused:
        codec(None, keys).decode([payload], "ns")
    assert type(refused.value) is errors.PayloadError
    assert str(refused.value).startswith(f"payload 0: decompression failed: {reason}"), name


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_empty_stream_is_an_empty_payload(algorithm: str) -> None:
    keys = StaticKeys()
    empty = zstd_frame(b"") if algorithm == "zstd" else zlib.compress(b"")
    assert codec(None, keys).decode([sealed(static_key(keys), empty, algorithm)], "ns") == [Payload()]


def test_decompressed_bytes_that_are_no_payload_are_refused() -> None:
    keys = StaticKeys()
    payload = sealed(static_key(keys), zlib.compress(b"\xff" * 50), "zlib")
    with pytest.raises(errors.PayloadError) as refused:
        codec(None, keys).decode_serialized([payload.SerializeToString()], "ns")
    assert str(refused.value) == "payload 0: decrypted data is not a serialized Payload"


def mangled(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out[: max(0, len(out) - cut)])


@pytest.mark.fuzz
@examples(300)
@given(
    st.sampled_from(ALGORITHMS),
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            mangled,
            st.sampled_from([zstd_frame(), zlib.compress(b'{"a": 1}' * 100), zstd_frame(bytes(4096))]),
            st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
            st.integers(0, 8),
        ),
    ),
)
def test_garbage_compressed_bytes_never_crash_the_codec(algorithm: str, data: bytes) -> None:
    """Whatever a writer holding the data key put in a version 2 payload: a payload, or the service's
    own error for it, on both paths, within the bounds."""
    keys = StaticKeys()
    payload = sealed(static_key(keys), data, algorithm)
    reader = codec(None, keys, max_decompressed_bytes=MiB)
    for decode in (
        lambda: reader.decode([payload], "ns"),
        lambda: reader.decode_serialized([payload.SerializeToString()], "ns"),
    ):
        try:
            decode()
        except errors.PayloadError as exc:
            assert str(exc).startswith("payload 0: ")


# --- the settings


def test_compression_is_off_by_default_with_bounds_that_follow_the_message_size() -> None:
    config = load_config({})
    assert (config.compression, config.compression_level, config.compression_min_bytes) == ("off", None, 4096)
    assert (config.compression_max_ratio, config.decompressed_max_bytes) == (100, None)
    assert compression_policy(config) == CompressionPolicy(None, None, 4096, 100, 16 * MiB)
    bigger = load_config({"GRPC_MAX_MESSAGE_BYTES": str(64 * MiB)})
    assert compression_policy(bigger).max_decompressed_bytes == 64 * MiB


def test_compression_settings_are_read() -> None:
    env = {
        "COMPRESSION": "ZSTD",
        "COMPRESSION_LEVEL": "9",
        "COMPRESSION_MIN_BYTES": "0",
        "COMPRESSION_MAX_RATIO": "1000",
        "DECOMPRESSED_MAX_BYTES": "4_194_304",
    }
    assert compression_policy(load_config(env)) == CompressionPolicy("zstd", 9, 0, 1000, 4 * MiB)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COMPRESSION": "gzip"}, "COMPRESSION: must be one of off, zstd, zlib, got 'gzip'"),
        ({"COMPRESSION": "zlib", "COMPRESSION_LEVEL": "12"}, "COMPRESSION_LEVEL: must be between 1 and 9, got 12"),
        ({"COMPRESSION": "zstd", "COMPRESSION_LEVEL": "19"}, "COMPRESSION_LEVEL: must be between 1 and 9, got 19"),
        ({"COMPRESSION_LEVEL": "3"}, "COMPRESSION_LEVEL: has no effect with COMPRESSION=off"),
        ({"COMPRESSION_MAX_RATIO": "0"}, "COMPRESSION_MAX_RATIO: must be between 1 and 1000000, got 0"),
        ({"DECOMPRESSED_MAX_BYTES": "100"}, "DECOMPRESSED_MAX_BYTES: must be between 1024 and 2147483647, got 100"),
    ],
)
def test_bad_compression_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(env)
    assert str(refused.value).startswith(message)
