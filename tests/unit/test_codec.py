"""Unit tests of the envelope codec with fake keys: contract, tampering, namespaces."""

from __future__ import annotations

import pytest

from codec_grpc import errors
from codec_grpc.core import protowire
from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.v1.codec_pb2 import Payload
from tests.support.fakes import FAKE_ARN, StaticKeys


def _payloads(n: int = 5) -> list[Payload]:
    return [
        Payload(
            metadata={"encoding": b"json/plain", "index": str(i).encode()},
            data=f'{{"n": {i}}}'.encode(),
            external_payloads=[Payload.ExternalPayloadDetails(size_bytes=i * 1000)] if i % 2 else [],
        )
        for i in range(n)
    ]


@pytest.fixture
def keys() -> StaticKeys:
    return StaticKeys()


@pytest.fixture
def codec(keys: StaticKeys) -> EnvelopeCodec:
    return EnvelopeCodec(keys)


def test_round_trip_keeps_count_order_and_every_field(codec: EnvelopeCodec) -> None:
    original = _payloads(20)
    encoded = codec.encode(original, "ns")
    assert len(encoded) == 20
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in encoded)
    assert all(p.metadata["encryption-key-id"] == FAKE_ARN.encode() for p in encoded)
    assert all(p.metadata["encryption-namespace"] == b"ns" for p in encoded)
    assert not any(p.external_payloads for p in encoded)
    assert codec.decode(encoded, "ns") == original


def test_one_key_request_per_batch(codec: EnvelopeCodec, keys: StaticKeys) -> None:
    codec.encode(_payloads(7), "ns")
    assert keys.requests == [("ns", "ns", 7)]


def test_nonces_are_fresh_per_payload(codec: EnvelopeCodec) -> None:
    same = [Payload(data=b"same")] * 50
    encoded = codec.encode(same, "ns")
    assert len({p.data[:12] for p in encoded}) == 50
    assert len({p.data for p in encoded}) == 50


def test_input_is_never_mutated(codec: EnvelopeCodec) -> None:
    original = _payloads(3)
    snapshot = [p.SerializeToString(deterministic=True) for p in original]
    encoded = codec.encode(original, "ns")
    encoded_snapshot = [p.SerializeToString(deterministic=True) for p in encoded]
    codec.decode(encoded, "ns")
    assert [p.SerializeToString(deterministic=True) for p in original] == snapshot
    assert [p.SerializeToString(deterministic=True) for p in encoded] == encoded_snapshot


def test_empty_batch_needs_no_key(codec: EnvelopeCodec, keys: StaticKeys) -> None:
    assert codec.encode([], "ns") == []
    assert codec.decode([], "ns") == []
    assert keys.requests == []


def test_decode_passes_through_unencrypted_payloads_as_given(codec: EnvelopeCodec) -> None:
    plain = _payloads(3)
    mixed = [plain[0], *codec.encode([plain[1]], "ns"), plain[2]]
    decoded = codec.decode(mixed, "ns")
    assert decoded[0] is plain[0] and decoded[2] is plain[2]
    assert decoded[1] == plain[1]
    no_encoding = Payload(data=b"raw")
    assert codec.decode([no_encoding], "ns")[0] is no_encoding


