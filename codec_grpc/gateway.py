"""HTTP/JSON transport: the codec-server protocol of the Temporal Web UI, CLI and Go SDK.

A thin layer in front of ``CodecService``: it parses proto3 JSON, checks the
caller (CORS, optional bearer token) and hands the serialized request to an
:class:`Upstream`, one of two:

* :class:`GrpcUpstream`: the gRPC service over a ``grpc.aio`` channel (the
  standalone gateway, ``codec-gateway``, e.g. the Helm chart's sidecar);
* ``codec_grpc.gateway_inprocess.InProcessUpstream``: the codec of the server
  process the gateway runs in (``server.py``), called directly, no gRPC hop.

Either way failures are gRPC status codes (the in-process one takes them from
``codec_grpc.service.status_for``), mapped to HTTP statuses in
:func:`http_error_for_status`, the one place that does so. Routes (any path
prefix; the query string is ignored):

    POST …/encode, POST …/decode      {"payloads": [...]} in and out
    POST /{namespace}/encode|decode   namespace from the path when X-Namespace is absent
    POST …/download                   404: no external storage here
    GET  /health                      200 only when the codec service is SERVING
    GET  /stats                       key-cache and KMS counters (never key material)

``python -m codec_grpc.gateway`` runs it as its own process (see
:mod:`codec_grpc.gateway_server`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codec_grpc.config import Config, parse_namespace
from codec_grpc.gateway_auth import AuthError, AuthUnavailableError, TokenVerifier
from codec_grpc.gateway_body import BodyError, stats_json
from codec_grpc.gateway_wire import request_bytes, response_document
from codec_grpc.metrics import GatewayMetrics
from codec_grpc.v1 import codec_pb2, codec_pb2_grpc
from codec_grpc.wire import WireError

log = logging.getLogger(__name__)
access_log = logging.getLogger("codec_grpc.access")

ALLOW_METHODS = "POST, OPTIONS"
ALLOW_HEADERS = "content-type, x-namespace, authorization, authorization-extras"
HEALTH_TIMEOUT_SECONDS = 5.0
OFF_LOOP_BYTES = 256 * 1024

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """An answer other than 200, with a message a person understands."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class GatewaySettings:
    default_namespace: str = "default"
    max_body_bytes: int = 16 * 1024 * 1024
    allowed_origins: frozenset[str] = frozenset()
    upstream_timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> GatewaySettings:
        return cls(
            default_namespace=config.default_namespace,
            max_body_bytes=config.gateway_max_body_bytes,
            allowed_origins=config.cors_allowed_origins,
            upstream_timeout=config.gateway_upstream_timeout,
        )


class Upstream(Protocol):
    """What the routes call; failures are raised as :class:`HttpError` (see :func:`http_error_for_status`)."""

    async def call(self, method: str, request: bytes, timeout: float) -> bytes:
        """``method`` ("Encode" or "Decode") on a serialized request; the serialized response."""
        ...

    async def health(self) -> str:
        """The codec service's health status name: ``SERVING`` when it serves."""
        ...

    async def stats(self, namespace: str, timeout: float) -> codec_pb2.StatsResponse: ...

    async def close(self) -> None: ...


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
        service = codec_pb2.DESCRIPTOR.services_by_name["CodecService"].full_name
        self._raw = {
            method: self.channel.unary_unary(f"/{service}/{method}", None, None) for method in ("Encode", "Decode")
        }

    async def call(self, method: str, request: bytes, timeout: float) -> bytes:
        try:
            response: bytes = await self._raw[method](request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise http_error_for(exc) from None
        return response

    async def health(self) -> str:
        check = health_pb2.HealthCheckRequest(service="")
        try:
            answer = await self._health.Check(check, timeout=HEALTH_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            log.warning("health check of the gRPC service failed: %s: %s", exc.code().name, exc.details())
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def stats(self, namespace: str, timeout: float) -> codec_pb2.StatsResponse:
        try:
            answer: codec_pb2.StatsResponse = await self._codec.Stats(
                codec_pb2.StatsRequest(namespace=namespace), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise http_error_for(exc) from None
        return answer

    async def close(self) -> None:
        await self.channel.close(grace=None)


# Codes whose messages come from our service: they name the payload index, never key material.
_SHOWN: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, ""),
    grpc.StatusCode.UNAUTHENTICATED: (401, ""),
    grpc.StatusCode.PERMISSION_DENIED: (403, ""),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (413, ""),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "the server's KMS key cannot be used (server misconfiguration): "),
}
# Codes that may come from the transport or a bug: a generic message; details go to the log.
_HIDDEN: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.UNAVAILABLE: (503, "the codec service is unavailable; retry later"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "the codec service did not answer in time (GATEWAY_UPSTREAM_TIMEOUT)"),
}
_FAILED = (502, "the codec service failed; its log has the details")


