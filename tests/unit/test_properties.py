"""Property tests of the codec core (hypothesis): every payload round trips on both paths, and every
alteration of an encrypted payload is refused with the service's own error naming its index."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from google.protobuf.message import DecodeError
from hypothesis import assume, given
from hypothesis import strategies as st

from codec_grpc import errors
from codec_grpc.core import envelope
from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.core.envelope import DataKey
from codec_grpc.v1.codec_pb2 import EncodeResponse, Payload
from tests.support.fuzzing import examples

pytestmark = pytest.mark.fuzz

ARNS = ("arn:aws:kms:us-east-1:111122223333:key/one", "arn:aws:kms:us-east-1:111122223333:key/two")


class RotatingKeys:
    """A key source that hands out a new data key for every batch, alternating two master keys."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, bytes, str | None], DataKey] = {}

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey:
        serial = len(self._keys)
        material = hashlib.sha256(f"rotating|{serial}".encode()).digest()
        key = DataKey(material, ARNS[serial % 2], f"edk-{serial}".encode(), binding)
        self._keys[(key.key_id, key.encrypted_key, binding)] = key
        return key

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        key = self._keys.get((key_arn, encrypted_key, binding))
        if key is None:
            raise errors.KmsInvalidCiphertextError(f"KMS Decrypt with key {key_arn}: cannot unwrap the data key")
        return key


names = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
payloads = st.builds(
    lambda metadata, data, sizes: Payload(
        metadata=metadata,
        data=data,
        external_payloads=[Payload.ExternalPayloadDetails(size_bytes=s) for s in sizes],
    ),
    st.dictionaries(names, st.binary(max_size=40), max_size=4),
    st.binary(max_size=2000),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
)
batches = st.lists(payloads, min_size=1, max_size=6)


def _parses(raw: bytes) -> bool:
    try:
        Payload.FromString(raw)
    except DecodeError:
        return False
    return True


@examples(200)
@given(batches, st.sampled_from([True, False]))
def test_any_payload_round_trips_on_both_paths(batch: list[Payload], bind: bool) -> None:
    codec = EnvelopeCodec(RotatingKeys(), bind_namespace=bind)
    assert codec.decode(codec.encode(batch, "ns"), "ns") == batch
    raw = [p.SerializeToString(deterministic=True) for p in batch]
    encoded = codec.encode_serialized(raw, "ns")
    assert codec.decode_serialized(encoded, "ns") == raw
    # the two forms read each other's output
    assert codec.decode([Payload.FromString(e) for e in encoded], "ns") == batch
    objects = codec.encode(batch, "ns")
    assert codec.decode_serialized([p.SerializeToString() for p in objects], "ns") == raw
    # the service's one-pass response builder: a serialized EncodeResponse of the same answers
    consumed = list(raw)
    response = EncodeResponse.FromString(codec.encode_response(consumed, "ns"))
    assert consumed == []
    assert codec.decode_serialized([p.SerializeToString() for p in response.payloads], "ns") == raw


@examples(200)
@given(st.lists(st.binary(max_size=300).filter(_parses), min_size=1, max_size=4))
def test_any_serialized_payload_comes_back_byte_for_byte(raw: list[bytes]) -> None:
    """Unknown fields, unsorted map entries, repeated fields: the bytes path keeps them all."""
    codec = EnvelopeCodec(RotatingKeys())
    assert codec.decode_serialized(codec.encode_serialized(raw, "ns"), "ns") == raw


ENVELOPE = (
    envelope.ENCODING_KEY,
    envelope.KEY_ID_KEY,
    envelope.DATA_KEY_KEY,
    envelope.ALGORITHM_KEY,
    envelope.NAMESPACE_KEY,
)


