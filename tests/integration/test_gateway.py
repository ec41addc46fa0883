"""The HTTP gateway as the Temporal Web UI, the CLI and the Go SDK call it: the real gateway on
127.0.0.1 port 0, in front of the real gRPC server, with KMS served by moto."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from tests.support.gateway import UI_ORIGIN, Gateway, assert_cors, assert_no_grant, b64, plain_payload, unb64

UI_HEADERS = {"Origin": UI_ORIGIN, "X_Namespace": "default"}


def test_ui_preflight_then_encode_and_decode(gateway: Gateway) -> None:
    preflight = gateway.request(
        "OPTIONS",
        "/encode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization,authorization-extras",
        },
    )
    assert 200 <= preflight.status < 300
    assert_cors(preflight)
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization", "authorization-extras"} <= allowed

    originals = [
        plain_payload('{"hello":"world"}'),
        plain_payload("42"),
        {"metadata": {"encoding": b64("binary/null")}},
    ]
    encoded = gateway.post("/encode", {"payloads": originals}, **UI_HEADERS)
    assert encoded.status == 200, encoded.body
    assert encoded.headers["content-type"].startswith("application/json")
    assert_cors(encoded)
    payloads = encoded.json()["payloads"]
    assert len(payloads) == 3
    for payload in payloads:
        assert unb64(payload["metadata"]["encoding"]) == b"binary/encrypted"
        assert unb64(payload["metadata"]["encryption-key-id"]).decode() == gateway.arn
        assert b"hello" not in unb64(payload["data"])

    decoded = gateway.post("/decode", {"payloads": payloads}, **UI_HEADERS)
    assert decoded.status == 200, decoded.body
    assert_cors(decoded)
    assert decoded.json() == {"payloads": originals}


@pytest.mark.parametrize(
    "prefix",
    ["", "/codec", "/api/v1/codec-server/extra"],
)
def test_routes_on_last_segment_and_ignores_query(gateway: Gateway, prefix: str) -> None:
    original = [plain_payload('"x"')]
    encoded = gateway.post(f"{prefix}/encode?foo=bar", {"payloads": original}, X_Namespace="default")
    assert encoded.status == 200, encoded.body
    decoded = gateway.post(
        f"{prefix}/decode?preserveStorageRefs=true", {"payloads": encoded.json()["payloads"]}, X_Namespace="default"
    )
    assert decoded.status == 200, decoded.body
    assert decoded.json()["payloads"] == original


def test_namespace_from_path_header_or_default(start_gateway) -> None:
    gateway = start_gateway(DEFAULT_NAMESPACE="team-default")
    original = [plain_payload('"secret"')]
    by_path = gateway.post("/orders/encode", {"payloads": original}).json()["payloads"]
    assert unb64(by_path[0]["metadata"]["encryption-namespace"]) == b"orders"
    # The header wins over the path.
    by_header = gateway.post("/orders/encode", {"payloads": original}, X_Namespace="billing").json()["payloads"]
    assert unb64(by_header[0]["metadata"]["encryption-namespace"]) == b"billing"
    by_default = gateway.post("/encode", {"payloads": original}).json()["payloads"]
    assert unb64(by_default[0]["metadata"]["encryption-namespace"]) == b"team-default"

    assert gateway.decode(by_path, namespace="orders") == original
    assert gateway.post("/orders/decode", {"payloads": by_path}).json()["payloads"] == original
    assert gateway.post("/decode", {"payloads": by_default}).json()["payloads"] == original
    wrong = gateway.post("/decode", {"payloads": by_path}, X_Namespace="billing", Origin=UI_ORIGIN)
    assert wrong.status == 403
    assert "payload 0" in wrong.error and "orders" in wrong.error
    assert_cors(wrong)


def test_invalid_namespace_is_400(gateway: Gateway) -> None:
    reply = gateway.post("/encode", {"payloads": []}, X_Namespace="no spaces!", Origin=UI_ORIGIN)
    assert reply.status == 400
    assert "namespace" in reply.error
    assert_cors(reply)


def test_go_sdk_and_protojson_spellings_of_external_payloads(gateway: Gateway) -> None:
    go_style = {"metadata": {"encoding": b64("json/plain")}, "data": b64("1"), "external_payloads": [{"size_bytes": 7}]}
    protojson = {
        "metadata": {"encoding": b64("json/plain")},
        "data": b64("2"),
        "externalPayloads": [{"sizeBytes": "9"}],
    }
    mixed = {"data": b64("3"), "externalPayloads": [{"size_bytes": 11}, {"sizeBytes": 12}]}
    encoded = gateway.encode([go_style, protojson, mixed])
    decoded = gateway.decode(encoded)
    # Answers use protojson's spelling (int64 as a string), which Go's protojson and the UI parse.
    assert decoded[0]["externalPayloads"] == [{"sizeBytes": "7"}]
    assert decoded[1]["externalPayloads"] == [{"sizeBytes": "9"}]
    assert decoded[2] == {"data": b64("3"), "externalPayloads": [{"sizeBytes": "11"}, {"sizeBytes": "12"}]}


def test_urlsafe_and_unpadded_base64_accepted_as_protojson_does(gateway: Gateway) -> None:
    raw = bytes(range(250, 256)) + b"\xfb\xff"  # encodes with '+' and '/' in the standard alphabet
    urlsafe_unpadded = b64(raw).replace("+", "-").replace("/", "_").rstrip("=")
    decoded = gateway.decode(
        gateway.encode([{"metadata": {"encoding": b64("binary/plain")}, "data": urlsafe_unpadded}])
    )
    assert unb64(decoded[0]["data"]) == raw


def test_decode_passes_unencrypted_payloads_through_in_order(gateway: Gateway) -> None:
    encrypted = gateway.encode([plain_payload('"a"')])[0]
    batch = [plain_payload('"plain-1"'), encrypted, {"metadata": {"encoding": b64("binary/null")}}, {}]
    assert gateway.decode(batch) == [plain_payload('"plain-1"'), plain_payload('"a"'), batch[2], {}]


@pytest.mark.parametrize("body", [{"payloads": []}, {}, {"payloads": None}])
def test_empty_batches(gateway: Gateway, body: dict) -> None:
    for action in ("encode", "decode"):
        reply = gateway.post(f"/{action}", body)
        assert reply.status == 200, reply.body
        assert reply.json() == {"payloads": []}


BAD_BODIES = [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"payloads": {}}', "payloads: must be an array"),
    ('{"payloads": [], "namespace": "other"}', "unknown field 'namespace'"),
    ('{"payloads": [42]}', "payloads[0]: must be an object"),
    ('{"payloads": [{"metadata": {"encoding": "json/plain"}}]}', 'payloads[0].metadata["encoding"]: not valid base64'),
    ('{"payloads": [{}, {"data": "not base64!"}]}', "payloads[1].data: not valid base64"),
    ('{"payloads": [{"metadata": {"encoding": 5}}]}', 'payloads[0].metadata["encoding"]: must be a base64 string'),
    ('{"payloads": [{"metadata": "eA=="}]}', "payloads[0].metadata: must be an object"),
    ('{"payloads": [{"dta": "eA=="}]}', "payloads[0]: unknown field 'dta'"),
    ('{"payloads": [{"externalPayloads": [{"sizeBytes": "lots"}]}]}', "invalid payloads"),
    ('{"payloads": ' + "[" * 100_000, "nested too deeply"),  # json.loads' RecursionError, not a 500
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
@pytest.mark.parametrize("action", ["encode", "decode"])
def test_bad_bodies_are_400_with_cors(gateway: Gateway, action: str, body: str | bytes, message: str) -> None:
    reply = gateway.post(f"/{action}", body, Origin=UI_ORIGIN)
    assert reply.status == 400
    assert message in reply.error
    assert reply.headers["content-type"].startswith("application/json")
    assert_cors(reply)


def test_tampered_payload_is_400_naming_its_index(gateway: Gateway) -> None:
    encoded = gateway.encode([plain_payload('"a"'), plain_payload('"b"')])
    data = bytearray(unb64(encoded[1]["data"]))
    data[-1] ^= 1
    encoded[1]["data"] = b64(bytes(data))
    reply = gateway.post("/decode", {"payloads": encoded}, Origin=UI_ORIGIN, X_Namespace="default")
    assert reply.status == 400
    assert reply.error.startswith("payload 1: decryption failed")
    assert_cors(reply)


def test_over_body_limit_is_413_with_cors(start_gateway) -> None:
    gateway = start_gateway(GATEWAY_MAX_BODY_BYTES=2048)
    body = json.dumps({"payloads": [plain_payload("x" * 3000)]})
    for chunked in (False, True):  # declared by Content-Length, and found while reading
        reply = gateway.request(
            "POST", "/encode", body, {"Origin": UI_ORIGIN, "Content-Type": "application/json"}, chunked=chunked
        )
        assert reply.status == 413
        assert "GATEWAY_MAX_BODY_BYTES" in reply.error
        assert_cors(reply)
    assert gateway.post("/encode", {"payloads": [plain_payload("x" * 100)]}).status == 200


def test_too_many_payloads_is_413(start_gateway) -> None:
    gateway = start_gateway(MAX_PAYLOADS_PER_REQUEST=2)
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")] * 3}, Origin=UI_ORIGIN)
    assert reply.status == 413
    assert "MAX_PAYLOADS_PER_REQUEST" in reply.error
    assert_cors(reply)


def test_download_is_404_explaining_external_storage(gateway: Gateway) -> None:
    reply = gateway.post("/codec/download?preserveStorageRefs=true", {"payloads": []}, Origin=UI_ORIGIN)
    assert reply.status == 404
    assert "external storage is not configured" in reply.error
    assert_cors(reply)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/encode", 405), ("PUT", "/prefix/decode", 405), ("GET", "/download", 405), ("POST", "/health", 405),
     ("GET", "/nothing-here", 404), ("POST", "/", 404), ("DELETE", "/stats", 405)],
)  # fmt: skip
def test_other_methods_and_paths(gateway: Gateway, method: str, path: str, status: int) -> None:
    reply = gateway.request(method, path, headers={"Origin": UI_ORIGIN})
    assert reply.status == status
    assert reply.error
    assert_cors(reply)


def test_unlisted_origin_gets_no_grant(gateway: Gateway) -> None:
    evil = "https://evil.example"
    preflight = gateway.request("OPTIONS", "/decode", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 403
    assert_no_grant(preflight)
    # A simple request still runs (CORS is the browser's rule), but the browser may not read the answer.
    reply = gateway.post("/encode", {"payloads": []}, Origin=evil)
    assert reply.status == 200
    assert_no_grant(reply)
    assert "Origin" in reply.headers["vary"]
    # Exact match only: a listed origin's look-alikes are refused.
    for near in (UI_ORIGIN + ".evil", UI_ORIGIN.replace(":8080", ":8081"), "null"):
        assert_no_grant(gateway.post("/encode", {"payloads": []}, Origin=near))


def test_no_cors_configured_grants_nothing(start_gateway) -> None:
    gateway = start_gateway(CORS_ALLOWED_ORIGINS="")
    assert_no_grant(gateway.post("/encode", {"payloads": []}, Origin=UI_ORIGIN))
    assert gateway.request("OPTIONS", "/encode", headers={"Origin": UI_ORIGIN}).status == 403


def test_health_follows_the_grpc_health_service(gateway: Gateway) -> None:
    reply = gateway.request("GET", "/health")
    assert (reply.status, reply.json()) == (200, {"status": "SERVING"})
    gateway.codec.app.health.enter_graceful_shutdown()
    reply = gateway.request("GET", "/health")
    assert (reply.status, reply.json()) == (503, {"status": "NOT_SERVING"})


@pytest.mark.parametrize("upstream_mode", ["grpc"])
def test_grpc_side_down_is_503_without_details(start_gateway) -> None:
    from tests.support.fixtures import free_port

    gateway = start_gateway(target=f"127.0.0.1:{free_port()}", GATEWAY_UPSTREAM_TIMEOUT=5)
    health = gateway.request("GET", "/health")
    assert (health.status, health.json()) == (503, {"status": "UNREACHABLE"})
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    assert reply.status == 503
    assert reply.error == "the codec service is unavailable; retry later"
    assert_cors(reply)


def test_kms_unreachable_is_503(start_gateway) -> None:
    from tests.support.fixtures import free_port

    gateway = start_gateway(AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{free_port()}")
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    assert reply.status == 503
    assert "KMS" in reply.error and "retry later" in reply.error
    assert_cors(reply)


def test_missing_kms_key_is_503_misconfiguration(start_gateway) -> None:
    gateway = start_gateway(KMS_KEY_ALIAS="alias/nobody-created-this")
    reply = gateway.post("/encode", {"payloads": [plain_payload("1")]}, Origin=UI_ORIGIN)
    assert reply.status == 503
    assert "server misconfiguration" in reply.error
    assert_cors(reply)


def test_stats_reports_the_seed_fields_and_counters(gateway: Gateway) -> None:
    before = gateway.request("GET", "/stats").json()
    assert before["current_key_present"] is False
    assert before["current_key_age"] == "0s"
    gateway.encode([plain_payload("1")])
    stats = gateway.request("GET", "/stats", headers={"X-Namespace": "default"}).json()
    assert stats["namespace"] == "default"
    assert stats["cached_keys_count"] >= 1
    assert stats["current_key_present"] is True
    assert stats["current_key_expired"] is False
    # Durations as the seed wrote them; the key is seconds old and rotates after DATA_KEY_ROTATION_INTERVAL (1h).
    assert re.fullmatch(r"[0-9]s|[1-5][0-9]s", stats["current_key_age"])
    assert re.fullmatch(r"59m[0-5]?[0-9]s|1h0m0s", stats["current_key_expires_in"])
    assert stats["kms_generate_data_key_calls"] == 1
    assert stats["current_keys"][0]["key_arn"] == gateway.arn
    assert "key_material" not in json.dumps(stats) and "plaintext" not in json.dumps(stats)


def test_large_batch_round_trips_in_order(gateway: Gateway) -> None:
    # Over OFF_LOOP_BYTES: the JSON work runs on a thread; order and count must not change.
    originals = [plain_payload(json.dumps({"i": i, "pad": "x" * 1000})) for i in range(400)]
    assert len(json.dumps({"payloads": originals})) > 256 * 1024
    encoded = gateway.encode(originals)
    assert len(encoded) == 400
    assert gateway.decode(encoded) == originals


def http_access_lines(caplog: pytest.LogCaptureFixture) -> list[Any]:  # LogRecords with the line's extras
    """The gateway's access lines (the codec server's gRPC lines share the logger, not the fields)."""
    return [r for r in caplog.records if r.name == "codec_grpc.access" and hasattr(r, "http_route")]


def test_every_http_request_has_an_access_line_without_payload_contents(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """An audit trail of who encoded and decoded what, in both gateway modes: route, status, payload
    count, namespace and peer; never payload contents."""
    with caplog.at_level(logging.DEBUG, logger="codec_grpc.access"):
        encoded = gateway.encode([plain_payload('"secret-value-1"'), plain_payload('"two"')], namespace="audit-ns")
        gateway.decode(encoded, namespace="audit-ns")
        refused = gateway.post("/decode", "not json")
        gateway.request("GET", "/health")
        gateway.request("GET", "/no/such/route")
    assert refused.status == 400
    lines = {(r.http_route, r.http_status): r for r in http_access_lines(caplog)}
    assert set(lines) == {("encode", 200), ("decode", 200), ("decode", 400), ("health", 200), ("other", 404)}
    encode = lines[("encode", 200)]
    assert (encode.levelname, encode.http_method, encode.payloads, encode.namespace) == ("INFO", "POST", 2, "audit-ns")
    assert encode.request_bytes > 0 and encode.duration_ms >= 0 and encode.peer == "127.0.0.1"
    assert encode.getMessage().startswith("HTTP POST encode 200 payloads=2 ")
    assert lines[("decode", 200)].payloads == 2
    assert (lines[("decode", 400)].payloads, lines[("decode", 400)].namespace) == (0, "default")
    assert lines[("health", 200)].levelname == "DEBUG"  # probes would drown the lines that matter
    for secret in ("secret-value-1", b64('"secret-value-1"'), encoded[0]["data"]):
        assert secret not in caplog.text
