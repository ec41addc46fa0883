"""Oversize requests, many in a row and at once: refused with RESOURCE_EXHAUSTED (gRPC) or 413
(HTTP), and the server stays healthy and serves the next normal call."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from codec_grpc.service import SERVICE_NAME
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec
from tests.support.fuzzing import assert_healthy
from tests.support.gateway import Gateway, plain_payload

LIMIT = 64 * 1024


def test_many_oversize_grpc_requests_then_a_normal_call(codec_server: Callable[..., RunningCodec], make_key: Any):
    server = codec_server(KMS_KEY_ALIAS=make_key()[0], GRPC_MAX_MESSAGE_BYTES=LIMIT)
    big = pb.EncodeRequest(payloads=[pb.Payload(data=b"x" * LIMIT)]).SerializeToString()
    calls = [server.channel.unary_unary(f"/{SERVICE_NAME}/{m}", None, None) for m in ("Encode", "Decode", "Stats")]

    def oversize(index: int) -> grpc.StatusCode:
        try:
            calls[index % 3](big, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert {oversize(i) for i in range(30)} == {grpc.StatusCode.RESOURCE_EXHAUSTED}  # in a row
    with ThreadPoolExecutor(8) as pool:  # and at once
        assert set(pool.map(oversize, range(60))) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert_healthy(server)
    just_under = pb.EncodeRequest(payloads=[pb.Payload(data=b"x" * (LIMIT - 64))])
    assert len(server.stub.Encode(just_under, timeout=30).payloads) == 1


def test_many_oversize_http_bodies_then_a_normal_call(start_gateway: Callable[..., Gateway]):
    gateway = start_gateway(GATEWAY_MAX_BODY_BYTES=4096)
    body = json.dumps({"payloads": [plain_payload("x" * 5000)]})
    headers = {"Content-Type": "application/json"}

    def oversize(index: int) -> int:
        reply = gateway.request("POST", ("/encode", "/decode")[index % 2], body, headers, chunked=index % 3 == 0)
        assert "GATEWAY_MAX_BODY_BYTES" in reply.error
        return reply.status

    assert {oversize(i) for i in range(30)} == {413}
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(oversize, range(60))) == {413}
    assert gateway.request("GET", "/health").status == 200
    assert gateway.decode(gateway.encode([plain_payload('"fine"')])) == [plain_payload('"fine"')]


def test_a_huge_declared_body_is_refused_before_it_is_sent(start_gateway: Callable[..., Gateway]):
    """A client announcing 1 GiB hears 413 at once; the gateway does not wait for or buffer it."""
    gateway = start_gateway(GATEWAY_MAX_BODY_BYTES=4096)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n" + b"{" * 1000
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert gateway.request("GET", "/health").status == 200
