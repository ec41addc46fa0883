"""Bodies built to exhaust memory, and the gRPC server's bounds (issue 13, item 5).

Over HTTP: a 4 KiB gzip body that inflates to 4 MiB of ``{},`` (it raised server.py's resident
memory from 123 to 423 MiB before its 413), 16 MiB of empty payloads, of nested arrays and of
metadata entries: each refused before it is inflated or parsed, with server.py's peak resident
memory measured from /proc. Over gRPC: calls beyond GRPC_MAX_CONCURRENT_RPCS, metadata beyond
GRPC_MAX_METADATA_BYTES, reflection switched off. ``python -m bench.bombs`` prints the figures.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from codec_grpc.gateway import GatewayThread
from codec_grpc.gateway.body import MAX_DEPTH
from codec_grpc.gateway.runner import serve
from codec_grpc.rpc.server import CONCURRENT_RPCS_PER_WORKER, ServerOptions
from codec_grpc.service import SERVICE_NAME
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import REGION, RunningCodec, free_port, wait_for_port
from tests.support.gateway import UI_ORIGIN, Gateway, assert_cors, plain_payload, post_for_error
from tests.support.jwks import AUDIENCE, ISSUER, Jwks
from tests.support.server_process import DelayingKmsProxy, ServerProcess

MiB = 1024 * 1024
SIXTEEN_MIB = 16 * MiB  # GATEWAY_MAX_BODY_BYTES's default
JSON = {"Content-Type": "application/json"}


def fill(head: bytes, item: bytes, tail: bytes, size: int = SIXTEEN_MIB) -> bytes:
    return head + item * ((size - len(head) - len(tail)) // len(item)) + tail


def empty_payloads(size: int = SIXTEEN_MIB) -> bytes:
    return fill(b'{"payloads":[', b"{},", b"{}]}", size)


def nested_arrays() -> bytes:
    """Arrays nested 500 deep (json.loads would build them: below its recursion limit), over and over."""
    return fill(b'{"payloads":[', b"[" * 500 + b"]" * 500 + b",", b"[]]}")


def deep_array() -> bytes:
    half = (SIXTEEN_MIB - 32) // 2
    return b'{"payloads":[' + b"[" * half + b"]" * half + b"]}"


def metadata_entries() -> bytes:
    """One payload with 1.3 million metadata entries, every key distinct."""
    head, tail = b'{"payloads":[{"metadata":{', b'"":""}}]}'
    entries, size, index = [], len(head) + len(tail), 0
    while size + 16 <= SIXTEEN_MIB:
        entry = b'"%x":"",' % index
        entries.append(entry)
        size += len(entry)
        index += 1
    return head + b"".join(entries) + tail


GZIP_BOMB = gzip.compress(empty_payloads(4 * MiB), 9)  # the issue's body: 4,120 bytes


# --- server.py as its own process, its memory read from /proc


@dataclass
class ServerMemory:
    pid: int
    port: int

    def status(self) -> dict[str, float]:
        """VmRSS and VmHWM (the peak) in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
        return fields

    def reset_peak(self) -> float:
        """Start a new peak (Linux resets VmHWM to VmRSS on "5" in clear_refs); the RSS now."""
        with contextlib.suppress(OSError):  # not allowed here: only a peak above the earlier one shows
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.status()["VmHWM"]

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return post_for_error(self.port, "/encode", body, {**JSON, **(headers or {})})


