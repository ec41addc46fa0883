"""The HTTP gateway built from the configuration: in ``server.py``'s process, or as ``codec-gateway``.

* :func:`start_gateway` serves the gateway on GATEWAY_HOST:PORT in front of an
  upstream: server.py's in-process one, or the gRPC service at a target.
* :func:`gateway_thread` runs that on an event loop of its own thread (server.py, tests).
* :func:`main` is ``codec-gateway`` (``python -m codec_grpc.runtime.gateway_process``):
  the gateway alone, in front of the gRPC service at ``CODEC_GRPC_TARGET`` (how the
  Helm chart runs it as a sidecar). It reads the same settings as the server;
  only the gateway and auth ones matter to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from codec_grpc.access import AccessPolicy, TokenVerifier
from codec_grpc.errors import ConfigError
from codec_grpc.gateway import GatewaySettings, GatewayThread, GrpcUpstream, RunningGateway, Upstream, create_app, serve
from codec_grpc.gateway.storage import StorageRoutes
from codec_grpc.runtime.access import (
    access_policy,
    token_verifier,
    unauthenticated_ports,
    unauthenticated_warning,
    warn_if_unauthenticated,
)
from codec_grpc.runtime.config import Config, check_exposure, load_config
from codec_grpc.runtime.logs import configure_logging
from codec_grpc.runtime.metrics import (
    GatewayMetrics,
    new_registry,
    read_bearer_token,
    start_metrics_server,
    unauthenticated_gauge,
)
from codec_grpc.runtime.storage import external_storage
from codec_grpc.runtime.tls import gateway_ssl_context, gateway_upstream_credentials

log = logging.getLogger(__name__)


def gateway_settings(config: Config, *, in_process: bool = False) -> GatewaySettings:
    """The gateway's settings; ``in_process``: it runs in server.py, whose gRPC port /health speaks for too."""
    warning = unauthenticated_warning(unauthenticated_ports(config, serves_grpc=in_process, serves_gateway=True))
    return GatewaySettings(
        default_namespace=config.default_namespace,
        max_body_bytes=config.gateway_max_body_bytes,
        max_payloads=config.max_payloads_per_request,
        allowed_origins=config.cors_allowed_origins,
        upstream_timeout=config.gateway_upstream_timeout,
        allowed_hosts=config.gateway_allowed_hosts,
        warnings=(warning,) if warning else (),
    )


@dataclass(frozen=True)
class GatewayAccess:
    """Who the gateway lets in: the token verifier (None: no tokens checked) and the access policy."""

    verifier: TokenVerifier | None
    policy: AccessPolicy

    @classmethod
    def from_config(cls, config: Config) -> GatewayAccess:
        return cls(token_verifier(config), access_policy(config))


async def start_gateway(
    config: Config,
    upstream: str | Upstream,
    registry: CollectorRegistry | None = None,
    access: GatewayAccess | None = None,
    storage: StorageRoutes | None = None,
) -> RunningGateway:
    """Serve the gateway on GATEWAY_HOST:PORT in front of ``upstream``: the gRPC service at that
    target, or the given upstream (the gateway closes it when it stops or fails to bind).

    HTTPS when the gateway or gRPC TLS settings say so; TLS to a gRPC target when
    CODEC_GRPC_CA_FILE is set; request metrics into ``registry`` when given; callers checked by
    ``access`` (default: built from the configuration); External Storage by ``storage`` (default: built
    from the configuration, none without EXTERNAL_STORAGE_BUCKETS).
    """
    ssl_context = gateway_ssl_context(config)  # a bad setting fails here, before anything is opened
    access = access or GatewayAccess.from_config(config)
    in_process = not isinstance(upstream, str)
    if isinstance(upstream, str):
        upstream = GrpcUpstream(upstream, gateway_upstream_credentials(config), config.codec_grpc_server_name)
    metrics = GatewayMetrics(registry) if registry is not None else None
    settings = gateway_settings(config, in_process=in_process)
    storage = storage or external_storage(config, registry)
    app = create_app(settings, upstream, access.verifier, metrics, access.policy, storage=storage)
    # WORKERS > 1: every worker process serves the gateway on the same port.
    return await serve(
        app, upstream, config.gateway_host, config.port, ssl_context=ssl_context, reuse_port=config.workers > 1
    )


def gateway_thread(
    config: Config,
    upstream: str | Upstream,
    registry: CollectorRegistry | None = None,
    access: GatewayAccess | None = None,
    storage: StorageRoutes | None = None,
) -> GatewayThread:
    """:func:`start_gateway` on an event loop of its own thread; ``start()`` it."""
    return GatewayThread(lambda: start_gateway(config, upstream, registry, access, storage))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """codec-gateway: the HTTP gateway alone, in front of CODEC_GRPC_TARGET."""
    try:
        config = load_config(
            os.environ if environ is None else environ, sys.argv[1:] if argv is None else argv, prog="codec-gateway"
        )
        check_exposure(config, serves_grpc=False, serves_gateway=True)
    except ConfigError as exc:
        print(f"codec-gateway: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    warn_if_unauthenticated(unauthenticated_ports(config, serves_grpc=False, serves_gateway=True))
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    registry = new_registry()
    metrics_server = None
    try:
        if config.metrics_enabled:
            token = read_bearer_token(config.metrics_bearer_token_file) if config.metrics_bearer_token_file else None
            metrics_server, metrics_port = start_metrics_server(
                config.metrics_host, config.metrics_port, registry, token
            )
            unauthenticated_gauge(registry, len(unauthenticated_ports(config, serves_grpc=False, serves_gateway=True)))
            log.info("metrics at http://%s:%d/metrics", config.metrics_host, metrics_port)
        counted = registry if config.metrics_enabled else None  # no endpoint: nothing to count for
        gateway = await start_gateway(config, config.codec_grpc_target, counted)
    except ConfigError as exc:
        print(f"codec-gateway: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = "PORT" if metrics_server is not None or not config.metrics_enabled else "METRICS_PORT"
        print(f"codec-gateway: error: {where}: {exc}", file=sys.stderr)
        if metrics_server is not None:
            metrics_server.shutdown()
        return 2
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    log.info(
        "HTTP gateway listening on %s:%d, forwarding to gRPC %s; auth %s",
        config.gateway_host,
        gateway.port,
        config.codec_grpc_target,
        "on" if config.auth_enabled else "off",
    )
    await stopping.wait()
    log.info("stopping")
    await gateway.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
