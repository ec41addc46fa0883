"""`make bench`: the codec server's cost against a bare echo server on the same transport,
and the HTTP gateway's against a minimal sample codec server (bench/gateway_bench.py), and what
compressing payloads costs and saves against what gRPC spends to move a byte (bench/compression.py).

Starts moto's KMS server, the codec server (server.py) and the echo server
(bench/echo_server.py) as processes on 127.0.0.1, then drives each with the
same serialized requests from a separate load process (bench/load.py).
Server CPU comes from the OS accounting of every process of the server
(/proc/PID/stat, children included), so the load generator and other noise drop
out. The ratio echo ÷ ours is 1.0 when encrypting costs nothing beyond echoing.
``--only grpc``, ``--only concurrency``, ``--only gateway``, ``--only compression`` or ``--only
workflow`` runs one section; the concurrency section (bench/concurrency.py) keeps 1 to 64 calls in
flight, pinned and not; the workflow section (bench/workflow.py) runs workflows on a real Temporal
dev server with no codec, this codec remote and in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import grpc

from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {("Encode", 1): 0.9, ("Encode", 10): 0.8, ("Encode", 100): 0.6, ("Decode", 100): 0.6}
CALLS = {1: 4000, 10: 2000, 100: 400}


def process_tree(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def rss_mib(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@contextmanager
def process(
    args: list[str], env: dict[str, str], port: int, log: Path, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for_port(port, timeout=timeout, proc=proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Result:
    cpu_per_payload: float
    throughput: float
    p50: float
    p99: float
    kms_calls: int
    rss: float


def pin(pid: int, cpus: set[int] | None) -> None:
    """Keep every thread of a process tree on ``cpus`` (threads started later inherit it); None lets
    it run anywhere again (what an earlier pinned measurement of the same server set).

    With the server on one core and the load generator on the other, neither steals the other's
    cycles or caches, which on a 2-core machine otherwise moves the CPU per call by ±25%.
    """
    if cpus is None:
        cpus = ALL_CPUS
    for process_id in process_tree(pid):
        for task in Path(f"/proc/{process_id}/task").glob("*"):
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(int(task.name), cpus)


ALL_CPUS = set(os.sched_getaffinity(0))
SERVER_CPUS: set[int] | None = None
LOAD_CPUS: set[int] | None = None


def measure(
    target: str,
    pid: int,
    method: str,
    request: bytes,
    batch: int,
    calls: int,
    workdir: Path,
    stats: Any,
    channels: int = 1,
    threads: int = 4,
    in_flight: int | None = None,
    cpus: tuple[set[int] | None, set[int] | None] | None = None,
) -> Result:
    """One measured run of ``calls`` calls from a separate load process.

    The load is ``threads`` blocking threads (bench/load.py) or, with ``in_flight``, an asyncio
    client keeping that many calls in progress (bench/aio_load.py). ``cpus``: (server's, load's)
    CPU sets; the module's pinning when not given, (None, None) for none.
    """
    request_file = workdir / "request.bin"
    request_file.write_bytes(request)
    common = ["--target", target, "--method", method, "--request-file", str(request_file), "--calls", str(calls)]
    if in_flight is None:
        command = ["-m", "bench.load", *common, "--threads", str(threads)]
    else:
        command = ["-m", "bench.aio_load", *common, "--in-flight", str(in_flight)]
    load = subprocess.Popen(
        [sys.executable, *command, "--channels", str(channels)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    server_cpus, load_cpus = (SERVER_CPUS, LOAD_CPUS) if cpus is None else cpus
    assert load.stdout is not None and load.stdin is not None
    pin(load.pid, load_cpus)
    pin(pid, server_cpus)
    assert load.stdout.readline().strip() == "ready"
    kms_before = _kms_calls(stats)
    cpu_before = cpu_seconds(pid)
    load.stdin.write("go\n")
    load.stdin.flush()
    timings = json.loads(load.stdout.readline())
    cpu = cpu_seconds(pid) - cpu_before
    load.wait(timeout=60)
    payloads = timings["calls"] * batch
    return Result(
        cpu_per_payload=cpu / payloads,
        throughput=payloads / timings["wall"],
        p50=timings["p50"],
        p99=timings["p99"],
        kms_calls=_kms_calls(stats) - kms_before,
        rss=rss_mib(pid),
    )


def _kms_calls(stats: Any) -> int:
    if stats is None:
        return 0
    answer = stats.Stats(pb.StatsRequest())
    return int(answer.kms_generate_data_key_calls + answer.kms_decrypt_calls)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def start_kms(stack: ExitStack, workdir: Path, alias: str) -> dict[str, str]:
    """moto's KMS server on a free loopback port with a master key under ``alias``; returns this
    process's environment (its AWS_* settings removed) plus what a codec server needs to use it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    kms_port = free_port()
    moto = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(kms_port)]
    stack.enter_context(process(moto, env, kms_port, workdir / f"moto-{kms_port}.log"))
    kms_url = f"http://127.0.0.1:{kms_port}"
    admin: Any = boto3.session.Session().client(
        "kms", endpoint_url=kms_url, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    )
    admin.create_alias(AliasName=alias, TargetKeyId=admin.create_key()["KeyMetadata"]["KeyId"])
    return {
        **env,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KMS": kms_url,
        "KMS_KEY_ALIAS": alias,
    }


