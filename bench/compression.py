"""`make bench`'s compression section: bytes saved and CPU per payload for typical JSON, at every
algorithm and level COMPRESSION and COMPRESSION_LEVEL offer, against what gRPC spends to move a byte.

* **Codec CPU** is measured in this process, on the codec's own path (``EnvelopeCodec.encode_serialized``
  and ``decode_serialized`` with a data key in hand: what a server does per payload once the key is
  cached), in CPU time of the calling thread: the cheapest of several rounds.
* **Transfer CPU per byte** is what sending a byte over gRPC on loopback costs both ends together:
  ``bench/echo_server.py`` (its own process, its CPU from /proc) answers each Encode call with the
  payload it was sent, and this process calls it (its CPU from getrusage): the difference between
  calls with a 1 MiB payload and with an empty one, divided by the 2 MiB that crossed (there and
  back), is the sender's and the receiver's CPU for one byte crossing once.

The goal (issue 16): for 1 MiB of JSON, compressing and encrypting costs less CPU than one gRPC
transfer of the bytes compression saves. A payload crosses more than once (codec server to worker,
worker to Temporal's frontend, frontend to history, and back on every replay and every UI view), so
one transfer is the least it saves.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.run import Codec, cpu_seconds, process
from codec_grpc.core import CompressionPolicy, DataKey, EnvelopeCodec
from codec_grpc.core.compression import DEFAULT_LEVELS, LEVELS
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import free_port
from tests.support.vectors_v2 import orders

KiB, MiB = 1024, 1024 * 1024
SIZES = (KiB, 4 * KiB, 16 * KiB, 64 * KiB, MiB)
ARN = "arn:aws:kms:us-east-1:111122223333:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def json_payload(size: int) -> bytes:
    """A serialized json/plain Payload of at least ``size`` bytes of JSON (within one order of it):
    orders alike in shape, different in values."""
    count = max(1, int(size / (len(orders(100)) / 100)) - 2)
    while len(orders(count)) < size:
        count += 1
    return pb.Payload(metadata={"encoding": b"json/plain"}, data=orders(count)).SerializeToString(deterministic=True)


class OneKey:
    def __init__(self) -> None:
        self.key = DataKey(bytes(range(32)), ARN, bytes(range(1, 17)) * 4, "default")

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey:
        return self.key

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        return self.key


def cpu_per_call(call: Callable[[], object], rounds: int = 3, budget: float = 0.05) -> float:
    """Thread CPU seconds of one ``call``: the cheapest round, each round at least ``budget`` seconds."""
    call()  # warm
    best = float("inf")
    for _ in range(rounds):
        count, started = 0, time.thread_time()
        while True:
            call()
            count += 1
            spent = time.thread_time() - started
            if spent >= budget and count >= 2:
                break
        best = min(best, spent / count)
    return best


@dataclass
class Case:
    size: int
    algorithm: str
    level: int | None
    stored: int  # bytes of the encrypted payload, serialized
    encode: float  # CPU seconds per payload
    decode: float


def measure_case(size: int, raw: bytes, algorithm: str, level: int | None, rounds: int) -> Case:
    # min_bytes=0: what compression does to every size (COMPRESSION_MIN_BYTES would leave 1 KiB alone).
    policy = CompressionPolicy(None if algorithm == "off" else algorithm, level, min_bytes=0)
    codec = EnvelopeCodec(OneKey(), compression=policy)
    (encoded,) = codec.encode_serialized([raw], "default", checked=True)
    assert codec.decode_serialized([encoded], "default") == [raw]
    encode = cpu_per_call(lambda: codec.encode_serialized([raw], "default", checked=True), rounds)
    decode = cpu_per_call(lambda: codec.decode_serialized([encoded], "default"), rounds)
    return Case(size, algorithm, level, len(encoded), encode, decode)


def offered() -> Iterator[tuple[str, int | None]]:
    yield "off", None
    for algorithm, levels in LEVELS.items():
        for level in levels:
            yield algorithm, level


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def transfer_cost(stack: ExitStack, workdir: Path, args: Any) -> float:
    """CPU seconds (both ends) for one byte to cross a gRPC connection on loopback, once."""
    from bench.run import pin

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    command = [sys.executable, "-m", "bench.echo_server", "--port", str(port)]
    echo = stack.enter_context(process(command, env, port, workdir / "echo-transfer.log"))
    pin(echo.pid, getattr(args, "server_cpus", None))
    options = [("grpc.max_receive_message_length", 64 * MiB), ("grpc.max_send_message_length", 64 * MiB)]
    channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}", options=options))
    call = channel.unary_unary("/codec_grpc.v1.CodecService/Encode", None, None)
    big = pb.EncodeRequest(payloads=[pb.Payload(data=os.urandom(MiB))]).SerializeToString()
    empty = pb.EncodeRequest(payloads=[pb.Payload()]).SerializeToString()

    def per_call(request: bytes, calls: int) -> float:
        for _ in range(10):
            call(request, timeout=30)
        best = float("inf")
        for _ in range(args.rounds):
            server, client = cpu_seconds(echo.pid), own_cpu()
            for _ in range(calls):
                call(request, timeout=30)
            best = min(best, (cpu_seconds(echo.pid) - server + own_cpu() - client) / calls)
        return best

    with pinned(getattr(args, "load_cpus", None)):
        small = per_call(empty, max(200, int(1000 * args.scale)))
        large = per_call(big, max(50, int(200 * args.scale)))
    return (large - small) / (2 * (len(big) - len(empty)))


def compression_section(stack: ExitStack, workdir: Path, codec: Codec | None, args: Any) -> None:
    """Print bytes saved and CPU per payload at each algorithm and level, and the 1 MiB goal."""
    per_byte = transfer_cost(stack, workdir, args)
    print("\nCompression before encryption: typical JSON payloads, CPU per payload on the codec's path")
    print(
        f"gRPC transfer on loopback, both ends: {per_byte * 1e9:.2f} ns of CPU per byte crossing once "
        f"({per_byte * MiB * 1e6:.0f} µs per MiB)"
    )
    print("payload: the serialized payload's bytes (JSON of 1, 4, 16, 64 KiB, 1 MiB); stored: the encrypted payload's;")
    print("saved: against COMPRESSION=off; transfer saved: the CPU of one gRPC crossing of the saved bytes;")
    print("enc+: encode CPU beyond COMPRESSION=off's; crossings: how many crossings of the saved bytes pay for")
    print("the encode (compress+encrypt); goal (1 MiB): encode < transfer saved, i.e. crossings < 1")
    header = (
        f"{'payload':>8} {'algorithm':9} {'level':>5} | {'stored':>8} {'saved':>6} | {'encode µs':>10} {'enc+ µs':>9} "
        f"{'decode µs':>10} | {'transfer saved µs':>17} {'crossings':>9} {'goal':>4}"
    )
    print(header)
    print("-" * len(header))
    levels = args.compression_levels
    for size in SIZES:
        raw = json_payload(size)
        baseline: Case | None = None
        for algorithm, level in offered():
            if levels == "default" and level is not None and level != DEFAULT_LEVELS[algorithm]:
                continue
            case = measure_case(size, raw, algorithm, level, args.rounds)
            baseline = baseline or case
            saved = baseline.stored - case.stored
            transfer_saved = saved * per_byte
            goal, crossings = "", f"{case.encode / transfer_saved:.1f}" if transfer_saved > 0 else ""
            if size == MiB and algorithm != "off":
                goal = "ok" if case.encode < transfer_saved else "MISS"
            print(
                f"{len(raw):>8} {algorithm:9} {level or '':>5} | {case.stored:>8} "
                f"{saved / baseline.stored:>6.1%} | {case.encode * 1e6:>10.1f} "
                f"{(case.encode - baseline.encode) * 1e6:>9.1f} {case.decode * 1e6:>10.1f} | "
                f"{transfer_saved * 1e6:>17.1f} {crossings:>9} {goal:>4}",
                flush=True,
            )


def main() -> None:
    """``python -m bench.compression``: this section alone (no KMS or codec server needed)."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--compression-levels", choices=("all", "default"), default="all")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) >= 2:
        first, second = sorted(os.sched_getaffinity(0))[:2]
        args.server_cpus, args.load_cpus = {first}, {second}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-bench-")))
        compression_section(stack, workdir, None, args)


if __name__ == "__main__":
    main()
