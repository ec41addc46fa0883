"""gRPC transport: the CodecService servicer, error mapping and the server factory.

This module only translates: requests into codec calls, the service's errors
into gRPC status codes (in :func:`status_for`, the one place that does so).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from codec_grpc import errors, wire
from codec_grpc.codec import EnvelopeCodec
from codec_grpc.config import parse_namespace
from codec_grpc.interceptor import ObservingInterceptor, note_call
from codec_grpc.keys import KeyManager, KeyStats
from codec_grpc.kms import KmsCallStats
from codec_grpc.v1 import codec_pb2

log = logging.getLogger(__name__)

NAMESPACE_HEADER = "x-namespace"
SERVICE_NAME = codec_pb2.DESCRIPTOR.services_by_name["CodecService"].full_name

_STATUS_BY_ERROR: Sequence[tuple[type[errors.CodecError], grpc.StatusCode]] = (
    (errors.NamespaceMismatchError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.PayloadError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.RequestTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.KmsUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.KmsAccessDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.KmsKeyStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KmsNotFoundError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KmsInvalidCiphertextError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(error: errors.CodecError) -> grpc.StatusCode:
    """The gRPC status code for one of the service's errors."""
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class ServiceLimits:
    default_namespace: str = "default"
    max_payloads: int = 10_000


