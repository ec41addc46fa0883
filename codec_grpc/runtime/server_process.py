"""codec-server: the Temporal payload codec server (gRPC CodecService); ``server.py`` runs :func:`main`.

Reads its configuration once (environment and flags; ``--help`` lists every
setting), builds the layers and serves until SIGTERM or SIGINT. A bad setting
exits with status 2 and a one-line message naming it.

The HTTP/JSON gateway for the Temporal UI and CLI runs next to it on PORT
(GATEWAY_ENABLED), calling the codec of this process directly, without a gRPC
hop (``codec_grpc.gateway.upstreams.InProcessUpstream``).

Stopping: on SIGTERM or SIGINT health turns NOT_SERVING, the gateway finishes
the HTTP requests in flight and stops, new gRPC calls are refused, calls in
flight get up to SHUTDOWN_GRACE seconds to finish, and the process exits with
status 0.

WORKERS=N (N > 1) forks N such servers sharing the ports (``runtime.workers``);
this process then supervises them and serves their summed metrics.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from codec_grpc.errors import ConfigError
from codec_grpc.gateway import GatewayThread
from codec_grpc.kms import devkms
from codec_grpc.kms.client import aws_credentials_found
from codec_grpc.runtime.access import unauthenticated_ports, warn_if_unauthenticated
from codec_grpc.runtime.config import Config, check_exposure, load_config
from codec_grpc.runtime.gateway_process import GatewayAccess, gateway_thread
from codec_grpc.runtime.logs import configure_logging
from codec_grpc.runtime.metrics import new_registry, read_bearer_token, start_metrics_server, unauthenticated_gauge
from codec_grpc.runtime.multiprocess import (
    KeyStatsPublisher,
    enable_multiprocess_mode,
    forget_process,
    multiprocess_registry,
)
from codec_grpc.runtime.wiring import (
    CodecApp,
    build_app,
    in_process_upstream,
    kms_client,
    kms_clients,
    namespace_scope,
)
from codec_grpc.runtime.workers import Supervisor, fork_workers, reserved_ports

log = logging.getLogger("codec_server")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        config = load_config(os.environ if environ is None else environ, sys.argv[1:] if argv is None else argv)
        check_exposure(config, serves_grpc=True, serves_gateway=config.gateway_enabled)
    except ConfigError as exc:
        print(f"codec-server: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    warn_if_unauthenticated(_unauthenticated(config))
    if config.workers > 1:
        return _run_workers(config)
    return _run_server(config)


def _run_server(config: Config, worker: int | None = None, received: list[int] | None = None) -> int:
    """One server process: the only one (worker None), or worker ``worker`` of WORKERS."""
    # Before any port is bound: a SIGTERM from then on (a test, a kubelet) stops the server cleanly.
    received = _record_stop_signals() if received is None else received
    dev_kms, client = _kms(config)
    publisher = None
    try:
        app = build_app(config, client, new_registry())
        unauthenticated_gauge(app.registry, len(_unauthenticated(config)))
        # A worker's metrics reach the supervisor's endpoint through the shared files.
        metrics_server = _metrics_server(app) if worker is None else None
    except (OSError, ConfigError) as exc:
        message = str(exc) if isinstance(exc, ConfigError) else f"GRPC_PORT: {exc}"
        print(f"codec-server: error: {message}", file=sys.stderr)
        return 2
    if worker is not None:
        publisher = KeyStatsPublisher(app.keys.stats, labelled=namespace_scope(app.config).configured.__contains__)
        publisher.start()
    try:
        abandoned = _serve(app, received)
    except ConfigError as exc:
        print(f"codec-server: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if publisher is not None:
            publisher.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        if dev_kms is not None:
            dev_kms.stop()
    if abandoned:
        # Handlers cut off by the grace period still run in pool threads (e.g. blocked on KMS), and
        # interpreter exit would join them: leave now, as the grace period promised.
        logging.shutdown()
        os._exit(0)
    return 0


def _metrics_server(app: CodecApp) -> Any:
    """Serve /metrics on its own port (never the UI-facing one), when enabled."""
    config = app.config
    if not config.metrics_enabled:
        return None
    token = read_bearer_token(config.metrics_bearer_token_file) if config.metrics_bearer_token_file else None
    try:
        server, port = start_metrics_server(config.metrics_host, config.metrics_port, app.registry, token)
    except OSError as exc:
        address = f"{config.metrics_host}:{config.metrics_port}"
        raise ConfigError("METRICS_PORT", f"cannot listen on {address}: {exc}") from None
    log.info("metrics at http://%s:%d/metrics", config.metrics_host, port, extra={"metrics_port": port})
    return server


def _run_workers(config: Config) -> int:
    """WORKERS > 1: fork the workers, serve their summed metrics, wait for them (``runtime.workers``)."""
    if _wants_dev_kms(config):
        # Its keys live in one process's memory: each worker would have its own KMS, and data encoded
        # by one worker could not be decoded by another.
        print("codec-server: error: WORKERS: the development KMS (DEV_KMS) needs WORKERS=1", file=sys.stderr)
        return 2
    metrics_dir = tempfile.mkdtemp(prefix="codec-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client in every worker
    enable_multiprocess_mode()
    metrics_server = None
    try:
        with reserved_ports(config) as bound:
            # Blocked until each process has its handlers: a stop signal is then never lost or fatal.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            pids = fork_workers(bound.workers, lambda index: _worker(bound, index))
            supervisor = Supervisor(pids, on_exit=lambda pid: forget_process(pid, metrics_dir))
            supervisor.install_signal_handlers()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            log.info("supervisor: %d workers, pids %s", len(pids), " ".join(map(str, pids)))
            metrics_server = _supervisor_metrics(config, metrics_dir, supervisor)
            return supervisor.wait()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker(config: Config, index: int) -> int:
    received = _record_stop_signals()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return _run_server(config, worker=index, received=received)


def _supervisor_metrics(config: Config, metrics_dir: str, supervisor: Supervisor) -> Any:
    if not config.metrics_enabled:
        return None
    registry = multiprocess_registry(metrics_dir)
    try:
        token = read_bearer_token(config.metrics_bearer_token_file) if config.metrics_bearer_token_file else None
        server, port = start_metrics_server(config.metrics_host, config.metrics_port, registry, token)
    except ConfigError as exc:
        print(f"codec-server: error: {exc}", file=sys.stderr)
        supervisor.fail(2)
        return None
    except OSError as exc:
        print(f"codec-server: error: METRICS_PORT: cannot listen: {exc}", file=sys.stderr)
        supervisor.fail(2)
        return None
    log.info(
        "metrics of all workers at http://%s:%d/metrics",
        config.metrics_host,
        port,
        extra={"event": "metrics_started", "metrics_port": port},
    )
    return server


def _kms(config: Config) -> tuple[Any, Any]:
    """The boto3 KMS client (with KMS_REGIONS, one per Region), against the embedded development KMS
    when that is asked for."""
    if not _wants_dev_kms(config):
        return None, kms_clients(config) if config.kms_regions else kms_client(config)
    server = devkms.DevKms()
    url = server.start()
    credentials = {"aws_access_key_id": devkms.DEV_ACCESS_KEY, "aws_secret_access_key": devkms.DEV_SECRET_KEY}
    wanted = [config.kms_key_alias, *config.namespace_key_aliases.values()]
    client: Any
    if config.kms_regions:
        client = kms_clients(config, endpoint_url=url, **credentials)
        aliases = devkms.provision_multi_region(client, wanted)
    else:
        client = kms_client(config, endpoint_url=url, region_name=config.aws_region or devkms.DEV_REGION, **credentials)
        aliases = devkms.provision(client, wanted)
    banner = "!" * 78
    log.warning(banner)
    log.warning("DEVELOPMENT KMS at %s (moto, in memory): keys vanish when this process stops.", url)
    log.warning("Do not encrypt data you need to keep. Configure AWS to use the real KMS.")
    for alias, arn in aliases.items():
        log.warning("development key %s -> %s", alias, arn)
    log.warning(banner)
    return server, client


def _wants_dev_kms(config: Config) -> bool:
    if config.dev_kms != "auto":
        return config.dev_kms == "on"
    if config.aws_endpoint_url_kms or config.kms_region_endpoints:
        return False
    return not aws_credentials_found()


def _record_stop_signals() -> list[int]:
    """From now on SIGTERM and SIGINT are appended to the returned list."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only record it: a signal handler runs between two bytecodes of the main thread, which may be
        # holding a lock (logging's, an Event's) at that moment; taking it again here would deadlock.
        received.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return received