@pytest.fixture
def server_memory(
    server_script_env: dict[str, str], kms_endpoint: str, make_key: Callable[..., tuple[str, str]]
) -> Callable[..., Any]:
    @contextmanager
    def start(**settings: str) -> Iterator[ServerMemory]:
        alias, _ = make_key()
        port = free_port()
        env = {
            **server_script_env,
            "AWS_ENDPOINT_URL_KMS": kms_endpoint,
            "AWS_REGION": REGION,
            "KMS_KEY_ALIAS": alias,
            "GRPC_PORT": "0",
            "PORT": str(port),
            "METRICS_ENABLED": "false",
            "LOG_LEVEL": "warning",
            **settings,
        }
        server = ServerProcess(env)
        try:
            wait_for_port(port, proc=server.proc)
            memory = ServerMemory(server.proc.pid, port)
            # A first call: the data key cached, the code paths warm.
            assert memory.post(json.dumps({"payloads": [plain_payload("{}")]}).encode()) == (200, "")
            yield memory
        finally:
            server.proc.terminate()
            try:
                server.finish(timeout=30)
            finally:
                server.kill()

    return start


def test_a_4_kib_gzip_bomb_leaves_the_server_memory_as_it_was(server_memory: Callable[..., Any]) -> None:
    """The issue's figure was +300 MiB (123 -> 423 MiB) for this body; now it is refused unread."""
    assert len(GZIP_BOMB) < 5000
    with server_memory() as server:
        before = server.reset_peak()
        for coding in ("gzip", "x-gzip", "deflate"):
            sent = GZIP_BOMB if coding != "deflate" else zlib.compress(empty_payloads(4 * MiB), 9)
            status, error = server.post(sent, {"Content-Encoding": coding})
            assert status == 415, error
            assert f"Content-Encoding {coding!r} is not accepted" in error
        grown = server.status()["VmHWM"] - before
    assert grown < 4, f"the peak grew by {grown:.1f} MiB"


@pytest.mark.parametrize(
    ("make", "status", "error"),
    [
        (empty_payloads, 413, "more than 10000 payloads in one request; the limit is 10000 (MAX_PAYLOADS_PER_REQUEST)"),
        (nested_arrays, 400, f"body is not a payloads document: nested deeper than {MAX_DEPTH} levels"),
        (deep_array, 400, f"body is not a payloads document: nested deeper than {MAX_DEPTH} levels"),
        (metadata_entries, 413, "request body too complex: more than 484096 brackets, braces, commas and colons"),
    ],
    ids=["empty-payloads", "nested-arrays", "deep-array", "metadata-entries"],
)
def test_sixteen_mib_bombs_are_refused_before_parsing(
    server_memory: Callable[..., Any], make: Callable[[], bytes], status: int, error: str
) -> None:
    """Before: 1,260 MiB peak for the empty payloads, 1,680 MiB for the nested arrays, 475 MiB for
    the metadata entries (accepted, and encrypted). Now the body and its structure: about 32 MiB."""
    body = make()
    assert SIXTEEN_MIB - 1024 <= len(body) <= SIXTEEN_MIB
    with server_memory() as server:
        before = server.reset_peak()
        started = time.monotonic()
        answer = server.post(body)
        seconds = time.monotonic() - started
        grown = server.status()["VmHWM"] - before
    assert answer[0] == status, answer
    assert answer[1].startswith(error), answer
    assert grown < 48, f"the peak grew by {grown:.1f} MiB"
    assert seconds < 10, seconds  # before: 10 to 60 s of CPU


def test_sixteen_mib_of_valid_payloads_peaks_well_inside_the_chart_limit(server_memory: Callable[..., Any]) -> None:
    """The largest valid body: 10,000 payloads just under 16 MiB. It peaked 150 MiB above the
    server's resident memory (242 MiB, over the chart's 192 MiB); now about 87 MiB above (180 MiB)."""
    data = base64.b64encode(b"x" * 1210).decode()
    body = json.dumps({"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": data}] * 10_000}).encode()
    assert 16 * MiB - 100_000 < len(body) <= SIXTEEN_MIB
    with server_memory() as server:
        before = server.reset_peak()
        status, error = server.post(body)
        grown = server.status()["VmHWM"] - before
    assert status == 200, error
    assert grown < 115, f"the peak grew by {grown:.1f} MiB"


