"""Memory of hostile and maximal HTTP bodies: the peak resident memory of server.py (gRPC and the
in-process gateway in one process, as the Helm chart's ``gateway.mode: inProcess`` runs it) for the
worst bodies of the default GATEWAY_MAX_BODY_BYTES (16 MiB), against the chart's 192 MiB limit.

Each body goes to a fresh server.py, after one small Encode (the data key cached, the code paths
warm); the figures are VmRSS before and after and VmHWM (the most the process ever held, what a
memory limit must leave room for) from /proc. KMS is moto's server on 127.0.0.1; metrics on, as in
the chart. ``--sidecar`` also sends each body to the standalone gateway (``codec-gateway``, the
chart's default, limit 320 MiB) in front of server.py over gRPC, and shows the gateway process.

    python -m bench.bombs                   # every body
    python -m bench.bombs --only gzip       # bodies whose name contains "gzip"
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import json
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.gateway_bench import encode_body
from bench.run import process, start_kms
from tests.support.fixtures import free_port

MAX_BODY = 16 * 1024 * 1024  # GATEWAY_MAX_BODY_BYTES's default
LIMIT_IN_PROCESS_MIB = 192  # the chart's server container (gateway.mode: inProcess)
LIMIT_SIDECAR_MIB = 320  # the chart's gateway container (gateway.mode: sidecar)


def fill(head: bytes, item: bytes, tail: bytes, size: int = MAX_BODY) -> bytes:
    """``head`` + ``item`` repeated + ``tail``, at most ``size`` bytes."""
    count = (size - len(head) - len(tail)) // len(item)
    return head + item * count + tail


def empty_objects(size: int = MAX_BODY) -> bytes:
    """``{"payloads":[{},{},…]}``: 5.6 million empty payloads in 16 MiB."""
    return fill(b'{"payloads":[', b"{},", b"{}]}", size)


def nested_arrays() -> bytes:
    """Arrays nested 500 deep (below Python's recursion limit, so json.loads would build them),
    over and over: 8 million lists in 16 MiB."""
    depth = 500
    return fill(b'{"payloads":[', b"[" * depth + b"]" * depth + b",", b"[]]}")


def deep_nesting() -> bytes:
    """One array nested 16 million deep."""
    half = (MAX_BODY - 32) // 2
    return b'{"payloads":[' + b"[" * half + b"]" * half + b"]}"


def metadata_entries() -> bytes:
    """One payload with 1.3 million metadata entries, every key distinct."""
    parts = [b'{"payloads":[{"metadata":{']
    size, index = len(parts[0]), 0
    while True:
        entry = b'"%x":"",' % index
        if size + len(entry) + 8 > MAX_BODY:
            break
        parts.append(entry)
        size += len(entry)
        index += 1
    parts.append(b'"":""}}]}')
    return b"".join(parts)


def valid_payloads() -> bytes:
    """A valid Encode body just under 16 MiB: 10,000 payloads (MAX_PAYLOADS_PER_REQUEST) of 1,210 bytes."""
    body = encode_body(10_000, 1210)
    assert len(body) <= MAX_BODY, len(body)
    return body


def busiest_payloads() -> bytes:
    """The busiest body the limits let through to the parser: 10,000 payloads of 20 metadata entries
    each (47 of the 48 brackets, braces, commas and colons a payload may have), valid base64, ~16 MiB."""
    value = base64.b64encode(b"v" * 42).decode()  # 56 characters
    metadata = {f"header-{index:02}": value for index in range(20)}
    payload = {"metadata": metadata, "data": base64.b64encode(b"d" * 150).decode()}
    body = json.dumps({"payloads": [payload] * 10_000}, separators=(",", ":")).encode()
    assert len(body) <= MAX_BODY, len(body)
    return body


@dataclass(frozen=True)
class Body:
    name: str
    make: Callable[[], bytes]
    headers: tuple[tuple[str, str], ...] = ()
    compress: str = ""  # "gzip" | "deflate": sent compressed with that Content-Encoding


BODIES = [
    Body("gzip bomb: 4 MiB of {}, in gzip (the issue's 4 KB body)", lambda: empty_objects(4 * 1024 * 1024), (), "gzip"),
    Body("gzip bomb: 16 MiB of {}, in gzip", empty_objects, (), "gzip"),
    Body("deflate bomb: 16 MiB of {}, in deflate", empty_objects, (), "deflate"),
    Body("16 MiB of {}, (5.6 million payloads)", empty_objects),
    Body("16 MiB of arrays nested 500 deep", nested_arrays),
    Body("16 MiB of one array nested 8 million deep", deep_nesting),
    Body("16 MiB of metadata entries (1.3 million)", metadata_entries),
    Body("16 MiB of valid payloads (10,000 x 1,210 bytes, Encode)", valid_payloads),
    Body("16 MiB of valid payloads with 20 metadata entries each (10,000, Encode)", busiest_payloads),
]


def compressed(body: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(body, 9)
    if how == "deflate":
        return zlib.compress(body, 9)
    return body


def status_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def send(port: int, body: bytes, encoding: str = "") -> tuple[int, bytes, float]:
    headers = {"Content-Type": "application/json", "X-Namespace": "default"}
    if encoding:
        headers["Content-Encoding"] = encoding
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.request("POST", "/encode", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
    except (BrokenPipeError, ConnectionResetError) as exc:  # refused before the whole body was read
        return 0, str(exc).encode(), time.monotonic() - started
    finally:
        connection.close()
    return response.status, answer, time.monotonic() - started


def warm_up(port: int) -> None:
    payload = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()}, "data": "e30="}
    status, answer, _ = send(port, json.dumps({"payloads": [payload]}).encode())
    if status != 200:
        raise RuntimeError(f"warm-up call failed: {status} {answer[:300]!r}")


def summary(status: int, answer: bytes) -> str:
    if status == 200:
        return "200"
    try:
        message = str(json.loads(answer)["error"])
    except (ValueError, KeyError, TypeError):
        message = answer[:80].decode(errors="replace")
    return f"{status} {message[:90]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="only the bodies whose name contains this text")
    parser.add_argument("--sidecar", action="store_true", help="also measure the standalone gateway (sidecar)")
    args = parser.parse_args()
    bodies = [body for body in BODIES if args.only in body.name]
    worst = 0.0
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-bombs-")))
        common = {
            **start_kms(stack, workdir, "alias/bombs"),
            "GRPC_HOST": "127.0.0.1",
            "GATEWAY_HOST": "127.0.0.1",
            "METRICS_HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
        }
        server_cmd = [sys.executable, "server.py"]
        gateway_cmd = [sys.executable, "-m", "codec_grpc.runtime.gateway_process"]
        print(f"server.py with its gateway (in-process; the chart's limit {LIMIT_IN_PROCESS_MIB} MiB), fresh per body")
        print("MiB resident: before -> after (VmRSS), peak (VmHWM); seconds to the answer; the answer")
        for body in bodies:
            raw = body.make()
            sent = compressed(raw, body.compress)
            size = f"{len(sent):,} bytes" + (f" ({len(raw) / 2**20:.1f} MiB inflated)" if body.compress else "")
            with ExitStack() as processes:
                port = free_port()
                env = {**common, "GRPC_PORT": "0", "PORT": str(port), "METRICS_PORT": str(free_port())}
                log = workdir / f"inproc-{port}.log"
                try:
                    server = processes.enter_context(process(server_cmd, env, port, log))
                except RuntimeError:
                    sys.exit(f"server.py did not start:\n{log.read_text()}")
                warm_up(port)
                before, _ = status_mib(server.pid)
                status, answer, seconds = send(port, sent, body.compress)
                after, peak = status_mib(server.pid)
                worst = max(worst, peak)
                verdict = "ok" if peak <= LIMIT_IN_PROCESS_MIB else "OVER"
                print(f"{body.name}, {size}", flush=True)
                print(
                    f"  in-process: {before:.1f} -> {after:.1f}, peak {peak:.1f} {verdict}; "
                    f"{seconds:.2f} s; {summary(status, answer)}",
                    flush=True,
                )
            if not args.sidecar:
                continue
            with ExitStack() as processes:
                grpc_port, http_port = free_port(), free_port()
                env_server = {**common, "GRPC_PORT": str(grpc_port), "GATEWAY_ENABLED": "false", "METRICS_PORT": "0"}
                processes.enter_context(process(server_cmd, env_server, grpc_port, workdir / "server.log"))
                env_gateway = {
                    **common,
                    "CODEC_GRPC_TARGET": f"127.0.0.1:{grpc_port}",
                    "PORT": str(http_port),
                    "METRICS_PORT": str(free_port()),
                }
                gateway = processes.enter_context(process(gateway_cmd, env_gateway, http_port, workdir / "gw.log"))
                warm_up(http_port)
                before, _ = status_mib(gateway.pid)
                status, answer, seconds = send(http_port, sent, body.compress)
                after, peak = status_mib(gateway.pid)
                verdict = "ok" if peak <= LIMIT_SIDECAR_MIB else "OVER"
                print(
                    f"  sidecar gateway: {before:.1f} -> {after:.1f}, peak {peak:.1f} {verdict}; "
                    f"{seconds:.2f} s; {summary(status, answer)}",
                    flush=True,
                )
        print(f"worst in-process peak: {worst:.1f} MiB (limit {LIMIT_IN_PROCESS_MIB} MiB)")
    if os.environ.get("BOMBS_STRICT") and worst > LIMIT_IN_PROCESS_MIB:
        sys.exit(1)


if __name__ == "__main__":
    main()
