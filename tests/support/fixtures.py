"""Shared fixtures: a real KMS-compatible HTTP endpoint and real codec servers.

* ``kms_endpoint``: moto's KMS server in its own process on 127.0.0.1 (one per
  test session; every test makes its own keys and aliases).
* ``kms_client``: a boto3 KMS client against it, with a counter of the HTTP
  requests boto3 actually sends, by operation.
* ``codec_server``: a factory that starts the real gRPC server on port 0,
  built by the same code as ``server.py``, and returns a handle with a stub
  (with KMS_REGIONS, one counted client per Region: :mod:`tests.support.regions`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest

from codec_grpc.runtime.config import load_config
from codec_grpc.runtime.wiring import CodecApp, build_app, kms_client, kms_clients
from codec_grpc.v1 import codec_pb2_grpc

REGION = "us-east-1"
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # moto accepts any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def kms_endpoint() -> Iterator[str]:
    yield from loopback_server([str(Path(sys.executable).with_name("moto_server"))])


def loopback_server(command: list[str], cwd: Path | None = None) -> Iterator[str]:
    """Run ``command -H 127.0.0.1 -p PORT`` (moto's server, or a patched one) on a free port; yields
    its URL while it runs."""
    port = free_port()
    proc = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class KmsSends:
    """HTTP requests boto3 sent to KMS, by operation (counted on the wire path), and the threads
    that sent them; with KMS_REGIONS, by Region too (``by_region``)."""

    counts: Counter[str] = field(default_factory=Counter)
    threads: list[str] = field(default_factory=list)
    by_region: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def __call__(self, request: Any, region: str = "", **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        name = target.decode() if isinstance(target, bytes) else str(target)
        self.counts[name.rpartition(".")[2]] += 1
        self.by_region[region][name.rpartition(".")[2]] += 1
        self.threads.append(threading.current_thread().name)

    def __getitem__(self, operation: str) -> int:
        return self.counts[operation]

    def clear(self) -> None:
        self.counts.clear()
        self.threads.clear()
        self.by_region.clear()


def counted_client(client: Any, sends: KmsSends | None = None, region: str = "") -> tuple[Any, KmsSends]:
    sends = KmsSends() if sends is None else sends
    client.meta.events.register("before-send.kms", lambda request, **kwargs: sends(request, region, **kwargs))
    return client, sends


def boto_kms(endpoint_url: str | None = None) -> Any:
    """A plain boto3 KMS client with test credentials."""
    session: Any = boto3.session.Session()
    return session.client("kms", endpoint_url=endpoint_url, region_name=REGION, **TEST_CREDENTIALS)


def details(caught: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    """The status message of a failed call."""
    return caught.value.details() or ""


@pytest.fixture
def admin_kms(kms_endpoint: str) -> Any:
    """A plain boto3 client for setting up keys and aliases (not counted)."""
    return boto_kms(kms_endpoint)


@pytest.fixture
def make_key(admin_kms: Any) -> Callable[..., tuple[str, str]]:
    """Create a KMS key and a fresh alias for it; returns (alias, key ARN)."""

    def make(alias: str | None = None) -> tuple[str, str]:
        alias = alias or f"alias/test-{uuid.uuid4().hex[:12]}"
        key = admin_kms.create_key(Description="codec test key")["KeyMetadata"]
        admin_kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        return alias, key["Arn"]

    return make


@dataclass
class RunningCodec:
    app: CodecApp
    channel: grpc.Channel
    stub: codec_pb2_grpc.CodecServiceStub
    kms: KmsSends

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.port}"


def codec_env(kms_endpoint: str, **settings: Any) -> dict[str, str]:
    env = {
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "AWS_REGION": REGION,
        "KMS_MAX_ATTEMPTS": "1",
    }
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env


@pytest.fixture
def codec_server(kms_endpoint: str) -> Iterator[Callable[..., RunningCodec]]:
    """Start real codec servers: ``codec_server(KMS_KEY_ALIAS=..., ...)`` (settings by env name)."""
    started: list[RunningCodec] = []

    def start(**settings: Any) -> RunningCodec:
        config = load_config(codec_env(kms_endpoint, **settings))
        client: Any
        if config.kms_regions:
            client, sends = kms_clients(config, **TEST_CREDENTIALS), KmsSends()
            for region, regional in client.items():
                counted_client(regional, sends, region)
        else:
            client, sends = counted_client(kms_client(config, **TEST_CREDENTIALS))
        app = build_app(config, client)
        sends.clear()  # start-up's DescribeKey of the master keys: tests count what calls cost
        app.server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        running = RunningCodec(app, channel, codec_pb2_grpc.CodecServiceStub(channel), sends)
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.app.server.stop(grace=None)


@pytest.fixture
def server_script_env(kms_endpoint: str) -> dict[str, str]:
    """Environment for running ``server.py`` as its own process against the test KMS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    # Loopback only, and no fixed metrics port that two test processes could both want.
    env.update(
        {"GRPC_HOST": "127.0.0.1", "GATEWAY_HOST": "127.0.0.1", "METRICS_HOST": "127.0.0.1", "METRICS_PORT": "0"}
    )
    return env
