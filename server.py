"""codec-server: the Temporal payload codec server (gRPC CodecService).

Reads its configuration once (environment and flags; ``--help`` lists every
setting), builds the layers and serves until SIGTERM or SIGINT. A bad setting
exits with status 2 and a one-line message naming it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from codec_grpc.app import CodecApp, build_app, kms_client
from codec_grpc.config import Config, load_config
from codec_grpc.errors import ConfigError
from codec_grpc.gateway_server import GatewayThread, local_target

log = logging.getLogger("codec_server")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        config = load_config(os.environ if environ is None else environ, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"codec-server: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dev_kms, client = _kms(config)
    try:
        app = build_app(config, client)
    except OSError as exc:
        print(f"codec-server: error: GRPC_PORT: {exc}", file=sys.stderr)
        return 2
    try:
        return _serve(app)
    finally:
        if dev_kms is not None:
            dev_kms.stop()


def _kms(config: Config) -> tuple[Any, Any]:
    """The boto3 KMS client, against the embedded development KMS when that is asked for."""
    if not _wants_dev_kms(config):
        return None, kms_client(config)
    from codec_grpc import devkms

    server = devkms.DevKms()
    url = server.start()
    client = kms_client(
        config,
        endpoint_url=url,
        region_name=config.aws_region or devkms.DEV_REGION,
        aws_access_key_id=devkms.DEV_ACCESS_KEY,
        aws_secret_access_key=devkms.DEV_SECRET_KEY,
    )
    aliases = devkms.provision(client, [config.kms_key_alias, *config.namespace_key_aliases.values()])
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
    if config.aws_endpoint_url_kms:
        return False
    import boto3

    session = boto3.session.Session()
    return session.get_credentials() is None


def _serve(app: CodecApp) -> int:
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.server.start()
    config = app.config
    try:
        gateway = _start_gateway(app)
    except OSError as exc:
        print(f"codec-server: error: PORT: {exc}", file=sys.stderr)
        app.server.stop(grace=None).wait()
        return 2
    log.info(
        "codec server listening on %s:%d (gRPC); default master key %s; namespace binding %s",
        config.grpc_host,
        app.port,
        config.kms_key_alias,
        "on" if config.namespace_binding else "off",
    )
    stopping.wait()
    app.health.enter_graceful_shutdown()  # NOT_SERVING: load balancers and probes stop sending
    if gateway is not None:
        gateway.stop()  # before the gRPC server, so that HTTP requests in flight can finish
    app.server.stop(grace=30).wait()
    log.info("stopped")
    return 0


def _start_gateway(app: CodecApp) -> GatewayThread | None:
    """The HTTP gateway in front of the gRPC port just bound (None when GATEWAY_ENABLED is false)."""
    config = app.config
    if not config.gateway_enabled:
        return None
    gateway = GatewayThread(config, local_target(config.grpc_host, app.port))
    port = gateway.start()
    log.info(
        "HTTP gateway listening on %s:%d (Temporal UI and CLI); CORS origins: %s; auth %s",
        config.gateway_host,
        port,
        ", ".join(sorted(config.cors_allowed_origins)) or "none",
        "on" if config.auth_enabled else "off",
    )
    return gateway


if __name__ == "__main__":
    sys.exit(main())
