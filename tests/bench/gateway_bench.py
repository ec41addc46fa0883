"""`make bench`, HTTP gateway section: our gateway against a minimal sample codec server.

Ours is the standalone gateway process (``python -m codec_grpc.gateway``, as the Helm
chart's sidecar runs it) in front of the codec server process. The sample
(tests/bench/sample_gateway.py) does everything in one aiohttp process: JSON via
json_format, AES-GCM with a static key. Both get the same JSON bodies from a
separate load process (tests/bench/http_load.py, keep-alive connections).

CPU per HTTP call comes from /proc for each process: the gateway, the codec
server and the sample. Ours counts gateway + codec server, because the sample
does the crypto too; the gateway's own share is shown beside it. The gateway
runs in its own process rather than inside server.py so that the two shares can
be told apart; their sum is what server.py's in-process gateway costs too, as it
also reaches the gRPC server over loopback. Decode bodies differ in one way:
each server decodes what its own Encode produced (our envelope carries more
metadata, the wrapped data key among it, so our bodies are the larger ones).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.bench.run import ROOT, Codec, cpu_seconds, process, rss_mib
from tests.conftest import free_port

TARGET = 1.0  # sample ÷ ours: no more CPU per call than the sample
CALLS = {1: 2000, 10: 1000, 100: 150}


@dataclass
class HttpResult:
    cpu: dict[str, float]  # CPU seconds per call, by process
    throughput: float  # calls per second
    p50: float
    p99: float

    @property
    def total(self) -> float:
        return sum(self.cpu.values())


def measure_http(port: int, path: str, body: bytes, calls: int, pids: Mapping[str, int], workdir: Path) -> HttpResult:
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    command = [sys.executable, "-m", "tests.bench.http_load", "--port", str(port), "--path", path]
    command += ["--body-file", str(body_file), "--calls", str(calls)]
    load = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    assert load.stdout is not None and load.stdin is not None
    if load.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the load generator failed during warm-up (exit {load.wait(timeout=60)})")
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    load.stdin.write("go\n")
    load.stdin.flush()
    line = load.stdout.readline()
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if load.wait(timeout=60) != 0 or not line:
        raise RuntimeError(f"the load generator failed (exit {load.returncode})")
    timings = json.loads(line)
    done = timings["calls"]
    return HttpResult(
        cpu={name: (after[name] - before[name]) / done for name in pids},
        throughput=done / timings["wall"],
        p50=timings["p50"],
        p99=timings["p99"],
    )


def encode_body(batch: int, payload_bytes: int) -> bytes:
    """``batch`` payloads of ``payload_bytes`` JSON bytes each, as the UI and CLI send them."""
    data = (b'{"v":"' + os.urandom(payload_bytes).hex().encode())[: payload_bytes - 2] + b'"}'
    encoding = base64.b64encode(b"json/plain").decode()
    payload = {"metadata": {"encoding": encoding}, "data": base64.b64encode(data).decode()}
    return json.dumps({"payloads": [payload] * batch}).encode()


def post(port: int, path: str, body: bytes) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"POST {path} on port {port}: HTTP {response.status}: {answer[:300]!r}")
    return answer


def gateway_section(stack: ExitStack, workdir: Path, codec: Codec, args: argparse.Namespace) -> None:
    gateway_port, sample_port = free_port(), free_port()
    gateway_env = {
        **codec.env,
        "PORT": str(gateway_port),
        "GATEWAY_HOST": "127.0.0.1",
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": "0",
        "CODEC_GRPC_TARGET": f"127.0.0.1:{codec.port}",
    }
    gateway = stack.enter_context(
        process([sys.executable, "-m", "codec_grpc.gateway"], gateway_env, gateway_port, workdir / "gateway.log")
    )
    sample_command = [sys.executable, "-m", "tests.bench.sample_gateway", "--port", str(sample_port)]
    sample = stack.enter_context(process(sample_command, codec.env, sample_port, workdir / "sample.log"))
    ours_pids = {"gateway": gateway.pid, "codec": codec.pid}
    print("\nHTTP gateway (standalone process) + codec server vs a sample codec server, CPU per HTTP call")
    header = (
        f"{'call':6} {'batch':>5} | {'gw µs':>7} {'codec µs':>8} {'ours µs':>8} {'sample µs':>9} {'ratio':>5} "
        f"{'target':>6} | {'ours /s':>7} {'p50 ms':>6} {'p99 ms':>6} | {'sample/s':>8} {'p50 ms':>6} {'p99 ms':>6} "
        f"| {'spread':>9}"
    )
    print(header)
    print("-" * len(header))
    for method in ("Encode", "Decode"):
        for batch in args.batch_list:
            path = f"/{method.lower()}"
            encode = encode_body(batch, args.payload_bytes)
            ours_body = encode if method == "Encode" else post(gateway_port, "/encode", encode)
            sample_body = encode if method == "Encode" else post(sample_port, "/encode", encode)
            calls = max(8, int(CALLS.get(batch, 150) * args.scale))
            # Interleaved rounds; each side's cheapest round counts (interference only adds CPU).
            rounds = [
                (
                    measure_http(gateway_port, path, ours_body, calls, ours_pids, workdir),
                    measure_http(sample_port, path, sample_body, calls, {"sample": sample.pid}, workdir),
                )
                for _ in range(args.rounds)
            ]
            print(_row(method, batch, rounds), flush=True)
    print(
        f"RSS MiB: gateway {rss_mib(gateway.pid):.1f}, codec server {rss_mib(codec.pid):.1f}, "
        f"sample {rss_mib(sample.pid):.1f}; spread = (dearest - cheapest) / cheapest round, ours / sample"
    )


def _row(method: str, batch: int, rounds: list[tuple[HttpResult, HttpResult]]) -> str:
    ours = min((r[0] for r in rounds), key=lambda r: r.total)
    sample = min((r[1] for r in rounds), key=lambda r: r.total)
    ratio = _quotient(sample.total, ours.total)
    verdict = "ok" if ratio >= TARGET else "MISS"
    spread = [_quotient(max(r[i].total for r in rounds), min(r[i].total for r in rounds)) - 1 for i in (0, 1)]
    return (
        f"{method:6} {batch:>5} | {ours.cpu['gateway'] * 1e6:>7.0f} {ours.cpu['codec'] * 1e6:>8.0f} "
        f"{ours.total * 1e6:>8.0f} {sample.total * 1e6:>9.0f} {ratio:>5.2f} {'≥' + str(TARGET):>6} | "
        f"{ours.throughput:>7.0f} {ours.p50 * 1e3:>6.2f} {ours.p99 * 1e3:>6.2f} | "
        f"{sample.throughput:>8.0f} {sample.p50 * 1e3:>6.2f} {sample.p99 * 1e3:>6.2f} | "
        f"{spread[0]:>4.0%}/{spread[1]:<4.0%} {verdict}"
    )


def _quotient(a: float, b: float) -> float:
    """a / b; nan when b is 0, which happens when too few calls ran for the clock's 10 ms ticks."""
    return a / b if b else float("nan")
