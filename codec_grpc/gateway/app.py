"""The HTTP/JSON gateway: the codec-server protocol of the Temporal Web UI, CLI and Go SDK.

A thin transport: it checks the request (``Host``, ``Content-Type``, ``Content-Encoding``,
CORS), the caller (bearer token, then the access policy for the operation and namespace), parses
proto3 JSON (``jsonwire``, falling back to ``body``) and hands the serialized
request and the caller to an :class:`~codec_grpc.gateway.upstreams.Upstream`.
Failures arrive as :class:`~codec_grpc.gateway.statuses.HttpError`. Routes (any
path prefix; the query string is ignored):

    POST …/encode, POST …/decode      {"payloads": [...]} in and out
    POST /{namespace}/encode|decode   namespace from the path when X-Namespace is absent
    POST …/download                   one stored payload, decoded (404 without external storage)
    GET  /health                      200 only when the codec service is SERVING
    GET  /stats                       key-cache and KMS counters (never key material)

With external storage (``storage``), encode, decode and download go through
``codec_grpc.gateway.storage``, which reads ``?preserveStorageRefs=true``.
Serving it (a port, a thread, a process) is ``codec_grpc.gateway.runner``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from codec_grpc import errors
from codec_grpc.access import ANONYMOUS_CALLER, AccessPolicy, Caller, TokenVerifier
from codec_grpc.core.namespaces import NAMESPACE_HEADER, resolve_namespace
from codec_grpc.core.protowire import WireError
from codec_grpc.gateway.body import BodyError, BodyLimits, BodyTooLarge, stats_json
from codec_grpc.gateway.jsonwire import (
    document_chunks,
    document_size,
    request_bytes,
    response_document,
    response_parts,
)
from codec_grpc.gateway.statuses import FAILED, HttpError
from codec_grpc.gateway.storage import PRESERVE_QUERY, StorageRoutes
from codec_grpc.gateway.upstreams import OFF_LOOP_BYTES, Credentials, Upstream
from codec_grpc.service import visible_stats

log = logging.getLogger(__name__)
access_log = logging.getLogger("codec_grpc.access")

ALLOW_METHODS = "POST, OPTIONS"
ALLOW_HEADERS = f"content-type, {NAMESPACE_HEADER}, authorization, authorization-extras"
# The routes the gateway knows (the last path segment); anything else is "other" in logs and metrics,
# so a scanner requesting random paths cannot create unbounded label values.
ROUTES = frozenset({"encode", "decode", "download", "health", "stats", "other"})

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class GatewaySettings:
    default_namespace: str = "default"
    max_body_bytes: int = 16 * 1024 * 1024
    max_payloads: int = 10_000  # MAX_PAYLOADS_PER_REQUEST: refused before a body is parsed
    allowed_origins: frozenset[str] = frozenset()
    upstream_timeout: float = 30.0
    allowed_hosts: frozenset[str] = frozenset()  # empty: any Host
    # Shown in /health's "warnings" (ALLOW_UNAUTHENTICATED in effect on a port beyond loopback).
    warnings: tuple[str, ...] = ()


class RequestMetrics(Protocol):
    """Where requests are counted (``codec_grpc.runtime.metrics.GatewayMetrics``)."""

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request; ``route`` is one of :data:`ROUTES`."""
        ...


def create_app(
    settings: GatewaySettings,
    upstream: Upstream,
    verifier: TokenVerifier | None = None,
    metrics: RequestMetrics | None = None,
    access: AccessPolicy | None = None,
    *,
    storage: StorageRoutes | None = None,
) -> web.Application:
    """The aiohttp application; every answer passes through the CORS/error middleware, and is
    logged (one access line) and counted (when ``metrics`` is given). Without a ``verifier`` every
    caller is anonymous; ``access`` (default: no policy) authorizes callers; ``storage`` (default:
    none) makes the codec routes resolve and offload External Storage payloads."""
    routes = _Routes(settings, upstream, verifier, access or AccessPolicy(), storage)
    # Outermost: sees the final status of every answer.
    middlewares = [_observed(metrics), _cors_and_errors(settings.allowed_origins)]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app.router.add_route("*", "/{path:.*}", routes.dispatch)
    if storage is not None:

        async def close_storage(_: web.Application) -> None:
            storage.close()

        app.on_cleanup.append(close_storage)
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


