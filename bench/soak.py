"""`make soak`: a bounded mixed load on server.py over gRPC and the HTTP gateway, checking every byte.

Starts moto's KMS server and server.py (gRPC and gateway) as processes on 127.0.0.1, then runs
client threads for SOAK_SECONDS: each encodes a batch of random payloads (batch sizes and payload
sizes vary; three namespaces), decodes the answer and compares every payload byte for byte with
what it sent. Data keys rotate every few seconds so rotation happens under load. Every few seconds
it prints round trips, errors, mismatches and the server's RSS (from /proc). It ends by itself and
exits non-zero on any error or mismatch, on RSS growth beyond --max-growth-mib after the warm-up,
or when the server logged an error.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import grpc

from bench.run import process, rss_mib
from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import free_port

BATCHES = (1, 1, 2, 5, 10, 20, 50, 100)
SIZES = (0, 16, 100, 1000, 4000, 16_000, 64_000)
NAMESPACES = ("default", "soak-a", "soak-b")


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    round_trips: dict[str, int] = field(default_factory=lambda: {"grpc": 0, "http": 0})
    payloads: int = 0
    errors: int = 0
    mismatches: int = 0
    first_problems: list[str] = field(default_factory=list)

    def ok(self, transport: str, count: int) -> None:
        with self.lock:
            self.round_trips[transport] += 1
            self.payloads += count

    def problem(self, kind: str, message: str) -> None:
        with self.lock:
            if kind == "mismatch":
                self.mismatches += 1
            else:
                self.errors += 1
            if len(self.first_problems) < 10:
                self.first_problems.append(f"{kind}: {message[:300]}")


def random_batch(rng: random.Random) -> list[pb.Payload]:
    size = rng.choice(BATCHES)
    # Big batches of small payloads, and small batches of big ones: requests stay under a few MB.
    cap = 4000 if size >= 50 else 64_000
    return [
        pb.Payload(
            metadata={"encoding": b"binary/plain", "seq": str(rng.getrandbits(32)).encode()},
            data=rng.randbytes(min(rng.choice(SIZES), cap)),
        )
        for _ in range(size)
    ]


def grpc_client(target: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(target) as channel:
        stub = codec_pb2_grpc.CodecServiceStub(channel)
        while not stop.is_set():
            batch, namespace = random_batch(rng), rng.choice(NAMESPACES)
            try:
                encoded = stub.Encode(pb.EncodeRequest(payloads=batch, namespace=namespace), timeout=30).payloads
                decoded = stub.Decode(pb.DecodeRequest(payloads=encoded, namespace=namespace), timeout=30).payloads
            except grpc.RpcError as exc:
                tally.problem("error", f"gRPC {exc.code().name}: {exc.details()}")
                continue
            sent = [p.SerializeToString(deterministic=True) for p in batch]
            if [p.SerializeToString(deterministic=True) for p in decoded] != sent:
                tally.problem("mismatch", f"gRPC batch of {len(batch)} in {namespace}")
            else:
                tally.ok("grpc", len(batch))


def as_json(payload: pb.Payload) -> dict[str, Any]:
    return {
        "metadata": {k: base64.b64encode(v).decode() for k, v in payload.metadata.items()},
        "data": base64.b64encode(payload.data).decode(),
    }


def same(document: dict[str, Any], payload: pb.Payload) -> bool:
    metadata = {k: base64.b64decode(v) for k, v in document.get("metadata", {}).items()}
    return metadata == dict(payload.metadata) and base64.b64decode(document.get("data", "")) == payload.data


def http_client(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            batch, namespace = random_batch(rng), rng.choice(NAMESPACES)
            headers = {"Content-Type": "application/json", "X-Namespace": namespace}
            try:
                encoded = _post(conn, "/encode", {"payloads": [as_json(p) for p in batch]}, headers)
                decoded = _post(conn, "/decode", {"payloads": encoded}, headers)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                tally.problem("error", f"HTTP {exc}")
                conn.close()
                continue
            if len(decoded) != len(batch) or not all(same(d, p) for d, p in zip(decoded, batch, strict=True)):
                tally.problem("mismatch", f"HTTP batch of {len(batch)} in {namespace}")
            else:
                tally.ok("http", len(batch))
    finally:
        conn.close()


def _post(conn: http.client.HTTPConnection, path: str, document: Any, headers: dict[str, str]) -> list[Any]:
    conn.request("POST", path, body=json.dumps(document).encode(), headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise ValueError(f"{path}: {response.status} {body[:200]!r}")
    return list(json.loads(body)["payloads"])


def start_kms(stack: ExitStack, workdir: Path, env: dict[str, str]) -> str:
    port = free_port()
    moto = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    stack.enter_context(process(moto, env, port, workdir / "moto.log"))
    url = f"http://127.0.0.1:{port}"
    admin: Any = boto3.session.Session().client(
        "kms", endpoint_url=url, region_name="us-east-1", aws_access_key_id="soak", aws_secret_access_key="soak"
    )
    for alias in ("alias/soak", "alias/soak-b"):
        admin.create_alias(AliasName=alias, TargetKeyId=admin.create_key()["KeyMetadata"]["KeyId"])
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "120")))
    parser.add_argument("--grpc-clients", type=int, default=8)
    parser.add_argument("--http-clients", type=int, default=4)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between report lines")
    parser.add_argument("--max-growth-mib", type=float, default=64.0, help="allowed RSS growth after warm-up")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-soak-")))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        kms_url = start_kms(stack, workdir, env)
        grpc_port, http_port = free_port(), free_port()
        server_env = {
            **env,
            "AWS_ACCESS_KEY_ID": "soak",
            "AWS_SECRET_ACCESS_KEY": "soak",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_KMS": kms_url,
            "KMS_KEY_ALIAS": "alias/soak",
            "NAMESPACE_KEY_ALIASES": "soak-b=alias/soak-b",
            "DATA_KEY_ROTATION_INTERVAL": "5",  # rotations under load
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(grpc_port),
            "GATEWAY_HOST": "127.0.0.1",
            "PORT": str(http_port),
            "LOG_LEVEL": "warning",
            "METRICS_ENABLED": "false",  # the ops branch's metrics port: none needed, none to collide
        }
        log = workdir / "server.log"
        server = stack.enter_context(process([sys.executable, "server.py"], server_env, grpc_port, log))
        return run_load(args, server.pid, f"127.0.0.1:{grpc_port}", http_port, log)


def run_load(args: argparse.Namespace, pid: int, target: str, http_port: int, log: Path) -> int:
    tally, stop = Tally(), threading.Event()
    clients = [
        threading.Thread(target=grpc_client, args=(target, stop, tally, i)) for i in range(args.grpc_clients)
    ] + [
        threading.Thread(target=http_client, args=(http_port, stop, tally, 1000 + i)) for i in range(args.http_clients)
    ]
    print(f"soak: {args.seconds:g}s, {args.grpc_clients} gRPC + {args.http_clients} HTTP clients, server pid {pid}")
    print(f"{'t s':>6} {'gRPC rt':>8} {'HTTP rt':>8} {'payloads':>9} {'errors':>6} {'mismatch':>8} {'RSS MiB':>8}")
    started = time.monotonic()
    for client in clients:
        client.start()
    samples: list[tuple[float, float]] = []
    warmup = min(30.0, args.seconds / 4)
    while (elapsed := time.monotonic() - started) < args.seconds:
        time.sleep(min(args.sample_every, max(args.seconds - elapsed, 0.01)))
        elapsed = time.monotonic() - started
        samples.append((elapsed, rss_mib(pid)))
        with tally.lock:
            print(
                f"{elapsed:>6.0f} {tally.round_trips['grpc']:>8} {tally.round_trips['http']:>8} {tally.payloads:>9} "
                f"{tally.errors:>6} {tally.mismatches:>8} {samples[-1][1]:>8.1f}",
                flush=True,
            )
    stop.set()
    for client in clients:
        client.join(60)
    return verdict(args, tally, samples, warmup, log)


def verdict(
    args: argparse.Namespace, tally: Tally, samples: list[tuple[float, float]], warmup: float, log: Path
) -> int:
    after_warmup = [rss for t, rss in samples if t >= warmup] or [samples[-1][1]]
    growth = after_warmup[-1] - after_warmup[0]
    logged = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    print(
        f"round trips: {sum(tally.round_trips.values())} ({tally.round_trips['grpc']} gRPC, "
        f"{tally.round_trips['http']} HTTP), payloads: {tally.payloads}, errors: {tally.errors}, "
        f"mismatches: {tally.mismatches}, RSS after warm-up: {after_warmup[0]:.1f} -> {after_warmup[-1]:.1f} MiB "
        f"(growth {growth:+.1f}, bound {args.max_growth_mib:g}), peak {max(r for _, r in samples):.1f} MiB, "
        f"server log errors: {len(logged)}"
    )
    for line in tally.first_problems + logged[:10]:
        print("  " + line)
    failed = tally.errors or tally.mismatches or growth > args.max_growth_mib or logged
    if not sum(tally.round_trips.values()):
        failed = True
    print("soak: FAILED" if failed else "soak: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
