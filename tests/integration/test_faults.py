"""KMS faults through a proxy in front of moto's real KMS server, over gRPC and the HTTP gateway:
an outage seen from the UI, the fail-fast pause, and throttling under botocore's retry modes."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import REGION, RunningCodec, details
from tests.support.gateway import Gateway, b64, plain_payload
from tests.support.kms_proxy import KmsProxy
from tests.support.server_process import ServerProcess

Start = Callable[..., RunningCodec]


def written_elsewhere(codec_server: Start, alias: str, count: int) -> list[pb.Payload]:
    """Payloads another instance encoded, each under its own data key: not cached by the server under test."""
    payloads = []
    for index in range(count):
        writer = codec_server(KMS_KEY_ALIAS=alias)
        request = pb.EncodeRequest(payloads=[pb.Payload(data=f"elsewhere {index}".encode())])
        payloads.extend(writer.stub.Encode(request).payloads)
    return payloads


def as_json(payloads: list[pb.Payload]) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(p) for p in payloads]


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_kms_outage_seen_through_the_gateway(
    start_gateway: Callable[..., Gateway], codec_server: Start, kms_proxy: KmsProxy
):
    """KMS down: encodes go on with the last key past its rotation, cached payloads decode, an
    uncached one is 503 with a clear message, /health stays 200; KMS back: all works, no restart."""
    gateway = start_gateway(
        AWS_ENDPOINT_URL_KMS=kms_proxy.url,
        DATA_KEY_ROTATION_INTERVAL=1,
        KMS_OUTAGE_GRACE=60,
        KMS_CONNECT_TIMEOUT=0.5,
        KMS_READ_TIMEOUT=0.5,
        KMS_FAIL_FAST_SECONDS=0.5,
    )
    (uncached,) = as_json(written_elsewhere(codec_server, gateway.alias, 1))
    before = gateway.encode([plain_payload('"before"')])
    kms_proxy.set(mode="drop")
    stats = gateway.codec.stub.Stats
    eventually(lambda: stats(pb.StatsRequest()).current_key_expired)  # past its rotation time
    during = gateway.encode([plain_payload('"during"')])
    assert during[0]["metadata"]["encrypted-data-key"] == before[0]["metadata"]["encrypted-data-key"]
    assert gateway.decode(before + during) == [plain_payload('"before"'), plain_payload('"during"')]

    reply = gateway.post("/decode", {"payloads": [uncached]}, X_Namespace="default")
    assert reply.status == 503
    assert reply.error.startswith("payload 0: KMS Decrypt with key arn:aws:kms:")
    assert reply.error.endswith("retry later")
    assert gateway.request("GET", "/health").status == 200
    document = gateway.request("GET", "/stats").json()
    assert document["kms_degraded"] is True and "cannot reach KMS" in document["kms_last_error"]

    kms_proxy.set()
    eventually(lambda: gateway.post("/decode", {"payloads": [uncached]}, X_Namespace="default").status == 200)
    eventually(lambda: not stats(pb.StatsRequest()).kms_degraded)
    after = gateway.encode([plain_payload('"after"')])
    assert after[0]["metadata"]["encrypted-data-key"] != before[0]["metadata"]["encrypted-data-key"]


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_uncached_decodes_fail_fast_after_kms_was_found_unavailable(
    codec_server: Start, make_key: Any, kms_proxy: KmsProxy, fault: str
):
    """The first decode pays the timeouts (attempts × read timeout when KMS hangs); the next ones,
    within KMS_FAIL_FAST_SECONDS, fail at once without a KMS request; then KMS is asked again."""
    alias = make_key()[0]
    first, second, third = written_elsewhere(codec_server, alias, 3)
    reader = codec_server(
        KMS_KEY_ALIAS=alias,
        AWS_ENDPOINT_URL_KMS=kms_proxy.url,
        KMS_CONNECT_TIMEOUT=0.3,
        KMS_READ_TIMEOUT=0.3,
        KMS_MAX_ATTEMPTS=3,
        KMS_FAIL_FAST_SECONDS=3,
    )
    kms_proxy.set(mode="drop", operations={"Decrypt"}) if fault == "drop" else kms_proxy.set(delay=2.0)

    def decode(payload: pb.Payload) -> tuple[grpc.RpcError, float]:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            reader.stub.Decode(pb.DecodeRequest(payloads=[payload]), timeout=30)
        return caught.value, time.monotonic() - started

    asked = kms_proxy.seen("Decrypt")
    error, took = decode(first)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert kms_proxy.seen("Decrypt") - asked == 3  # KMS_MAX_ATTEMPTS
    if fault == "hang":
        assert 0.9 <= took < 3.0  # three read timeouts of 0.3 s, and small backoffs
        assert "ReadTimeoutError" in (error.details() or "")
    error, took = decode(second)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert took < 0.5  # no timeouts waited out: the proxy saw no request (below)
    assert "not tried, KMS was unavailable for this key moments ago" in (error.details() or "")
    assert kms_proxy.seen("Decrypt") - asked == 3
    kms_proxy.set()
    eventually(lambda: _decodes(reader, third))
    assert reader.app.provider.stats().short_circuited >= 1


def test_short_circuited_decrypts_are_exported_to_prometheus_and_stats(
    server_script_env: dict[str, str], codec_server: Start, make_key: Any, kms_proxy: KmsProxy
):
    """server.py as its own process, KMS dropping Decrypt connections: the first uncached decode asks
    KMS and fails, the next two are refused without a request; /metrics and Stats count those two."""
    alias = make_key()[0]
    payloads = written_elsewhere(codec_server, alias, 3)
    process = ServerProcess(
        server_script_env
        | {
            "AWS_ENDPOINT_URL_KMS": kms_proxy.url,
            "AWS_REGION": REGION,
            "KMS_KEY_ALIAS": alias,
            "GRPC_PORT": "0",
            "METRICS_PORT": "0",
            "GATEWAY_ENABLED": "false",
            "LOG_FORMAT": "json",
            "KMS_MAX_ATTEMPTS": "1",
            "KMS_FAIL_FAST_SECONDS": "60",
        }
    )
    try:
        grpc_port = json.loads(process.wait_for_line('"event": "started"'))["grpc_port"]
        metrics_port = json.loads(process.wait_for_line("metrics at http://"))["metrics_port"]

        def scrape(name: str, **labels: str) -> float | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
            found = [
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == name and sample.labels == labels
            ]
            assert len(found) <= 1, found
            return found[0] if found else None

        short_circuited = "temporal_codec_kms_short_circuited_total"
        assert scrape(short_circuited, region=REGION, operation="Decrypt") == 0  # exists before the first refusal
        kms_proxy.set(mode="drop", operations={"Decrypt"})
        asked = kms_proxy.seen("Decrypt")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = codec_pb2_grpc.CodecServiceStub(channel)
            refusals = []
            for payload in payloads:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Decode(pb.DecodeRequest(payloads=[payload]), timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                refusals.append(details(caught))
            stats = stub.Stats(pb.StatsRequest(), timeout=10)
        assert "cannot reach KMS" in refusals[0]
        assert all("not tried, KMS was unavailable for this key moments ago" in refusal for refusal in refusals[1:])
        assert kms_proxy.seen("Decrypt") - asked == 1
        assert scrape(short_circuited, region=REGION, operation="Decrypt") == 2
        unavailable = {"region": REGION, "operation": "Decrypt", "outcome": "unavailable"}
        assert scrape("temporal_codec_kms_requests_total", **unavailable) == 1
        assert (stats.kms_decrypt_short_circuited, stats.kms_decrypt_calls, stats.kms_errors) == (2, 1, 1)
        process.proc.send_signal(signal.SIGTERM)
        assert process.finish() == 0, "".join(process.lines)
    finally:
        process.kill()


def _decodes(server: RunningCodec, payload: pb.Payload) -> bool:
    try:
        server.stub.Decode(pb.DecodeRequest(payloads=[payload]), timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return False
    return True


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_throttling_is_retried_by_botocore_then_unavailable_then_recovers(
    codec_server: Start, make_key: Any, kms_proxy: KmsProxy, mode: str
):
    alias = make_key()[0]
    (payload,) = written_elsewhere(codec_server, alias, 1)
    reader = codec_server(
        KMS_KEY_ALIAS=alias,
        AWS_ENDPOINT_URL_KMS=kms_proxy.url,
        KMS_RETRY_MODE=mode,
        KMS_MAX_ATTEMPTS=3,
        KMS_FAIL_FAST_SECONDS=0,
    )
    kms_proxy.set(mode="throttle")
    for operation, call in (
        ("Decrypt", lambda: reader.stub.Decode(pb.DecodeRequest(payloads=[payload]), timeout=60)),
        ("GenerateDataKey", lambda: reader.stub.Encode(pb.EncodeRequest(payloads=[pb.Payload()]), timeout=60)),
    ):
        asked = kms_proxy.seen(operation)
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "KMS is unavailable or throttling (ThrottlingException); retry later" in details(caught)
        assert kms_proxy.seen(operation) - asked == 3  # every attempt of the budget reached KMS
    assert reader.stub.Stats(pb.StatsRequest()).kms_errors == 2  # one error per call, after its retries
    kms_proxy.set()
    assert reader.stub.Decode(pb.DecodeRequest(payloads=[payload])).payloads[0].data == b"elsewhere 0"
    assert len(reader.stub.Encode(pb.EncodeRequest(payloads=[pb.Payload()])).payloads) == 1


@pytest.mark.parametrize(("mode", "code"), [("throttle", "ThrottlingException"), ("error500", "KMSInternalException")])
def test_throttling_and_kms_5xx_are_503_over_http_then_recover(
    start_gateway: Callable[..., Gateway], codec_server: Start, kms_proxy: KmsProxy, mode: str, code: str
):
    gateway = start_gateway(AWS_ENDPOINT_URL_KMS=kms_proxy.url, KMS_MAX_ATTEMPTS=2, KMS_FAIL_FAST_SECONDS=0)
    (payload,) = as_json(written_elsewhere(codec_server, gateway.alias, 1))
    kms_proxy.set(mode=mode, operations={"Decrypt"})
    asked = kms_proxy.seen("Decrypt")
    reply = gateway.post("/decode", {"payloads": [payload]}, X_Namespace="default")
    assert reply.status == 503
    assert code in reply.error and reply.error.endswith("retry later")
    assert kms_proxy.seen("Decrypt") - asked == 2
    assert gateway.request("GET", "/health").status == 200
    kms_proxy.set()
    assert gateway.decode([payload]) == [{"data": b64("elsewhere 0")}]


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [
        ("deny", grpc.StatusCode.PERMISSION_DENIED, 403),
        ("disabled", grpc.StatusCode.FAILED_PRECONDITION, 503),
        ("pending_deletion", grpc.StatusCode.FAILED_PRECONDITION, 503),
    ],
)
def test_access_denied_or_unusable_key_is_no_outage(
    start_gateway: Callable[..., Gateway],
    codec_server: Start,
    kms_proxy: KmsProxy,
    mode: str,
    code: grpc.StatusCode,
    status: int,
):
    """No grace and no fail-fast pause: KMS answers, and its answer is final. The current key serves
    to its normal rotation, cached payloads decode; uncached ones and the next key are refused."""
    gateway = start_gateway(AWS_ENDPOINT_URL_KMS=kms_proxy.url, DATA_KEY_ROTATION_INTERVAL=1, KMS_OUTAGE_GRACE=60)
    (uncached,) = as_json(written_elsewhere(codec_server, gateway.alias, 1))
    before = gateway.encode([plain_payload('"before"')])
    kms_proxy.set(mode=mode)
    assert gateway.decode(before) == [plain_payload('"before"')]
    reply = gateway.post("/decode", {"payloads": [uncached]}, X_Namespace="default")
    assert reply.status == status and "KMS Decrypt with key arn:" in reply.error
    with pytest.raises(grpc.RpcError) as caught:
        gateway.codec.stub.Decode(pb.DecodeRequest(payloads=[json_format.ParseDict(uncached, pb.Payload())]))
    assert caught.value.code() == code
    stats = gateway.codec.stub.Stats
    eventually(lambda: stats(pb.StatsRequest()).current_key_expired)
    reply = gateway.post("/encode", {"payloads": [plain_payload('"after rotation"')]}, X_Namespace="default")
    assert reply.status == status and "KMS GenerateDataKey with key alias/" in reply.error
    assert stats(pb.StatsRequest()).kms_degraded
    assert gateway.request("GET", "/health").status == 200
    assert gateway.codec.app.provider.stats().short_circuited == 0
    kms_proxy.set()
    assert gateway.decode([uncached]) == [{"data": b64("elsewhere 0")}]
    assert gateway.decode(gateway.encode([plain_payload('"later"')])) == [plain_payload('"later"')]