@dataclass
class Codec:
    """The codec server process (gRPC only) and what the sections need to reach it."""

    pid: int
    port: int
    env: dict[str, str]
    stub: Any


def start_codec(
    stack: ExitStack,
    workdir: Path,
    workers: int,
    metrics: bool = False,
    kms_of: Codec | None = None,
    launcher: Sequence[str] = (),
) -> Codec:
    """moto's KMS server with a master key (or ``kms_of``'s), then server.py (gateway off) against it.

    ``metrics``: METRICS_ENABLED, with the endpoint on a free loopback port (never scraped here).
    ``launcher``: a command to run server.py under (valgrind, for bench/instructions.py).
    """
    port = free_port()
    # Every codec-specific setting is set below, so another server's environment serves as the KMS part.
    kms_env = start_kms(stack, workdir, "alias/bench") if kms_of is None else kms_of.env
    codec_env = {
        **kms_env,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "GATEWAY_ENABLED": "false",
        "METRICS_ENABLED": str(metrics).lower(),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "warning",
        "WORKERS": str(workers),
    }
    log = workdir / f"ours-{port}.log"
    command = [*launcher, sys.executable, "server.py"]
    server = stack.enter_context(process(command, codec_env, port, log, timeout=300 if launcher else 30))
    channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
    return Codec(server.pid, port, codec_env, codec_pb2_grpc.CodecServiceStub(channel))


def start_echo(stack: ExitStack, workdir: Path, log_name: str) -> tuple[subprocess.Popen[bytes], int]:
    """bench/echo_server.py on a free loopback port (no AWS settings: it needs none); its process and port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    command = [sys.executable, "-m", "bench.echo_server", "--port", str(port)]
    return stack.enter_context(process(command, env, port, workdir / log_name)), port


def json_payload(size: int) -> pb.Payload:
    """A payload of ``size`` bytes of JSON (a random hex string), as a worker's json/plain payloads are."""
    body = (b'{"v":"' + os.urandom(size).hex().encode())[: size - 2] + b'"}'
    return pb.Payload(metadata={"encoding": b"json/plain"}, data=body)


