"""Prometheus metrics after real traffic, scraped over HTTP and parsed with prometheus-client's parser."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from codec_grpc.keys import KeyStats
from codec_grpc.runtime.metrics import GatewayMetrics, KeyCacheCollector, KmsMetrics, new_registry, start_metrics_server
from codec_grpc.v1 import codec_pb2
from tests.support.fakes import current_key
from tests.support.fixtures import REGION

CODEC = "codec_grpc.v1.CodecService"


def payloads(count: int) -> list[codec_pb2.Payload]:
    return [codec_pb2.Payload(metadata={"encoding": b"json/plain"}, data=b'"%d"' % i) for i in range(count)]


def scrape(registry: CollectorRegistry) -> str:
    server, port = start_metrics_server("127.0.0.1", 0, registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            return str(answer.read().decode())
    finally:
        server.shutdown()
        server.server_close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture
def traffic(codec_server, make_key) -> Iterator[tuple[str, str, str]]:
    """A server that served encodes, decodes, a refused decode and a KMS failure; yields its scrape."""
    alias, arn = make_key()
    running = codec_server(
        KMS_KEY_ALIAS=alias,
        KMS_CACHE_MAX_KEYS=1,
        NAMESPACE_KEY_ALIASES="broken=alias/missing",
        ALLOWED_NAMESPACES="ns-a,ns-b",  # named: their series carry their names
    )
    encoded = running.stub.Encode(codec_pb2.EncodeRequest(payloads=payloads(3), namespace="ns-a")).payloads
    running.stub.Decode(codec_pb2.DecodeRequest(payloads=encoded, namespace="ns-a"))
    running.stub.Encode(codec_pb2.EncodeRequest(payloads=payloads(1), namespace="ns-b"))  # evicts ns-a's key
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.Decode(codec_pb2.DecodeRequest(payloads=encoded, namespace="bad namespace!"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as kms_failed:
        running.stub.Encode(codec_pb2.EncodeRequest(payloads=payloads(1), namespace="broken"))
    assert kms_failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    yield scrape(running.app.registry), alias, arn


def test_grpc_requests_by_method_and_code(traffic):
    found = samples(traffic[0])
    handled = "grpc_server_handled_total"
    assert value(found, handled, grpc_service=CODEC, grpc_method="Encode", grpc_type="unary", grpc_code="OK") == 2
    assert value(found, handled, grpc_service=CODEC, grpc_method="Decode", grpc_type="unary", grpc_code="OK") == 1
    refused = {"grpc_service": CODEC, "grpc_method": "Decode", "grpc_type": "unary", "grpc_code": "INVALID_ARGUMENT"}
    assert value(found, handled, **refused) == 1
    failed = {"grpc_service": CODEC, "grpc_method": "Encode", "grpc_type": "unary", "grpc_code": "FAILED_PRECONDITION"}
    assert value(found, handled, **failed) == 1
    started = {"grpc_service": CODEC, "grpc_method": "Encode", "grpc_type": "unary"}
    assert value(found, "grpc_server_started_total", **started) == 3
    assert value(found, "grpc_server_handling_seconds_count", **started) == 3
    assert value(found, "grpc_server_handling_seconds_bucket", **started, le="+Inf") == 3
    assert value(found, "grpc_server_handling_seconds_sum", **started) > 0


def test_payloads_and_bytes_by_method(traffic):
    found = samples(traffic[0])
    assert value(found, "temporal_codec_payloads_total", grpc_method="Encode") == 4
    assert value(found, "temporal_codec_payloads_total", grpc_method="Decode") == 3
    received = value(found, "temporal_codec_payload_bytes_total", grpc_method="Encode", direction="received")
    sent = value(found, "temporal_codec_payload_bytes_total", grpc_method="Encode", direction="sent")
    assert 0 < received < sent  # encryption adds metadata, nonce and tag


def test_kms_requests_by_region_operation_and_outcome(traffic):
    """The region label: the KMS client's Region (without KMS_REGIONS, the only one)."""
    found = samples(traffic[0])
    requests = "temporal_codec_kms_requests_total"
    assert value(found, requests, region=REGION, operation="GenerateDataKey", outcome="success") == 2
    assert value(found, requests, region=REGION, operation="GenerateDataKey", outcome="error") == 1  # alias/missing
    latency = "temporal_codec_kms_request_duration_seconds_count"
    assert value(found, latency, region=REGION, operation="GenerateDataKey") == 3
    decrypts = frozenset({("region", REGION), ("operation", "Decrypt"), ("outcome", "success")})
    assert ("temporal_codec_kms_requests_total", decrypts) not in found  # the decode's key was cached: no Decrypt
    assert not any(name == "temporal_codec_kms_fallbacks_total" for name, _ in found)  # only with KMS_REGIONS


