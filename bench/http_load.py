"""HTTP load generator for `make bench`'s gateway section, run as its own process.

The HTTP twin of bench/load.py: POSTs one prepared JSON body over and over
from several threads, each on its own keep-alive connection, and prints a JSON
line with the timings. It waits for a line on stdin after its warm-up, so the
caller can read the servers' CPU counters around the measured part only. Any
answer other than 200 stops it with the status and body: a benchmark of error
answers would measure nothing useful.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time


class CallFailed(Exception):
    pass


class Client:
    def __init__(self, port: int, path: str, body: bytes) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._path = path
        self._body = body
        self._headers = {"Content-Type": "application/json", "X-Namespace": "default"}

    def call(self) -> None:
        self._connection.request("POST", self._path, body=self._body, headers=self._headers)
        response = self._connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise CallFailed(f"{self._path}: HTTP {response.status}: {answer[:300]!r}")

    def close(self) -> None:
        self._connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    clients = [Client(args.port, args.path, body) for _ in range(args.threads)]
    for client in clients:  # opens every connection, then warms up the server's code paths
        for _ in range(max(1, args.warmup // args.threads)):
            client.call()
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    per_thread = max(1, args.calls // args.threads)

    def worker(client: Client) -> None:
        mine = []
        try:
            for _ in range(per_thread):
                started = time.perf_counter()
                client.call()
                mine.append(time.perf_counter() - started)
        except (OSError, CallFailed) as exc:
            failures.append(str(exc))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(client,)) for client in clients]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    if failures:
        raise SystemExit(failures[0])
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


if __name__ == "__main__":
    main()
