"""Load generator for `make bench`, run as its own process.

Sends one prepared, serialized request over and over from several threads and
prints a JSON line with the timings. It waits for a line on stdin after its
warm-up, so the caller can read the server's CPU counters around the measured part only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--request-file", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--channels", type=int, default=1, help="connections, used round-robin by the threads")
    args = parser.parse_args()
    with open(args.request_file, "rb") as f:
        request = f.read()
    # Each channel its own TCP connection (own subchannel pool): SO_REUSEPORT spreads connections,
    # not calls, over a server's WORKERS.
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    calls = [channel.unary_unary(f"/codec_grpc.v1.CodecService/{args.method}", None, None) for channel in channels]
    for number in range(max(args.warmup, len(calls))):
        calls[number % len(calls)](request, timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = args.calls // args.threads

    def worker(call: grpc.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
        mine = []
        for _ in range(per_thread):
            started = time.perf_counter()
            call(request, timeout=30)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(calls[i % len(calls)],)) for i in range(args.threads)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    print(
        json.dumps(
            {
                "calls": len(latencies),
                "wall": wall,
                "p50": latencies[len(latencies) // 2],
                "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            }
        ),
        flush=True,
    )
    for channel in channels:
        channel.close()


if __name__ == "__main__":
    main()
