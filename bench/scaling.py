"""`make bench-workers`: the codec server with WORKERS=1 against WORKERS=N, same load.

Both servers run at once (each with its own moto KMS) and are measured in
interleaved rounds, so a burst of noise from other work on the machine hits
both alike; each case keeps its best round (highest throughput; lowest CPU per
payload), and the spread between rounds is printed as the noise. The load
generator (bench/load.py) runs on the same machine and competes for its
cores: on a 2-core machine that is part of the honest answer.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from contextlib import ExitStack
from pathlib import Path

import grpc

from bench.run import CALLS, Codec, Result, cpu_model, measure, start_codec
from codec_grpc.v1 import codec_pb2 as pb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="WORKERS of the second server")
    parser.add_argument("--channels", type=int, default=8, help="connections of the load generator")
    parser.add_argument("--threads", type=int, default=8, help="threads of the load generator (calls in flight)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-scaling-")))
        servers = [start_codec(stack, workdir, 1), start_codec(stack, workdir, args.workers)]
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"grpcio {grpc.__version__}; payloads of {args.payload_bytes} bytes; load: 1 process, "
            f"{args.threads} threads, {args.channels} connections; best of {args.rounds} interleaved rounds"
        )
        header = (
            f"{'rpc':6} {'batch':>5} | {'W=1 payloads/s':>14} {'W=' + str(args.workers) + ' payloads/s':>14} "
            f"{'gain':>5} | {'W=1 µs/pl':>9} {'W=' + str(args.workers) + ' µs/pl':>9} | "
            f"{'W=1 cores':>9} {'W=' + str(args.workers) + ' cores':>9} | {'noise':>5} | RSS MiB"
        )
        print(header)
        print("-" * len(header))
        body = (b'{"v":"' + os.urandom(args.payload_bytes).hex().encode())[: args.payload_bytes - 2] + b'"}'
        payload = pb.Payload(metadata={"encoding": b"json/plain"}, data=body)
        for method in ("Encode", "Decode"):
            for batch in [int(b) for b in args.batches.split(",")]:
                compare(servers, method, batch, payload, workdir, args)


def compare(
    servers: list[Codec], method: str, batch: int, payload: pb.Payload, workdir: Path, args: argparse.Namespace
) -> None:
    encode_request = pb.EncodeRequest(payloads=[payload] * batch)
    requests = []
    for server in servers:  # each server decodes what it encoded itself (its own KMS)
        if method == "Encode":
            requests.append(encode_request.SerializeToString())
        else:
            encoded = server.stub.Encode(encode_request).payloads
            requests.append(pb.DecodeRequest(payloads=encoded).SerializeToString())
    calls = max(40, int(CALLS.get(batch, 400) * args.scale))
    rounds: list[list[Result]] = [[], []]
    for _ in range(args.rounds):
        for index, server in enumerate(servers):
            target = f"127.0.0.1:{server.port}"
            result = measure(
                target, server.pid, method, requests[index], batch, calls, workdir, None, args.channels, args.threads
            )
            rounds[index].append(result)
    fastest = [max(results, key=lambda r: r.throughput) for results in rounds]
    best = [r.throughput for r in fastest]
    cpu = [min(r.cpu_per_payload for r in results) for results in rounds]
    # Cores the server kept busy in its fastest round: 1.0 is all one process can use.
    cores = [r.throughput * r.cpu_per_payload for r in fastest]
    # Noise: how far the worst round's throughput fell below the best one's, over both servers.
    noise = max(1 - min(r.throughput for r in results) / max(r.throughput for r in results) for results in rounds)
    print(
        f"{method:6} {batch:>5} | {best[0]:>14.0f} {best[1]:>14.0f} {best[1] / best[0]:>5.2f} | "
        f"{cpu[0] * 1e6:>9.1f} {cpu[1] * 1e6:>9.1f} | {cores[0]:>9.2f} {cores[1]:>9.2f} | {noise:>5.0%} | "
        f"{fastest[0].rss:.0f} / {fastest[1].rss:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
