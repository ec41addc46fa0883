"""`python -m bench.kms_regions`: what a cold decode costs when it falls back to another Region.

Starts moto's KMS server (patched for multi-Region keys: tests/support/mrk_moto.py) behind two
loopback endpoints, us-east-1 and us-west-2 (tests/support/kms_proxy.py, one per Region), a
multi-Region key replicated to us-west-2, and server.py with KMS_REGIONS=us-east-1,us-west-2
(gateway and metrics off) as its own process. A writer encodes payloads each under its own data key,
all wrapped in us-east-1. Then, case by case, a fresh reader (cold caches: every decode needs a KMS
Decrypt) decodes them one per call, and the client times each call:

* ``own Region``: us-east-1 answers (no fallback): the baseline;
* ``down, paused``: us-east-1's endpoint refuses connections; the first decode tries it (every
  attempt of KMS_MAX_ATTEMPTS) and falls back to us-west-2, the next ones skip it for
  KMS_FAIL_FAST_SECONDS (its pause) and go to us-west-2 at once;
* ``down, no pause``: the same with KMS_FAIL_FAST_SECONDS=0: every decode tries us-east-1 first;
* ``hangs, paused``: us-east-1 accepts and never answers: the first decode waits KMS_READ_TIMEOUT
  per attempt, the next ones skip it.

Prints, per case, the first call and the median, p90 and max of the others, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.run import cpu_model, process
from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import free_port
from tests.support.kms_proxy import KmsProxy
from tests.support.regions import EAST, WEST, region_client

ALIAS = "alias/bench-mrk"


def start_regions(stack: ExitStack, workdir: Path) -> dict[str, KmsProxy]:
    """The patched moto, a multi-Region key under ALIAS in both Regions, and an endpoint per Region."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    command = [sys.executable, "-m", "tests.support.mrk_moto", "-H", "127.0.0.1", "-p", str(port)]
    stack.enter_context(process(command, env, port, workdir / "moto.log"))
    moto = f"http://127.0.0.1:{port}"
    east, west = region_client(moto, EAST), region_client(moto, WEST)
    key = east.create_key(MultiRegion=True)["KeyMetadata"]
    east.replicate_key(KeyId=key["KeyId"], ReplicaRegion=WEST)
    east.create_alias(AliasName=ALIAS, TargetKeyId=key["KeyId"])  # moto's replica shares it: in both Regions
    assert west.describe_key(KeyId=ALIAS)["KeyMetadata"]["Arn"].startswith(f"arn:aws:kms:{WEST}:")
    proxies = {region: KmsProxy(moto, region=region).start() for region in (EAST, WEST)}
    for proxy in proxies.values():
        stack.callback(proxy.stop)
    return proxies


@contextmanager
def codec(workdir: Path, proxies: dict[str, KmsProxy], **settings: str) -> Iterator[Any]:
    """server.py with both Regions; yields a stub."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "KMS_REGIONS": f"{EAST},{WEST}",
        "KMS_REGION_ENDPOINTS": ",".join(f"{region}={proxy.url}" for region, proxy in proxies.items()),
        "KMS_KEY_ALIAS": ALIAS,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "GATEWAY_ENABLED": "false",
        "METRICS_ENABLED": "false",
        "LOG_LEVEL": "error",
        "KMS_DECRYPT_RATE": "0",
        **settings,
    }
    with (
        process([sys.executable, "server.py"], env, port, workdir / f"codec-{port}.log"),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield codec_pb2_grpc.CodecServiceStub(channel)


def written(workdir: Path, proxies: dict[str, KmsProxy], count: int) -> list[pb.Payload]:
    """``count`` payloads, each under its own data key wrapped in us-east-1."""
    with codec(workdir, proxies, MAX_PAYLOADS_PER_REQUEST="1", DATA_KEY_MAX_ENCRYPTIONS="1") as stub:
        request = pb.EncodeRequest(payloads=[pb.Payload(metadata={"encoding": b"json/plain"}, data=b'{"n":1}')])
        payloads = [stub.Encode(request).payloads[0] for _ in range(count)]
    assert {p.metadata["encryption-key-id"].decode().split(":")[3] for p in payloads} == {EAST}
    return payloads


def timed_decodes(stub: Any, payloads: list[pb.Payload]) -> list[float]:
    seconds = []
    for item in payloads:
        started = time.perf_counter()
        stub.Decode(pb.DecodeRequest(payloads=[item]), timeout=60)
        seconds.append(time.perf_counter() - started)
    return seconds


CASES = {
    # name: (what us-east-1 does, reader settings)
    "own Region": ("pass", {}),
    "down, paused": ("down", {}),
    "down, no pause": ("down", {"KMS_FAIL_FAST_SECONDS": "0"}),
    "hangs, paused": ("hang", {"KMS_READ_TIMEOUT": "1"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="cold decodes per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case; the cheapest median is shown")
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; KMS_MAX_ATTEMPTS=3, KMS_FAIL_FAST_SECONDS=5 unless said")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-regions-")))
        proxies = start_regions(stack, workdir)
        payloads = written(workdir, proxies, args.calls * args.rounds * len(CASES))
        best: dict[str, tuple[float, float, float, float]] = {}
        for round_ in range(args.rounds):
            for name, (fault, settings) in CASES.items():
                batch, payloads = payloads[: args.calls], payloads[args.calls :]
                with codec(workdir, proxies, **settings) as stub:
                    proxies[EAST].down() if fault == "down" else proxies[EAST].set(delay=3 if fault == "hang" else 0)
                    try:
                        seconds = timed_decodes(stub, batch)
                    finally:
                        proxies[EAST].up()
                        proxies[EAST].set()
                first, rest = seconds[0] * 1000, sorted(s * 1000 for s in seconds[1:])
                figures = (first, statistics.median(rest), rest[int(len(rest) * 0.9)], rest[-1])
                if name not in best or figures[1] < best[name][1]:
                    best[name] = figures
                print(f"  round {round_ + 1} {name:>16}: first {first:8.1f} ms, then median {figures[1]:6.2f} ms")
        print(f"\n{'case':>16} | first call | median | p90 | max (ms; the others, best round's median)")
        for name, (first, median, p90, worst) in best.items():
            print(f"{name:>16} | {first:10.1f} | {median:6.2f} | {p90:6.2f} | {worst:7.1f}")


if __name__ == "__main__":
    main()
