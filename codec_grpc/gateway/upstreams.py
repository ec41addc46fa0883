"""What the gateway's routes call: the codec service in this process, or over gRPC.

* :class:`InProcessUpstream`: the service of the process the gateway runs in
  (``server.py``), called directly, no gRPC hop, which would cost more CPU than
  a whole small call (``make bench`` measures both).
* :class:`GrpcUpstream`: CodecService over a ``grpc.aio`` channel (the standalone
  gateway, ``codec-gateway``, e.g. the Helm chart's sidecar).

Either way a failure is raised as :class:`~codec_grpc.gateway.statuses.HttpError`,
made from a status code by ``statuses.http_error_for_status``: both answer alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codec_grpc import errors
from codec_grpc.access import Caller
from codec_grpc.gateway.statuses import http_error_for_status
from codec_grpc.service import SERVICE_NAME, CodecService, status_for
from codec_grpc.v1 import codec_pb2, codec_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

HEALTH_TIMEOUT_SECONDS = 5.0
# Larger requests are run off the event loop, whose other calls and /health probes their codec
# work would stall; smaller ones stay on it, where a thread hop would cost more than the work.
OFF_LOOP_BYTES = 256 * 1024
# Told of every successful in-process call: (method, payloads, request bytes, response bytes).
ProcessedObserver = Callable[[str, int, int, int], None]


@dataclass(frozen=True)
class Credentials:
    """Who a request is from: the caller the gateway authenticated, and the ``Authorization`` value
    it verified (None when the gateway checks no tokens), which a gRPC upstream passes on."""

    caller: Caller
    authorization: str | None = None


class Upstream(Protocol):
    """What the routes call; failures are raised as :class:`HttpError`."""

    async def call(self, method: str, request: bytes, timeout: float, credentials: Credentials) -> bytes:
        """``method`` ("Encode" or "Decode") on a serialized request; the serialized response."""
        ...

    async def health(self) -> str:
        """The codec service's health status name: ``SERVING`` when it serves."""
        ...

    async def stats(self, namespace: str, timeout: float, credentials: Credentials) -> codec_pb2.StatsResponse: ...

    async def close(self) -> None: ...


class InProcessUpstream:
    """The codec service of this process.

    The event loop never waits for KMS. A call is first run on the loop with cached
    keys only (``CodecService.run_cached``); when a key it needs is not cached, the
    call is run again on a thread of ``executor``, where it may call KMS. The failed
    attempt reserves and counts nothing, so the key caches' counters read as for
    one call. Requests over :data:`OFF_LOOP_BYTES` go to a thread at once.
    """

    def __init__(
        self,
        service: CodecService,
        executor: Executor,
        health: Callable[[], str],
        *,
        max_message_bytes: int,
        on_processed: ProcessedObserver | None = None,
    ) -> None:
        self._service = service
        self._executor = executor
        self._health = health
        self._max_message_bytes = max_message_bytes
        self._on_processed = on_processed

    async def call(self, method: str, request: bytes, timeout: float, credentials: Credentials) -> bytes:
        if len(request) > self._max_message_bytes:
            # The limit a gRPC call would meet, worded as gRPC words it: one answer for both paths.
            details = f"Received message larger than max ({len(request)} vs. {self._max_message_bytes})"
            raise http_error_for_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        try:
            caller = credentials.caller
            if len(request) > OFF_LOOP_BYTES:
                count, response = await self._on_thread(self._prepare_and_run, method, request, caller, timeout=timeout)
            else:
                batch = self._service.prepare(method, request, "", caller)
                count = len(batch.payloads)
                answer = self._service.run_cached(batch)
                response = (
                    answer if answer is not None else await self._on_thread(self._service.run, batch, timeout=timeout)
                )
        except errors.CodecError as exc:
            raise http_error_for_status(status_for(exc), str(exc)) from None
        if self._on_processed is not None:
            self._on_processed(method, count, len(request), len(response))
        return response

    def _prepare_and_run(self, method: str, request: bytes, caller: Caller) -> tuple[int, bytes]:
        batch = self._service.prepare(method, request, "", caller)
        count = len(batch.payloads)
        return count, self._service.run(batch)

    async def _on_thread(self, function: Callable[..., T], *args: Any, timeout: float) -> T:
        running = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        try:
            return await asyncio.wait_for(running, timeout)
        except TimeoutError:
            # The thread goes on (a KMS call cannot be interrupted) and fills the cache for the next call.
            details = f"no answer within {timeout:g}s"
            raise http_error_for_status(grpc.StatusCode.DEADLINE_EXCEEDED, details) from None

    async def health(self) -> str:
        return self._health()

    async def stats(self, namespace: str, timeout: float, credentials: Credentials) -> codec_pb2.StatsResponse:
        request = codec_pb2.StatsRequest(namespace=namespace).SerializeToString()
        try:
            return self._service.stats(request, "", credentials.caller)
        except errors.CodecError as exc:
            raise http_error_for_status(status_for(exc), str(exc)) from None

    async def close(self) -> None:
        # Calls still waiting for KMS finish on their threads; the process does not wait for them here.
        self._executor.shutdown(wait=False, cancel_futures=True)


class GrpcUpstream:
    """The gRPC service: one ``grpc.aio`` channel; create it on the loop that serves the gateway."""

    def __init__(
        self, target: str, credentials: grpc.ChannelCredentials | None = None, server_name: str | None = None
    ) -> None:
        # The gRPC server enforces its own size limits and answers RESOURCE_EXHAUSTED (413 here);
        # the client side must not refuse first with a less helpful message.
        options: list[tuple[str, Any]] = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = (
            grpc.aio.insecure_channel(target, options=options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=options)
        )
        self._codec = codec_pb2_grpc.CodecServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        # Encode and Decode exchange serialized bytes: the gateway writes and reads them itself.
        self._raw = {
            method: self.channel.unary_unary(f"/{SERVICE_NAME}/{method}", None, None) for method in ("Encode", "Decode")
        }

    async def call(self, method: str, request: bytes, timeout: float, credentials: Credentials) -> bytes:
        try:
            response: bytes = await self._raw[method](request, timeout=timeout, metadata=_metadata(credentials))
        except grpc.aio.AioRpcError as exc:
            raise http_error_for_status(exc.code(), exc.details() or "") from None
        return response

    async def health(self) -> str:
        check = health_pb2.HealthCheckRequest(service="")
        try:
            answer = await self._health.Check(check, timeout=HEALTH_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            log.warning("health check of the gRPC service failed: %s: %s", exc.code().name, exc.details())
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def stats(self, namespace: str, timeout: float, credentials: Credentials) -> codec_pb2.StatsResponse:
        try:
            answer: codec_pb2.StatsResponse = await self._codec.Stats(
                codec_pb2.StatsRequest(namespace=namespace), timeout=timeout, metadata=_metadata(credentials)
            )
        except grpc.aio.AioRpcError as exc:
            raise http_error_for_status(exc.code(), exc.details() or "") from None
        return answer

    async def close(self) -> None:
        await self.channel.close(grace=None)


def _metadata(credentials: Credentials) -> tuple[tuple[str, str], ...]:
    """The caller's token, passed on: a gRPC service that checks tokens authorizes the same caller."""
    return () if credentials.authorization is None else (("authorization", credentials.authorization),)
