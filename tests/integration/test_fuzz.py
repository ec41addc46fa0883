"""Fuzzing the real servers: random, truncated and mutated requests over gRPC (raw bytes) and over the
HTTP gateway (bodies, headers, paths, methods, raw request bytes). Whatever arrives, the answer is a
clear client error or a success: never UNKNOWN or INTERNAL on gRPC, never ≥ 500 over HTTP, and the
server is healthy afterwards. `make fuzz` runs the same tests with FUZZ_EXAMPLES examples each."""

from __future__ import annotations

import base64
import json
import socket
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from codec_grpc.service import SERVICE_NAME
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec
from tests.support.fuzzing import assert_healthy, examples
from tests.support.gateway import Gateway, plain_payload

pytestmark = pytest.mark.fuzz

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed request with a few bytes flipped, cut, inserted, deleted or repeated."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "repeat", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A, 0x22]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def _seeds(server: RunningCodec) -> list[bytes]:
    """Valid requests: encoded payloads of two namespaces, plain payloads, a Stats request."""
    plain = [pb.Payload(metadata={"encoding": b"json/plain"}, data=b'{"n": %d}' % i) for i in range(3)]
    encoded = list(server.stub.Encode(pb.EncodeRequest(payloads=plain)).payloads)
    other = list(server.stub.Encode(pb.EncodeRequest(payloads=plain[:1], namespace="other")).payloads)
    return [
        pb.DecodeRequest(payloads=encoded).SerializeToString(),
        pb.DecodeRequest(payloads=[*other, *encoded[:1]], namespace="other").SerializeToString(),
        pb.EncodeRequest(payloads=plain, namespace="default").SerializeToString(),
        pb.StatsRequest(namespace="default").SerializeToString(),
    ]


@pytest.fixture
def fuzzed_server(codec_server: Callable[..., RunningCodec], make_key: Any) -> RunningCodec:
    return codec_server(KMS_KEY_ALIAS=make_key()[0], MAX_PAYLOADS_PER_REQUEST=50)


namespaces = st.one_of(st.none(), st.text(string.printable.strip() + " ", max_size=30))


def test_grpc_survives_random_and_mutated_requests(fuzzed_server: RunningCodec) -> None:
    seeds = _seeds(fuzzed_server)
    methods = {
        name: fuzzed_server.channel.unary_unary(f"/{SERVICE_NAME}/{name}", None, None)
        for name in ("Encode", "Decode", "Stats")
    }
    seen: dict[grpc.StatusCode, int] = {}

    @examples(300)
    @given(
        st.sampled_from(sorted(methods)),
        st.one_of(st.binary(max_size=600), mutated(seeds)),
        namespaces,
    )
    def check(method: str, request: bytes, namespace: str | None) -> None:
        metadata = None if namespace is None else (("x-namespace", namespace),)
        try:
            methods[method](request, timeout=30, metadata=metadata)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in ALLOWED, f"{method}: {code.name}: {exc.details()}"
        seen[code] = seen.get(code, 0) + 1

    check()
    assert_healthy(fuzzed_server)
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0  # the fuzzing reached the service's own checks


def test_stats_refuses_garbage_as_invalid_argument(fuzzed_server: RunningCodec) -> None:
    stats = fuzzed_server.channel.unary_unary(f"/{SERVICE_NAME}/Stats", None, None)
    with pytest.raises(grpc.RpcError) as caught:
        stats(b"\x0a\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "malformed request: not a serialized StatsRequest"


# --- HTTP ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
base64ish = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.text(max_size=30),
)
payload_documents = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.dictionaries(st.text(max_size=25), st.one_of(base64ish, json_values), max_size=5),
        "data": st.one_of(base64ish, json_values),
        "externalPayloads": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.one_of(payload_documents, json_values), max_size=4).map(
        lambda ps: json.dumps({"payloads": ps}).encode()
    ),
)
header_text = st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=40)
paths = st.one_of(
    st.sampled_from(["/encode", "/decode", "/default/decode", "/codec/encode", "/health", "/stats", "/download"]),
    st.lists(st.text(max_size=12), max_size=4).map(lambda parts: "/" + "/".join(quote(p, safe="") for p in parts)),
)
methods = st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW"])


