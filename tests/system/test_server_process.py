"""server.py as its own process: real start-up, fresh-process KMS counts, dev KMS, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.support.fixtures import free_port, wait_for_port
from tests.support.paths import ROOT


@contextmanager
def server_process(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[codec_pb2_grpc.CodecServiceStub, Path]]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    full_env = {
        **env,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "GATEWAY_ENABLED": "false",
        "METRICS_ENABLED": "false",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py")], env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            wait_for_port(port, proc=proc)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield codec_pb2_grpc.CodecServiceStub(channel), log
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def base_env(tmp_path: Path) -> dict[str, str]:
    """No AWS configuration at all: no credentials, no config files (HOME is empty)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)
    return env


def test_fresh_process_unwraps_each_data_key_once(kms_endpoint: str, make_key: Any, tmp_path: Path) -> None:
    alias, arn = make_key()
    env = {
        **base_env(tmp_path),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "KMS_KEY_ALIAS": alias,
    }
    items = [pb.Payload(metadata={"encoding": b"json/plain"}, data=str(i).encode()) for i in range(1000)]
    with server_process(env, tmp_path) as (stub, _):
        encoded = list(stub.Encode(pb.EncodeRequest(payloads=items)).payloads)
    assert encoded[0].metadata["encryption-key-id"] == arn.encode()
    with server_process(env, tmp_path) as (stub, log):
        decoded = [
            p
            for i in range(0, 1000, 100)
            for p in stub.Decode(pb.DecodeRequest(payloads=encoded[i : i + 100])).payloads
        ]
        stats = stub.Stats(pb.StatsRequest())
    assert decoded == items
    assert stats.kms_decrypt_calls == 1
    assert stats.kms_generate_data_key_calls == 0
    text = log.read_text()
    assert "DEVELOPMENT KMS" not in text
    assert "codec server listening on 127.0.0.1" in text


def test_dev_kms_when_no_aws_is_configured(tmp_path: Path) -> None:
    """What `make run` does on a machine without AWS: an embedded KMS, the production code path."""
    env = {**base_env(tmp_path), "DEV_KMS": "auto"}
    item = pb.Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    with server_process(env, tmp_path) as (stub, log):
        (encoded,) = stub.Encode(pb.EncodeRequest(payloads=[item])).payloads
        (decoded,) = stub.Decode(pb.DecodeRequest(payloads=[encoded])).payloads
    assert decoded == item
    assert encoded.metadata["encryption-key-id"].startswith(b"arn:aws:kms:us-east-1:")
    text = log.read_text()
    assert "DEVELOPMENT KMS at http://127.0.0.1:" in text
    assert "development key alias/temporal-codec-latest -> arn:aws:kms:" in text
    assert "hello" not in text


def test_dev_kms_auto_stays_off_when_credentials_exist(kms_endpoint: str, make_key: Any, tmp_path: Path) -> None:
    alias, _ = make_key()
    env = {
        **base_env(tmp_path),
        "DEV_KMS": "auto",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "KMS_KEY_ALIAS": alias,
    }
    with server_process(env, tmp_path) as (stub, log):
        stub.Encode(pb.EncodeRequest(payloads=[pb.Payload(data=b"x")]))
    assert "DEVELOPMENT KMS" not in log.read_text()