def _observed(metrics: RequestMetrics | None) -> Any:
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
            route = route if route in ROUTES else "other"
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
    def __init__(
        self,
        settings: GatewaySettings,
        upstream: Upstream,
        verifier: TokenVerifier | None,
        access: AccessPolicy,
        storage: StorageRoutes | None = None,
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._verifier = verifier
        self._access = access
        self._limits = BodyLimits(max_payloads=settings.max_payloads)
        self._storage = storage

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route on the last path segment so that any path prefix works."""
        segments = [part for part in request.path.split("/") if part]
        action = segments[-1] if segments else ""
        if action != "health":  # probes come by the pod's address
            self._check_host(request)
        if request.method == "OPTIONS":
            return self._preflight(request)
        if action in ("encode", "decode", "download") and request.method != "POST":
            raise HttpError(405, f"use POST for …/{action}", {"Allow": ALLOW_METHODS})
        if action in ("encode", "decode") or (action == "download" and self._storage is not None):
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

    def _check_host(self, request: web.Request) -> None:
        """GATEWAY_ALLOWED_HOSTS against DNS rebinding: a page whose name was made to point here must not
        be answered as if it were ours."""
        allowed = self._settings.allowed_hosts
        if not allowed:
            return
        host = request.headers.get("Host", "").strip().lower()
        if host not in allowed and host.rpartition(":")[0] not in allowed:
            raise HttpError(400, f"Host {host[:100]!r} is not one of GATEWAY_ALLOWED_HOSTS")

    async def _codec_call(self, request: web.Request, action: str, segments: list[str]) -> web.Response:
        _check_json(request)
        _check_identity_encoding(request)
        namespace = self._namespace(request, segments)
        request[_NOTE].namespace = namespace
        credentials = await self._authorize(request, "decode" if action == "download" else action, namespace)
        body = await self._read_body(request)
        try:
            # The bytearray is emptied once decoded: a large body is not held while it is parsed.
            request_wire = await _off_loop(len(body), request_bytes, body, namespace, self._limits)
        except BodyTooLarge as exc:
            raise HttpError(413, str(exc)) from None
        except BodyError as exc:
            raise HttpError(400, str(exc)) from None
        del body
        response = await self._call(request, action, request_wire, namespace, credentials)
        del request_wire  # a large batch's copies go as soon as they are done with (memory peak)
        try:
            if len(response) <= OFF_LOOP_BYTES:
                answer, request[_NOTE].payloads = response_document(response)
                return web.Response(body=answer, content_type="application/json")
            # A large answer is rendered on a thread, in parts written one after the other: neither the
            # whole JSON nor the transport's copy of what the socket has not taken yet exist at once.
            rendered, request[_NOTE].payloads = await asyncio.to_thread(response_parts, response)
        except WireError as exc:
            log.warning("malformed %s response from the codec service: %s", action, exc)
            raise HttpError(*FAILED) from None
        del response
        return web.Response(body=_ChunkedAnswer(rendered), content_type="application/json")

    async def _call(
        self, request: web.Request, action: str, request_wire: bytes, namespace: str, credentials: Credentials
    ) -> bytes:
        timeout = self._settings.upstream_timeout
        if self._storage is None:
            return await self._upstream.call(action.capitalize(), request_wire, timeout, credentials)
        preserve = request.query.get(PRESERVE_QUERY, "").lower() == "true"
        return await self._storage.call(
            self._upstream,
            action,
            request_wire,
            namespace=namespace,
            timeout=timeout,
            credentials=credentials,
            preserve_refs=preserve,
        )

    def _namespace(self, request: web.Request, segments: list[str]) -> str:
        """X-Namespace, else the path form /{namespace}/{action}, else DEFAULT_NAMESPACE."""
        header = request.headers.get(NAMESPACE_HEADER, "").strip()
        in_path = segments[0] if len(segments) == 2 else ""
        try:
            return resolve_namespace(header, in_path, default=self._settings.default_namespace)
        except errors.RequestError as exc:
            raise HttpError(400, str(exc)) from None

    async def _authorize(self, request: web.Request, operation: str, namespace: str) -> Credentials:
        """The caller, authenticated and allowed ``operation`` in ``namespace``, and its token."""
        authorization = request.headers.get("Authorization")
        caller = await self._caller(authorization)
        request[_NOTE].subject = caller.name[:200]
        try:
            self._access.check(caller, operation, namespace)
        except errors.AccessDeniedError as exc:
            raise HttpError(403, str(exc)) from None
        return Credentials(caller, authorization if self._verifier is not None else None)

    async def _caller(self, authorization: str | None) -> Caller:
        if self._verifier is None:
            return ANONYMOUS_CALLER
        try:
            # May fetch the JWKS over the network: never on the event loop.
            return await asyncio.to_thread(self._verifier.verify, authorization)
        except errors.UnauthenticatedError as exc:
            raise HttpError(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        except errors.IdentityProviderError as exc:
            log.warning("token not checked: %s: %s", exc, exc.__cause__)
            raise HttpError(503, str(exc)) from None

    async def _read_body(self, request: web.Request) -> bytearray:
        """The body, read as it arrives (never more than GATEWAY_MAX_BODY_BYTES, whatever
        Content-Length says or chunked encoding sends) into one bytearray: no copy of it is made."""
        limit = self._settings.max_body_bytes
        too_large = HttpError(413, f"request body larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES): split the batch")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        while chunk := await request.content.readany():
            if len(body) + len(chunk) > limit:
                raise too_large
            body += chunk
        return body

    async def _health(self) -> web.Response:
        status = await self._upstream.health()
        document: dict[str, Any] = {"status": status}
        if self._settings.warnings:
            document["warnings"] = list(self._settings.warnings)
        return web.json_response(document, status=200 if status == "SERVING" else 503)

    async def _stats(self, request: web.Request, segments: list[str]) -> web.Response:
        namespace = self._namespace(request, segments)
        request[_NOTE].namespace = namespace
        credentials = await self._authorize(request, "stats", namespace)
        answer = await self._upstream.stats(namespace, self._settings.upstream_timeout, credentials)
        # The gRPC service filters too, when it authenticates; a sidecar's may not.
        return web.json_response(stats_json(visible_stats(answer, credentials.caller, self._access)))


def _check_identity_encoding(request: web.Request) -> None:
    """Only uncompressed bodies: 4 KiB of gzip inflate to 4 MiB, and the limits are on what arrives
    (GATEWAY_MAX_BODY_BYTES) and on what is parsed. The UI, the CLI and the Go SDK never compress
    their requests; the runner also turns aiohttp's own decompression off (``runner.serve``)."""
    for value in request.headers.getall("Content-Encoding", ()):
        for coding in value.split(","):
            if coding.strip().lower() not in ("", "identity"):
                shown = value.strip()[:100]
                raise HttpError(
                    415, f"Content-Encoding {shown!r} is not accepted: send the JSON body uncompressed (identity)"
                )


class _ChunkedAnswer(payload.Payload):
    """A large answer body (:func:`~codec_grpc.gateway.jsonwire.response_parts`), written a chunk at a
    time, each after the socket took the last: its parts are dropped as they are sent."""

    _autoclose = True

    def __init__(self, rendered: list[bytes]) -> None:
        super().__init__(rendered, content_type="application/json")
        self._size = document_size(rendered)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(document_chunks(list(self._value))).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for chunk in document_chunks(self._value):
            await writer.write(chunk)  # drains when the transport holds more than 64 KiB


def _check_json(request: web.Request) -> None:
    """Only JSON bodies: a form or text/plain POST is what a cross-site page can send without a
    preflight (blind CSRF); the UI, the CLI and the Go SDK all send application/json."""
    if request.content_type != "application/json":
        shown = request.headers.get("Content-Type", "none")[:100]
        raise HttpError(415, f"Content-Type must be application/json, got {shown!r}")
