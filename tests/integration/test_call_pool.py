"""The gRPC server's call pool over a real channel: calls that wait for KMS step aside, so calls that
cached keys answer keep running, even with one call running at a time (GRPC_RUNNING_CALLS=1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec
from tests.support.kms_proxy import KmsProxy

Start = Callable[..., RunningCodec]
KMS_DELAY = 2.0  # seconds the proxy holds every Decrypt


def test_calls_waiting_for_kms_do_not_hold_calls_with_cached_keys(
    codec_server: Start, make_key: Any, kms_proxy: KmsProxy
) -> None:
    alias = make_key()[0]
    # Written by three other instances: three data keys, none cached by the reader.
    cold = [
        codec_server(KMS_KEY_ALIAS=alias)
        .stub.Encode(pb.EncodeRequest(payloads=[pb.Payload(data=f"written elsewhere {n}".encode())]))
        .payloads
        for n in range(3)
    ]
    reader = codec_server(
        KMS_KEY_ALIAS=alias,
        AWS_ENDPOINT_URL_KMS=kms_proxy.url,
        KMS_READ_TIMEOUT=10,
        GRPC_RUNNING_CALLS=1,
        GRPC_MAX_WORKERS=4,
    )
    warm = pb.EncodeRequest(payloads=[pb.Payload(data=b"cached key")])
    reader.stub.Encode(warm)  # the current data key: cached from here on
    kms_proxy.set(delay=KMS_DELAY, operations={"Decrypt"})
    asked = kms_proxy.seen("Decrypt")
    answers: list[grpc.StatusCode] = []

    def decode(payloads: Any) -> None:
        try:
            reader.stub.Decode(pb.DecodeRequest(payloads=payloads), timeout=30)
        except grpc.RpcError as exc:
            answers.append(exc.code())
        else:
            answers.append(grpc.StatusCode.OK)

    waiting = [threading.Thread(target=decode, args=(payloads,)) for payloads in cold]
    for thread in waiting:
        thread.start()
    deadline = time.monotonic() + 10
    while kms_proxy.seen("Decrypt") - asked < 3:  # all three calls are waiting for KMS now
        assert time.monotonic() < deadline, f"the cold decodes did not all reach KMS: {answers}"
        time.sleep(0.01)
    started = time.monotonic()
    for _ in range(5):
        reader.stub.Encode(warm, timeout=30)
    took = time.monotonic() - started
    assert took < KMS_DELAY / 2, f"5 encodes with a cached key took {took:.2f}s behind calls waiting for KMS"
    for thread in waiting:
        thread.join(30)
    assert answers == [grpc.StatusCode.OK] * 3