def _serve(app: CodecApp, received: list[int]) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns how many calls the grace period cut off."""
    app.server.start()
    gateway = _start_gateway(app)
    _banner(app)
    while not received:
        time.sleep(0.1)
    log.info("received %s: stopping", signal.Signals(received[0]).name)
    grace = app.config.shutdown_grace
    app.health.enter_graceful_shutdown()  # NOT_SERVING: watchers (load balancers) stop sending
    if gateway is not None:
        gateway.stop(timeout=grace)  # before the gRPC server, so that HTTP requests in flight can finish
    stopped = app.server.stop(grace=grace)  # refuses new calls from here on; returns at once
    log.info("draining: new calls are refused, calls in flight have %gs to finish", grace)
    stopped.wait()
    abandoned = app.observer.in_flight
    if abandoned:
        log.warning("%d calls did not finish within SHUTDOWN_GRACE=%gs and were cancelled", abandoned, grace)
    log.info("stopped")
    return abandoned


def _start_gateway(app: CodecApp) -> GatewayThread | None:
    """The HTTP gateway in front of this process's codec (None when GATEWAY_ENABLED is false)."""
    config = app.config
    if not config.gateway_enabled:
        return None
    # METRICS_ENABLED=false: HTTP requests are not counted either (nothing could serve the counts).
    registry = app.registry if config.metrics_enabled else None
    gateway = gateway_thread(config, in_process_upstream(app), registry, GatewayAccess(app.verifier, app.access))
    try:
        port = gateway.start()
    except ConfigError:
        app.server.stop(grace=None).wait()
        raise
    except OSError as exc:
        app.server.stop(grace=None).wait()
        raise ConfigError("PORT", str(exc)) from None
    log.info(
        "HTTP gateway listening on %s:%d (Temporal UI and CLI); CORS origins: %s; auth %s",
        config.gateway_host,
        port,
        ", ".join(sorted(config.cors_allowed_origins)) or "none",
        "on" if config.auth_enabled else "off",
        extra={"event": "gateway_started", "http_port": port},
    )
    return gateway


def _banner(app: CodecApp) -> None:
    """The start-up line: where it listens and how it is set up; no secrets, no key material."""
    config = app.config
    tls = "mtls" if config.tls_client_ca_file else "tls" if config.tls_cert_file else "plaintext"
    log.info(
        "codec server listening on %s:%d (gRPC, %s); default master key %s%s; namespace binding %s",
        config.grpc_host,
        app.port,
        tls,
        config.kms_key_alias,
        f" in {', '.join(config.kms_regions)}" if config.kms_regions else "",
        "on" if config.namespace_binding else "off",
        extra={
            "event": "started",
            "grpc_address": f"{config.grpc_host}:{app.port}",
            "grpc_port": app.port,
            "tls": tls,
            "kms_key_alias": config.kms_key_alias,
            "namespace_key_aliases": dict(config.namespace_key_aliases),
            "kms_regions": list(config.kms_regions),
            "namespace_binding": config.namespace_binding,
            "metrics_enabled": config.metrics_enabled,
            "shutdown_grace_seconds": config.shutdown_grace,
        },
    )


def _unauthenticated(config: Config) -> list[str]:
    return unauthenticated_ports(config, serves_grpc=True, serves_gateway=config.gateway_enabled)