def _gateway_seeds(gateway: Gateway) -> list[bytes]:
    encoded = gateway.encode([plain_payload('"a"'), plain_payload('"b"')])
    return [
        json.dumps({"payloads": encoded}).encode(),
        json.dumps({"payloads": [plain_payload('"c"')]}).encode(),
    ]


def test_http_gateway_survives_random_and_mutated_requests(gateway: Gateway) -> None:
    seeds = _gateway_seeds(gateway)
    statuses: dict[int, int] = {}

    @examples(200)
    @given(
        methods,
        paths,
        st.one_of(bodies, mutated(seeds)),
        st.dictionaries(
            st.sampled_from(["X-Namespace", "Content-Type", "Origin", "Authorization", "Content-Encoding", "Accept"]),
            header_text,
            max_size=3,
        ),
    )
    def check(method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        reply = gateway.request(method, path, body, headers)
        assert reply.status < 500, f"{method} {path} {headers}: {reply.status} {reply.body[:300]!r}"
        if reply.status >= 400 and method != "HEAD":
            if reply.headers.get("content-type", "").startswith("application/json"):
                assert reply.error  # a JSON error document for a person
            else:  # refused by aiohttp's HTTP parser (an unknown method) before any handler
                assert reply.status == 400 and method == "BREW", reply.body
        statuses[reply.status] = statuses.get(reply.status, 0) + 1

    check()
    assert statuses.get(400, 0) > 0 and statuses.get(200, 0) > 0
    assert gateway.request("GET", "/health").status == 200
    assert gateway.decode(gateway.encode([plain_payload('"after"')])) == [plain_payload('"after"')]


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_gateway_survives_malformed_http(gateway: Gateway) -> None:
    """Bytes that are not quite HTTP: aiohttp's parser answers 4xx (or closes), never 5xx."""
    valid = (
        b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
        b'{"payloads": []}'
    )

    @examples(150)
    @given(st.one_of(st.binary(max_size=300), mutated([valid])))
    def check(request: bytes) -> None:
        answer = _raw_exchange(gateway.port, request)
        for line in answer.split(b"\r\n"):
            if line.startswith(b"HTTP/1."):
                status = int(line.split()[1])
                assert status < 500, answer[:300]

    check()
    assert gateway.request("GET", "/health").status == 200
    assert gateway.decode(gateway.encode([plain_payload('"after"')])) == [plain_payload('"after"')]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("encryption-key-id", b"arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"),
        ("encryption-key-id", b"alias/nothing"),
        ("encryption-key-id", b"x" * 3000),
        ("encryption-key-id", "été".encode()),
        ("encrypted-data-key", b"x" * 7000),
        ("encrypted-data-key", b"x"),
        ("encrypted-data-key", bytes(200)),
    ],
)
def test_altered_envelope_reaching_kms_is_a_client_error(gateway: Gateway, name: str, value: bytes) -> None:
    """The payload's fault, so 4xx, and no fail-fast pause: the next payload of a key not cached
    decodes at once. Key ids are refused before KMS; KMS answers the altered data keys (cannot unwrap)."""
    stub = gateway.codec.stub
    (payload,) = stub.Encode(pb.EncodeRequest(payloads=[pb.Payload(data=b"x")])).payloads
    payload.metadata[name] = value
    with pytest.raises(grpc.RpcError) as caught:
        stub.Decode(pb.DecodeRequest(payloads=[payload]))
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    # An altered key id is refused before KMS (not a key ARN; or not on the allowlist); an altered data
    # key reaches KMS, which refuses it.
    expected = (
        ("payload 0: metadata 'encryption-key-id' is not a KMS key ARN", "payload 0: KMS key arn:")
        if name == "encryption-key-id"
        else ("payload 0: KMS Decrypt with key ",)
    )
    assert (caught.value.details() or "").startswith(expected)
    document = {"payloads": [json_format.MessageToDict(payload)]}
    reply = gateway.post("/decode", document, X_Namespace="default")
    assert reply.status in (400, 403), reply.body
    assert gateway.codec.app.provider.stats().short_circuited == 0
