"""`make bench`, concurrency section: the codec server against the echo server with 1, 4, 16 and 64
calls in flight, pinned and unpinned.

The load is an asyncio client (bench/aio_load.py) keeping N calls in progress, as many workers
sharing one codec server do. **Pinned**: server on one core, load on the other (repeatable, for
profiles); **unpinned**: both anywhere on the two cores, what a pod sees. Server CPU per payload
comes from /proc as in the gRPC section: ``ratio`` divides each server's cheapest round (interference
only adds CPU), ``med`` is the median of the rounds' own ratios (each round runs both servers back to
back), the steadier of the two on a shared machine. ``tput`` is ours ÷ echo payloads per second (the
issue's target: ≥ 0.85 at batch 1 with 64 in flight, unpinned). p50/p99 are per call, ours.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack
from pathlib import Path

from bench.run import ALL_CPUS, Codec, Result, json_payload, measure, rss_mib, start_codec, start_echo
from codec_grpc.v1 import codec_pb2 as pb

# echo ÷ ours server CPU per payload, unpinned, at 16 and 64 in flight (issue 15).
TARGETS = {("Encode", 1): 0.85, ("Encode", 10): 0.8, ("Encode", 100): 0.7, ("Decode", 100): 0.7}
THROUGHPUT_TARGET = 0.85  # ours ÷ echo payloads/s, Encode batch 1, 64 in flight, unpinned
TARGET_IN_FLIGHT = (16, 64)
CASES = (("Encode", 1), ("Encode", 10), ("Encode", 100), ("Decode", 100))
CALLS = {1: 3000, 10: 1500, 100: 300}


def concurrency_section(stack: ExitStack, workdir: Path, codec: Codec, args: argparse.Namespace) -> None:
    echo, echo_port = start_echo(stack, workdir, "echo-concurrency.log")
    # The production default: metrics on (every call counted).
    ours = start_codec(stack, workdir, args.workers, metrics=True, kms_of=codec)
    payload = json_payload(args.payload_bytes)
    levels = [int(n) for n in args.in_flight.split(",")]
    cases = [c for c in CASES if c[1] in args.batch_list]
    pinnings: list[tuple[str, tuple[set[int] | None, set[int] | None]]] = []
    if len(ALL_CPUS) >= 2:
        first, second = sorted(ALL_CPUS)[:2]
        pinnings.append(("pinned", ({first}, {second})))
    pinnings.append(("unpinned", (None, None)))
    if args.unpinned_only:
        pinnings = pinnings[-1:]
    print(f"\nCalls in flight (asyncio client, one connection), codec WORKERS={args.workers}, metrics on")
    print("server CPU per payload, echo ÷ ours; payloads/s and ours ÷ echo (tput); latency per call, ours")
    for name, cpus in pinnings:
        print(f"\n{name}: " + ("server on one core, load on the other" if name == "pinned" else "both on any core"))
        header = (
            f"{'rpc':6} {'batch':>5} {'N':>3} | {'echo µs/pl':>10} {'ours µs/pl':>10} {'ratio':>6} {'med':>5} "
            f"{'target':>6} | "
            f"{'echo pl/s':>9} {'ours pl/s':>9} {'tput':>5} | {'p50 ms':>7} {'p99 ms':>7} | {'RSS':>5}"
        )
        print(header)
        print("-" * len(header))
        for method, batch in cases:
            encode_request = pb.EncodeRequest(payloads=[payload] * batch)
            if method == "Encode":
                request = encode_request.SerializeToString()
            else:
                encoded = codec.stub.Encode(encode_request).payloads
                request = pb.DecodeRequest(payloads=encoded).SerializeToString()
            calls = max(64, int(CALLS[batch] * args.scale))
            for in_flight in levels:
                case = (method, request, batch, calls, workdir, None)
                rounds = [
                    [
                        measure(f"127.0.0.1:{port}", pid, *case, in_flight=in_flight, cpus=cpus)
                        for pid, port in ((ours.pid, ours.port), (echo.pid, echo_port))
                    ]
                    for _ in range(args.rounds)
                ]
                mine, base = (_best([r[i] for r in rounds]) for i in range(2))
                ratio = base.cpu_per_payload / mine.cpu_per_payload
                # Each round measures both servers back to back: its own ratio, the median of them.
                paired = statistics.median(r[1].cpu_per_payload / r[0].cpu_per_payload for r in rounds)
                throughput = mine.throughput / base.throughput
                target = TARGETS.get((method, batch)) if name == "unpinned" and in_flight in TARGET_IN_FLIGHT else None
                verdict = "" if target is None else ("ok" if ratio >= target else "MISS")
                if name == "unpinned" and (method, batch, in_flight) == ("Encode", 1, 64):
                    verdict += f" tput {'ok' if throughput >= THROUGHPUT_TARGET else 'MISS'} (≥{THROUGHPUT_TARGET})"
                print(
                    f"{method:6} {batch:>5} {in_flight:>3} | {base.cpu_per_payload * 1e6:>10.1f} "
                    f"{mine.cpu_per_payload * 1e6:>10.1f} {ratio:>6.2f} {paired:>5.2f} "
                    f"{('≥' + str(target)) if target else '':>6} | "
                    f"{base.throughput:>9.0f} {mine.throughput:>9.0f} {throughput:>5.2f} | "
                    f"{mine.p50 * 1e3:>7.2f} {mine.p99 * 1e3:>7.2f} | {mine.rss:>5.0f} {verdict}",
                    flush=True,
                )
    print(f"echo server RSS {rss_mib(echo.pid):.1f} MiB")


def _best(results: list[Result]) -> Result:
    """The round with the least CPU per payload (interference only adds CPU), throughput its own."""
    return min(results, key=lambda r: r.cpu_per_payload)
