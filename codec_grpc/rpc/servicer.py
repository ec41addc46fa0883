"""The gRPC servicer of CodecService: thin, over :class:`codec_grpc.service.CodecService`.

Each call is authenticated (:mod:`~codec_grpc.rpc.authn`), then handed to the service,
which authorizes it. Encode and Decode take and return serialized messages (see
:func:`method_handlers`): the service splits and joins them as bytes, never as message
objects. A refusal aborts the call with the service's status code for it
(``service.status_for``).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from codec_grpc import errors
from codec_grpc.core.namespaces import NAMESPACE_HEADER
from codec_grpc.rpc.authn import Authenticator
from codec_grpc.rpc.observe import note_call
from codec_grpc.service import DECODE, ENCODE, CodecService, status_for
from codec_grpc.v1 import codec_pb2


class CodecServicer:
    """Serves CodecService: each method hands the request bytes, the ``x-namespace`` header and the
    authenticated caller to the service."""

    def __init__(self, service: CodecService, authenticator: Authenticator) -> None:
        self._service = service
        self._authenticator = authenticator

    def Encode(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._codec_call(ENCODE, request, context)

    def Decode(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._codec_call(DECODE, request, context)

    def Stats(self, request: bytes, context: grpc.ServicerContext) -> codec_pb2.StatsResponse:
        try:
            namespace, authorization = _metadata(context)
            caller = self._authenticator.caller(context, authorization)
            return self._service.stats(request, namespace, caller)
        except errors.CodecError as exc:
            _abort(context, exc)

    def _codec_call(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            namespace, authorization = _metadata(context)
            caller = self._authenticator.caller(context, authorization)
            batch = self._service.prepare(method, request, namespace, caller)
            note = note_call(len(batch.payloads), batch.namespace, len(request), caller)
            response = self._service.run(batch)
        except errors.CodecError as exc:
            _abort(context, exc)
        note.sent = len(response)
        return response


def _metadata(context: grpc.ServicerContext) -> tuple[str, str | None]:
    """The ``x-namespace`` and ``authorization`` metadata values (the last of each, as a request's
    own field would be)."""
    namespace, authorization = "", None
    for name, value in context.invocation_metadata():
        if name == NAMESPACE_HEADER and isinstance(value, str):
            namespace = value
        elif name == "authorization" and isinstance(value, str):
            authorization = value
    return namespace, authorization


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