def test_cache_and_current_key_gauges(traffic):
    found, alias, _ = samples(traffic[0]), traffic[1], traffic[2]
    assert value(found, "temporal_codec_cache_hits_total", cache="decrypted") == 1  # one lookup per data key per batch
    assert value(found, "temporal_codec_cache_misses_total", cache="current") == 3
    assert value(found, "temporal_codec_cache_evictions_total", cache="decrypted") == 1
    assert value(found, "temporal_codec_cache_entries", cache="decrypted") == 1
    assert value(found, "temporal_codec_cache_entries", cache="current") == 2
    assert value(found, "temporal_codec_cache_capacity_entries") == 1
    assert value(found, "temporal_codec_cached_keys") == 2
    assert value(found, "temporal_codec_current_key_age_seconds", key_alias=alias, temporal_namespace="ns-a") >= 0
    assert (
        value(found, "temporal_codec_current_key_expires_in_seconds", key_alias=alias, temporal_namespace="ns-b") > 3000
    )
    assert value(found, "temporal_codec_current_key_expired", key_alias=alias, temporal_namespace="ns-a") == 0
    assert value(found, "temporal_codec_current_key_encryptions", key_alias=alias, temporal_namespace="ns-a") == 3


def test_no_key_material_or_payload_in_scrape(traffic):
    text = traffic[0]
    assert '"0"' not in text and "json/plain" not in text
    assert "alias/" in text  # key aliases are labels; key ARNs and data keys are not
    assert traffic[2] not in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_metrics_is_clean(traffic):
    gateway_registry = new_registry()
    GatewayMetrics(gateway_registry).observe("decode", "POST", 200, 0.01)
    for text in (traffic[0], scrape(gateway_registry)):
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_gateway_metrics_bound_route_and_method_labels():
    registry = CollectorRegistry()
    gateway = GatewayMetrics(registry)
    gateway.observe("decode", "post", 200, 0.002)
    gateway.observe("decode", "POST", 400, 0.001)
    gateway.observe("wp-admin.php", "PROPFIND", 404, 0.0005)
    found = samples(scrape(registry))
    assert value(found, "temporal_codec_http_requests_total", route="decode", method="POST", status="200") == 1
    assert value(found, "temporal_codec_http_requests_total", route="decode", method="POST", status="400") == 1
    assert value(found, "temporal_codec_http_requests_total", route="other", method="other", status="404") == 1
    assert value(found, "temporal_codec_http_request_duration_seconds_count", route="decode", method="POST") == 2
    assert not any("wp-admin" in str(labels) for _, labels in found)


def test_kms_metrics_hook_counts_outcomes():
    registry = CollectorRegistry()
    kms = KmsMetrics(registry, ("us-east-1",))
    observe = kms.observer("us-east-1")  # the hook of that Region's provider
    observe("Decrypt", "unavailable", 2.0)
    observe("Decrypt", "success", 0.02)
    labels = {"region": "us-east-1", "operation": "Decrypt"}
    assert registry.get_sample_value("temporal_codec_kms_requests_total", {**labels, "outcome": "unavailable"}) == 1
    assert registry.get_sample_value("temporal_codec_kms_request_duration_seconds_sum", labels) == 2.02


def test_kms_short_circuits_are_counted_by_region_and_operation_from_zero():
    registry = CollectorRegistry()
    kms = KmsMetrics(registry, ("us-east-1", "us-west-2"))
    name = "temporal_codec_kms_short_circuited_total"
    east, west = {"region": "us-east-1", "operation": "Decrypt"}, {"region": "us-west-2", "operation": "Decrypt"}
    assert registry.get_sample_value(name, east) == 0  # present before the first refusal, in every Region
    assert registry.get_sample_value(name, west) == 0
    refused = kms.short_circuit_observer("us-west-2")
    refused("Decrypt")
    refused("Decrypt")
    assert registry.get_sample_value(name, west) == 2 and registry.get_sample_value(name, east) == 0
    assert registry.get_sample_value(name, {"region": "us-west-2", "operation": "GenerateDataKey"}) is None
    # not KMS requests: neither counted nor timed as such
    requests = [family for family in registry.collect() if family.name.startswith("temporal_codec_kms_request")]
    assert len(requests) == 2 and all(family.samples == [] for family in requests)


def test_kms_fallbacks_are_counted_by_the_region_that_served_them():
    registry = CollectorRegistry()
    kms = KmsMetrics(registry, ("us-east-1", "us-west-2"), fallbacks=True)
    name = "temporal_codec_kms_fallbacks_total"
    for region in ("us-east-1", "us-west-2"):
        for operation in ("Decrypt", "GenerateDataKey"):
            assert registry.get_sample_value(name, {"region": region, "operation": operation}) == 0
    kms.fallback("Decrypt", "us-west-2")
    assert registry.get_sample_value(name, {"region": "us-west-2", "operation": "Decrypt"}) == 1


