"""server.py's gateway calling the codec of its own process: on the event loop while every key is
cached, on a thread when KMS must be asked; the same answers, counters and metrics as the gRPC path.

Real servers throughout: the codec server on 127.0.0.1 with KMS from moto (or the misbehaving
proxy in front of it), the gateway on its own event loop, HTTP over real sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from codec_grpc.gateway import GatewayThread
from codec_grpc.gateway.upstreams import OFF_LOOP_BYTES
from codec_grpc.runtime.gateway_process import GatewayAccess, gateway_thread
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec, free_port
from tests.support.gateway import UI_ORIGIN, Gateway, InProcess, assert_cors, b64, plain_payload, unb64
from tests.support.kms_proxy import KmsProxy

IN_PROCESS = pytest.mark.parametrize("upstream_mode", ["in-process"])
EXECUTOR_THREAD = "gateway-kms"


def counts(gateway: Gateway) -> tuple[int, int]:
    """(calls run on the event loop, calls run on a thread) so far."""
    assert gateway.in_process is not None
    return gateway.in_process.counts


def written_elsewhere(codec_server: Callable[..., RunningCodec], alias: str, texts: list[str]) -> list[dict[str, Any]]:
    """Payloads another server encoded (one data key): not in the caches of the server under test."""
    writer = codec_server(KMS_KEY_ALIAS=alias)
    request = pb.EncodeRequest(
        payloads=[pb.Payload(metadata={"encoding": b"json/plain"}, data=t.encode()) for t in texts]
    )
    return [json_format.MessageToDict(p) for p in writer.stub.Encode(request).payloads]


@IN_PROCESS
def test_cached_keys_are_used_on_the_loop_and_a_missing_one_is_generated_on_a_thread(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway()
    kms = gateway.codec.kms
    originals = [plain_payload('"a"'), plain_payload('"b"')]
    encoded = gateway.encode(originals)  # no data key yet: GenerateDataKey, on the gateway's thread
    assert counts(gateway) == (0, 1)
    assert dict(kms.counts) == {"GenerateDataKey": 1}
    assert kms.threads[0].startswith(EXECUTOR_THREAD)
    assert gateway.decode(encoded) == originals  # the new key is cached for decryption too
    assert gateway.decode(gateway.encode(originals)) == originals
    assert counts(gateway) == (3, 1)
    assert dict(kms.counts) == {"GenerateDataKey": 1}
    stats = gateway.request("GET", "/stats").json()
    assert stats["current_keys"][0]["encryptions"] == 4  # reserved once per batch, never by a failed try


@IN_PROCESS
def test_a_fresh_server_decodes_with_one_kms_decrypt_on_a_thread(
    start_gateway: Callable[..., Gateway], codec_server: Callable[..., RunningCodec]
) -> None:
    gateway = start_gateway()
    written = written_elsewhere(codec_server, gateway.alias, ['"uncached 1"', '"uncached 2"', '"uncached 3"'])
    decoded = gateway.decode(written)
    assert [unb64(p["data"]) for p in decoded] == [b'"uncached 1"', b'"uncached 2"', b'"uncached 3"']
    assert dict(gateway.codec.kms.counts) == {"Decrypt": 1}
    assert gateway.codec.kms.threads == [gateway.codec.kms.threads[0]]
    assert gateway.codec.kms.threads[0].startswith(EXECUTOR_THREAD)
    assert counts(gateway) == (0, 1)
    stats = gateway.request("GET", "/stats").json()
    # The failed cache-only lookup counted nothing: one miss, as over gRPC.
    assert (stats["decrypted_cache_misses"], stats["decrypted_cache_hits"]) == (1, 0)
    assert gateway.decode(written) == decoded
    assert counts(gateway) == (1, 1)
    assert dict(gateway.codec.kms.counts) == {"Decrypt": 1}
    stats = gateway.request("GET", "/stats").json()
    assert (stats["decrypted_cache_misses"], stats["decrypted_cache_hits"]) == (1, 1)


@IN_PROCESS
def test_requests_over_off_loop_bytes_run_on_a_thread(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway()
    gateway.encode([plain_payload('"warm"')])
    small = [plain_payload('"x"')] * 10
    large = [plain_payload('"' + "x" * 2000 + '"')] * (OFF_LOOP_BYTES // 2000 + 1)
    assert gateway.decode(gateway.encode(small)) == small
    assert counts(gateway) == (2, 1)
    assert gateway.decode(gateway.encode(large)) == large  # keys cached, but the work would stall the loop
    assert counts(gateway) == (2, 3)


@IN_PROCESS
def test_kms_unreachable_is_503_from_the_thread(start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{free_port()}")
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    assert reply.status == 503
    assert reply.error.startswith("KMS GenerateDataKey with key alias/") and reply.error.endswith("retry later")
    assert_cors(reply)
    assert counts(gateway) == (0, 1)
    assert gateway.request("GET", "/health").status == 200


@IN_PROCESS
def test_kms_slower_than_the_timeout_is_504_and_the_loop_keeps_serving(
    start_gateway: Callable[..., Gateway], kms_proxy: KmsProxy
) -> None:
    gateway = start_gateway(AWS_ENDPOINT_URL_KMS=kms_proxy.url, GATEWAY_UPSTREAM_TIMEOUT=0.5, KMS_READ_TIMEOUT=10)
    kms_proxy.set(delay=2.0)
    replies = []
    call = threading.Thread(
        target=lambda: replies.append(gateway.post("/encode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN))
    )
    call.start()
    deadline = time.monotonic() + 10
    while kms_proxy.seen("GenerateDataKey") == 0:  # the KMS call is under way, on the gateway's thread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    assert gateway.request("GET", "/health").status == 200
    assert gateway.post("/encode", {"payloads": []}).status == 200
    assert time.monotonic() - started < 1.0  # the loop is not waiting for KMS (2 s)
    call.join(10)
    (reply,) = replies
    assert reply.status == 504
    assert reply.error == "the codec service did not answer in time (GATEWAY_UPSTREAM_TIMEOUT)"
    assert_cors(reply)
    # The thread's KMS call completes after the answer and caches the key: the next call runs on the loop.
    deadline = time.monotonic() + 10
    while not gateway.request("GET", "/stats").json()["current_key_present"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kms_proxy.set()
    before = counts(gateway)
    assert len(gateway.encode([plain_payload("2")])) == 1
    assert counts(gateway) == (before[0] + 1, before[1])
    assert kms_proxy.seen("GenerateDataKey") == 1


@pytest.fixture
def gateway_pair(
    codec_server: Callable[..., RunningCodec], make_key: Callable[..., tuple[str, str]]
) -> Iterator[Callable[..., tuple[Gateway, Gateway]]]:
    """``gateway_pair(**settings)``: one codec server, with an in-process and a gRPC gateway in front."""
    threads: list[GatewayThread] = []

    def start(**settings: Any) -> tuple[Gateway, Gateway]:
        alias, arn = make_key()
        settings = {"KMS_KEY_ALIAS": alias, "CORS_ALLOWED_ORIGINS": UI_ORIGIN, **settings}
        running = codec_server(PORT=0, GATEWAY_HOST="127.0.0.1", **settings)
        upstream = InProcess(running.app)
        pair = []
        for target in (upstream, running.target):
            access = GatewayAccess(running.app.verifier, running.app.access)
            thread = gateway_thread(running.app.config, target, access=access)
            threads.append(thread)
            pair.append(Gateway(thread.start(), running, alias, arn, upstream if target is upstream else None))
        return pair[0], pair[1]

    yield start
    for thread in threads:
        thread.stop()


def test_errors_are_answered_alike_in_process_and_over_grpc(
    gateway_pair: Callable[..., tuple[Gateway, Gateway]], make_key: Callable[..., tuple[str, str]]
) -> None:
    in_process, over_grpc = gateway_pair(
        MAX_PAYLOADS_PER_REQUEST=3, GRPC_MAX_MESSAGE_BYTES=2048, NAMESPACE_KEY_ALIASES="ghost=alias/nobody-made-this"
    )
    encoded = in_process.encode([plain_payload('"a"'), plain_payload('"b"')])
    tampered = dict(encoded[1], data=b64(unb64(encoded[1]["data"])[:-1] + b"\0"))
    envelope = encoded[0]["metadata"]
    no_algorithm = {"metadata": {k: v for k, v in envelope.items() if k != "encryption-algorithm"}, "data": b64("x")}
    garbage_key = dict(encoded[0], metadata=dict(envelope, **{"encrypted-data-key": b64(b"\1" * 180)}))
    _, other_arn = make_key()
    other_key = dict(encoded[0], metadata=dict(envelope, **{"encryption-key-id": b64(other_arn)}))
    cases: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/decode", {"payloads": [encoded[0], tampered]}, {}),
        ("POST", "/decode", {"payloads": encoded}, {"X-Namespace": "billing"}),
        ("POST", "/encode", {"payloads": [plain_payload("1")] * 4}, {}),
        ("POST", "/encode", {"payloads": [plain_payload("x" * 3000)]}, {}),
        ("POST", "/encode", {"payloads": []}, {"X-Namespace": "no spaces!"}),
        ("POST", "/decode", "{not json", {}),
        ("POST", "/decode", {"payloads": [no_algorithm]}, {}),
        ("POST", "/decode", {"payloads": [garbage_key]}, {}),
        ("POST", "/decode", {"payloads": [other_key]}, {}),
        ("POST", "/encode", {"payloads": [plain_payload("1")]}, {"X-Namespace": "ghost"}),
        ("GET", "/stats", None, {"X-Namespace": "no spaces!"}),
    ]
    statuses = []
    for method, path, body, headers in cases:
        sent = {"Origin": UI_ORIGIN, "Content-Type": "application/json", **headers}
        first = in_process.request(method, path, body, sent)
        second = over_grpc.request(method, path, body, sent)
        # gRPC prefixes its own size check's message with "SERVER: "; the in-process check words it alike.
        grpc_error = second.error.replace("max (SERVER: ", "max (").replace(": SERVER: Received", ": Received")
        assert (first.status, first.error) == (second.status, grpc_error), (path, body)
        assert_cors(first)
        statuses.append(first.status)
    # moto's KMS answers AccessDeniedException for a data key it cannot unwrap under the named key.
    assert statuses == [400, 403, 413, 413, 400, 400, 400, 403, 403, 503, 400]
    assert in_process.in_process is not None and in_process.in_process.counts[1] >= 3  # KMS was asked


def test_cache_counters_and_metrics_match_the_grpc_path(
    gateway_pair: Callable[..., tuple[Gateway, Gateway]], codec_server: Callable[..., RunningCodec]
) -> None:
    """The same calls through each gateway of two fresh servers leave the same key-cache counters, and
    in-process calls count their payloads and bytes but no gRPC call."""
    counters = [
        "current_cache_hits",
        "current_cache_misses",
        "decrypted_cache_hits",
        "decrypted_cache_misses",
        "kms_decrypt_calls",
    ]
    seen = []
    for mode in ("in-process", "grpc"):
        in_process, over_grpc = gateway_pair()
        gateway = in_process if mode == "in-process" else over_grpc
        uncached = written_elsewhere(codec_server, gateway.alias, ['"c1"', '"c2"'])
        originals = [plain_payload('"a"'), plain_payload('"b"'), plain_payload('"c"')]
        encoded = gateway.encode(originals)
        plain_uncached = [plain_payload('"c1"'), plain_payload('"c2"')]
        assert gateway.decode(encoded + uncached) == originals + plain_uncached
        assert gateway.decode(uncached + encoded) == plain_uncached + originals
        gateway.encode(originals)
        stats = gateway.request("GET", "/stats").json()
        seen.append([stats[name] for name in counters] + [stats["current_keys"][0]["encryptions"]])

        registry = gateway.codec.app.registry
        for method, payloads in (("Encode", 6), ("Decode", 10)):
            assert registry.get_sample_value("temporal_codec_payloads_total", {"grpc_method": method}) == payloads
            labels = {"grpc_method": method, "direction": "received"}
            assert registry.get_sample_value("temporal_codec_payload_bytes_total", labels) > 0
            grpc_labels = {"grpc_service": "codec_grpc.v1.CodecService", "grpc_method": method, "grpc_type": "unary"}
            started = registry.get_sample_value("grpc_server_started_total", grpc_labels)
            assert started == (0 if mode == "in-process" else 2)  # the series exists from the start, at 0
    assert seen[0] == seen[1]
    assert seen[0] == [2, 1, 3, 1, 1, 6]


def test_payload_bytes_are_counted_as_over_grpc(gateway_pair: Callable[..., tuple[Gateway, Gateway]]) -> None:
    in_process, over_grpc = gateway_pair()
    in_process.encode([plain_payload("warm")])
    registry = in_process.codec.app.registry

    def counted() -> tuple[float, float]:
        values = [
            registry.get_sample_value("temporal_codec_payload_bytes_total", {"grpc_method": "Encode", "direction": d})
            for d in ("received", "sent")
        ]
        return values[0] or 0.0, values[1] or 0.0

    body = {"payloads": [plain_payload('"same request"')] * 5}
    steps = []
    for gateway in (in_process, over_grpc):
        before = counted()
        assert gateway.post("/encode", body, X_Namespace="default").status == 200
        after = counted()
        steps.append((after[0] - before[0], after[1] - before[1]))
    assert steps[0] == steps[1] and steps[0][0] > 0 and steps[0][1] > steps[0][0]
