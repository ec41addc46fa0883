"""WORKERS=2: server.py forks two servers sharing the port; one metrics endpoint sums them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from codec_grpc.errors import ConfigError
from codec_grpc.keys import KeyStats
from codec_grpc.runtime.config import load_config
from codec_grpc.runtime.multiprocess import KeyStatsPublisher
from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fakes import current_key
from tests.support.fixtures import REGION
from tests.support.gateway import b64
from tests.support.paths import SERVER
from tests.support.server_process import ServerProcess

CALLS = 24  # fresh connections; all on one of two workers has probability 2**-23


@pytest.fixture
def workers(server_script_env, kms_endpoint, make_key, tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(**settings: str) -> ServerProcess:
        alias, _ = make_key()
        (tmp_path / "tmp").mkdir(exist_ok=True)
        env = server_script_env | {
            "AWS_ENDPOINT_URL_KMS": kms_endpoint,
            "AWS_REGION": REGION,
            "KMS_KEY_ALIAS": alias,
            "WORKERS": "2",
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": "0",  # the supervisor picks one port for both workers
            "GATEWAY_ENABLED": "false",
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "LOG_FORMAT": "json",
            "TMPDIR": str(tmp_path / "tmp"),  # where the metrics files go; checked for leftovers
        }
        process = ServerProcess(env | settings)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:  # a failed test: stop it gracefully, so the workers go too
            process.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.proc.wait(timeout=30)
        process.kill()


def json_lines(process: ServerProcess, event: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` JSON log lines with this ``event`` (or message), waiting for them."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [entry for entry in map(_parse, process.lines) if event in (entry.get("event"), entry.get("message"))]
        if len(found) >= count:
            return found[:count]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {event!r} lines:\n{''.join(process.lines)}")


def _parse(line: str) -> dict[str, Any]:
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def worker_pids(process: ServerProcess) -> list[int]:
    line = process.wait_for_line("supervisor: 2 workers")
    return [int(pid) for pid in json.loads(line)["message"].rsplit("pids ", 1)[1].split()]


def scrape(process: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = json_lines(process, "metrics_started", 1)[0]["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


def poll(read: Callable[[], float], expected: float) -> float:
    """``read()`` until it returns ``expected`` (published values lag by up to a second)."""
    deadline = time.monotonic() + 15
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (reaping orphans is the init process's business)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def encode_on_fresh_connection(port: int, number: int) -> pb.Payload:
    # A channel of its own subchannel pool opens its own TCP connection, which the kernel hands to
    # one of the workers listening on the port.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        request = pb.EncodeRequest(payloads=[pb.Payload(metadata={"encoding": b"json/plain"}, data=b"%d" % number)])
        return codec_pb2_grpc.CodecServiceStub(channel).Encode(request, timeout=30).payloads[0]


def test_two_workers_share_the_port_and_one_endpoint_sums_their_metrics(workers, tmp_path) -> None:
    process = workers()
    started = json_lines(process, "started", 2)
    ports = {entry["grpc_port"] for entry in started}
    assert len(ports) == 1 and 0 not in ports, started
    port = ports.pop()
    pids = worker_pids(process)
    assert len(set(pids)) == 2 and process.proc.pid not in pids

    encoded = [encode_on_fresh_connection(port, n) for n in range(CALLS)]
    # Each worker generates its own data key: two distinct wrapped keys mean both workers served calls.
    assert len({p.metadata["encrypted-data-key"] for p in encoded}) == 2

    def handled() -> float:
        return total(scrape(process), "grpc_server_handled_total", grpc_method="Encode", grpc_code="OK")

    assert poll(handled, CALLS) == CALLS
    samples = scrape(process)
    assert total(samples, "grpc_server_started_total", grpc_method="Encode") == CALLS
    assert total(samples, "grpc_server_handling_seconds_count", grpc_method="Encode") == CALLS
    assert total(samples, "temporal_codec_payloads_total", grpc_method="Encode") == CALLS
    # Key-cache figures are published by each worker every second: one miss per worker's first Encode.
    assert poll(lambda: total(scrape(process), "temporal_codec_cache_misses_total", cache="current"), 2) == 2
    # As with one process, a call that missed counts a hit too once the new key is in place.
    assert poll(lambda: total(scrape(process), "temporal_codec_cache_hits_total", cache="current"), CALLS) == CALLS
    samples = scrape(process)
    assert total(samples, "temporal_codec_cache_entries", cache="current") == 2  # one per worker
    assert total(samples, "temporal_codec_kms_requests_total", operation="GenerateDataKey") == 2
    # Hook-fed like the KMS requests, so present in the summed scrape too (at 0: KMS never failed).
    assert ("temporal_codec_kms_short_circuited_total", (("operation", "Decrypt"), ("region", REGION))) in samples
    # The largest over the two workers' current keys, not their sum (which would be CALLS).
    assert CALLS / 2 <= total(samples, "temporal_codec_current_key_encryptions") < CALLS

    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0, "".join(process.lines)
    for pid in pids:
        assert not alive(pid), f"worker {pid} outlived the supervisor"
    assert len(json_lines(process, "stopped", 2)) == 2
    assert list((tmp_path / "tmp").iterdir()) == []  # the metrics files are gone


def test_a_worker_dying_stops_the_others_and_fails(workers) -> None:
    process = workers()
    json_lines(process, "started", 2)
    victim, survivor = worker_pids(process)
    os.kill(victim, signal.SIGKILL)
    assert process.finish() == 1
    assert not alive(survivor)
    died = json_lines(process, "worker_died", 1)[0]
    assert died["level"] == "ERROR" and "SIGKILL" in died["message"]


def test_the_gateway_runs_in_every_worker_on_one_port(workers) -> None:
    process = workers(GATEWAY_ENABLED="true", GATEWAY_HOST="127.0.0.1", PORT="0")
    gateways = json_lines(process, "gateway_started", 2)
    http_ports = {entry["http_port"] for entry in gateways}
    assert len(http_ports) == 1, gateways
    http_port = http_ports.pop()
    body = {"payloads": [{"metadata": {"encoding": b64("json/plain")}, "data": b64("1")}]}
    for _ in range(6):  # urllib opens a new connection per request
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/encode",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
    assert poll(lambda: total(scrape(process), "temporal_codec_http_requests_total", route="encode"), 6) == 6
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0, "".join(process.lines)


def test_dev_kms_is_refused_with_several_workers(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"HOME": str(tmp_path), "WORKERS": "2", "DEV_KMS": "on", "GRPC_PORT": "0"}
    result = subprocess.run(
        [sys.executable, str(SERVER)], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "WORKERS: the development KMS (DEV_KMS) needs WORKERS=1" in result.stderr


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_workers_setting_is_validated(value: str) -> None:
    with pytest.raises(ConfigError, match="WORKERS"):
        load_config({"WORKERS": value})


def test_workers_default_to_one() -> None:
    assert load_config({}).workers == 1
    assert load_config({}, ["--workers", "3"]).workers == 3


def test_workers_stop_when_the_supervisor_is_killed(workers) -> None:
    process = workers()
    json_lines(process, "started", 2)
    pids = worker_pids(process)
    process.proc.kill()  # no chance to stop them: the kernel's parent-death signal must
    assert process.finish() == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(alive, pids))


def test_key_stats_publisher_adds_only_what_is_new_and_sets_the_gauges() -> None:
    registry = CollectorRegistry()
    current = current_key("alias/a", "ns", age=5.0, expires_in=7.0, expired=False, encryptions=3)
    stats = [KeyStats(2, [current], 3, 1, 0, 0, 0, 1, 10)]
    publisher = KeyStatsPublisher(lambda: stats[0], interval=3600, registry=registry)
    publisher.publish()
    stats[0] = KeyStats(2, [current], 8, 1, 2, 1, 0, 1, 10)
    publisher.publish()
    publisher.publish()  # nothing new: counters must not move
    value = registry.get_sample_value
    assert value("temporal_codec_cache_hits_total", {"cache": "current"}) == 8
    assert value("temporal_codec_cache_misses_total", {"cache": "current"}) == 1
    assert value("temporal_codec_cache_hits_total", {"cache": "decrypted"}) == 2
    assert value("temporal_codec_cache_entries", {"cache": "decrypted"}) == 1
    assert value("temporal_codec_cache_capacity_entries") == 10
    slot = {"key_alias": "alias/a", "temporal_namespace": "ns"}
    assert value("temporal_codec_current_key_age_seconds", slot) == 5.0
    assert value("temporal_codec_current_key_encryptions", slot) == 3


def test_a_port_in_use_exits_2_naming_it(workers) -> None:
    with socket.socket() as taken:  # a listener without SO_REUSEPORT: the workers cannot join it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = workers(GRPC_PORT=str(taken.getsockname()[1]))
        assert process.finish() == 2
    assert any("codec-server: error: GRPC_PORT" in line for line in process.lines), "".join(process.lines)
