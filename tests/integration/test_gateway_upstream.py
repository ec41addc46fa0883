"""How the gateway answers when the gRPC side misbehaves: too large for gRPC, too slow, failing.
The slow and failing upstreams are small real gRPC servers on 127.0.0.1 speaking CodecService."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from codec_grpc.v1 import codec_pb2, codec_pb2_grpc
from tests.support.gateway import UI_ORIGIN, assert_cors, plain_payload


class MisbehavingCodec(codec_pb2_grpc.CodecServiceServicer):
    """Encode hangs until released; Decode fails with an unexpected exception."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Encode(self, request, context):
        self.release.wait(30)
        return codec_pb2.EncodeResponse(payloads=request.payloads)

    def Decode(self, request, context):
        raise RuntimeError("bug with a secret detail: key=0123456789abcdef")


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, MisbehavingCodec]]:
    servicer = MisbehavingCodec()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    codec_pb2_grpc.add_CodecServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    servicer.release.set()
    server.stop(grace=None).wait()


def test_batch_over_the_grpc_message_limit_is_413(start_gateway) -> None:
    gateway = start_gateway(GRPC_MAX_MESSAGE_BYTES=1024)
    reply = gateway.post("/encode", {"payloads": [plain_payload("1" * 2000)]}, Origin=UI_ORIGIN)
    assert reply.status == 413
    assert "GRPC_MAX_MESSAGE_BYTES" in reply.error
    assert_cors(reply)


@pytest.mark.parametrize("upstream_mode", ["grpc"])
def test_slow_upstream_is_504(start_gateway, misbehaving) -> None:
    target, _ = misbehaving
    gateway = start_gateway(target=target, GATEWAY_UPSTREAM_TIMEOUT=0.3)
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    assert reply.status == 504
    assert "GATEWAY_UPSTREAM_TIMEOUT" in reply.error
    assert_cors(reply)


@pytest.mark.parametrize("upstream_mode", ["grpc"])
def test_failing_upstream_is_502_without_details(start_gateway, misbehaving) -> None:
    target, _ = misbehaving
    gateway = start_gateway(target=target)
    reply = gateway.post("/decode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    assert reply.status == 502
    assert reply.error == "the codec service failed; its log has the details"
    assert b"0123456789abcdef" not in reply.body and b"Traceback" not in reply.body
    assert_cors(reply)


@pytest.mark.parametrize("upstream_mode", ["grpc"])
def test_malformed_answer_from_upstream_is_502(start_gateway) -> None:
    # A field that runs past the end of the response: no valid CodecService answer looks like this.
    handler = grpc.method_handlers_generic_handler(
        "codec_grpc.v1.CodecService",
        {"Decode": grpc.unary_unary_rpc_method_handler(lambda request, context: b"\x0a\x05ab")},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        gateway = start_gateway(target=f"127.0.0.1:{port}")
        reply = gateway.post("/decode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    finally:
        server.stop(grace=None).wait()
    assert reply.status == 502
    assert reply.error == "the codec service failed; its log has the details"
    assert_cors(reply)
