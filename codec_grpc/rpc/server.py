"""The threaded gRPC server: options, binding, and CodecService with health and reflection.

Its thread pool is a :class:`~codec_grpc.rpc.executor.CallExecutor`: at most ``running_calls``
calls running at once on up to ``max_workers`` threads, the rest of which serve calls waiting for
KMS. Bounded by its options: at most ``max_concurrent_rpcs`` calls in progress (running, waiting
for KMS or queued; grpc answers the next with RESOURCE_EXHAUSTED at once, before reading its
message), requests of at most ``max_message_bytes`` and metadata of at most
``max_metadata_bytes`` (RESOURCE_EXHAUSTED beyond either).
"""

from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from codec_grpc.rpc.executor import CallExecutor
from codec_grpc.rpc.observe import CallObserver
from codec_grpc.rpc.servicer import CodecServicer, method_handlers
from codec_grpc.service import SERVICE_NAME

# Calls in progress per thread when ServerOptions.max_concurrent_rpcs is None (256 with 16 threads):
# bursts from many workers queue rather than fail, but a flood of calls cannot pile up without end.
# A queued call holds no thread and has not had its message read. (4 per thread, 64, refused calls
# from 64 clients that each wait for their answer before the next call: grpc counts a call as
# finished only after its answer left, so the next one can arrive first.)
CONCURRENT_RPCS_PER_WORKER = 16


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 16 * 1024 * 1024
    max_workers: int = 16  # threads: running calls, and calls waiting for KMS
    running_calls: int = 2  # calls running at once (CallExecutor); the GIL runs one thread at a time
    credentials: grpc.ServerCredentials | None = None  # None: plaintext
    # Off unless WORKERS > 1: with it on, a second server started by mistake on the same port
    # would silently share the traffic instead of failing to bind.
    reuse_port: bool = False
    max_concurrent_rpcs: int | None = None  # None: CONCURRENT_RPCS_PER_WORKER x max_workers
    # gRPC's own default is a soft 8 KiB (calls between 8 and 16 KiB refused at random) and a hard 16 KiB;
    # this is both, so that a call is refused or not whatever the dice (a bearer JWT is 1 to 4 KiB).
    max_metadata_bytes: int = 16 * 1024
    reflection: bool = True

    @property
    def concurrent_rpcs(self) -> int:
        """The limit on calls in progress that the server applies."""
        return self.max_concurrent_rpcs or CONCURRENT_RPCS_PER_WORKER * self.max_workers


def call_executor(options: ServerOptions) -> CallExecutor:
    """The thread pool for a server with ``options`` (its ``stepping_aside`` goes to the key manager)."""
    return CallExecutor(min(options.running_calls, options.max_workers), options.max_workers, name="grpc")


def grpc_server(options: ServerOptions, executor: CallExecutor | None = None) -> tuple[grpc.Server, int]:
    """A threaded gRPC server with the service's options, bound but without services; its calls run
    on ``executor`` (by default a new :func:`call_executor`)."""
    server = grpc.server(
        cast(futures.ThreadPoolExecutor, executor or call_executor(options)),  # grpc only calls submit
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_metadata_size", options.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", options.max_metadata_bytes),
            ("grpc.so_reuseport", int(options.reuse_port)),
        ],
        maximum_concurrent_rpcs=options.concurrent_rpcs,
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
    observer: CallObserver | None = None,
    executor: CallExecutor | None = None,
) -> tuple[grpc.Server, int]:
    """Build (not start) a threaded gRPC server; returns it with the bound port.

    Besides CodecService it serves the standard ``grpc.health.v1.Health`` service
    (SERVING for "" and for CodecService's full name) and, unless ``options.reflection``
    is off, server reflection, so grpcurl and Kubernetes' gRPC probes work without proto files.
    """
    server, port = grpc_server(options, executor)
    handlers = method_handlers(servicer)
    if observer is not None:
        handlers = {name: observer.wrap(SERVICE_NAME, name, handler) for name, handler in handlers.items()}
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if options.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return server, port


class _HealthContext:
    """All of a ServicerContext that ``HealthServicer.Check`` uses: the code for an unknown service."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code


def serving_status(health_servicer: health.HealthServicer) -> str:
    """The overall health status name (``SERVING`` when the server serves), read without a gRPC call.

    The standard servicer's ``Check``, not an observed one: this is no gRPC call to count.
    """
    context = _HealthContext()
    request = health_pb2.HealthCheckRequest(service="")
    answer = health.HealthServicer.Check(health_servicer, request, cast(grpc.ServicerContext, context))
    if context.code is not None:
        return "SERVICE_UNKNOWN"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
