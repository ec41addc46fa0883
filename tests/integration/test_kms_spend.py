"""What an outsider can make us spend, bounded: the attacks of issue #13 items 1-4 and 6, reproduced
against real servers (KMS through boto3 against moto) with the figure each now gives.

The figures before the fix are the review's: a payload naming a foreign key ARN made one KMS call
with it; one request with 300 data keys made 300 Decrypt calls; 100 repeats of a bad request made
100 calls; 300 new namespaces grew /metrics from 24 KB to 413 KB.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec, details
from tests.support.gateway import Gateway

Start = Callable[..., RunningCodec]
FOREIGN_ARN = "arn:aws:kms:us-east-1:999999999999:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def payload(i: int) -> pb.Payload:
    return pb.Payload(metadata={"encoding": b"json/plain"}, data=f'{{"n": {i}}}'.encode())


def encode(server: RunningCodec, count: int, namespace: str = "default") -> list[pb.Payload]:
    return list(
        server.stub.Encode(pb.EncodeRequest(payloads=[payload(i) for i in range(count)], namespace=namespace)).payloads
    )


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), details(caught)


@pytest.fixture
def key(make_key: Any) -> tuple[str, str]:
    return make_key()


# 1. Confused deputy -------------------------------------------------------------------------------


def test_a_foreign_key_arn_is_refused_before_any_kms_call(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0])
    (mine,) = encode(server, 1)
    forged = pb.Payload(metadata={**mine.metadata, "encryption-key-id": FOREIGN_ARN.encode()}, data=mine.data)
    before = server.kms["Decrypt"]
    code, message = refused(lambda: server.stub.Decode(pb.DecodeRequest(payloads=[forged])))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message == (
        f"payload 0: KMS key {FOREIGN_ARN} is not one this server decrypts with: neither a configured master "
        "key (KMS_KEY_ALIAS, NAMESPACE_KEY_ALIASES) nor in DECRYPT_KEY_ARNS; not sent to KMS"
    )
    assert server.kms["Decrypt"] - before == 0  # the figure: 0 KMS calls with the attacker's key (was 1)


def test_a_master_key_moved_by_alias_is_picked_up_and_old_keys_need_listing(
    codec_server: Start, make_key: Any, admin_kms: Any
) -> None:
    alias, old_arn = make_key()
    _, new_arn = make_key()
    running = codec_server(KMS_KEY_ALIAS=alias, DATA_KEY_ROTATION_INTERVAL="0.5")
    before = encode(running, 2)
    admin_kms.update_alias(AliasName=alias, TargetKeyId=new_arn)
    time.sleep(0.6)
    after = encode(running, 2)  # rotated: the alias's new key, allowed without a restart
    assert after[0].metadata["encryption-key-id"] == new_arn.encode()
    fresh_cache = codec_server(KMS_KEY_ALIAS=alias)  # a restart: resolves the alias to the new key only
    assert fresh_cache.stub.Decode(pb.DecodeRequest(payloads=after)).payloads[1] == payload(1)
    code, message = refused(lambda: fresh_cache.stub.Decode(pb.DecodeRequest(payloads=before)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and old_arn in message and "DECRYPT_KEY_ARNS" in message
    listed = codec_server(KMS_KEY_ALIAS=alias, DECRYPT_KEY_ARNS=old_arn)
    assert list(listed.stub.Decode(pb.DecodeRequest(payloads=before + after)).payloads) == [
        payload(i) for i in (0, 1, 0, 1)
    ]
    account, region = old_arn.split(":")[4], old_arn.split(":")[3]
    pattern = codec_server(KMS_KEY_ALIAS=alias, DECRYPT_KEY_ARNS=f"arn:aws:kms:{region}:{account}:key/*")
    assert len(pattern.stub.Decode(pb.DecodeRequest(payloads=before)).payloads) == 2


def test_decrypt_key_arns_are_checked_at_start(kms_endpoint: str) -> None:
    from codec_grpc.errors import ConfigError
    from codec_grpc.runtime.config import load_config

    with pytest.raises(ConfigError, match="^DECRYPT_KEY_ARNS: expected KMS key ARNs or patterns"):
        load_config({"DECRYPT_KEY_ARNS": "alias/old"})
    config = load_config({"DECRYPT_KEY_ARNS": f"{FOREIGN_ARN}, arn:aws:kms:eu-west-1:111122223333:key/*"})
    assert config.decrypt_key_arns == (FOREIGN_ARN, "arn:aws:kms:eu-west-1:111122223333:key/*")


# 2. KMS amplification ------------------------------------------------------------------------------


@pytest.fixture
def three_hundred_keys(codec_server: Start, key: tuple[str, str]) -> list[pb.Payload]:
    """300 payloads, each under its own data key (a history spanning 300 rotations)."""
    writer = codec_server(KMS_KEY_ALIAS=key[0], MAX_PAYLOADS_PER_REQUEST="1", DATA_KEY_MAX_ENCRYPTIONS="1")
    written = [p for i in range(300) for p in writer.stub.Encode(pb.EncodeRequest(payloads=[payload(i)])).payloads]
    assert len({p.metadata["encrypted-data-key"] for p in written}) == 300
    return written


def test_one_request_spends_at_most_max_kms_decrypts(
    codec_server: Start, key: tuple[str, str], three_hundred_keys: list[pb.Payload]
) -> None:
    reader = codec_server(KMS_KEY_ALIAS=key[0])
    request = pb.DecodeRequest(payloads=three_hundred_keys)
    code, message = refused(lambda: reader.stub.Decode(request))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 32 data keys that are not cached (MAX_KMS_DECRYPTS_PER_REQUEST)" in message
    assert reader.kms["Decrypt"] == 32  # the figure: 32 KMS calls for the 300-key request (was 300)
    # Those unwrapped stay cached: a client that retries gets 32 keys further each time.
    for _ in range(8):
        refused(lambda: reader.stub.Decode(request))
    answer = reader.stub.Decode(request)
    assert len(answer.payloads) == 300 and reader.kms["Decrypt"] == 300


def test_the_gateway_answers_429_with_retry_after(
    start_gateway: Any, key: tuple[str, str], three_hundred_keys: list[pb.Payload]
) -> None:
    from google.protobuf import json_format

    gateway: Gateway = start_gateway(KMS_KEY_ALIAS=key[0], MAX_KMS_DECRYPTS_PER_REQUEST="5")
    body = {"payloads": [json_format.MessageToDict(p) for p in three_hundred_keys[:10]]}
    reply = gateway.post("/decode", body)
    assert reply.status == 429, reply.body
    assert reply.headers["retry-after"] == "1"
    assert "(MAX_KMS_DECRYPTS_PER_REQUEST)" in reply.error


def test_a_refused_unwrap_is_remembered(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0])
    (mine,) = encode(server, 1)
    edk = bytearray(mine.metadata["encrypted-data-key"])
    edk[-5] ^= 1
    bad = pb.Payload(metadata={**mine.metadata, "encrypted-data-key": bytes(edk)}, data=mine.data)
    fresh = codec_server(KMS_KEY_ALIAS=key[0])
    for _ in range(100):
        code, message = refused(lambda: fresh.stub.Decode(pb.DecodeRequest(payloads=[bad])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "remembered" in message
    assert fresh.kms["Decrypt"] == 1  # the figure: 1 KMS call for 100 repeats (was 100)


def test_the_decrypt_rate_limit_answers_unavailable_then_recovers(
    codec_server: Start, key: tuple[str, str], three_hundred_keys: list[pb.Payload]
) -> None:
    reader = codec_server(KMS_KEY_ALIAS=key[0], KMS_DECRYPT_RATE="5", KMS_DECRYPT_BURST="3")
    for i in range(3):
        reader.stub.Decode(pb.DecodeRequest(payloads=[three_hundred_keys[i]]))
    code, message = refused(lambda: reader.stub.Decode(pb.DecodeRequest(payloads=[three_hundred_keys[3]])))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "Decrypt budget is spent (KMS_DECRYPT_RATE=5/s, KMS_DECRYPT_BURST=3); retry in 1s" in message
    time.sleep(0.25)
    assert reader.stub.Decode(pb.DecodeRequest(payloads=[three_hundred_keys[3]])).payloads[0] == payload(3)
    assert reader.kms["Decrypt"] == 4


# 4. Unbounded namespaces ----------------------------------------------------------------------------


def test_namespaces_outside_allowed_namespaces_cost_nothing(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], ALLOWED_NAMESPACES="orders,billing-*")
    for namespace in ("orders", "billing-eu", "default"):  # listed, matching, the default
        encode(server, 1, namespace)
    code, message = refused(lambda: encode(server, 1, "made-up"))
    assert (code, message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "namespace 'made-up' is not served by this codec server (ALLOWED_NAMESPACES)",
    )
    assert server.kms["GenerateDataKey"] == 3


def test_300_namespaces_leave_stats_and_metrics_bounded(
    codec_server: Start, key: tuple[str, str], kms_endpoint: str
) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], CURRENT_KEYS_MAX="20")
    from prometheus_client import generate_latest

    encode(server, 1)
    metrics_before = len(generate_latest(server.app.registry))
    for i in range(300):
        encode(server, 1, f"tenant-{uuid.uuid4().hex[:8]}-{i}")
    stats = server.stub.Stats(pb.StatsRequest())
    assert len(stats.current_keys) == 20  # the least recently used slots went
    exposition = generate_latest(server.app.registry).decode()
    assert 'temporal_namespace="other"' in exposition and "tenant-" not in exposition
    metrics_after = len(exposition)
    # the figure: /metrics grows by a constant (the "other" series), not by namespace (was 24 KB -> 413 KB)
    assert metrics_after - metrics_before < 2_000, (metrics_before, metrics_after)
    assert len(stats.SerializeToString()) < 4_000


# 6. Reflected input ---------------------------------------------------------------------------------


def test_a_huge_key_id_is_not_reflected(gateway: Gateway) -> None:
    (mine,) = gateway.encode([{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "MQ=="}])
    huge = "QUJD" * (256 * 1024)  # base64 of 768 KiB
    forged = {**mine, "metadata": {**mine["metadata"], "encryption-key-id": huge}}
    reply = gateway.post("/decode", {"payloads": [forged]})
    assert reply.status == 400
    assert len(reply.body) < 300  # was 1 MiB