class CodecServicer:
    """Serves CodecService by delegating to the envelope codec.

    Encode and Decode take and return serialized messages (see :func:`method_handlers`):
    the payloads are split out of the request and joined into the response as
    bytes (``codec_grpc.wire``), never parsed into message objects here.
    """

    def __init__(
        self,
        codec: EnvelopeCodec,
        keys: KeyManager,
        kms_stats: Callable[[], KmsCallStats],
        limits: ServiceLimits,
    ) -> None:
        self._codec = codec
        self._keys = keys
        self._kms_stats = kms_stats
        self._limits = limits

    def Encode(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return self._serialized(self._encode, request, context)
        except Exception as exc:
            self._refuse(exc, context)

    def Decode(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return self._serialized(self._decode, request, context)
        except Exception as exc:
            self._refuse(exc, context)

    def Stats(self, request: bytes, context: grpc.ServicerContext) -> codec_pb2.StatsResponse:
        try:
            return self.stats(self._namespace(_stats_request(request).namespace, context))
        except Exception as exc:
            self._refuse(exc, context)

    def call_serialized(self, method: str, request: bytes, codec: EnvelopeCodec | None = None) -> tuple[bytes, int]:
        """``Encode`` or ``Decode`` outside gRPC (server.py's in-process HTTP gateway): the same checks
        as the gRPC handlers, with ``codec`` (default: the service's). Returns the serialized response
        and its payload count; raises the service's errors (:func:`status_for` maps them)."""
        operation = self._encode if method == "Encode" else self._decode
        payloads, namespace = self._split(request, None)
        answers, count = operation(payloads, namespace, request, codec), len(payloads)
        del payloads  # copies of the request's payloads: gone before the response is joined (memory peak)
        return wire.join_response(answers), count

    def _serialized(
        self, operation: Callable[[list[bytes], str, bytes], list[bytes]], request: bytes, context: grpc.ServicerContext
    ) -> bytes:
        payloads, namespace = self._split(request, context)
        note = note_call(len(payloads), namespace, len(request))
        response = wire.join_response(operation(payloads, namespace, request))
        note.sent = len(response)
        return response

    def _encode(
        self, payloads: list[bytes], namespace: str, request: bytes, codec: EnvelopeCodec | None = None
    ) -> list[bytes]:
        # One parse of the whole request checks every payload; when it fails, the codec's own
        # check (payload by payload) names the payload at fault.
        checked = _parses(codec_pb2.EncodeRequest, request)
        return (codec or self._codec).encode_serialized(payloads, namespace, checked=checked)

    def _decode(
        self, payloads: list[bytes], namespace: str, request: bytes, codec: EnvelopeCodec | None = None
    ) -> list[bytes]:
        return (codec or self._codec).decode_serialized(payloads, namespace)  # parses every payload anyway

    def _split(self, request: bytes, context: grpc.ServicerContext | None) -> tuple[list[bytes], str]:
        """A serialized Encode/Decode request's payloads and namespace, checked against the limits."""
        try:
            payloads, namespace = wire.split_request(request)
        except wire.WireError as exc:
            raise errors.RequestError(f"malformed request: {exc}") from None
        self._check_count(len(payloads))
        return payloads, self._namespace(namespace, context)

    def stats(self, namespace: str) -> codec_pb2.StatsResponse:
        """The Stats answer for a valid namespace."""
        slot = (self._keys.policy.alias_for(namespace), namespace if self._codec.bind_namespace else None)
        return stats_response(namespace, self._keys.stats(), self._kms_stats(), slot)

    def _check_count(self, count: int) -> None:
        if count > self._limits.max_payloads:
            raise errors.RequestTooLargeError(
                f"{count} payloads in one request; the limit is {self._limits.max_payloads} "
                "(MAX_PAYLOADS_PER_REQUEST): split the batch"
            )

    def _namespace(self, requested: str, context: grpc.ServicerContext | None) -> str:
        if not requested and context is not None:
            for name, value in context.invocation_metadata():
                if name == NAMESPACE_HEADER and isinstance(value, str):
                    requested = value
        if not requested:
            return self._limits.default_namespace
        try:
            return parse_namespace(requested)
        except ValueError as exc:
            raise errors.RequestError(f"invalid namespace: {exc}") from None

    def _refuse(self, exc: Exception, context: grpc.ServicerContext) -> NoReturn:
        """Abort the call with the status for ``exc``."""
        if isinstance(exc, errors.CodecError):
            code = status_for(exc)
            log.warning("request refused: %s: %s", code.name, exc)
            _abort(context, code, str(exc))
        # The type and place only: a message or a traceback's locals might quote request data.
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error("internal error: %s at %s:%d", type(exc).__name__, frame.filename, frame.lineno)
        log.debug("internal error details", exc_info=exc)
        _abort(context, grpc.StatusCode.INTERNAL, "internal error; the server log has the details")


def _parses(message: type[Message], request: bytes) -> bool:
    try:
        message.FromString(request)
    except DecodeError:
        return False
    return True


def _stats_request(request: bytes) -> codec_pb2.StatsRequest:
    """Parse a StatsRequest here: grpc's own deserializer would answer garbage with INTERNAL."""
    try:
        return codec_pb2.StatsRequest.FromString(request)
    except DecodeError:
        raise errors.RequestError("malformed request: not a serialized StatsRequest") from None


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


def stats_response(
    namespace: str, keys: KeyStats, kms: KmsCallStats, slot: tuple[str, str | None]
) -> codec_pb2.StatsResponse:
    """Build the Stats answer; the ``current_key_*`` fields describe ``slot``'s key."""
    response = codec_pb2.StatsResponse(
        namespace=namespace,
        cached_keys_count=keys.cached_keys,
        kms_generate_data_key_calls=kms.count("GenerateDataKey"),
        kms_decrypt_calls=kms.count("Decrypt"),
        kms_errors=kms.errors,
        kms_decrypt_short_circuited=kms.short_circuited,
        hot_cache_hits=keys.hot_hits,
        hot_cache_misses=keys.hot_misses,
        cold_cache_hits=keys.cold_hits,
        cold_cache_misses=keys.cold_misses,
        cold_cache_evictions=keys.cold_evictions,
        cold_cache_size=keys.cold_size,
        cold_cache_capacity=keys.cold_capacity,
        kms_degraded=keys.degraded,
        data_key_renewal_failures=keys.refresh_failures,
        kms_last_error=keys.last_refresh_error,
    )
    for current in keys.current_keys:
        response.current_keys.add(
            key_alias=current.alias,
            key_arn=current.key_arn,
            namespace=current.namespace or "",
            age_seconds=current.age,
            expires_in_seconds=current.expires_in,
            expired=current.expired,
            encryptions=current.encryptions,
            next_key_ready=current.next_ready,
            overdue=current.overdue,
        )
        if (current.alias, current.namespace) == slot:
            response.current_key_present = True
            response.current_key_age_seconds = current.age
            response.current_key_expires_in_seconds = current.expires_in
            response.current_key_expired = current.expired
    return response


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 16 * 1024 * 1024
    max_workers: int = 16
    credentials: grpc.ServerCredentials | None = None  # None: plaintext
    # Off unless WORKERS > 1: with it on, a second server started by mistake on the same port
    # would silently share the traffic instead of failing to bind.
    reuse_port: bool = False


def method_handlers(servicer: CodecServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """CodecService's handlers: requests arrive as bytes (no deserializers), parsed by the servicer."""
    return {
        "Encode": grpc.unary_unary_rpc_method_handler(servicer.Encode),
        "Decode": grpc.unary_unary_rpc_method_handler(servicer.Decode),
        "Stats": grpc.unary_unary_rpc_method_handler(
            servicer.Stats, response_serializer=codec_pb2.StatsResponse.SerializeToString
        ),
    }


def grpc_server(
    options: ServerOptions, interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = ()
) -> tuple[grpc.Server, int]:
    """A threaded gRPC server with the service's options, bound but without services."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.so_reuseport", int(options.reuse_port)),
        ],
        interceptors=list(interceptors),
    )
    address = f"[{options.host}]:{options.port}" if ":" in options.host else f"{options.host}:{options.port}"
    try:
        if options.credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, options.credentials)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} (address in use, or not an address of this machine)")
    return server, port


def create_server(
    servicer: CodecServicer,
    options: ServerOptions,
    health_servicer: health.HealthServicer | None = None,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
    observer: ObservingInterceptor | None = None,
) -> tuple[grpc.Server, int]:
    """Build (not start) a threaded gRPC server; returns it with the bound port.

    Besides CodecService it serves the standard ``grpc.health.v1.Health`` service
    (SERVING for "" and for CodecService's full name) and server reflection, so
    grpcurl and Kubernetes' gRPC probes work without proto files.
    """
    server, port = grpc_server(options, interceptors)
    handlers = method_handlers(servicer)
    if observer is not None:
        handlers = {name: observer.wrap(SERVICE_NAME, name, handler) for name, handler in handlers.items()}
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, port
