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
import pytest

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


def test_dev_kms_with_kms_regions_holds_multi_region_keys(tmp_path: Path) -> None:
    """`KMS_REGIONS=us-east-1,us-west-2 make run`: multi-Region keys replicated to every Region, with
    the alias in each; resolved in both Regions at start."""
    env = {**base_env(tmp_path), "DEV_KMS": "on", "KMS_REGIONS": "us-east-1,us-west-2"}
    item = pb.Payload(metadata={"encoding": b"json/plain"}, data=b'"hello"')
    with server_process(env, tmp_path) as (stub, log):
        (encoded,) = stub.Encode(pb.EncodeRequest(payloads=[item])).payloads
        assert stub.Decode(pb.DecodeRequest(payloads=[encoded])).payloads[0] == item
        key_arn = encoded.metadata["encryption-key-id"].decode()
        assert key_arn.startswith("arn:aws:kms:us-east-1:") and ":key/mrk-" in key_arn  # the first Region
        # The data key named by its replica: KMS in us-west-2 unwraps it (the development KMS holds both
        # Regions), then AES-GCM refuses the payload, whose key id is authenticated: edited, not ours.
        replica = pb.Payload(
            metadata={**encoded.metadata, "encryption-key-id": key_arn.replace("us-east-1", "us-west-2").encode()},
            data=encoded.data,
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Decode(pb.DecodeRequest(payloads=[replica]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stats = stub.Stats(pb.StatsRequest())
    assert [region.region for region in stats.kms_regions] == ["us-east-1", "us-west-2"]
    assert stats.kms_regions[0].generate_data_key_calls == 1
    assert (stats.kms_regions[1].decrypt_calls, stats.kms_regions[1].errors) == (1, 0)
    text = log.read_text()
    assert "development key alias/temporal-codec-latest -> arn:aws:kms:us-east-1:" in text
    assert "master key alias/temporal-codec-latest in us-west-2 is arn:aws:kms:us-west-2:" in text
    assert "in us-east-1, us-west-2; namespace binding on" in text


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


def test_dev_kms_auto_stays_off_when_region_endpoints_are_set(kms_endpoint: str, tmp_path: Path) -> None:
    """KMS_REGION_ENDPOINTS configures KMS as AWS_ENDPOINT_URL_KMS does: no development KMS, even
    without credentials (the KMS named is asked, and says no: resolution fails, the server serves)."""
    env = {
        **base_env(tmp_path),
        "DEV_KMS": "auto",
        "KMS_REGIONS": "us-east-1",
        "KMS_REGION_ENDPOINTS": f"us-east-1={kms_endpoint}",
    }
    with server_process(env, tmp_path) as (stub, log):
        assert stub.Stats(pb.StatsRequest()).kms_regions[0].region == "us-east-1"
    text = log.read_text()
    assert "DEVELOPMENT KMS" not in text
    assert "master key alias/temporal-codec-latest in us-east-1 not resolved" in text
