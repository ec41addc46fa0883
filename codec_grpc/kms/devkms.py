"""An embedded, KMS-compatible endpoint for development: moto's server on loopback.

``make run`` uses it when no AWS configuration is present, so the service runs
offline through exactly the same boto3 code path as in production. Keys it
holds live in memory only and vanish when the process stops: never use it for
data you need to keep.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

DEV_REGION = "us-east-1"
DEV_ACCESS_KEY = "dev-kms-not-a-secret"
DEV_SECRET_KEY = "dev-kms-not-a-secret"  # noqa: S105 - moto accepts any


class DevKms:
    """moto's KMS server in a background thread, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer  # only development installs have moto

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per KMS call otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()


def provision(client: Any, aliases: Iterable[str]) -> dict[str, str]:
    """Create one symmetric key per alias (``alias/...`` names only); return alias → key ARN."""
    arns: dict[str, str] = {}
    for alias in sorted(set(aliases)):
        if not alias.startswith("alias/"):
            log.warning("development KMS: %s is not an alias name; create that key yourself", alias)
            continue
        key = client.create_key(Description=f"development key for {alias}")["KeyMetadata"]
        client.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        arns[alias] = key["Arn"]
    return arns