def test_key_cache_collector_reads_live_state_at_scrape_time():
    """The collector copies nothing: an expired key shows up at the next scrape."""
    current = current_key("alias/a", None, age=10.0, expires_in=50.0, expired=False, encryptions=7)
    state = {"stats": KeyStats(1, [current], 0, 1, 0, 0, 0, 1, 10)}
    registry = CollectorRegistry()
    KeyCacheCollector(lambda: state["stats"], registry)
    labels = {"key_alias": "alias/a", "temporal_namespace": ""}
    assert registry.get_sample_value("temporal_codec_current_key_expired", labels) == 0
    expired = current_key("alias/a", None, age=70.0, expires_in=0.0, expired=True, encryptions=7)
    state["stats"] = KeyStats(1, [expired], 0, 1, 0, 0, 0, 1, 10)
    assert registry.get_sample_value("temporal_codec_current_key_expired", labels) == 1
    assert registry.get_sample_value("temporal_codec_current_key_age_seconds", labels) == 70


def test_server_script_exits_2_when_the_metrics_port_is_taken(server_script_env, kms_endpoint):
    import socket
    import sys

    from tests.support.fixtures import codec_env
    from tests.support.paths import SERVER

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = server_script_env | codec_env(kms_endpoint, METRICS_HOST="127.0.0.1", METRICS_PORT=port)
        result = subprocess.run(
            [sys.executable, str(SERVER)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 2
    assert f"codec-server: error: METRICS_PORT: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_metric_never_fails_the_call(codec_server, make_key, monkeypatch, caplog):
    alias, _ = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias)

    def broken(*_args):
        raise RuntimeError("metrics backend broke")

    from codec_grpc.runtime.metrics import MethodMetrics

    monkeypatch.setattr(MethodMetrics, "finished", broken)
    answer = running.stub.Encode(codec_pb2.EncodeRequest(payloads=payloads(2)), timeout=10)
    assert len(answer.payloads) == 2
    assert "cannot record the call to Encode" in caplog.text


def test_in_process_gateway_counts_http_requests_by_route_and_status(codec_server, make_key):
    """The gateway's requests land in the server's registry, served on METRICS_PORT with the rest;
    its codec calls count payloads and bytes, but no gRPC call."""
    import http.client
    import json

    from codec_grpc.runtime.gateway_process import gateway_thread
    from codec_grpc.runtime.wiring import in_process_upstream

    running = codec_server(KMS_KEY_ALIAS=make_key()[0], PORT=0, GATEWAY_HOST="127.0.0.1")
    gateway = gateway_thread(running.app.config, in_process_upstream(running.app), running.app.registry)
    port = gateway.start()
    body = json.dumps({"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "IjEi"}]})
    try:
        for method, path, payload in [
            ("POST", "/api/encode?preserveStorageRefs=true", body),
            ("POST", "/encode", body),
            ("POST", "/decode", "not json"),
            ("POST", "/download", body),
            ("GET", "/health", None),
            ("GET", "/some/random/path", None),
        ]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            connection.getresponse().read()
            connection.close()
    finally:
        gateway.stop()
    found = samples(scrape(running.app.registry))
    requests = "temporal_codec_http_requests_total"
    assert value(found, requests, route="encode", method="POST", status="200") == 2
    assert value(found, requests, route="decode", method="POST", status="400") == 1
    assert value(found, requests, route="download", method="POST", status="404") == 1
    assert value(found, requests, route="health", method="GET", status="200") == 1
    assert value(found, requests, route="other", method="GET", status="404") == 1
    assert value(found, "temporal_codec_http_request_duration_seconds_count", route="encode", method="POST") == 2
    assert value(found, "temporal_codec_payloads_total", grpc_method="Encode") == 2
    assert value(found, "temporal_codec_payload_bytes_total", grpc_method="Encode", direction="sent") > 0
    # The gRPC series exist from the start (at 0, as go-grpc-prometheus initialises them); none counted.
    grpc_series = [(name, v) for (name, _), v in found.items() if name.startswith("grpc_server_")]
    counted = [name for name, v in grpc_series if v and not name.endswith("_created")]
    assert not counted


def test_with_metrics_disabled_calls_are_not_counted_but_still_logged(codec_server, make_key, caplog):
    """METRICS_ENABLED=false: no endpoint could serve the counts, so they are not even kept."""
    import logging

    running = codec_server(KMS_KEY_ALIAS=make_key()[0], METRICS_ENABLED="false")
    with caplog.at_level(logging.INFO, logger="codec_grpc.access"):
        answer = running.stub.Encode(codec_pb2.EncodeRequest(payloads=payloads(3)), timeout=10)
    assert len(answer.payloads) == 3
    names = {name for name, _ in samples(scrape(running.app.registry))}
    assert "grpc_server_handled_total" not in names
    assert "temporal_codec_payloads_total" not in names
    assert "temporal_codec_kms_requests_total" in names  # the rest of the registry is unchanged
    assert "Encode OK payloads=3" in caplog.text
    assert running.app.observer.in_flight == 0
