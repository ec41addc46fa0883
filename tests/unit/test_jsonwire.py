"""The gateway's fast path (codec_grpc.gateway.jsonwire) against the reference path (json_format plus
the strict base64 checks of codec_grpc.gateway.body): same requests, same answers, same errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec_grpc.core.protowire import WireError, field, varint
from codec_grpc.gateway import jsonwire
from codec_grpc.gateway.body import BodyError
from codec_grpc.gateway.jsonwire import reference_request_bytes, request_bytes, response_document
from codec_grpc.v1 import codec_pb2
from tests.support.reference import payloads_json

# --- random request bodies: mostly what clients send, with every variation json_format accepts or refuses


def spelled(raw: bytes, spelling: str) -> str:
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {"std": std, "std-unpadded": std.rstrip("="), "url": url, "url-unpadded": url.rstrip("=")}[spelling]


canonical_base64 = st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode())
any_spelling = st.builds(
    spelled, st.binary(max_size=40), st.sampled_from(["std", "std-unpadded", "url", "url-unpadded"])
)
garbage_text = st.text(alphabet="AQYWJjR+/-_=é .\n", max_size=12)  # invalid base64, non-zero bits, mixed alphabets
base64_value: st.SearchStrategy[Any] = st.one_of(
    canonical_base64,
    canonical_base64,
    any_spelling,
    garbage_text,
    st.sampled_from(["json/plain", "YR==", "YQ=", None, 5, True, [], {}]),
)
metadata_key = st.one_of(st.sampled_from(["encoding", "encryption-key-id", "", "ключ", "\ud800", "a\x00b"]), st.text())
size_value = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**6).map(str), st.sampled_from([1.0, 1.5, "1e3", " 1", True])
)
external = st.lists(st.dictionaries(st.sampled_from(["sizeBytes", "size_bytes", "other"]), size_value, max_size=2))
simple_payload = st.fixed_dictionaries(
    {}, optional={"metadata": st.dictionaries(metadata_key, base64_value, max_size=3), "data": base64_value}
)
odd_payload = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.one_of(st.none(), st.just([]), st.dictionaries(st.text(max_size=3), base64_value, max_size=2)),
        "data": st.one_of(st.none(), base64_value),
        "externalPayloads": st.one_of(st.none(), external),
        "external_payloads": external,
        "unknown": st.integers(),
    },
)
payload_value = st.one_of(simple_payload, simple_payload, odd_payload, st.sampled_from([None, 1, "x", []]))
document = st.one_of(
    st.fixed_dictionaries({"payloads": st.lists(payload_value, max_size=4)}),
    st.fixed_dictionaries({}, optional={"payloads": st.one_of(st.none(), st.just({})), "other": st.integers()}),
    st.lists(st.integers(), max_size=1),
)
body = st.one_of(
    document.map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"", b"{", b"\xff\xfe", b'{"payloads": [}', b"null", b'"payloads"', b"[" * 100_000]),
)
namespace = st.one_of(st.just(""), st.just("default"), st.text(max_size=8).filter(lambda s: s.isascii()))


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        result = function(*args)
    except BodyError as exc:
        return "refused", str(exc)
    return "request", codec_pb2.EncodeRequest.FromString(result)


@settings(max_examples=600, deadline=None)
@given(body, namespace)
def test_fast_request_equals_reference_on_any_body(raw: bytes, ns: str) -> None:
    assert outcome(request_bytes, raw, ns) == outcome(reference_request_bytes, raw, ns)


simple_metadata = st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), canonical_base64, max_size=4)
simple_document = st.fixed_dictionaries(
    {
        "payloads": st.lists(
            st.fixed_dictionaries({}, optional={"metadata": simple_metadata, "data": canonical_base64}), max_size=5
        )
    }
)


@settings(max_examples=300, deadline=None)
@given(simple_document, namespace)
def test_the_simple_shape_takes_the_fast_path_and_equals_the_reference(document: dict[str, Any], ns: str) -> None:
    raw = json.dumps(document).encode()
    expected = reference_request_bytes(raw, ns)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(jsonwire, "reference_request_bytes", _must_not_be_called)
        fast = request_bytes(raw, ns)
    assert codec_pb2.EncodeRequest.FromString(fast) == codec_pb2.EncodeRequest.FromString(expected)


def _must_not_be_called(*args: Any) -> Any:
    raise AssertionError("the fast path fell back to the reference path")


def test_what_the_ui_sends_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonwire, "reference_request_bytes", _must_not_be_called)
    monkeypatch.setattr(jsonwire, "_reference_payload_json", _must_not_be_called)
    body = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "IjEi"}, {}]}
    request = codec_pb2.EncodeRequest.FromString(request_bytes(json.dumps(body).encode(), "orders"))
    assert request.namespace == "orders"
    assert request.payloads[0].metadata["encoding"] == b"json/plain"
    assert request.payloads[0].data == b'"1"'
    assert json.loads(response_json(codec_pb2.EncodeResponse(payloads=request.payloads).SerializeToString())) == body


@pytest.mark.parametrize("text", ["json/plain", "YR==", "YQ=", "YW Jj", "é", "-/8A", "YWJj\n"])
def test_garbage_base64_is_refused_with_the_reference_message(text: str) -> None:
    raw = json.dumps({"payloads": [{"metadata": {"encoding": text}}]}).encode()
    with pytest.raises(BodyError) as fast:
        request_bytes(raw, "")
    with pytest.raises(BodyError) as reference:
        reference_request_bytes(raw, "")
    assert str(fast.value) == str(reference.value)
    assert str(fast.value).startswith('payloads[0].metadata["encoding"]: not valid base64')


# --- random answers of the gRPC service, rendered by both paths


def payload_message(metadata: dict[str, bytes], data: bytes, sizes: list[int]) -> codec_pb2.Payload:
    payload = codec_pb2.Payload(metadata=metadata, data=data)
    for size in sizes:
        payload.external_payloads.add(size_bytes=size)
    return payload


payload_bytes = st.builds(
    payload_message,
    st.dictionaries(st.one_of(st.just("encoding"), st.text(max_size=10)), st.binary(max_size=30), max_size=4),
    st.binary(max_size=60),
    st.one_of(st.just([]), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2)),
).map(lambda message: message.SerializeToString())
extra_field = st.sampled_from(
    [
        b"",
        b"",
        field(1, field(1, b"encoding") + field(2, b"again")),  # a repeated map key: the last one wins
        field(2, b"later data"),  # a repeated field: the last one wins
        field(1, field(2, b"no key")),  # a map entry without its key
        field(9, b"zz"),  # unknown fields of every wire type
        varint(10 << 3) + varint(300),
        varint(11 << 3 | 5) + b"abcd",
        varint(12 << 3 | 1) + b"abcdefgh",
    ]
)
served_payload = st.builds(lambda raw, extra: raw + extra, payload_bytes, extra_field)


def strict_json(text: bytes) -> Any:
    """json.loads, refusing repeated keys (which json.loads would hide: the last one wins)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        assert len({key for key, _ in items}) == len(items), items
        return dict(items)

    return json.loads(text, object_pairs_hook=pairs)


