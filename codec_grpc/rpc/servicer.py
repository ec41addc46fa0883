"""The gRPC servicer of CodecService: thin, over :class:`codec_grpc.service.CodecService`.

Encode and Decode take and return serialized messages (see :func:`method_handlers`):
the service splits and joins them as bytes, never as message objects. A refusal
aborts the call with the service's status code for it (``service.status_for``).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from codec_grpc import errors
from codec_grpc.core.namespaces import NAMESPACE_HEADER
from codec_grpc.rpc.observe import note_call
from codec_grpc.service import DECODE, ENCODE, CodecService, status_for
from codec_grpc.v1 import codec_pb2


class CodecServicer:
    """Serves CodecService: each method hands the request bytes and the ``x-namespace`` header to the service."""

    def __init__(self, service: CodecService) -> None:
        self._service = service

    def Encode(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._codec_call(ENCODE, request, context)

    def Decode(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._codec_call(DECODE, request, context)

    def Stats(self, request: bytes, context: grpc.ServicerContext) -> codec_pb2.StatsResponse:
        try:
            return self._service.stats(request, _header_namespace(context))
        except errors.CodecError as exc:
            _abort(context, exc)

    def _codec_call(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            batch = self._service.prepare(method, request, _header_namespace(context))
            note = note_call(len(batch.payloads), batch.namespace, len(request))
            response = self._service.run(batch)
        except errors.CodecError as exc:
            _abort(context, exc)
        note.sent = len(response)
        return response


def _header_namespace(context: grpc.ServicerContext) -> str:
    """The ``x-namespace`` metadata value (the last one, as the request's own field would be)."""
    found = ""
    for name, value in context.invocation_metadata():
        if name == NAMESPACE_HEADER and isinstance(value, str):
            found = value
    return found


def _abort(context: grpc.ServicerContext, error: errors.CodecError) -> NoReturn:
    context.abort(status_for(error), str(error))
    raise AssertionError("unreachable: context.abort raises")


def method_handlers(servicer: CodecServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """CodecService's handlers: requests arrive as bytes (no deserializers), parsed by the service."""
    return {
        ENCODE: grpc.unary_unary_rpc_method_handler(servicer.Encode),
        DECODE: grpc.unary_unary_rpc_method_handler(servicer.Decode),
        "Stats": grpc.unary_unary_rpc_method_handler(
            servicer.Stats, response_serializer=codec_pb2.StatsResponse.SerializeToString
        ),
    }
