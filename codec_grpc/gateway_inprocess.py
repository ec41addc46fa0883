"""The HTTP gateway inside ``server.py``: it calls the codec of its own process, with no gRPC hop.

:class:`InProcessUpstream` is the gateway's :class:`~codec_grpc.gateway.Upstream`
built from the running :class:`~codec_grpc.app.CodecApp`. Encode and Decode go
through the servicer's own checks (``CodecServicer.call_serialized``: payload
count, namespace) and the codec, exactly as a gRPC call would, minus the
transport: the loopback hop cost about 550 µs of CPU per call, more than a
whole small call of a plain aiohttp codec server.

The event loop never waits for KMS. A call first runs on the loop with a codec
whose key source answers from the key caches only (:class:`CachedKeys`); when a
key it needs is not cached, that source raises :class:`WouldBlock`, and the
whole call is done again on a thread of a small pool with the service's own
codec, which may call KMS. The failed attempt reserves nothing and counts no
cache hit or miss, so the key caches' counters read as for one gRPC call. A thread hop costs
about 100 µs of CPU, so it is taken only when needed, and for requests over
``OFF_LOOP_BYTES``, whose codec work would stall the loop (``/health`` probes
and every small call).

Failures are the service's errors (``codec_grpc.errors``): ``service.status_for``
gives the gRPC status code the gRPC path would answer and
``gateway.http_error_for_status`` the HTTP answer, so both paths answer alike.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2

from codec_grpc import errors
from codec_grpc.app import CodecApp
from codec_grpc.codec import EnvelopeCodec
from codec_grpc.gateway import OFF_LOOP_BYTES, HttpError, http_error_for_status
from codec_grpc.keys import KeyManager
from codec_grpc.metrics import GrpcMetrics
from codec_grpc.service import CodecServicer, status_for
from codec_grpc.v1 import codec_pb2
from codec_grpc.wireformat import DataKey

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the server log has the details"


class WouldBlock(Exception):
    """A data key is not in the caches: getting it means waiting for KMS."""


class CachedKeys:
    """A :class:`codec_grpc.codec.KeySource` that never calls KMS: it answers from the key
    manager's caches, or raises :class:`WouldBlock`. One per call: the decryption keys it found
    count as cache hits only once the call is known not to be redone (:meth:`count_hits`)."""

    def __init__(self, keys: KeyManager) -> None:
        self._keys = keys
        self._found: list[tuple[str, bytes, str | None]] = []

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey:
        key = self._keys.cached_encryption_key(namespace, binding, count)
        if key is None:
            raise WouldBlock
        return key

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        key = self._keys.cached_decryption_key(key_arn, encrypted_key, binding)
        if key is None:
            raise WouldBlock
        self._found.append((key_arn, encrypted_key, binding))
        return key

    def count_hits(self) -> None:
        self._keys.count_cached_hits(self._found)

    def forget(self) -> None:
        """The call is to be redone: what it found must not count."""
        self._found.clear()


@dataclass
class CallCounts:
    """Where Encode/Decode calls ran: on the event loop, or on a thread (a key was not cached, or the
    request was large). Read by tests; not a metric."""

    on_loop: int = 0
    on_thread: int = 0


class _HealthContext:
    """All of a ServicerContext that ``HealthServicer.Check`` uses: the code for an unknown service."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code


class InProcessUpstream:
    """The codec of this process as the gateway's upstream (see the module's documentation)."""

    def __init__(
        self,
        servicer: CodecServicer,
        keys: KeyManager,
        health_servicer: health.HealthServicer,
        metrics: GrpcMetrics | None,
        *,
        bind_namespace: bool,
        max_message_bytes: int,
        threads: int,
    ) -> None:
        self._servicer = servicer
        self._keys = keys
        self._bind = bind_namespace
        self._health = health_servicer
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        # Threads start when first needed: a server whose keys stay cached starts none.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-kms")
        self.counts = CallCounts()

    @classmethod
    def from_app(cls, app: CodecApp) -> InProcessUpstream:
        config = app.config
        return cls(
            app.servicer,
            app.keys,
            app.health,
            app.grpc_metrics,
            bind_namespace=app.codec.bind_namespace,
            max_message_bytes=config.grpc_max_message_bytes,
            # As many calls may wait for KMS at once as through the gRPC server's pool.
            threads=config.grpc_max_workers,
        )

    async def call(self, method: str, request: bytes, timeout: float) -> bytes:
        if len(request) > self._max_message_bytes:
            # The limit a gRPC call would meet, worded as gRPC words it: one answer for both paths.
            details = f"Received message larger than max ({len(request)} vs. {self._max_message_bytes})"
            raise http_error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        try:
            response, count = await self._run(method, request, timeout)
        except HttpError:
            raise
        except errors.CodecError as exc:
            code = status_for(exc)
            log.warning("request refused: %s: %s", code.name, exc)
            raise http_error_for_status(code, str(exc)) from None
        except Exception as exc:
            raise _internal(exc) from None
        if self._metrics is not None:
            self._metrics.payloads_processed(method, count, len(request), len(response))
        return response

    async def _run(self, method: str, request: bytes, timeout: float) -> tuple[bytes, int]:
        if len(request) <= OFF_LOOP_BYTES:
            answer = self._on_loop(method, request)
            if answer is not None:
                self.counts.on_loop += 1
                return answer
        self.counts.on_thread += 1
        running = asyncio.get_running_loop().run_in_executor(
            self._executor, self._servicer.call_serialized, method, request
        )
        try:
            return await asyncio.wait_for(running, timeout)
        except TimeoutError:
            # The thread goes on (a KMS call cannot be interrupted) and fills the cache for the next call.
            details = f"no answer within {timeout:g}s"
            raise http_error_for_status(grpc.StatusCode.DEADLINE_EXCEEDED, details) from None

    def _on_loop(self, method: str, request: bytes) -> tuple[bytes, int] | None:
        """The call with cached keys only, or None when a key is not cached. None counts and reserves
        nothing: the call is then done again on a thread, and counted there."""
        keys = CachedKeys(self._keys)
        try:
            return self._servicer.call_serialized(method, request, EnvelopeCodec(keys, bind_namespace=self._bind))
        except WouldBlock:
            keys.forget()
            return None
        finally:
            keys.count_hits()  # answered or refused here: the keys found were used

    async def health(self) -> str:
        # The standard servicer's Check, not ObservedHealthServicer's: this is no gRPC call to count.
        context = _HealthContext()
        request = health_pb2.HealthCheckRequest(service="")
        answer = health.HealthServicer.Check(self._health, request, cast(grpc.ServicerContext, context))
        if context.code is not None:
            return "SERVICE_UNKNOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def stats(self, namespace: str, timeout: float) -> codec_pb2.StatsResponse:
        try:
            return self._servicer.stats(namespace)
        except Exception as exc:
            raise _internal(exc) from None

    async def close(self) -> None:
        # Calls still waiting for KMS finish on their threads; the process does not wait for them here.
        self._executor.shutdown(wait=False, cancel_futures=True)


def _internal(exc: Exception) -> HttpError:
    """As the gRPC servicer does: the type and place only (a message might quote request data)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    log.error("internal error: %s at %s:%d", type(exc).__name__, frame.filename, frame.lineno)
    log.debug("internal error details", exc_info=exc)
    return http_error_for_status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