def _bytes_mutation(data: st.DataObject, value: bytes, other: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "replace", "swap"]))
    if kind == "flip" and value:
        position = data.draw(st.integers(0, len(value) * 8 - 1))
        flipped = bytearray(value)
        flipped[position // 8] ^= 1 << (position % 8)
        return bytes(flipped)
    if kind == "truncate" and value:
        return value[: data.draw(st.integers(0, len(value) - 1))]
    if kind == "extend":
        return value + data.draw(st.binary(min_size=1, max_size=40))
    if kind == "swap":
        return other
    return data.draw(st.binary(max_size=80))


def alter(data: st.DataObject, payload: Payload, other: Payload) -> None:
    """Change the data or one metadata entry of ``payload`` (``other``: a payload of another batch)."""
    target = data.draw(st.sampled_from(["data", "delete", "add", *ENVELOPE]))
    if target == "data":
        payload.data = _bytes_mutation(data, payload.data, other.data)
    elif target == "delete":
        del payload.metadata[data.draw(st.sampled_from(sorted(payload.metadata)))]
    elif target == "add":
        name = data.draw(names.filter(lambda n: n not in payload.metadata))
        payload.metadata[name] = data.draw(st.binary(max_size=40))
    else:
        value = payload.metadata.get(target, b"")
        payload.metadata[target] = _bytes_mutation(data, value, other.metadata.get(target, b""))


@examples(400)
@given(batches, batches, st.data())
def test_any_alteration_is_refused_naming_the_payload(
    batch: list[Payload], others: list[Payload], data: st.DataObject
) -> None:
    codec = EnvelopeCodec(RotatingKeys())
    encoded = codec.encode(batch, "ns")
    other = codec.encode(others, "other-ns")[0]  # another data key, master key and namespace
    index = data.draw(st.integers(0, len(encoded) - 1))
    altered = Payload()
    altered.CopyFrom(encoded[index])
    alter(data, altered, other)
    assume(altered != encoded[index] and altered != other)  # a swap of an equal value changes nothing
    tampered = [*encoded[:index], altered, *encoded[index + 1 :]]
    serialized = [p.SerializeToString() for p in tampered]
    if altered.metadata.get(envelope.ENCODING_KEY) != envelope.ENCODING:
        # No longer claims to be encrypted: passed through unchanged, as the codec contract requires,
        # still ciphertext; never decrypted into anything.
        assert codec.decode(tampered, "ns")[index] is altered
        assert codec.decode_serialized(serialized, "ns")[index] == serialized[index]
        return
    decoders: list[Callable[[], object]] = [lambda: codec.decode(tampered, "ns")]
    decoders.append(lambda: codec.decode_serialized(serialized, "ns"))
    for decode in decoders:
        with pytest.raises(errors.CodecError) as caught:
            decode()
        assert str(caught.value).startswith(f"payload {index}: ")
        if isinstance(caught.value, errors.PayloadError):
            assert caught.value.index == index


def _byte_mutation(data: st.DataObject, raw: bytes) -> bytes:
    """Any change to a serialized payload: a bit flipped, bytes cut, or bytes (a field, say) added."""
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "insert"]))
    if kind == "flip":
        position = data.draw(st.integers(0, len(raw) * 8 - 1))
        flipped = bytearray(raw)
        flipped[position // 8] ^= 1 << (position % 8)
        return bytes(flipped)
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    extra = data.draw(st.sampled_from([b"\x1a\x00", b"\x12\x01x", b"\x0a\x00", b"\x08\x01"]) | st.binary(max_size=8))
    if kind == "append":
        return raw + extra
    position = data.draw(st.integers(0, len(raw)))
    return raw[:position] + extra + raw[position:]


def _alone(codec: EnvelopeCodec, raw: bytes) -> tuple[object, ...]:
    try:
        return ("decoded", codec.decode_serialized([raw], "ns")[0])
    except errors.CodecError as exc:
        return ("refused", type(exc), str(exc).removeprefix("payload 0: "))


@examples(400)
@given(batches, st.booleans(), st.data())
def test_a_payload_decodes_within_its_batch_as_it_does_alone(
    batch: list[Payload], reserialize: bool, data: st.DataObject
) -> None:
    """decode_serialized reads a payload serialized like an envelope checked earlier in the batch
    without parsing it (codec._Envelopes): whatever its bytes, the answer must be the one the payload
    gets in a batch of its own, where it is parsed and checked in full."""
    codec = EnvelopeCodec(RotatingKeys())
    serialized = codec.encode_serialized([p.SerializeToString(deterministic=True) for p in batch], "ns")
    if reserialize:  # as a client that parsed the answer serializes it again (map entries in its own order)
        serialized = [Payload.FromString(raw).SerializeToString() for raw in serialized]
    index = data.draw(st.integers(0, len(serialized) - 1))
    serialized[index] = _byte_mutation(data, serialized[index])
    expected = [_alone(codec, raw) for raw in serialized]
    try:
        decoded = codec.decode_serialized(serialized, "ns")
    except errors.CodecError as exc:
        assert str(exc).startswith(f"payload {index}: ")  # the others are intact
        assert expected[index] == ("refused", type(exc), str(exc).removeprefix(f"payload {index}: "))
        return
    assert [("decoded", raw) for raw in decoded] == expected
