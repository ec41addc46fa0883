"""Load generator for `make bench`'s concurrency section, run as its own process.

Keeps exactly ``--in-flight`` calls in progress (an asyncio client, grpc.aio: one coroutine
per call slot, each sending the next call when its last one is answered), which is how many
workers sharing one codec server look to it. Sends one prepared, serialized request over and
over and prints a JSON line with the timings, like bench/load.py. It waits for a line on
stdin after its warm-up, so the caller can read the server's CPU counters around the
measured part only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc


async def run(args: argparse.Namespace, request: bytes) -> dict[str, float]:
    # Each channel its own TCP connection, like separate workers (grpc.use_local_subchannel_pool).
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    path = f"/codec_grpc.v1.CodecService/{args.method}"
    calls = [channel.unary_unary(path, None, None) for channel in channels]

    async def slot(number: int, count: int, latencies: list[float]) -> None:
        call = calls[number % len(calls)]
        for _ in range(count):
            started = time.perf_counter()
            await call(request, timeout=60)
            latencies.append(time.perf_counter() - started)

    warm: list[float] = []
    await asyncio.gather(*(slot(n, max(1, args.warmup // args.in_flight), warm) for n in range(args.in_flight)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    latencies: list[float] = []
    per_slot = max(1, args.calls // args.in_flight)
    started = time.perf_counter()
    await asyncio.gather(*(slot(n, per_slot, latencies) for n in range(args.in_flight)))
    wall = time.perf_counter() - started
    for channel in channels:
        await channel.close(None)
    latencies.sort()
    return {
        "calls": len(latencies),
        "wall": wall,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--request-file", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1, help="connections, shared out over the call slots")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    with open(args.request_file, "rb") as f:
        request = f.read()
    print(json.dumps(asyncio.run(run(args, request))), flush=True)


if __name__ == "__main__":
    main()
