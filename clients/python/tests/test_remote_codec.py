"""RemotePayloadCodec against a fake CodecService that records what it receives.

The fake is a real gRPC server on loopback; it lets the tests see the exact
requests and answer what the real service never would (wrong counts, any status).
It speaks through the client's own generated messages, so nothing of the server is needed.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from temporalio.api.common.v1 import Payload

from temporal_codec_client import (
    CodecInternalError,
    CodecPermissionError,
    CodecRejectedError,
    CodecServiceError,
    CodecUnavailableError,
    RemotePayloadCodec,
)
from temporal_codec_client.v1 import codec_pb2

Answer = Callable[[codec_pb2.EncodeRequest, grpc.ServicerContext], codec_pb2.EncodeResponse]


def echo(request: codec_pb2.EncodeRequest, context: grpc.ServicerContext) -> codec_pb2.EncodeResponse:
    return codec_pb2.EncodeResponse(payloads=request.payloads)


@dataclass
class FakeCodecService:
    """Answers Encode and Decode with ``answer``; records every request it gets."""

    answer: Answer = echo
    calls: list[tuple[str, codec_pb2.EncodeRequest, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def handler(self, method: str) -> grpc.RpcMethodHandler[codec_pb2.EncodeRequest, codec_pb2.EncodeResponse]:
        def serve(request: codec_pb2.EncodeRequest, context: grpc.ServicerContext) -> codec_pb2.EncodeResponse:
            metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
            self.calls.append((method, request, metadata))
            return self.answer(request, context)

        # Encode and Decode messages share one shape (field 1 payloads, field 2 namespace).
        return grpc.unary_unary_rpc_method_handler(
            serve,
            request_deserializer=codec_pb2.EncodeRequest.FromString,
            response_serializer=codec_pb2.EncodeResponse.SerializeToString,
        )


@pytest.fixture
def fake() -> Iterator[tuple[FakeCodecService, str]]:
    service = FakeCodecService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {name: service.handler(name) for name in ("Encode", "Decode")}
    service_name = codec_pb2.DESCRIPTOR.services_by_name["CodecService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    service.release.set()
    server.stop(grace=None).wait()


def payload(index: int) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"value {index}"'.encode())


def test_the_fake_serves_the_services_own_name():
    assert codec_pb2.DESCRIPTOR.name == "codec_grpc/v1/codec.proto"
    assert codec_pb2.DESCRIPTOR.services_by_name["CodecService"].full_name == "codec_grpc.v1.CodecService"


def test_one_rpc_carries_all_payloads_namespace_and_headers(fake):
    service, target = fake
    payloads = [payload(i) for i in range(50)]
    codec = RemotePayloadCodec(target, namespace="billing", metadata=(("authorization", "Bearer t0ken"),))

    async def calls():
        async with codec:
            return await codec.encode(payloads), await codec.decode(payloads)

    assert asyncio.run(calls()) == (payloads, payloads)
    assert [method for method, _, _ in service.calls] == ["Encode", "Decode"]
    for _, request, headers in service.calls:
        assert list(request.payloads) == [codec_pb2.Payload.FromString(p.SerializeToString()) for p in payloads]
        assert request.namespace == "billing"
        assert headers["x-namespace"] == "billing"
        assert headers["authorization"] == "Bearer t0ken"


def test_empty_input_makes_no_call(fake):
    service, target = fake
    codec = RemotePayloadCodec(target)
    assert asyncio.run(codec.encode([])) == []
    assert service.calls == []


def test_an_answer_with_another_payload_count_is_an_error(fake):
    service, target = fake
    service.answer = lambda request, _: codec_pb2.EncodeResponse(payloads=request.payloads[1:])
    codec = RemotePayloadCodec(target)

    with pytest.raises(CodecInternalError, match="answered 1 payloads for 2"):
        asyncio.run(codec.decode([payload(1), payload(2)]))


@pytest.mark.parametrize(
    ("code", "error_type", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, CodecUnavailableError, True),
        (grpc.StatusCode.ABORTED, CodecUnavailableError, True),
        (grpc.StatusCode.UNAUTHENTICATED, CodecPermissionError, False),
        (grpc.StatusCode.FAILED_PRECONDITION, CodecRejectedError, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, CodecRejectedError, False),
        (grpc.StatusCode.INTERNAL, CodecInternalError, False),
        (grpc.StatusCode.UNKNOWN, CodecInternalError, False),
    ],
)
def test_status_codes_map_to_error_types(fake, code, error_type, retryable):
    service, target = fake

    def refuse(_: codec_pb2.EncodeRequest, context: grpc.ServicerContext) -> codec_pb2.EncodeResponse:
        context.abort(code, "the server's own words")

    service.answer = refuse
    codec = RemotePayloadCodec(target)

    with pytest.raises(error_type) as caught:
        asyncio.run(codec.encode([payload(1)]))
    assert type(caught.value) is error_type
    assert caught.value.code is code
    assert caught.value.details == "the server's own words"
    assert caught.value.retryable is retryable
    assert str(caught.value) == f"codec service Encode failed: {code.name}: the server's own words"


def test_a_call_past_its_timeout_is_retryable(fake):
    service, target = fake

    def stall(request: codec_pb2.EncodeRequest, _: grpc.ServicerContext) -> codec_pb2.EncodeResponse:
        service.release.wait(timeout=30)
        return codec_pb2.EncodeResponse(payloads=request.payloads)

    service.answer = stall
    codec = RemotePayloadCodec(target, timeout=0.2)

    with pytest.raises(CodecUnavailableError) as caught:
        asyncio.run(codec.encode([payload(1)]))
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_answer_over_the_message_limit_is_refused(fake):
    service, target = fake
    big = Payload(data=b"x" * 4096)
    service.answer = lambda request, _: codec_pb2.EncodeResponse(payloads=[request.payloads[0]] * 2)
    codec = RemotePayloadCodec(target, max_message_bytes=6000)

    with pytest.raises(CodecRejectedError) as caught:
        asyncio.run(codec.encode([big]))
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": ""}, "target must be host:port"),
        ({"namespace": "bad namespace"}, "must be a Temporal namespace name"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"max_message_bytes": 10}, "max_message_bytes must be at least 1024"),
        ({"metadata": (("Authorization", "x"),)}, "metadata keys must be lower case"),
        ({"metadata": (("x-namespace", "other"),)}, "use namespace="),
    ],
)
def test_invalid_arguments_are_refused_up_front(kwargs, message):
    arguments = {"target": "127.0.0.1:1", **kwargs}
    with pytest.raises(ValueError, match=message):
        RemotePayloadCodec(**arguments)


@pytest.mark.parametrize(
    ("given", "kept"),
    [("orders", "orders"), ("  orders.eu_1-b \n", "orders.eu_1-b"), ("n" * 255, "n" * 255), ("0", "0")],
)
def test_a_namespace_is_kept_stripped(given, kept):
    assert RemotePayloadCodec("127.0.0.1:1", namespace=given).namespace == kept


@pytest.mark.parametrize("namespace", ["", "   ", "n" * 256, "a b", "orders/eu", "ordérs", "orders\nx"])
def test_a_namespace_outside_the_rule_is_refused_with_the_services_words(namespace):
    expected = f"must be a Temporal namespace name (letters, digits, '.', '_', '-'), got {namespace!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        RemotePayloadCodec("127.0.0.1:1", namespace=namespace)


def test_errors_are_plain_exceptions():
    assert issubclass(CodecServiceError, Exception)
    assert CodecUnavailableError.retryable
    assert "Retryable" in (CodecUnavailableError.__doc__ or "")
    assert not CodecServiceError.retryable
