"""Unit tests of the gateway's body limits: a body over them is refused before json.loads builds
anything (each test below fails when ``body.load_document`` parses first and counts after), a body
within them parses as before, and large answers are written in parts that add up to the same bytes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec_grpc.core.protowire import WireError
from codec_grpc.gateway import body as body_module
from codec_grpc.gateway import jsonwire
from codec_grpc.gateway.body import (
    MAX_DEPTH,
    PRESCAN_BYTES,
    STRUCTURE_PER_PAYLOAD,
    STRUCTURE_SLACK,
    BodyError,
    BodyLimits,
    BodyTooLarge,
    load_document,
)
from codec_grpc.gateway.jsonwire import (
    document_chunks,
    document_size,
    reference_request_bytes,
    request_bytes,
    response_document,
    response_parts,
)
from codec_grpc.v1 import codec_pb2

LIMITS = BodyLimits(max_payloads=10_000)
SIXTEEN_MIB = 16 * 1024 * 1024


def fill(head: bytes, item: bytes, tail: bytes, size: int) -> bytes:
    return head + item * ((size - len(head) - len(tail)) // len(item)) + tail


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """json.loads must not run: the body is refused on its structure alone."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json.loads ran on a body the limits refuse")

    monkeypatch.setattr(json, "loads", refuse)


def test_sixteen_mib_of_empty_payloads_is_refused_as_too_many_payloads(no_parsing: None) -> None:
    raw = fill(b'{"payloads":[', b"{},", b"{}]}", SIXTEEN_MIB)
    with pytest.raises(BodyTooLarge) as raised:
        load_document(raw, LIMITS)
    assert str(raised.value) == (
        "more than 10000 payloads in one request; the limit is 10000 (MAX_PAYLOADS_PER_REQUEST): split the batch"
    )


def test_sixteen_mib_of_nested_arrays_is_refused_as_too_deep(no_parsing: None) -> None:
    raw = fill(b'{"payloads":[', b"[" * 500 + b"]" * 500 + b",", b"[]]}", SIXTEEN_MIB)
    with pytest.raises(BodyError) as raised:
        load_document(raw, LIMITS)
    assert not isinstance(raised.value, BodyTooLarge)  # a 400: not a payloads document at all
    assert str(raised.value) == f"body is not a payloads document: nested deeper than {MAX_DEPTH} levels"


def test_sixteen_mib_of_metadata_entries_is_refused_as_too_complex(no_parsing: None) -> None:
    entries = b"".join(b'"%x":"",' % index for index in range(1_300_000))
    raw = b'{"payloads":[{"metadata":{' + entries + b'"":""}}]}'
    with pytest.raises(BodyTooLarge) as raised:
        load_document(raw, LIMITS)
    assert str(raised.value).startswith(f"request body too complex: more than {LIMITS.max_structure} brackets")
    assert "MAX_PAYLOADS_PER_REQUEST" in str(raised.value)


def test_utf16_is_measured_too(no_parsing: None) -> None:
    raw = fill(b'{"payloads":[', b"{},", b"{}]}", 4 * 1024 * 1024).decode().encode("utf-16")
    with pytest.raises(BodyTooLarge, match=r"^more than 10000 payloads"):
        load_document(raw, LIMITS)


def structure(raw: bytes) -> int:
    return len(raw.translate(None, bytes(set(range(256)) - set(b"[]{},:"))))


