"""The bytes fast path against the protobuf reference: framing, varints, equal results."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payloads as TemporalPayloads

from codec_grpc.core import protowire as wire
from codec_grpc.core.codec import EnvelopeCodec
from codec_grpc.errors import PayloadError
from codec_grpc.v1.codec_pb2 import DecodeResponse, EncodeRequest, EncodeResponse, Payload
from tests.support.fakes import StaticKeys

payload_strategy = st.builds(
    lambda metadata, data, sizes: Payload(
        metadata=metadata,
        data=data,
        external_payloads=[Payload.ExternalPayloadDetails(size_bytes=s) for s in sizes],
    ),
    st.dictionaries(st.text(max_size=20), st.binary(max_size=40), max_size=4),
    st.binary(max_size=3000),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=2),
)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**32, 2**63 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    encoded = wire.varint(value)
    assert wire.read_varint(encoded + b"rest", 0) == (value, len(encoded))
    # protobuf writes the same varint as the size of an int64 field
    reference = Payload.ExternalPayloadDetails(size_bytes=value).SerializeToString()
    assert reference == b"\x08" + encoded or value == 0


@given(st.lists(payload_strategy, max_size=8), st.text(max_size=30))
@settings(max_examples=200, deadline=None)
def test_split_request_matches_protobuf(payloads: list[Payload], namespace: str) -> None:
    raw = EncodeRequest(payloads=payloads, namespace=namespace).SerializeToString()
    split, found = wire.split_request(raw)
    assert [Payload.FromString(p) for p in split] == payloads
    assert found == namespace


@given(st.lists(payload_strategy, max_size=8))
@settings(max_examples=200, deadline=None)
def test_join_response_parses_as_response_and_as_temporal_payloads(payloads: list[Payload]) -> None:
    joined = wire.join_response([p.SerializeToString(deterministic=True) for p in payloads])
    assert list(EncodeResponse.FromString(joined).payloads) == payloads
    assert len(TemporalPayloads.FromString(joined).payloads) == len(payloads)
    assert joined == EncodeResponse(payloads=payloads).SerializeToString(deterministic=True)


def test_split_request_skips_unknown_fields_of_every_wire_type() -> None:
    known = EncodeRequest(payloads=[Payload(data=b"a")], namespace="ns").SerializeToString()
    unknown = (
        b"\x18\x96\x01"  # field 3, varint
        + b"\x21"
        + bytes(8)  # field 4, 64-bit
        + b"\x2d"
        + bytes(4)  # field 5, 32-bit
        + b"\x32\x02hi"  # field 6, length-delimited
    )
    payloads, namespace = wire.split_request(unknown + known + unknown)
    assert [Payload.FromString(p) for p in payloads] == [Payload(data=b"a")]
    assert namespace == "ns"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x0a\x05abc", "a field runs past the end of the message"),
        (b"\x0a", "truncated or oversized varint"),
        (b"\x0a\xff\xff", "truncated or oversized varint"),
        (b"\x1b", "unsupported wire type 3"),
        (b"\x21\x00", "a field runs past the end of the message"),
        (b"\x12\x02\xff\xfe", "the namespace is not UTF-8 text"),
        (b"\x80" * 11, "truncated or oversized varint"),
    ],
)
def test_malformed_requests_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.split_request(raw)


@given(st.lists(payload_strategy, min_size=1, max_size=6), st.booleans())
@settings(max_examples=150, deadline=None)
def test_bytes_path_equals_protobuf_path(payloads: list[Payload], bind: bool) -> None:
    nonces = os.urandom(12 * len(payloads))
    reference = EnvelopeCodec(StaticKeys(), bind_namespace=bind, nonces=lambda n: nonces)
    fast = EnvelopeCodec(StaticKeys(), bind_namespace=bind, nonces=lambda n: nonces)
    raw = [p.SerializeToString(deterministic=True) for p in payloads]
    by_objects = [p.SerializeToString(deterministic=True) for p in reference.encode(payloads, "ns")]
    by_bytes = fast.encode_serialized(raw, "ns")
    assert by_bytes == by_objects
    decoded_fast = fast.decode_serialized(by_bytes, "ns")
    assert [Payload.FromString(p) for p in decoded_fast] == payloads
    assert reference.decode([Payload.FromString(p) for p in by_bytes], "ns") == payloads


def test_bytes_path_passes_through_and_keeps_unknown_fields() -> None:
    codec = EnvelopeCodec(StaticKeys())
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b"1").SerializeToString()
    future_field = plain + b"\x22\x03new"  # field 4, not known to this proto
    encoded = codec.encode_serialized([future_field], "ns")
    decoded = codec.decode_serialized([plain, *encoded], "ns")
    assert decoded[0] is plain
    assert decoded[1] == future_field
    assert DecodeResponse.FromString(wire.join_response(decoded)).payloads[1].data == b"1"


def test_bytes_path_refuses_payloads_that_are_not_payloads() -> None:
    codec = EnvelopeCodec(StaticKeys())
    with pytest.raises(PayloadError, match="^payload 1: not a serialized Payload$"):
        codec.encode_serialized([b"", b"\x0a\x05ab"], "ns")
    with pytest.raises(PayloadError, match="^payload 0: not a serialized Payload$"):
        codec.decode_serialized([b"\xff\xff"], "ns")