def test_flipped_data_bits_are_refused_with_index(codec: EnvelopeCodec) -> None:
    encoded = codec.encode(_payloads(3), "ns")
    for position in (0, 11, 12, len(encoded[2].data) // 2, len(encoded[2].data) - 1):
        tampered = list(encoded)
        data = bytearray(encoded[2].data)
        data[position] ^= 0x01
        tampered[2] = Payload(metadata=encoded[2].metadata, data=bytes(data))
        with pytest.raises(errors.DecryptionError, match="^payload 2: decryption failed"):
            codec.decode(tampered, "ns")


@pytest.mark.parametrize("length", [0, 1, 27])
def test_truncated_data_is_refused(codec: EnvelopeCodec, length: int) -> None:
    (encoded,) = codec.encode(_payloads(1), "ns")
    with pytest.raises(errors.DecryptionError, match="^payload 0:"):
        codec.decode([Payload(metadata=encoded.metadata, data=encoded.data[:length])], "ns")


def test_changed_metadata_value_is_refused(keys: StaticKeys) -> None:
    """Any authenticated metadata change fails, even when a careless key source resolves it."""
    codec = EnvelopeCodec(keys, bind_namespace=False)
    (encoded,) = codec.encode(_payloads(1), "ns")
    key = keys.keys[None]
    # A key source that ignores what it is asked for: the codec itself must notice.
    keys.decryption_key = lambda *_: key  # type: ignore[method-assign]
    for name, value in [
        ("encryption-key-id", b"arn:aws:kms:us-east-1:111122223333:key/other"),
        ("encrypted-data-key", b"other-edk"),
    ]:
        altered = Payload(metadata={**encoded.metadata, name: value}, data=encoded.data)
        with pytest.raises(errors.DecryptionError, match="^payload 0:"):
            codec.decode([altered], "ns")
    with_namespace = Payload(metadata={**encoded.metadata, "encryption-namespace": b"ns"}, data=encoded.data)
    with pytest.raises(errors.DecryptionError):
        codec.decode([with_namespace], "ns")


def test_swapped_metadata_between_payloads_is_refused(keys: StaticKeys) -> None:
    codec = EnvelopeCodec(keys, bind_namespace=False)
    (a,) = codec.encode(_payloads(1), "a")
    other = EnvelopeCodec(StaticKeys(), bind_namespace=True)
    (b,) = other.encode(_payloads(1), "b")
    swapped = Payload(metadata=b.metadata, data=a.data)
    with pytest.raises(errors.CodecError, match="^payload 0:"):
        EnvelopeCodec(StaticKeys(), bind_namespace=True).decode([swapped], "b")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encryption-algorithm": b"AES-128-CBC"}, "unsupported encryption-algorithm"),
        ({"encryption-algorithm": None}, r"unsupported encryption-algorithm \(missing\)"),
        ({"encryption-key-id": None}, "metadata 'encryption-key-id' is missing"),
        ({"encryption-key-id": b"\xff\xfe"}, "metadata 'encryption-key-id' is not UTF-8 text"),
        ({"encrypted-data-key": None}, "metadata 'encrypted-data-key' is missing"),
        ({"encryption-namespace": b""}, "metadata 'encryption-namespace' is missing"),
    ],
)
def test_malformed_envelope_metadata_is_refused(
    codec: EnvelopeCodec, change: dict[str, bytes | None], message: str
) -> None:
    (encoded,) = codec.encode(_payloads(1), "ns")
    metadata = {k: v for k, v in {**encoded.metadata, **change}.items() if v is not None}
    with pytest.raises(errors.PayloadError, match=f"^payload 1: {message}"):
        codec.decode([Payload(data=b"plain"), Payload(metadata=metadata, data=encoded.data)], "ns")


def test_namespace_binding_refuses_other_namespace(codec: EnvelopeCodec) -> None:
    encoded = codec.encode(_payloads(2), "team-a")
    with pytest.raises(errors.NamespaceMismatchError) as caught:
        codec.decode(encoded, "team-b")
    assert str(caught.value).startswith("payload 0: written for namespace 'team-a', requested as 'team-b'")
    assert (caught.value.written_for, caught.value.requested) == ("team-a", "team-b")


def test_binding_off_shares_one_unbound_key_and_still_reads_bound_payloads(keys: StaticKeys) -> None:
    unbound = EnvelopeCodec(keys, bind_namespace=False)
    encoded = unbound.encode(_payloads(2), "team-a")
    assert "encryption-namespace" not in encoded[0].metadata
    assert unbound.decode(encoded, "anything") == _payloads(2)
    bound_payloads = EnvelopeCodec(keys).encode(_payloads(1), "team-a")
    assert unbound.decode(bound_payloads, "team-b") == _payloads(1)
    assert keys.requests[0] == ("team-a", None, 2)


def test_bound_codec_refuses_payloads_written_unbound(keys: StaticKeys) -> None:
    """An unbound payload could be any namespace's: under binding, decoding it in the caller's
    namespace would let a caller of one namespace read another's data."""
    encoded = EnvelopeCodec(keys, bind_namespace=False).encode(_payloads(1), "billing")
    with pytest.raises(errors.UnboundPayloadError, match="^payload 0: bound to no namespace .*ACCEPT_UNBOUND"):
        EnvelopeCodec(keys).decode(encoded, "orders")
    assert keys.unwrapped == [], "refused before any key was asked for"