def http_error_for(error: grpc.aio.AioRpcError) -> HttpError:
    """The HTTP answer for a failed gRPC call."""
    return http_error_for_status(error.code(), error.details() or "")


def http_error_for_status(code: grpc.StatusCode, details: str) -> HttpError:
    """The HTTP answer for a failed call's status code and message: the one place mapping gRPC
    codes to HTTP statuses, for both upstreams."""
    if code == grpc.StatusCode.UNAVAILABLE and "retry later" in details:
        return HttpError(503, details)  # KMS unavailable, as worded by our service
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        # gRPC's own size check, before our service sees the request.
        return HttpError(413, f"the batch is larger than the codec service accepts (GRPC_MAX_MESSAGE_BYTES): {details}")
    if code in _SHOWN:
        status, prefix = _SHOWN[code]
        return HttpError(status, prefix + details)
    log.warning("the codec service failed: %s: %s", code.name, details)
    status, message = _HIDDEN.get(code, _FAILED)
    return HttpError(status, message)


def create_app(
    settings: GatewaySettings,
    upstream: Upstream,
    verifier: TokenVerifier | None = None,
    metrics: GatewayMetrics | None = None,
) -> web.Application:
    """The aiohttp application; every answer passes through the CORS/error middleware, and is
    logged (one access line) and counted (when ``metrics`` is given)."""
    routes = _Routes(settings, upstream, verifier)
    # Outermost: sees the final status of every answer.
    middlewares = [_observed(metrics), _cors_and_errors(settings.allowed_origins)]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app.router.add_route("*", "/{path:.*}", routes.dispatch)
    return app


class _AccessNote:
    """What a codec route tells the access line: never payload contents."""

    __slots__ = ("namespace", "payloads", "subject")

    def __init__(self) -> None:
        self.namespace = ""
        self.payloads = 0
        self.subject = ""


_NOTE = web.RequestKey("access_note", _AccessNote)
# Probes and preflights would drown the lines that matter: they log at DEBUG.
_QUIET_ROUTES = frozenset({"health"})


def _observed(metrics: GatewayMetrics | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        note = request[_NOTE] = _AccessNote()
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            seconds = time.monotonic() - started
            route = request.path.rstrip("/").rpartition("/")[2]
            try:
                if metrics is not None:
                    metrics.observe(route, request.method, status, seconds)
                _log_access(request, route, status, seconds, note)
            except Exception:  # counting and logging must never fail an answer
                log.exception("cannot record an HTTP request")

    return middleware


def _log_access(request: web.Request, route: str, status: int, seconds: float, note: _AccessNote) -> None:
    """One line per HTTP request, like the gRPC access line (logger ``codec_grpc.access``): the route
    (only the known ones; anything else is ``other``), status, payload count, sizes, namespace, peer,
    and the token's subject when auth is on. An audit trail of who encoded and decoded what."""
    quiet = route in _QUIET_ROUTES or request.method == "OPTIONS"
    level = logging.DEBUG if quiet else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    route = route if route in GatewayMetrics.ROUTES else "other"
    duration_ms = round(seconds * 1000, 3)
    access_log.log(
        level,
        "HTTP %s %s %d payloads=%d duration_ms=%.1f namespace=%s",
        request.method,
        route,
        status,
        note.payloads,
        duration_ms,
        note.namespace or "-",
        extra={
            "http_method": request.method,
            "http_route": route,
            "http_status": status,
            "payloads": note.payloads,
            "request_bytes": request.content_length or 0,
            "duration_ms": duration_ms,
            "namespace": note.namespace,
            "peer": request.remote or "",
            "subject": note.subject,
        },
    )


def _cors_and_errors(allowed: frozenset[str]) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except HttpError as exc:
            response = _json_error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:
            response = _json_error(exc.status, exc.reason)
        except Exception:
            log.exception("internal error in the HTTP gateway")
            response = _json_error(500, "internal error; the server log has the details")
        # On every answer, errors included: otherwise the browser hides the error from the UI.
        response.headers["Vary"] = "Origin"
        origin = request.headers.get("Origin", "")
        if origin.lower() in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return middleware


def _json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps({"error": message}).encode(), content_type="application/json", headers=headers
    )


