"""A real Temporal end to end (tests/support/temporal.py): a Python worker with our codec and
temporalio's S3StorageDriver, the real CLI through our gateway, what the history and the bucket hold."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from tests.support.cdp import chromium_page
from tests.support.paths import ROOT
from tests.support.storage import boto_s3, objects_in
from tests.support.temporal import NAMESPACE, TASK_QUEUE, THRESHOLD, SecretWorkflow, TemporalStack

SMALL = {"card": "4242-small-secret-e2e"}
LARGE = {"card": "4242-large-secret-e2e", "padding": "L" * (THRESHOLD + 40_000)}
# Over Temporal's 2 MiB limit for one payload (limit.blobSize.error): only offloading lets it in.
HUGE = {"card": "4242-huge-secret-e2e", "padding": "H" * (2 * 1024 * 1024 + 300_000)}
REFERENCE_TYPE = b"temporal.api.sdk.v1.ExternalStorageReference"


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere in a message (history events nest them deeply)."""
    for described, value in message.ListFields():
        if described.message_type is None:
            continue
        if described.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif described.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, Payload):
                yield item
            elif isinstance(item, Message):
                yield from payloads_in(item)


def history_payloads(stack: TemporalStack, workflow_id: str) -> list[Payload]:
    assert stack.client is not None
    history = stack.run(stack.client.get_workflow_handle(workflow_id).fetch_history())
    return [payload for event in history.events for payload in payloads_in(event)]


def run_secret_workflow(stack: TemporalStack) -> tuple[str, dict[str, Any]]:
    assert stack.client is not None
    workflow_id = f"secret-{uuid.uuid4().hex[:8]}"
    result = stack.run(
        stack.client.execute_workflow(SecretWorkflow.run, args=[SMALL, LARGE], id=workflow_id, task_queue=TASK_QUEUE)
    )
    return workflow_id, result


def assert_only_ciphertext_and_references(payloads: list[Payload]) -> None:
    kinds = set()
    for payload in payloads:
        wire = payload.SerializeToString()
        assert b"-secret-e2e" not in wire and b"LLLLLLLL" not in wire and b"HHHHHHHH" not in wire
        if payload.metadata.get("messageType") == REFERENCE_TYPE:
            kinds.add("reference")
            assert payload.external_payloads[0].size_bytes >= THRESHOLD
        else:
            assert payload.metadata["encoding"] == b"binary/encrypted", payload.metadata
            kinds.add("encrypted")
    assert kinds == {"reference", "encrypted"}


def test_python_worker_with_the_s3_driver_keeps_only_ciphertext(temporal_stack: TemporalStack):
    workflow_id, result = run_secret_workflow(temporal_stack)

    assert result == {
        "small": SMALL,
        "sealed": {"sealed": LARGE["card"], "length": len(LARGE["padding"])},
        "echo": LARGE,
    }
    payloads = history_payloads(temporal_stack, workflow_id)
    assert_only_ciphertext_and_references(payloads)
    # Three references: the workflow's large input, the activity's input, the workflow's result.
    assert sum(p.metadata.get("messageType") == REFERENCE_TYPE for p in payloads) == 3
    stored = objects_in(boto_s3(temporal_stack.s3_endpoint), temporal_stack.bucket)
    mine = {key: data for key, data in stored.items() if f"/wi/{workflow_id}/" in key}
    assert len(mine) == 3
    for key, data in mine.items():
        assert key.startswith(f"v0/ns/{NAMESPACE}/")
        assert b"-secret-e2e" not in data and b"LLLLLLLL" not in data
        assert Payload.FromString(data).metadata["encoding"] == b"binary/encrypted"