# --- the gateway in front of a codec server (both upstreams: in-process and over gRPC)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "compress", "gzip, identity", "GZip"])
def test_compressed_bodies_are_415_before_reading_them(start_gateway: Callable[..., Gateway], coding: str) -> None:
    gateway = start_gateway()
    headers = {**JSON, "Origin": UI_ORIGIN, "Content-Encoding": coding}
    reply = gateway.request("POST", "/encode", GZIP_BOMB, headers)
    assert reply.status == 415
    assert reply.error == (f"Content-Encoding {coding!r} is not accepted: send the JSON body uncompressed (identity)")
    assert_cors(reply)
    if gateway.in_process is not None:
        assert gateway.in_process.calls == 0


def test_identity_encoding_is_accepted(gateway: Gateway) -> None:
    body = {"payloads": [plain_payload("{}")]}
    for coding in ("identity", "Identity", ""):
        assert gateway.request("POST", "/encode", body, {**JSON, "Content-Encoding": coding}).status == 200


def test_the_runner_never_inflates_a_body() -> None:
    """Below the app's 415: aiohttp's own decompression is off, so no handler ever gets an inflated
    body, whatever it reads."""

    async def length(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    class NoUpstream:
        async def close(self) -> None:
            pass

    app = web.Application(client_max_size=32 * MiB)
    app.router.add_post("/", length)
    thread = GatewayThread(lambda: serve(app, NoUpstream(), "127.0.0.1", 0))  # type: ignore[arg-type]
    port = thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/", body=GZIP_BOMB, headers={"Content-Encoding": "gzip"})
        answer = connection.getresponse().read()
        connection.close()
    finally:
        thread.stop()
    assert int(answer) == len(GZIP_BOMB)


def test_too_many_payloads_are_refused_before_the_codec_is_called(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(MAX_PAYLOADS_PER_REQUEST=3)
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")] * 4}, Origin=UI_ORIGIN)
    assert reply.status == 413
    assert reply.error == "4 payloads in one request; the limit is 3 (MAX_PAYLOADS_PER_REQUEST): split the batch"
    assert_cors(reply)
    # Refused by the gateway, not by the service behind it (which words it alike).
    if gateway.in_process is not None:
        assert gateway.in_process.calls == 0
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": "Encode", "grpc_type": "unary"}
    assert not gateway.codec.app.registry.get_sample_value("grpc_server_started_total", labels)


@pytest.mark.parametrize(
    ("make", "status", "error"),
    [
        (empty_payloads, 413, "more than 10000 payloads in one request; the limit is 10000 (MAX_PAYLOADS_PER_REQUEST)"),
        (nested_arrays, 400, f"body is not a payloads document: nested deeper than {MAX_DEPTH} levels"),
        (metadata_entries, 413, "request body too complex: more than 484096 brackets"),
    ],
    ids=["empty-payloads", "nested-arrays", "metadata-entries"],
)
def test_sixteen_mib_bombs_are_refused_by_either_gateway(
    start_gateway: Callable[..., Gateway], make: Callable[[], bytes], status: int, error: str
) -> None:
    gateway = start_gateway()
    started = time.monotonic()
    reply = gateway.request("POST", "/encode", make(), {**JSON, "Origin": UI_ORIGIN})
    assert time.monotonic() - started < 10
    assert reply.status == status
    assert reply.error.startswith(error)
    assert_cors(reply)


def test_a_large_answer_is_sent_in_parts_with_its_length(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway()
    payloads = [plain_payload(f'"{index:04}' + "x" * 1000 + '"') for index in range(3000)]
    encoded = gateway.post("/encode", {"payloads": payloads})
    assert encoded.status == 200
    assert int(encoded.headers["content-length"]) == len(encoded.body) > 4 * MiB
    assert encoded.headers["content-type"].startswith("application/json")
    decoded = gateway.post("/decode", encoded.body)
    assert decoded.status == 200
    assert decoded.json() == {"payloads": payloads}


# --- the gRPC server's bounds


@pytest.fixture
def delaying_kms(kms_endpoint: str) -> Iterator[DelayingKmsProxy]:
    proxy = DelayingKmsProxy(kms_endpoint)
    yield proxy
    proxy.close()


def encode_request(text: str = "1") -> pb.EncodeRequest:
    return pb.EncodeRequest(payloads=[pb.Payload(metadata={"encoding": b"json/plain"}, data=text.encode())])


def test_calls_beyond_the_concurrency_limit_get_resource_exhausted(
    codec_server: Callable[..., RunningCodec],
    make_key: Callable[..., tuple[str, str]],
    delaying_kms: DelayingKmsProxy,
) -> None:
    """One thread, two calls in progress at most: one running (held in KMS), one waiting for the
    thread; a third is refused at once instead of waiting behind them."""
    alias, _ = make_key()
    running = codec_server(
        KMS_KEY_ALIAS=alias,
        AWS_ENDPOINT_URL_KMS=delaying_kms.url,
        KMS_READ_TIMEOUT=60,
        GRPC_MAX_WORKERS=1,
        GRPC_MAX_CONCURRENT_RPCS=2,
    )
    delaying_kms.hold("GenerateDataKey")
    first = running.stub.Encode.future(encode_request("1"), timeout=60)
    assert delaying_kms.arrived.wait(30)
    second = running.stub.Encode.future(encode_request("2"), timeout=60)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            running.stub.Encode(encode_request("3"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Concurrent RPC limit exceeded" in (refused.value.details() or "")
    finally:
        delaying_kms.release()
    assert len(first.result().payloads) == len(second.result().payloads) == 1
    assert len(running.stub.Encode(encode_request("4"), timeout=30).payloads) == 1  # the slots are free again


def test_the_concurrency_limit_follows_the_threads_unless_set() -> None:
    assert ServerOptions(max_workers=16).concurrent_rpcs == CONCURRENT_RPCS_PER_WORKER * 16 == 256
    assert ServerOptions(max_workers=16, max_concurrent_rpcs=5).concurrent_rpcs == 5


def test_metadata_over_the_limit_is_resource_exhausted(
    codec_server: Callable[..., RunningCodec], make_key: Callable[..., tuple[str, str]]
) -> None:
    alias, _ = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias, GRPC_MAX_METADATA_BYTES=4096)
    # gRPC's own default would take 6 KiB (it refuses only some calls between 8 and 16 KiB).
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.Encode(encode_request(), metadata=[("x-padding", "a" * 6000)], timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "metadata size exceeds" in (refused.value.details() or "")
    assert len(running.stub.Encode(encode_request(), metadata=[("x-padding", "a" * 3000)], timeout=10).payloads) == 1


def test_a_bearer_token_of_several_kib_fits_the_default_every_time(
    codec_server: Callable[..., RunningCodec], make_key: Callable[..., tuple[str, str]], jwks: Jwks
) -> None:
    """GRPC_MAX_METADATA_BYTES (16 KiB) is gRPC's soft and hard limit at once: a 12 KiB token (a JWT
    with 400 groups) always passes, where gRPC's default (soft 8 KiB) refuses some calls at random;
    a 20 KiB one never does."""
    alias, _ = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias, AUTH_JWKS_URL=jwks.url, AUTH_ISSUER=ISSUER, AUTH_AUDIENCE=AUDIENCE)
    groups = [f"team-{index:04}-engineering" for index in range(400)]
    token = jwks.token(jwks.keys[0], groups=groups)
    assert 11_000 < len(token) < 14_000
    for _ in range(30):
        answer = running.stub.Encode(encode_request(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
        assert len(answer.payloads) == 1
    huge = jwks.token(jwks.keys[0], groups=groups * 2)
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.Encode(encode_request(), metadata=[("authorization", f"Bearer {huge}")], timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_reflection_off_leaves_health_on(
    codec_server: Callable[..., RunningCodec], make_key: Callable[..., tuple[str, str]]
) -> None:
    alias, _ = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias, GRPC_REFLECTION="false")
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(running.stub.Encode(encode_request(), timeout=10).payloads) == 1