def test_accept_unbound_reads_payloads_written_unbound(keys: StaticKeys) -> None:
    """The migration switch: turning binding on later keeps old payloads decodable (in-flight workflows)."""
    encoded = EnvelopeCodec(keys, bind_namespace=False).encode(_payloads(1), "x")
    assert EnvelopeCodec(keys, accept_unbound=True).decode(encoded, "any-namespace") == _payloads(1)


def test_key_provider_errors_name_the_payload(codec: EnvelopeCodec) -> None:
    encoded = codec.encode(_payloads(2), "ns")
    broken = Payload(metadata={**encoded[1].metadata, "encrypted-data-key": b"unknown"}, data=encoded[1].data)
    with pytest.raises(errors.KmsInvalidCiphertextError, match="^payload 1: static keys: unknown data key"):
        codec.decode([encoded[0], broken], "ns")


def test_decrypted_garbage_that_is_not_a_payload_is_refused(keys: StaticKeys) -> None:
    key = keys.encryption_key("ns", "ns", 1)
    data = key.encrypt(b"\xff\xff\xff", bytes(12))
    with pytest.raises(errors.PayloadError, match="^payload 0: decrypted data is not a serialized Payload"):
        EnvelopeCodec(keys).decode([Payload(metadata=key.metadata, data=data)], "ns")


def test_decrypted_garbage_is_refused_on_the_bytes_path_naming_the_payload(keys: StaticKeys) -> None:
    """decode_serialized checks the decrypted payloads with one parse of them all; when that fails,
    the payload at fault is found and named, wherever it is in the batch."""
    key = keys.encryption_key("ns", "ns", 3)
    good = key.seal(Payload(data=b"fine").SerializeToString(), bytes(12))
    bad = key.seal(b"\xff\xff\xff", bytes(11) + b"\x01")
    codec = EnvelopeCodec(keys)
    assert codec.decode_serialized([good, good], "ns") == [Payload(data=b"fine").SerializeToString()] * 2
    with pytest.raises(errors.PayloadError, match="^payload 2: decrypted data is not a serialized Payload"):
        codec.decode_serialized([good, good, bad], "ns")


def test_an_entry_added_to_the_envelope_is_refused(codec: EnvelopeCodec) -> None:
    encoded = codec.encode(_payloads(2), "ns")
    encoded[1].metadata["note"] = b"added later"
    with pytest.raises(errors.PayloadError) as caught:
        codec.decode(encoded, "ns")
    assert str(caught.value) == "payload 1: unexpected metadata 'note' on an encrypted payload: it was altered"
    with pytest.raises(errors.PayloadError, match="payload 1: unexpected metadata 'note'"):
        codec.decode_serialized([p.SerializeToString() for p in encoded], "ns")


@pytest.mark.parametrize(
    "key_id",
    [
        b"arn:aws:kms:us-east-1:999999999999:key/\nINFO forged log line",
        b"x" * (1024 * 1024),
        b"alias/temporal-codec-latest",
        b"arn:aws:kms:us-east-1:111122223333:alias/x",
        b"arn:aws:s3:::bucket",
    ],
    ids=["newline", "1 MiB", "alias", "alias ARN", "other service"],
)
def test_a_key_id_that_is_not_a_key_arn_is_refused_short_and_escaped(codec: EnvelopeCodec, key_id: bytes) -> None:
    """The key id comes from whoever wrote the payload: checked before anything is looked up or echoed."""
    (encoded,) = codec.encode(_payloads(1), "ns")
    altered = Payload(metadata={**encoded.metadata, "encryption-key-id": key_id}, data=encoded.data)
    with pytest.raises(
        errors.PayloadError, match="^payload 0: metadata 'encryption-key-id' is not a KMS key ARN"
    ) as caught:
        codec.decode([altered], "ns")
    message = str(caught.value)
    assert len(message) < 200 and "\n" not in message


def test_the_one_pass_response_is_the_framed_answers_byte_for_byte(keys: StaticKeys) -> None:
    """encode_response (what the service sends) equals encode_serialized's answers framed as an
    EncodeResponse, with the same nonces; and it takes the payloads out of the list it is given."""
    fixed = EnvelopeCodec(keys, nonces=bytes)  # zeros: the same nonces for both (a test, not a use)
    raw = [p.SerializeToString() for p in _payloads(3)] + [b"", b"\x0a\x00" * 200]
    given = list(raw)
    assert fixed.encode_response(given, "ns") == protowire.join_response(fixed.encode_serialized(raw, "ns"))
    assert given == []
