"""Memory of the HTTP gateway's two modes, for sizing the Helm chart's containers.

In-process: server.py with its gateway (GATEWAY_ENABLED=true), one process. Sidecar: the standalone
gateway (``codec-gateway``) in front of server.py (gateway off) over gRPC, two
processes. Both get the same HTTP calls, and the resident memory of each process is
printed after each scenario: VmRSS (now) and VmHWM (the most it ever was, i.e. what a memory limit
must leave room for).

Scenarios, each on fresh processes: 300 calls of batches of 1, 10 and 100 payloads of 1 KiB (Encode
and Decode); 3 Encode bodies of ~4 MiB (1,000 payloads of 3 KiB); 4 threads at once each sending 3
of those; 3 bodies of ~12 MiB (3,000 payloads of 3 KiB), under the default GATEWAY_MAX_BODY_BYTES
(16 MiB). KMS is moto's server on 127.0.0.1; metrics on, as in the chart.

    python -m bench.gateway_memory
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.gateway_bench import encode_body as body
from bench.gateway_bench import post
from bench.run import process, start_kms
from tests.support.fixtures import free_port


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def small_calls(port: int) -> str:
    post(port, "/encode", body(1, 1024))
    for batch in (1, 10, 100):
        data = body(batch, 1024)
        for _ in range(50):
            post(port, "/decode", post(port, "/encode", data))
    return "300 calls, batches of 1, 10, 100 x 1 KiB"


def large_bodies(count: int, threads: int) -> Callable[[int], str]:
    data = body(count, 3072)

    def run(port: int) -> str:
        post(port, "/encode", body(1, 1024))  # the data key, before the big ones
        errors: list[BaseException] = []

        def sender() -> None:
            try:
                for _ in range(3):
                    post(port, "/encode", data)
            except BaseException as exc:
                errors.append(exc)

        running = [threading.Thread(target=sender) for _ in range(threads)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
        if errors:
            raise errors[0]
        size = len(data) / 2**20
        return f"{threads} thread(s) x 3 bodies of {size:.1f} MiB" if threads > 1 else f"3 bodies of {size:.1f} MiB"

    return run


SCENARIOS = [small_calls, large_bodies(1000, 1), large_bodies(1000, 4), large_bodies(3000, 1)]


def main() -> None:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codec-gw-memory-")))
        common = {
            **start_kms(stack, workdir, "alias/gw-memory"),
            "GRPC_HOST": "127.0.0.1",
            "GATEWAY_HOST": "127.0.0.1",
            "METRICS_HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
        }
        server_cmd = [sys.executable, "server.py"]
        gateway_cmd = [sys.executable, "-m", "codec_grpc.runtime.gateway_process"]
        print("MiB resident, now / peak (VmRSS / VmHWM); fresh processes for each scenario")
        for scenario in SCENARIOS:
            with ExitStack() as processes:
                # In-process: one process serves gRPC, HTTP and metrics.
                http_port = free_port()
                env_in = {**common, "GRPC_PORT": "0", "PORT": str(http_port), "METRICS_PORT": str(free_port())}
                inproc = processes.enter_context(process(server_cmd, env_in, http_port, workdir / "inproc.log"))
                what = scenario(http_port)
                print(f"{what}\n  in-process: {fmt(status_kib(inproc.pid))}", flush=True)
            with ExitStack() as processes:
                # Sidecar: server.py without its gateway, and the standalone gateway in front of it.
                grpc_port, http_port = free_port(), free_port()
                env_server = {**common, "GRPC_PORT": str(grpc_port), "GATEWAY_ENABLED": "false", "METRICS_PORT": "0"}
                server = processes.enter_context(process(server_cmd, env_server, grpc_port, workdir / "server.log"))
                env_gateway = {
                    **common,
                    "CODEC_GRPC_TARGET": f"127.0.0.1:{grpc_port}",
                    "PORT": str(http_port),
                    "METRICS_PORT": str(free_port()),
                }
                gateway = processes.enter_context(process(gateway_cmd, env_gateway, http_port, workdir / "gw.log"))
                scenario(http_port)
                gw, sv = status_kib(gateway.pid), status_kib(server.pid)
                total = {key: gw[key] + sv[key] for key in gw}
                print(f"  sidecar: gateway {fmt(gw)}, codec server {fmt(sv)}, sum {fmt(total)}", flush=True)


def fmt(kib: dict[str, int]) -> str:
    return f"{kib['VmRSS'] / 1024:.1f} / {kib['VmHWM'] / 1024:.1f}"


if __name__ == "__main__":
    main()