async def _off_loop(size: int, function: Callable[..., T], *args: Any) -> T:
    """Run JSON work for a large body on a thread: a batch near GATEWAY_MAX_BODY_BYTES takes
    about a second of CPU, which on the event loop would stall /health (probe timeouts) and
    every small call. Small bodies stay on the loop, where a thread hop would cost more."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(function, *args)
    return function(*args)


class _Routes:
    def __init__(self, settings: GatewaySettings, upstream: Upstream, verifier: TokenVerifier | None) -> None:
        self._settings = settings
        self._upstream = upstream
        self._verifier = verifier

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route on the last path segment so that any path prefix works."""
        segments = [part for part in request.path.split("/") if part]
        action = segments[-1] if segments else ""
        if request.method == "OPTIONS":
            return self._preflight(request)
        if action in ("encode", "decode", "download") and request.method != "POST":
            raise HttpError(405, f"use POST for …/{action}", {"Allow": ALLOW_METHODS})
        if action in ("encode", "decode"):
            return await self._codec_call(request, action, segments)
        if action == "download":
            raise HttpError(404, "external storage is not configured on this codec server: nothing to download")
        if action in ("health", "stats") and request.method not in ("GET", "HEAD"):
            raise HttpError(405, f"use GET for /{action}", {"Allow": "GET, HEAD"})
        if action == "health":
            return await self._health()
        if action == "stats":
            return await self._stats(request, segments)
        raise HttpError(404, "not found: the codec endpoints are POST …/encode and POST …/decode")

    def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in self._settings.allowed_origins:
            raise HttpError(403, f"origin {origin!r} is not allowed (CORS_ALLOWED_ORIGINS)")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
                "Allow": ALLOW_METHODS,
            },
        )

    async def _codec_call(self, request: web.Request, action: str, segments: list[str]) -> web.Response:
        namespace = self._namespace(request, segments)
        request[_NOTE].namespace = namespace
        await self._authorize(request, namespace)
        body = await self._read_body(request)
        try:
            request_wire = await _off_loop(len(body), request_bytes, body, namespace)
        except BodyError as exc:
            raise HttpError(400, str(exc)) from None
        size = len(body)
        response = await self._upstream.call(action.capitalize(), request_wire, self._settings.upstream_timeout)
        del request_wire  # a large batch's copies go as soon as they are done with (memory peak)
        try:
            answer, request[_NOTE].payloads = await _off_loop(size, response_document, response)
        except WireError as exc:
            log.warning("malformed %s response from the codec service: %s", action, exc)
            raise HttpError(*_FAILED) from None
        return web.Response(body=answer, content_type="application/json")

    def _namespace(self, request: web.Request, segments: list[str]) -> str:
        """X-Namespace, else the path form /{namespace}/{action}, else DEFAULT_NAMESPACE."""
        requested = request.headers.get("X-Namespace", "").strip()
        if not requested and len(segments) == 2:
            requested = segments[0]
        if not requested:
            return self._settings.default_namespace
        try:
            return parse_namespace(requested)
        except ValueError as exc:
            raise HttpError(400, f"invalid namespace: {exc}") from None

    async def _authorize(self, request: web.Request, namespace: str) -> None:
        if self._verifier is None:
            return
        verifier = self._verifier
        try:
            # May fetch the JWKS over the network: never on the event loop.
            claims = await asyncio.to_thread(verifier.verify, request.headers.get("Authorization"))
        except AuthError as exc:
            raise HttpError(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        except AuthUnavailableError as exc:
            log.warning("token not checked: %s: %s", exc, exc.__cause__)
            raise HttpError(503, f"{exc}; retry later") from None
        subject = claims.get("sub")
        request[_NOTE].subject = subject[:200] if isinstance(subject, str) else ""
        if not verifier.permits(claims, namespace):
            raise HttpError(403, f"namespace {namespace!r} is not permitted for this token")

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._settings.max_body_bytes
        too_large = HttpError(413, f"request body larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES): split the batch")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    async def _health(self) -> web.Response:
        status = await self._upstream.health()
        return web.json_response({"status": status}, status=200 if status == "SERVING" else 503)

    async def _stats(self, request: web.Request, segments: list[str]) -> web.Response:
        namespace = self._namespace(request, segments)
        request[_NOTE].namespace = namespace
        await self._authorize(request, namespace)
        answer = await self._upstream.stats(namespace, self._settings.upstream_timeout)
        return web.json_response(stats_json(answer))


if __name__ == "__main__":
    import sys

    from codec_grpc.gateway_server import main

    sys.exit(main())
