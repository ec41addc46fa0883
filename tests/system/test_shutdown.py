"""Graceful stop of the real ``server.py`` process: SIGTERM while a call waits on a slow KMS."""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from codec_grpc.v1 import codec_pb2, codec_pb2_grpc
from tests.support.fixtures import REGION, free_port, wait_for_port
from tests.support.server_process import DelayingKmsProxy, ServerProcess


@pytest.fixture
def proxy(kms_endpoint) -> Iterator[DelayingKmsProxy]:
    running = DelayingKmsProxy(kms_endpoint)
    yield running
    running.close()


def start_server(
    env: dict[str, str], proxy: DelayingKmsProxy, alias: str, **settings: str
) -> tuple[ServerProcess, int]:
    port = free_port()
    env = (
        env
        | {
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(port),
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": "0",
            "AWS_ENDPOINT_URL_KMS": proxy.url,
            "AWS_REGION": REGION,
            "KMS_KEY_ALIAS": alias,
            "KMS_MAX_ATTEMPTS": "1",
            "KMS_READ_TIMEOUT": "60",
        }
        | settings
    )
    process = ServerProcess(env)
    wait_for_port(port, proc=process.proc)
    return process, port


def scrape_metrics(process: ServerProcess) -> Callable[[str], float | None]:
    """Scrape the process's /metrics (port from its start-up log); look up Encode samples by name."""
    port = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", process.wait_for_line("metrics at"))
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("grpc_method") == "Encode"
    }
    return found.get


def encode_request() -> codec_pb2.EncodeRequest:
    return codec_pb2.EncodeRequest(payloads=[codec_pb2.Payload(metadata={"encoding": b"json/plain"}, data=b"1")])


def test_sigterm_lets_the_call_waiting_on_kms_finish_and_exits_0(server_script_env, proxy, make_key):
    alias, _ = make_key()
    process, port = start_server(server_script_env, proxy, alias, SHUTDOWN_GRACE="30")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            proxy.hold("GenerateDataKey")
            in_flight = codec_pb2_grpc.CodecServiceStub(channel).Encode.future(encode_request(), timeout=60)
            assert proxy.arrived.wait(timeout=30), "the Encode never reached KMS"
            in_flight_metrics = scrape_metrics(process)
            assert in_flight_metrics("grpc_server_started_total") == 1
            assert in_flight_metrics("grpc_server_handled_total") is None
            process.proc.send_signal(signal.SIGTERM)
            process.wait_for_line("draining")
            with grpc.insecure_channel(f"127.0.0.1:{port}") as late:
                with pytest.raises(grpc.RpcError) as refused:
                    health_pb2_grpc.HealthStub(late).Check(health_pb2.HealthCheckRequest(), timeout=5)
                # grpc's Python server cancels calls that arrive after stop(); either way: refused
                assert refused.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
            assert not in_flight.done()
            proxy.release()
            answer = in_flight.result(timeout=30)
            assert len(answer.payloads) == 1
            assert answer.payloads[0].metadata["encoding"] == b"binary/encrypted"
        assert process.finish() == 0
    finally:
        process.kill()
    log = "".join(process.lines)
    assert "received SIGTERM" in log and "stopped" in log
    assert "Traceback" not in log


def test_grace_expiry_cancels_the_call_and_still_exits_0(server_script_env, proxy, make_key):
    alias, _ = make_key()
    process, port = start_server(server_script_env, proxy, alias, SHUTDOWN_GRACE="0.5")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            proxy.hold("GenerateDataKey")
            in_flight = codec_pb2_grpc.CodecServiceStub(channel).Encode.future(encode_request(), timeout=60)
            assert proxy.arrived.wait(timeout=30)
            process.proc.send_signal(signal.SIGINT)
            with pytest.raises(grpc.RpcError) as cut:
                in_flight.result(timeout=30)
            assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert process.finish() == 0
    finally:
        proxy.release()
        process.kill()
    log = "".join(process.lines)
    assert "received SIGINT" in log
    assert "1 calls did not finish within SHUTDOWN_GRACE=0.5s" in log
