"""Logs of the real ``server.py`` process: JSON mode gives one object per line, and never secrets."""

from __future__ import annotations

import io
import json
import logging
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codec_grpc.runtime.logs import JsonFormatter, configure_logging
from codec_grpc.v1 import codec_pb2, codec_pb2_grpc
from tests.support.fixtures import REGION, free_port, wait_for_port
from tests.support.server_process import ServerProcess, json_lines

SECRET_PAYLOAD = b'"card 4111-1111-1111-1111"'


def run_traffic_and_stop(env: dict[str, str], kms_endpoint: str, alias: str, **settings: str) -> ServerProcess:
    port = free_port()
    env = (
        env
        | {
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(port),
            "METRICS_ENABLED": "false",
            "AWS_ENDPOINT_URL_KMS": kms_endpoint,
            "AWS_REGION": REGION,
            "KMS_KEY_ALIAS": alias,
        }
        | settings
    )
    process = ServerProcess(env)
    try:
        wait_for_port(port, proc=process.proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = codec_pb2_grpc.CodecServiceStub(channel)
            payload = codec_pb2.Payload(metadata={"encoding": b"json/plain"}, data=SECRET_PAYLOAD)
            encoded = stub.Encode(codec_pb2.EncodeRequest(payloads=[payload, payload], namespace="billing")).payloads
            process.wait_for_line("new data key")
            stub.Decode(codec_pb2.DecodeRequest(payloads=encoded), metadata=[("x-namespace", "billing")])
            with pytest.raises(grpc.RpcError):
                stub.Decode(codec_pb2.DecodeRequest(payloads=encoded, namespace="other"))
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        process.proc.send_signal(signal.SIGINT)
        assert process.finish() == 0
    finally:
        process.kill()
    return process


def test_json_mode_every_line_is_one_object_with_the_fields(server_script_env, kms_endpoint, make_key):
    alias, arn = make_key()
    process = run_traffic_and_stop(server_script_env, kms_endpoint, alias, LOG_FORMAT="json", LOG_LEVEL="debug")
    entries = list(json_lines(process.lines))
    assert len(entries) == len(process.lines) >= 6
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
    banner = next(e for e in entries if e.get("event") == "started")
    assert banner["kms_key_alias"] == alias and banner["tls"] == "plaintext"
    rotation = next(e for e in entries if e.get("event") == "data_key_rotated")
    assert rotation["key_arn"] == arn and rotation["namespace"] == "billing"
    assert rotation["previous_key_age_seconds"] is None  # the first key of its slot
    access = [e for e in entries if e["logger"] == "codec_grpc.access"]
    by_call = {(e["grpc_method"], e["grpc_code"]): e for e in access}
    encode = by_call[("Encode", "OK")]
    assert encode["payloads"] == 2 and encode["namespace"] == "billing" and encode["duration_ms"] > 0
    assert encode["request_bytes"] > 0 and encode["response_bytes"] > encode["request_bytes"]
    assert by_call[("Decode", "OK")]["namespace"] == "billing"  # from the x-namespace header
    assert by_call[("Decode", "PERMISSION_DENIED")]["namespace"] == "other"
    health = by_call[("Check", "OK")]
    assert health["level"] == "DEBUG" and health["grpc_service"] == "grpc.health.v1.Health"
    assert any(e["message"].startswith("stopped") for e in entries)


def test_text_mode_and_no_payload_contents_at_any_level(server_script_env, kms_endpoint, make_key):
    alias, _ = make_key()
    process = run_traffic_and_stop(server_script_env, kms_endpoint, alias, LOG_FORMAT="text", LOG_LEVEL="debug")
    log = "".join(process.lines)
    assert "INFO codec_grpc.access: Encode OK payloads=2" in log
    assert "codec server listening on 127.0.0.1:" in log
    assert SECRET_PAYLOAD.decode() not in log and "4111" not in log
    assert "Plaintext" not in log and "CiphertextBlob" not in log
    assert "Traceback" not in log


def test_json_formatter_keeps_tracebacks_and_newlines_inside_one_line():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    handler = configure_logging("debug", "json", stream)
    try:
        logger = logging.getLogger("codec_grpc.test")
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logger.exception("failed on %s", "multi\nline", extra={"grpc_method": "Encode", "odd": object()})
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for old in saved[1]:
            root.addHandler(old)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "failed on multi\nline" and entry["grpc_method"] == "Encode"
    assert "ValueError: bad" in entry["exception"] and entry["odd"].startswith("<object")
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)
