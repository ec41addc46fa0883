"""Helpers for the gateway tests: the real HTTP gateway on 127.0.0.1 port 0 in front of a real
codec server, and a small HTTP client that shows every status and header.

The gateway fixtures run each test twice, once per upstream (``upstream_mode``): ``in-process``
(the server's own codec, as server.py runs it) and ``grpc`` (over a real gRPC channel, as the
standalone ``codec-gateway`` runs it). A test for one of them only says so with
``@pytest.mark.parametrize("upstream_mode", ["grpc"])``."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from codec_grpc.gateway import GatewayThread
from codec_grpc.gateway.upstreams import Credentials
from codec_grpc.runtime.gateway_process import GatewayAccess, gateway_thread
from codec_grpc.runtime.storage import external_storage
from codec_grpc.runtime.wiring import CodecApp, in_process_upstream
from codec_grpc.v1 import codec_pb2
from tests.support.fixtures import TEST_CREDENTIALS

UI_ORIGIN = "http://ui.example.test:8080"
UPSTREAM_MODES = ("in-process", "grpc")


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def plain_payload(data: str, encoding: str = "json/plain") -> dict[str, Any]:
    return {"metadata": {"encoding": b64(encoding)}, "data": b64(data)}


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        document = self.json()
        assert set(document) == {"error"}, document
        return str(document["error"])


class CountingExecutor(ThreadPoolExecutor):
    """The in-process upstream's threads, counting the calls they run (a key was not cached, or the
    request was large)."""

    def __init__(self) -> None:
        super().__init__(max_workers=16, thread_name_prefix="gateway-kms")
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class InProcess:
    """server.py's in-process upstream for ``app``, counting its calls and those run on a thread."""

    def __init__(self, app: CodecApp) -> None:
        self.executor = CountingExecutor()
        self.upstream = in_process_upstream(app, self.executor)
        self.calls = 0

    @property
    def counts(self) -> tuple[int, int]:
        """(calls answered on the event loop, calls run on a thread) so far."""
        return self.calls - self.executor.submitted, self.executor.submitted

    async def call(self, method: str, request: bytes, timeout: float, credentials: Credentials) -> bytes:
        self.calls += 1
        return await self.upstream.call(method, request, timeout, credentials)

    async def health(self) -> str:
        return await self.upstream.health()

    async def stats(self, namespace: str, timeout: float, credentials: Credentials) -> codec_pb2.StatsResponse:
        return await self.upstream.stats(namespace, timeout, credentials)

    async def close(self) -> None:
        await self.upstream.close()


@dataclass
class Gateway:
    port: int
    codec: Any  # conftest.RunningCodec
    alias: str
    arn: str
    in_process: InProcess | None = None  # None: the gateway calls gRPC
    registry: CollectorRegistry | None = None  # the gateway's metrics (and its storage's)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        chunked: bool = False,
    ) -> Reply:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent: Any = iter([body]) if chunked and body is not None else body
            conn.request(method, path, body=sent, headers=dict(headers or {}), encode_chunked=chunked)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def post(self, path: str, body: Any, **headers: str) -> Reply:
        sent = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
        return self.request("POST", path, body, sent)

    def encode(self, payloads: list[dict[str, Any]], namespace: str = "default") -> list[dict[str, Any]]:
        reply = self.post("/encode", {"payloads": payloads}, X_Namespace=namespace)
        assert reply.status == 200, reply.body
        return list(reply.json()["payloads"])

    def decode(self, payloads: list[dict[str, Any]], namespace: str = "default") -> list[dict[str, Any]]:
        reply = self.post("/decode", {"payloads": payloads}, X_Namespace=namespace)
        assert reply.status == 200, reply.body
        return list(reply.json()["payloads"])


def assert_cors(reply: Reply, origin: str = UI_ORIGIN) -> None:
    assert reply.headers.get("access-control-allow-origin") == origin
    assert reply.headers.get("access-control-allow-credentials") == "true"
    assert "Origin" in reply.headers.get("vary", "")


def assert_no_grant(reply: Reply) -> None:
    assert "access-control-allow-origin" not in reply.headers
    assert "access-control-allow-credentials" not in reply.headers


@pytest.fixture(params=UPSTREAM_MODES)
def upstream_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_gateway(
    codec_server: Callable[..., Any], make_key: Callable[..., tuple[str, str]], upstream_mode: str
) -> Iterator[Any]:
    """``start_gateway(**settings)``: a codec server with a fresh KMS key and the gateway in front,
    calling it in-process or over gRPC (``upstream_mode``); ``target`` sends the gRPC calls elsewhere."""
    threads: list[GatewayThread] = []

    def start(target: str | None = None, **settings: Any) -> Gateway:
        alias, arn = make_key()
        settings = {"KMS_KEY_ALIAS": alias, "CORS_ALLOWED_ORIGINS": UI_ORIGIN, **settings}
        running = codec_server(PORT=0, GATEWAY_HOST="127.0.0.1", **settings)
        in_process = None
        if upstream_mode == "in-process":
            assert target is None, "a gRPC target needs upstream_mode 'grpc'"
            in_process = InProcess(running.app)
        access = GatewayAccess(running.app.verifier, running.app.access)
        config = running.app.config
        registry = CollectorRegistry()
        # Built here only to give it test credentials; without EXTERNAL_STORAGE_BUCKETS it is None.
        storage = external_storage(config, registry, **TEST_CREDENTIALS)
        thread = gateway_thread(config, in_process or target or running.target, registry, access, storage)
        threads.append(thread)
        return Gateway(thread.start(), running, alias, arn, in_process, registry)

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway()


def post_for_error(port: int, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    """POST ``body`` to 127.0.0.1:``port`` (a 120 s timeout, for servers measured under load); the
    status and, unless it is 200, the answer's ``error``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=dict(headers))
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    return response.status, json.loads(answer).get("error", "") if response.status != 200 else ""