def test_cli_workflow_show_resolves_and_decodes_both(temporal_stack: TemporalStack):
    workflow_id, _ = run_secret_workflow(temporal_stack)

    shown = temporal_stack.cli("workflow", "show", "--workflow-id", workflow_id, "--output", "json")

    assert shown.returncode == 0, shown.stderr[-3000:]
    payloads = list(json_payloads(json.loads(shown.stdout)))
    encodings = {base64.b64decode(p["metadata"]["encoding"]) for p in payloads}
    assert encodings == {b"json/plain"}  # every payload decoded, every reference resolved
    values = [json.loads(base64.b64decode(p["data"])) for p in payloads]
    assert SMALL in values and LARGE in values
    assert {
        "small": SMALL,
        "sealed": {"sealed": LARGE["card"], "length": len(LARGE["padding"])},
        "echo": LARGE,
    } in values


def json_payloads(document: Any) -> Iterator[dict[str, Any]]:
    """Every payload ({"metadata": …, "data": …}) in a JSON document."""
    if isinstance(document, dict):
        if "metadata" in document and "encoding" in document["metadata"]:
            yield document
            return
        for value in document.values():
            yield from json_payloads(value)
    elif isinstance(document, list):
        for value in document:
            yield from json_payloads(value)


def test_cli_workflow_start_offloads_a_large_input(temporal_stack: TemporalStack, tmp_path: Path):
    workflow_id = f"cli-{uuid.uuid4().hex[:8]}"
    small_file, large_file = tmp_path / "small.json", tmp_path / "large.json"
    small_file.write_text(json.dumps(SMALL))
    large_file.write_text(json.dumps(HUGE))

    started = temporal_stack.cli(
        "workflow",
        "start",
        "--type",
        "SecretWorkflow",
        "--task-queue",
        TASK_QUEUE,
        "--workflow-id",
        workflow_id,
        "--input-file",
        str(small_file),
        "--input-file",
        str(large_file),
    )

    assert started.returncode == 0, started.stderr[-3000:]
    assert temporal_stack.client is not None
    result = temporal_stack.run(temporal_stack.client.get_workflow_handle(workflow_id).result())
    assert result["echo"] == HUGE and result["small"] == SMALL
    first = history_payloads(temporal_stack, workflow_id)[:2]  # the WorkflowExecutionStarted input
    assert first[0].metadata["encoding"] == b"binary/encrypted"
    assert first[1].metadata["messageType"] == REFERENCE_TYPE
    assert json.loads(first[1].data)["claimData"]["key"].startswith(f"v0/ns/{NAMESPACE}/d/sha256/")


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (CI: apt-get update && apt-get install -y chromium)")
    return found


def test_web_ui_shows_the_small_secret_and_downloads_the_large_one(
    temporal_stack: TemporalStack, chromium: str, tmp_path: Path
):
    workflow_id, _ = run_secret_workflow(temporal_stack)
    assert temporal_stack.client is not None
    run_id = temporal_stack.run(temporal_stack.client.get_workflow_handle(workflow_id).describe()).run_id
    url = f"{temporal_stack.ui_url}/namespaces/{NAMESPACE}/workflows/{workflow_id}/{run_id}/history"
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    shown, files = asyncio.run(browse_and_download(chromium, url, tmp_path, downloads))

    # The workflow page's Input: the small secret decoded, the large one a reference with its size,
    # whose button (the UI draws it only when the decoded payload is a reference) downloads it.
    assert SMALL["card"] in shown
    assert "aws.s3driver" in shown and "LLLLLLLL" not in shown
    [downloaded] = files
    assert downloaded.name == f"payload-wf-{workflow_id}-run-{run_id}-input.json"
    assert json.loads(downloaded.read_text()) == LARGE
    assert "POST download 200" in temporal_stack.server.wait_for_line("HTTP POST download")


async def browse_and_download(chromium: str, url: str, tmp_path: Path, downloads: Path) -> tuple[str, list[Path]]:
    async with chromium_page(chromium, tmp_path / "profile", downloads) as page:
        try:
            await page.send("Page.navigate", url=url)
            await page.wait_for(f"document.body.innerText.includes({json.dumps(SMALL['card'])})", timeout=40)
            await page.wait_for(CLICK_FIRST_DOWNLOAD, timeout=20)
            await page.wait_for_files(downloads, timeout=30)
            return await page.text(), sorted(downloads.iterdir())
        except BaseException:
            await page.screenshot(tmp_path / "ui.png")  # for a person to look at: pytest keeps tmp_path
            raise


