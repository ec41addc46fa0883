"""Running the HTTP gateway: in its own process, or on a background thread of ``server.py``.

* :func:`start_gateway` binds the aiohttp server (port 0 picks a free port) in
  front of an upstream, and returns it with the bound port; tests use it through
  :class:`GatewayThread`. The upstream is a gRPC target (``host:port``) or an
  :class:`~codec_grpc.gateway.Upstream` such as server.py's
  ``codec_grpc.gateway_inprocess.InProcessUpstream``.
* :class:`GatewayThread` gives the gateway an event loop of its own, so that the
  threaded gRPC server in ``server.py`` (and tests) can start and stop it.
* :func:`main` is ``codec-gateway`` / ``python -m codec_grpc.gateway``: the
  gateway alone, in front of the gRPC service at ``CODEC_GRPC_TARGET`` (how the
  Helm chart runs it as a sidecar). It reads the same settings as the server;
  only the gateway and auth ones matter to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from codec_grpc.config import Config, load_config
from codec_grpc.errors import ConfigError
from codec_grpc.gateway import GatewaySettings, GrpcUpstream, Upstream, create_app
from codec_grpc.gateway_auth import AuthSettings, TokenVerifier
from codec_grpc.logs import configure_logging
from codec_grpc.metrics import GatewayMetrics, new_registry, start_metrics_server
from codec_grpc.tls import gateway_ssl_context, gateway_upstream_credentials

log = logging.getLogger(__name__)


def token_verifier(config: Config) -> TokenVerifier | None:
    """The bearer-token verifier when AUTH_JWKS_URL is set, else ``None`` (auth off)."""
    if config.auth_jwks_url is None or config.auth_issuer is None:
        return None
    return TokenVerifier(
        AuthSettings(
            jwks_url=config.auth_jwks_url,
            issuer=config.auth_issuer,
            audience=config.auth_audience,
            namespaces_claim=config.auth_namespaces_claim,
            refresh_interval=config.auth_jwks_refresh_interval,
        )
    )


@dataclass
class RunningGateway:
    runner: web.AppRunner
    upstream: Upstream
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.upstream.close()


async def start_gateway(
    config: Config, upstream: str | Upstream, registry: CollectorRegistry | None = None
) -> RunningGateway:
    """Serve the gateway on GATEWAY_HOST:PORT in front of ``upstream``: the gRPC service at that
    target, or the given upstream (the gateway closes it when it stops or fails to bind).

    HTTPS when the gateway or gRPC TLS settings say so; TLS to a gRPC target when
    CODEC_GRPC_CA_FILE is set; request metrics into ``registry`` when given.
    """
    ssl_context = gateway_ssl_context(config)  # a bad setting fails here, before anything is opened
    if isinstance(upstream, str):
        upstream = GrpcUpstream(upstream, gateway_upstream_credentials(config), config.codec_grpc_server_name)
    metrics = GatewayMetrics(registry) if registry is not None else None
    app = create_app(GatewaySettings.from_config(config), upstream, token_verifier(config), metrics)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        # WORKERS > 1: every worker process serves the gateway on the same port.
        reuse_port = config.workers > 1
        await web.TCPSite(
            runner, config.gateway_host, config.port, ssl_context=ssl_context, reuse_port=reuse_port
        ).start()
    except BaseException:
        await runner.cleanup()
        await upstream.close()
        raise
    port = int(runner.addresses[0][1])
    return RunningGateway(runner, upstream, port)


class GatewayThread:
    """The gateway on its own event loop in a daemon thread."""

    def __init__(self, config: Config, upstream: str | Upstream, registry: CollectorRegistry | None = None) -> None:
        self._config = config
        self._upstream = upstream
        self._registry = registry
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._gateway: RunningGateway | None = None
        self._thread = threading.Thread(target=self._run, name="http-gateway", daemon=True)

    def start(self, timeout: float = 30.0) -> int:
        """Start serving; returns the bound port. Raises what binding raised (e.g. OSError)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the HTTP gateway did not start within {timeout}s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self._gateway is not None
        return self._gateway.port

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish the requests in flight, close the upstream."""
        if self._gateway is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._gateway.stop(), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            try:
                self._gateway = self._loop.run_until_complete(
                    start_gateway(self._config, self._upstream, self._registry)
                )
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._ready.set()
            self._loop.run_forever()
        finally:
            # Requests still being read (a client that stopped sending) end with the loop, quietly.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """codec-gateway: the HTTP gateway alone, in front of CODEC_GRPC_TARGET."""
    try:
        config = load_config(
            os.environ if environ is None else environ, sys.argv[1:] if argv is None else argv, prog="codec-gateway"
        )
    except ConfigError as exc:
        print(f"codec-gateway: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    registry = new_registry()
    metrics_server = None
    try:
        if config.metrics_enabled:
            metrics_server, metrics_port = start_metrics_server(config.metrics_host, config.metrics_port, registry)
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
