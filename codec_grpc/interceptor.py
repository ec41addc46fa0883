"""The gRPC server interceptor: metrics and one access-log line per call.

It wraps unary-unary handlers (CodecService's methods and health ``Check``);
streaming handlers (health ``Watch``, reflection) pass through untouched.
The access log names the method, status code, payload count, sizes, duration,
namespace and peer, never payload contents: the interceptor only ever looks
at a request's ``namespace`` field, its payload count and its serialized size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc

from codec_grpc.config import parse_namespace
from codec_grpc.metrics import GrpcMetrics

access_log = logging.getLogger("codec_grpc.access")

NAMESPACE_HEADER = "x-namespace"
CODEC_SERVICE_PREFIX = "codec_grpc."  # access lines for our own service at INFO; probes and reflection at DEBUG


@dataclass(frozen=True)
class _Call:
    service: str
    method: str
    request: Any
    response: Any  # None when the handler raised (aborted)
    seconds: float


class ObservingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every unary call, and logs it."""

    def __init__(self, metrics: GrpcMetrics, default_namespace: str) -> None:
        self._metrics = metrics
        self._default_namespace = default_namespace
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Unary calls whose handler is still running (after a stop: those the grace period cut off)."""
        with self._lock:
            return self._in_flight

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_streaming or handler.response_streaming:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        inner = handler.unary_unary

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            self._metrics.call_started(service, method)
            started = time.monotonic()
            response = None
            with self._lock:
                self._in_flight += 1
            try:
                response = inner(request, context)
                return response
            finally:
                with self._lock:
                    self._in_flight -= 1
                call = _Call(service, method, request, response, time.monotonic() - started)
                try:
                    self._finish(call, context)
                except Exception:  # observability must never fail a call that succeeded
                    access_log.exception("cannot record the call to %s", method)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _finish(self, call: _Call, context: grpc.ServicerContext) -> None:
        # context.code() is None unless the handler set one: OK when it returned, UNKNOWN when it raised
        # (which is what grpc answers for an exception the handler did not turn into a status).
        # (grpc-stubs lack ServicerContext.code, which grpcio has had since 1.38.)
        code = cast(Any, context).code() or (
            grpc.StatusCode.OK if call.response is not None else grpc.StatusCode.UNKNOWN
        )
        self._metrics.call_finished(call.service, call.method, code.name, call.seconds)
        is_codec_call = hasattr(call.request, "payloads")
        received = call.request.ByteSize()
        sent = call.response.ByteSize() if call.response is not None else 0
        if code is grpc.StatusCode.OK and is_codec_call:
            self._metrics.payloads_processed(call.method, len(call.response.payloads), received, sent)
        level = logging.INFO if call.service.startswith(CODEC_SERVICE_PREFIX) else logging.DEBUG
        if not access_log.isEnabledFor(level):
            return
        payloads = len(call.request.payloads) if is_codec_call else 0
        namespace = self._namespace(call.request, context) if hasattr(call.request, "namespace") else ""
        duration_ms = round(call.seconds * 1000, 3)
        access_log.log(
            level,
            "%s %s payloads=%d duration_ms=%.1f namespace=%s",
            call.method,
            code.name,
            payloads,
            duration_ms,
            namespace or "-",
            extra={
                "grpc_service": call.service,
                "grpc_method": call.method,
                "grpc_code": code.name,
                "payloads": payloads,
                "request_bytes": received,
                "response_bytes": sent,
                "duration_ms": duration_ms,
                "namespace": namespace,
                "peer": context.peer(),
            },
        )

    def _namespace(self, request: Any, context: grpc.ServicerContext) -> str:
        """The namespace the servicer used, shown only when valid (never echo arbitrary client text)."""
        requested = request.namespace
        if not requested:
            header = dict(context.invocation_metadata()).get(NAMESPACE_HEADER)
            requested = header if isinstance(header, str) else ""
        if not requested:
            return self._default_namespace
        try:
            return parse_namespace(requested)
        except ValueError:
            return "<invalid>"