# The size button next to the first payload stored externally (the workflow's input).
CLICK_FIRST_DOWNLOAD = """(() => {
  const button = [...document.querySelectorAll('button')].find((b) => /^\\s*[0-9.]+ (KB|MB)\\s*$/.test(b.innerText));
  if (!button || button.disabled) return false;
  button.click();
  return true;
})()"""


TS_PACKAGE = ROOT / "clients" / "typescript"
TS_TASK_QUEUE = "secrets-ts"


@pytest.fixture(scope="module")
def typescript_worker(temporal_stack: TemporalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """clients/typescript/e2e/worker.ts: a real TypeScript worker (@temporalio/worker 1.24) with our codec."""
    npm = shutil.which("npm")
    if npm is None or not (TS_PACKAGE / "node_modules" / "@temporalio" / "worker").is_dir():
        pytest.fail("the TypeScript worker needs npm and `npm ci --prefix clients/typescript` (make install does it)")
    tsc = TS_PACKAGE / "node_modules" / ".bin" / "tsc"
    built = subprocess.run(
        [str(tsc), "-p", "tsconfig.e2e.json"], cwd=TS_PACKAGE, capture_output=True, text=True, timeout=120, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    log = tmp_path_factory.mktemp("ts-worker") / "worker.log"
    env = {
        **temporal_stack.env,
        "TEMPORAL_ADDRESS": temporal_stack.address,
        "TEMPORAL_NAMESPACE": NAMESPACE,
        "TASK_QUEUE": TS_TASK_QUEUE,
        "CODEC_SERVER_TARGET": temporal_stack.codec_target,
        "CODEC_PROTO_PATH": str(ROOT / "protos" / "codec_grpc" / "v1" / "codec.proto"),
    }
    with log.open("w") as output:
        worker = subprocess.Popen(
            ["node", "build-e2e/e2e/worker.js"], cwd=TS_PACKAGE, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "READY" not in log.read_text():
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=30)


def test_typescript_worker_with_our_codec_serves_a_python_client(temporal_stack: TemporalStack, typescript_worker):
    client = temporal_stack.client
    assert client is not None
    workflow_id = f"ts-{uuid.uuid4().hex[:8]}"

    result = temporal_stack.run(
        client.execute_workflow("tsSecretWorkflow", SMALL, id=workflow_id, task_queue=TS_TASK_QUEUE)
    )

    assert result == {"echo": SMALL, "by": "typescript"}
    payloads = history_payloads(temporal_stack, workflow_id)
    assert len(payloads) == 2
    for payload in payloads:
        assert payload.metadata["encoding"] == b"binary/encrypted"
        assert b"-secret-e2e" not in payload.SerializeToString()
    shown = temporal_stack.cli("workflow", "show", "--workflow-id", workflow_id, "--output", "json")
    values = [json.loads(base64.b64decode(p["data"])) for p in json_payloads(json.loads(shown.stdout))]
    assert values == [SMALL, {"echo": SMALL, "by": "typescript"}]


def test_typescript_worker_encrypts_failure_messages(temporal_stack: TemporalStack, typescript_worker):
    client = temporal_stack.client
    assert client is not None
    workflow_id = f"ts-declined-{uuid.uuid4().hex[:8]}"

    with pytest.raises(WorkflowFailureError) as failed:
        temporal_stack.run(
            client.execute_workflow("tsDeclinedWorkflow", SMALL, id=workflow_id, task_queue=TS_TASK_QUEUE)
        )

    # Our Python client decrypts what the TypeScript worker encrypted: message included.
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.message == f"card {SMALL['card']} declined"
    assert cause.type == "PaymentDeclined"
    assert temporal_stack.client is not None
    history = temporal_stack.run(temporal_stack.client.get_workflow_handle(workflow_id).fetch_history())
    assert b"-secret-e2e" not in b"".join(event.SerializeToString() for event in history.events)
    assert b"Encoded failure" in history.events[-1].SerializeToString()
