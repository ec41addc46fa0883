"""`make bench-instructions`: instructions per call, counted by valgrind's callgrind.

`make bench` measures CPU time, which on a shared 2-core machine moves by ±15% between runs.
Instruction counts do not: the same code, inputs and load give the same count (±1%), whatever
else the machine is doing, so they show whether a change made the server cheaper. They are not
time (a cache miss or a syscall costs more than its instructions), so the ratios differ a little
from `make bench`'s, and AES-GCM under valgrind may not use the CPU's fastest path.

The codec server (with and without metrics) and the echo server run under callgrind with
instrumentation off; for each case it is switched on, counters zeroed, the same load as `make bench`
sent (fewer calls: valgrind runs the server about 50 times slower), and the counts dumped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.run import ROOT, TARGETS, Codec, cpu_model, process, start_codec
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import free_port

CALLS = {1: 1000, 10: 500, 100: 100}


def callgrind(workdir: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/callgrind.%p"]


def count(pid: int, workdir: Path, target: str, method: str, request: bytes, calls: int) -> float:
    """Instructions per call of process ``pid`` while it answers ``calls`` calls."""
    request_file = workdir / "request.bin"
    request_file.write_bytes(request)
    load = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.load", "--target", target, "--method", method, "--warmup", "20"),
            *("--request-file", str(request_file), "--calls", str(calls)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert load.stdout is not None and load.stdin is not None
    assert load.stdout.readline().strip() == "ready"
    before = set(workdir.glob(f"callgrind.{pid}.*"))
    for option in (["-i", "on"], ["-z"]):
        subprocess.run(["callgrind_control", *option, str(pid)], check=True, capture_output=True)
    load.stdin.write("go\n")
    load.stdin.flush()
    timings = json.loads(load.stdout.readline())
    load.wait(timeout=60)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while not (dumps := set(workdir.glob(f"callgrind.{pid}.*")) - before):
        if time.monotonic() > deadline:
            raise TimeoutError(f"callgrind wrote no dump for process {pid}")
        time.sleep(0.2)
    time.sleep(0.5)  # let the dump finish writing
    (dump,) = dumps
    totals = [
        line for line in dump.read_text(errors="replace").splitlines() if line.startswith(("summary:", "totals:"))
    ]
    return int(totals[-1].split()[1]) / int(timings["calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--methods", default="Encode,Decode")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-instructions-")))
        plain = start_codec(stack, workdir, 1, launcher=callgrind(workdir))
        metered = start_codec(stack, workdir, 1, metrics=True, kms_of=plain, launcher=callgrind(workdir))
        echo_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        echo_command = [*callgrind(workdir), sys.executable, "-m", "bench.echo_server", "--port", str(echo_port)]
        echo = stack.enter_context(process(echo_command, env, echo_port, workdir / "echo.log", timeout=300))
        servers: list[tuple[int, int, Codec | None]] = [
            (metered.pid, metered.port, metered),
            (plain.pid, plain.port, plain),
            (echo.pid, echo_port, None),
        ]
        print(f"machine: {cpu_model()}; valgrind callgrind, instructions per call (all threads of the server)")
        print("ours: METRICS_ENABLED=true (the default); ours/nm: METRICS_ENABLED=false")
        columns = f"{'echo':>11} {'ours':>11} {'ratio':>6} {'ours/nm':>11} {'ratio':>6} {'target':>6}"
        header = f"{'rpc':6} {'batch':>5} | {columns}"
        print(header)
        print("-" * len(header))
        body = (b'{"v":"' + os.urandom(args.payload_bytes).hex().encode())[: args.payload_bytes - 2] + b'"}'
        payload = pb.Payload(metadata={"encoding": b"json/plain"}, data=body)
        for method in args.methods.split(","):
            for batch in batches:
                encode_request = pb.EncodeRequest(payloads=[payload] * batch)
                request = encode_request.SerializeToString()
                if method == "Decode":
                    encoded = plain.stub.Encode(encode_request).payloads
                    request = pb.DecodeRequest(payloads=encoded).SerializeToString()
                ours, unmetered, base = (
                    count(pid, workdir, f"127.0.0.1:{port}", method, request, CALLS.get(batch, 100))
                    for pid, port, _ in servers
                )
                target = TARGETS.get((method, batch))
                print(
                    f"{method:6} {batch:>5} | {base:>11,.0f} {ours:>11,.0f} {base / ours:>6.2f} "
                    f"{unmetered:>11,.0f} {base / unmetered:>6.2f} {('≥' + str(target)) if target else '':>6}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
