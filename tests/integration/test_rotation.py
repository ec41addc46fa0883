"""Data-key renewal through a real (proxied) KMS: refresh ahead, and KMS outages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec, details
from tests.support.kms_proxy import KmsProxy

Start = Callable[..., RunningCodec]


def encode_one(server: RunningCodec, data: bytes = b"x") -> tuple[pb.Payload, float]:
    started = time.monotonic()
    (payload,) = server.stub.Encode(pb.EncodeRequest(payloads=[pb.Payload(data=data)]), timeout=10).payloads
    return payload, time.monotonic() - started


def test_no_encode_waits_on_a_slow_kms_at_scheduled_rotations(
    codec_server: Start, make_key: Any, kms_proxy: KmsProxy
) -> None:
    """Rotation every 3 s, KMS answering GenerateDataKey in 1 s: the next key is always ready."""
    server = codec_server(KMS_KEY_ALIAS=make_key()[0], AWS_ENDPOINT_URL_KMS=kms_proxy.url, DATA_KEY_ROTATION_INTERVAL=3)
    encode_one(server)  # the very first key is waited for
    kms_proxy.set(delay=1.0, operations={"GenerateDataKey"})
    data_keys, slowest = set(), 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        payload, took = encode_one(server)
        data_keys.add(payload.metadata["encrypted-data-key"])
        slowest = max(slowest, took)
        time.sleep(0.02)
    assert len(data_keys) >= 3  # rotated at least twice during the run
    print(f"refresh ahead: slowest encode {slowest * 1000:.1f} ms, {len(data_keys)} data keys")
    assert slowest < 0.25, f"slowest encode took {slowest * 1000:.0f} ms"
    assert kms_proxy.seen("GenerateDataKey") >= 4


def test_kms_outage_keeps_encoding_with_the_last_key_and_recovers(
    codec_server: Start, make_key: Any, kms_proxy: KmsProxy
) -> None:
    server = codec_server(
        KMS_KEY_ALIAS=make_key()[0],
        AWS_ENDPOINT_URL_KMS=kms_proxy.url,
        DATA_KEY_ROTATION_INTERVAL=1,
        KMS_OUTAGE_GRACE=60,
        KMS_CONNECT_TIMEOUT=0.5,
        KMS_READ_TIMEOUT=0.5,
    )
    before, _ = encode_one(server, b"before")
    kms_proxy.set(mode="drop")
    time.sleep(1.1)  # the data key is now past its rotation time
    during = [encode_one(server, b"during") for _ in range(5)]
    assert all(p.metadata["encrypted-data-key"] == before.metadata["encrypted-data-key"] for p, _ in during)
    stats = server.stub.Stats(pb.StatsRequest())
    assert stats.kms_degraded and stats.current_keys[0].overdue
    assert "cannot reach KMS" in stats.kms_last_error
    decoded = server.stub.Decode(pb.DecodeRequest(payloads=[before, during[0][0]])).payloads
    assert [p.data for p in decoded] == [b"before", b"during"]  # cached keys keep decoding
    kms_proxy.set()  # KMS is back: the background renewal succeeds, no restart
    deadline = time.monotonic() + 10
    while server.stub.Stats(pb.StatsRequest()).kms_degraded and time.monotonic() < deadline:
        time.sleep(0.1)
    after, _ = encode_one(server, b"after")
    assert after.metadata["encrypted-data-key"] != before.metadata["encrypted-data-key"]
    assert not server.stub.Stats(pb.StatsRequest()).kms_degraded


def test_uncached_key_during_an_outage_fails_clearly_and_boundedly(
    codec_server: Start, make_key: Any, kms_proxy: KmsProxy
) -> None:
    alias = make_key()[0]
    writer = codec_server(KMS_KEY_ALIAS=alias)
    (payload,) = writer.stub.Encode(pb.EncodeRequest(payloads=[pb.Payload(data=b"x")])).payloads
    reader = codec_server(
        KMS_KEY_ALIAS=alias,
        AWS_ENDPOINT_URL_KMS=kms_proxy.url,
        KMS_CONNECT_TIMEOUT=0.5,
        KMS_READ_TIMEOUT=0.5,
        KMS_MAX_ATTEMPTS=2,
        KMS_FAIL_FAST_SECONDS=0,  # recovery on the very next call; the fail-fast pause: tests/test_faults.py
    )
    kms_proxy.set(mode="drop", operations={"Decrypt"})
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        reader.stub.Decode(pb.DecodeRequest(payloads=[payload]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(caught).startswith("payload 0: KMS Decrypt with key arn:")
    assert time.monotonic() - started < 5
    kms_proxy.set()
    assert reader.stub.Decode(pb.DecodeRequest(payloads=[payload])).payloads[0].data == b"x"
