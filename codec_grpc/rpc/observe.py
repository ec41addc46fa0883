"""Observing gRPC calls: metrics and one access-log line per call.

:class:`CallObserver` wraps unary-unary handlers (CodecService's methods
and, through :class:`ObservedHealthServicer`, health ``Check``) once, when they
are registered: a grpc server observer would wrap every call again, which
costs CPU on each (``make bench`` measured it). Streaming handlers (health
``Watch``, reflection) are not observed.

The access log names the method, status code, payload count, sizes, duration,
namespace and peer, never payload contents. Encode and Decode exchange
serialized bytes, so their handler reports the payload count, sizes and
namespace through :func:`note_call`; other calls are logged with their sizes.

Metrics are counted through :class:`CallMetrics`, which ``codec_grpc.runtime.metrics``
implements with prometheus-client; this layer does not import it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import grpc
from grpc_health.v1 import health

from codec_grpc.access import Caller

access_log = logging.getLogger("codec_grpc.access")

CODEC_SERVICE_PREFIX = "codec_grpc."  # access lines for our own service at INFO; probes and reflection at DEBUG
_SUBJECT_CHARS = 200


class MethodMetrics(Protocol):
    """The metrics of one unary method, bound once when its handler is wrapped."""

    def start(self) -> None:
        """A call started."""
        ...

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        """A call ended with ``code`` after ``seconds``."""
        ...

    def processed(self, count: int, received: int, sent: int) -> None:
        """A successful codec call: its payload count and serialized request and response sizes."""
        ...


class CallMetrics(Protocol):
    """Where the observer counts calls (``codec_grpc.runtime.metrics.GrpcMetrics``)."""

    def for_method(self, service: str, method: str) -> MethodMetrics: ...


class CallNote:
    """What a handler tells the observer about its call: counts and sizes, never contents."""

    __slots__ = ("namespace", "payloads", "received", "sent", "subject")

    def __init__(self, payloads: int, namespace: str, received: int, subject: str) -> None:
        self.payloads = payloads
        self.namespace = namespace
        self.received = received
        self.sent = 0
        self.subject = subject


# A unary handler runs on the thread that runs the observer around it. The observer takes the note
# (and clears it) at the end of every call, so a call never sees the note of an earlier one.
class _Notes(threading.local):
    current: CallNote | None = None


_notes = _Notes()


def note_call(payloads: int, namespace: str, received: int, caller: Caller) -> CallNote:
    """Called by a handler that exchanges serialized bytes: the observer cannot look inside them."""
    note = CallNote(payloads, namespace, received, caller.name[:_SUBJECT_CHARS])
    _notes.current = note
    return note


class _Method:
    """What the observer of one method keeps: its names, its metrics and its access-log level."""

    __slots__ = ("level", "method", "metrics", "service")

    def __init__(self, service: str, method: str, metrics: MethodMetrics | None) -> None:
        self.service = service
        self.method = method
        self.metrics = metrics
        self.level = logging.INFO if service.startswith(CODEC_SERVICE_PREFIX) else logging.DEBUG


class CallObserver:
    """Counts and times every unary call, and logs it.

    With ``metrics`` None (METRICS_ENABLED=false) nothing is counted: no one could read it.
    """

    def __init__(self, metrics: CallMetrics | None) -> None:
        self._metrics = metrics
        # The contexts of the calls running now; set.add and set.discard are atomic (no lock per call).
        self._active: set[object] = set()

    @property
    def in_flight(self) -> int:
        """Unary calls whose handler is still running (after a stop: those the grace period cut off)."""
        return len(self._active)

    def wrap(
        self, service: str, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler, observed. Done once when the handler is registered, it costs a call nothing
        beyond the observation itself."""
        if handler.unary_unary is None or handler.request_streaming or handler.response_streaming:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.observe(service, method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def observe(self, service: str, method: str, inner: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """``inner`` (a unary behaviour), counted, timed and logged."""
        metrics = None if self._metrics is None else self._metrics.for_method(service, method)
        call = _Method(service, method, metrics)

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            if metrics is not None:
                metrics.start()
            self._active.add(context)
            started = time.monotonic()
            response = None
            try:
                response = inner(request, context)
                return response
            finally:
                seconds = time.monotonic() - started
                self._active.discard(context)
                try:
                    self._finish(call, request, response, seconds, context)
                except Exception:  # observability must never fail a call that succeeded
                    access_log.exception("cannot record the call to %s", method)

        return observed

    def _finish(
        self, call: _Method, request: Any, response: Any, seconds: float, context: grpc.ServicerContext
    ) -> None:
        note, _notes.current = _notes.current, None
        # context.code() is None unless the handler set one: OK when it returned, UNKNOWN when it raised
        # (which is what grpc answers for an exception the handler did not turn into a status).
        # (grpc-stubs lack ServicerContext.code, which grpcio has had since 1.38.)
        code = cast(Any, context).code() or (grpc.StatusCode.OK if response is not None else grpc.StatusCode.UNKNOWN)
        metrics = call.metrics
        if metrics is not None:
            metrics.finished(code, seconds)
            if code is grpc.StatusCode.OK and note is not None:
                metrics.processed(note.payloads, note.received, note.sent)
        if not access_log.isEnabledFor(call.level):
            return
        received = note.received if note is not None else _size(request)
        sent = note.sent if note is not None else _size(response)
        payloads = note.payloads if note is not None else 0
        namespace = note.namespace if note is not None else ""
        duration_ms = round(seconds * 1000, 3)
        access_log.log(
            call.level,
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
                "subject": note.subject if note is not None else "",
            },
        )


def _size(message: Any) -> int:
    if message is None:
        return 0
    if isinstance(message, bytes):
        return len(message)
    return int(message.ByteSize())


class ObservedHealthServicer(health.HealthServicer):
    """The standard health service, its ``Check`` calls observed like every other unary call."""

    def __init__(self, observer: CallObserver) -> None:
        super().__init__()
        self._observed_check = observer.observe(health.SERVICE_NAME, "Check", super().Check)

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._observed_check(request, context)