@settings(max_examples=400, deadline=None)
@given(st.lists(served_payload, max_size=5))
def test_fast_answer_equals_message_to_dict(payloads: list[bytes]) -> None:
    response = b"".join(field(1, payload) for payload in payloads)
    expected = payloads_json(codec_pb2.EncodeResponse.FromString(response).payloads)
    assert strict_json(response_json(response)) == strict_json(expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(payload_bytes, max_size=5))
def test_answers_without_external_payloads_take_the_fast_path(payloads: list[bytes]) -> None:
    stripped = [codec_pb2.Payload.FromString(raw) for raw in payloads]
    for message in stripped:
        message.ClearField("external_payloads")
    response = codec_pb2.EncodeResponse(payloads=stripped).SerializeToString()
    expected = json.loads(payloads_json(stripped))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(jsonwire, "_reference_payload_json", _must_not_be_called)
        assert strict_json(response_json(response)) == expected


@pytest.mark.parametrize(
    "response",
    [
        field(1, b"\x12\x05ab"),  # data runs past the payload
        field(1, b"\x0a\x03\x0a\x05a"),  # a map entry runs past its end
        field(1, field(1, field(1, b"\xff"))),  # metadata key not UTF-8
        field(1, b"\x12"),  # truncated length
        b"\x0a\x05ab",  # payload runs past the response
    ],
)
def test_malformed_answers_are_refused(response: bytes) -> None:
    with pytest.raises(WireError):
        response_json(response)


def response_json(response: bytes) -> bytes:
    return response_document(response)[0]