def grpc_section(stack: ExitStack, workdir: Path, codec: Codec, args: argparse.Namespace) -> None:
    """The codec server, with and without metrics, against the echo server, per payload."""
    echo, echo_port = start_echo(stack, workdir, "echo.log")
    # The production default (METRICS_ENABLED=true: every call counted) and METRICS_ENABLED=false.
    metered = start_codec(stack, workdir, args.workers, metrics=True, kms_of=codec)
    stub = codec.stub
    payload = json_payload(args.payload_bytes)
    print(f"\ngRPC CodecService vs echo server (codec WORKERS={args.workers}), server CPU per payload")
    print("ours: METRICS_ENABLED=true (the default); ours/nm: METRICS_ENABLED=false (calls not counted)")
    header = (
        f"{'rpc':6} {'batch':>5} | {'echo µs/pl':>10} {'ours µs/pl':>10} {'ratio':>6} {'ours/nm':>8} {'ratio':>6} "
        f"{'target':>6} | {'payloads/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'KMS':>3} {'RSS MiB':>7}"
    )
    print(header)
    print("-" * len(header))
    servers = [("ours", metered), ("ours/nm", codec)]
    for method in ("Encode", "Decode"):
        for batch in args.batch_list:
            encode_request = pb.EncodeRequest(payloads=[payload] * batch)
            if method == "Encode":
                request = encode_request.SerializeToString()
            else:
                encoded = stub.Encode(encode_request).payloads
                request = pb.DecodeRequest(payloads=encoded).SerializeToString()
            calls = max(40, int(CALLS.get(batch, 400) * args.scale))

            case = (method, request, batch, calls, workdir)
            targets = [(server.pid, server.port, server.stub) for _, server in servers] + [(echo.pid, echo_port, None)]
            # Interleaved rounds; each server's cheapest round counts (interference only adds CPU).
            rounds = [
                [measure(f"127.0.0.1:{port}", pid, *case, stats, args.channels) for pid, port, stats in targets]
                for _ in range(args.rounds)
            ]
            best = [min((r[i] for r in rounds), key=lambda r: r.cpu_per_payload) for i in range(len(servers) + 1)]
            mine, unmetered, base = best
            mine.kms_calls = sum(r[0].kms_calls + r[1].kms_calls for r in rounds)
            ratio = base.cpu_per_payload / mine.cpu_per_payload
            ratio_nm = base.cpu_per_payload / unmetered.cpu_per_payload
            target = TARGETS.get((method, batch))
            verdict = "" if target is None else ("ok" if ratio >= target else "MISS")
            verdict_nm = "" if target is None else ("ok" if ratio_nm >= target else "MISS")
            print(
                f"{method:6} {batch:>5} | {base.cpu_per_payload * 1e6:>10.1f} {mine.cpu_per_payload * 1e6:>10.1f} "
                f"{ratio:>6.2f} {unmetered.cpu_per_payload * 1e6:>8.1f} {ratio_nm:>6.2f} "
                f"{('≥' + str(target)) if target else '':>6} | {mine.throughput:>10.0f} "
                f"{mine.p50 * 1e3:>7.2f} {mine.p99 * 1e3:>7.2f} | {mine.kms_calls:>3} {mine.rss:>7.1f} "
                f"{verdict} {verdict_nm and '(nm ' + verdict_nm + ')'}",
                flush=True,
            )
    print(f"echo server RSS {rss_mib(echo.pid):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of calls")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--workers", type=int, default=1, help="WORKERS for the codec server")
    parser.add_argument(
        "--channels", type=int, default=1, help="gRPC connections per load process (WORKERS share out connections)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements per server and case")
    parser.add_argument(
        "--only", choices=("grpc", "concurrency", "gateway", "compression", "workflow"), help="run one section only"
    )
    parser.add_argument("--in-flight", default="1,4,16,64", help="concurrency section: calls in flight")
    parser.add_argument(
        "--http-concurrency", default="4,16", help="gateway section: HTTP requests in progress at once (connections)"
    )
    parser.add_argument("--unpinned-only", action="store_true", help="concurrency section: skip the pinned table")
    parser.add_argument(
        "--compression-levels",
        choices=("all", "default"),
        default="all",
        help="compression section: every level COMPRESSION_LEVEL offers, or each algorithm's default only",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers to CPU 0 and the load generator to CPU 1"
    )
    parser.add_argument("--workflows", type=int, default=200, help="workflow section: workflows per mode")
    args = parser.parse_args()
    global SERVER_CPUS, LOAD_CPUS
    if not args.no_pin and len(os.sched_getaffinity(0)) >= 2:
        first, second = sorted(os.sched_getaffinity(0))[:2]
        SERVER_CPUS, LOAD_CPUS = {first}, {second}
    args.batch_list = [int(b) for b in args.batches.split(",")]
    args.server_cpus, args.load_cpus = SERVER_CPUS, LOAD_CPUS  # for the gateway section (another module)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-bench-")))
        codec = start_codec(stack, workdir, args.workers)
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
            f"Python {platform.python_version()}, grpcio {grpc.__version__}; payloads of {args.payload_bytes} bytes"
        )
        if args.only in (None, "grpc"):
            grpc_section(stack, workdir, codec, args)
        if args.only in (None, "concurrency"):
            from bench.concurrency import concurrency_section  # it imports this module's helpers

            concurrency_section(stack, workdir, codec, args)
        if args.only in (None, "gateway"):
            from bench.gateway_bench import gateway_section  # it imports this module's helpers

            gateway_section(stack, workdir, codec, args)
        if args.only in (None, "compression"):
            from bench.compression import compression_section  # it imports this module's helpers

            compression_section(stack, workdir, codec, args)
        if args.only in (None, "workflow"):
            from bench.workflow import workflow_section  # it imports this module's helpers

            workflow_section(stack, workdir, codec, args)


if __name__ == "__main__":
    main()