def test_the_structure_budget_holds_exactly_above_the_prescan_size() -> None:
    """Up to ``max_structure`` brackets, braces, commas and colons parse; more are refused unparsed."""
    limits = BodyLimits(max_payloads=1)
    assert limits.max_structure == STRUCTURE_PER_PAYLOAD + STRUCTURE_SLACK
    padding = base64.b64encode(b"\0" * (PRESCAN_BYTES * 3 // 4)).decode()  # the body must be a large one

    def body(entries: int) -> bytes:
        metadata = {f"k{index}": "" for index in range(entries)}  # distinct keys: one object each
        return json.dumps({"payloads": [{"metadata": metadata, "data": padding}]}, separators=(",", ":")).encode()

    # {"payloads":[{"metadata":{…},"data":"…"}]}: 11, and 2 per entry (its colon, a comma)
    entries = (limits.max_structure - 11) // 2
    within, over = body(entries), body(entries + 1)
    assert len(within) > PRESCAN_BYTES
    assert structure(within) <= limits.max_structure < structure(over)
    assert len(load_document(within, limits)["payloads"][0]["metadata"]) == entries
    with pytest.raises(BodyTooLarge, match="^request body too complex"):
        load_document(over, limits)


def test_structure_inside_strings_does_not_count() -> None:
    """A metadata key full of commas, braces, escaped quotes and backslashes is one string: the walk
    jumps over it, so the body parses (the cheap count over-estimates, the walk settles it)."""
    key = ('\\"{},[]:' * 40_000) + "\\\\" + '"' + "},{" * 1000
    raw = json.dumps({"payloads": [{"metadata": {key: "YQ=="}}]}).encode()
    assert len(raw) > PRESCAN_BYTES
    assert raw.count(b",") > BodyLimits(max_payloads=1).max_structure
    limits = BodyLimits(max_payloads=1)
    request = codec_pb2.EncodeRequest.FromString(request_bytes(raw, "ns", limits))
    assert dict(request.payloads[0].metadata) == {key: b"a"}
    assert request_bytes(raw, "ns", limits) == reference_request_bytes(raw, "ns", limits)


def test_an_unterminated_string_is_left_to_the_parser_to_word() -> None:
    raw = b'{"payloads":[{},"' + b"{}," * 200_000
    with pytest.raises(BodyError, match=r"^body is not valid JSON: Unterminated string"):
        load_document(raw, BodyLimits(max_payloads=10))


@pytest.mark.parametrize("count", [11, 100, 4000])
def test_too_many_payloads_are_counted_before_any_is_converted(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths refuse alike, before a payload is looked at: counted after parsing a body that
    fits the structure budget (exactly), and before parsing one that does not."""
    monkeypatch.setattr(jsonwire, "_simple_payload", _must_not_be_called)
    monkeypatch.setattr(body_module, "_check_payload", _must_not_be_called)
    payload = {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": base64.b64encode(b"x" * 40).decode()}
    raw = json.dumps({"payloads": [payload] * count}).encode()
    limits = BodyLimits(max_payloads=10)
    if structure(raw) <= limits.max_structure:
        expected = f"{count} payloads in one request; the limit is 10 (MAX_PAYLOADS_PER_REQUEST): split the batch"
    else:
        assert len(raw) > PRESCAN_BYTES
        expected = "more than 10 payloads in one request; the limit is 10 (MAX_PAYLOADS_PER_REQUEST): split the batch"
    for function in (request_bytes, reference_request_bytes):
        with pytest.raises(BodyTooLarge) as raised:
            function(raw, "", limits)
        assert str(raised.value) == expected


def test_a_bytearray_body_is_emptied_once_decoded() -> None:
    raw = bytearray(json.dumps({"payloads": [{"data": "YQ=="}]}).encode())
    assert codec_pb2.EncodeRequest.FromString(request_bytes(raw, "")).payloads[0].data == b"a"
    assert raw == bytearray()


def test_usual_bodies_are_not_prescanned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI's and CLI's batches (100 payloads of 1 KiB: 140 KiB) cost no more than before."""
    monkeypatch.setattr(body_module, "_prescan", _must_not_be_called)
    payload = {"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": base64.b64encode(b"x" * 1024).decode()}
    raw = json.dumps({"payloads": [payload] * 100}).encode()
    assert len(raw) < PRESCAN_BYTES
    assert len(codec_pb2.EncodeRequest.FromString(request_bytes(raw, "")).payloads) == 100


def _must_not_be_called(*args: Any) -> Any:
    raise AssertionError("called on a body that should have been refused first")


# --- large answers, in parts


def _response(payloads: list[codec_pb2.Payload]) -> bytes:
    return codec_pb2.EncodeResponse(payloads=payloads).SerializeToString()


metadata = st.dictionaries(st.text(max_size=6), st.binary(max_size=12), max_size=3)


def _payload(entries: dict[str, bytes], data: bytes, sizes: list[int]) -> codec_pb2.Payload:
    payload = codec_pb2.Payload(metadata=entries, data=data)
    for size in sizes:
        payload.external_payloads.add(size_bytes=size)
    return payload


payload_message = st.builds(
    _payload,
    metadata,
    st.binary(max_size=40),
    st.lists(st.integers(min_value=0, max_value=2**40), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(payload_message, max_size=12), st.integers(min_value=1, max_value=200))
def test_answers_in_parts_are_the_answer(payloads: list[codec_pb2.Payload], chunk_bytes: int) -> None:
    response = _response(payloads)
    whole, count = response_document(response)
    rendered, parts_count = response_parts(response)
    assert parts_count == count == len(payloads)
    assert document_size(rendered) == len(whole)
    assert b"".join(document_chunks(rendered, chunk_bytes)) == whole
    assert rendered == [b""] * len(payloads)  # each part dropped once sent


def test_an_answer_with_other_fields_takes_the_general_path() -> None:
    response = _response([codec_pb2.Payload(data=b"a")]) + b"\x12\x02ns" + _response([codec_pb2.Payload(data=b"b")])
    rendered, count = response_parts(response)
    assert count == 2
    assert b"".join(document_chunks(rendered)) == response_document(response)[0]


def test_a_truncated_answer_is_a_wire_error() -> None:
    response = _response([codec_pb2.Payload(data=b"abc")])[:-1]
    with pytest.raises(WireError):
        response_parts(response)
