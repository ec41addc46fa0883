"""RemotePayloadCodec against the real codec server (moto KMS behind it)."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from temporal_codec_client import (
    CodecInvalidPayloadError,
    CodecPermissionError,
    CodecServiceError,
    CodecUnavailableError,
    RemotePayloadCodec,
)
from temporalio.api.common.v1 import Payload

from tests.support.fixtures import free_port

ENCRYPTED = b"binary/encrypted"


def plain(index: int, size: int = 16) -> Payload:
    return Payload(
        metadata={"encoding": b"json/plain", "index": str(index).encode()},
        data=bytes((index + i) % 256 for i in range(size)),
    )


@pytest.fixture
def server(codec_server, make_key):
    alias, _ = make_key()
    return codec_server(KMS_KEY_ALIAS=alias)


def run(coro_fn, *args):
    """Run one coroutine in a fresh event loop, as a worker process or test would."""
    return asyncio.run(coro_fn(*args))


async def round_trip(codec: RemotePayloadCodec, payloads: list[Payload]) -> tuple[list[Payload], list[Payload]]:
    async with codec:
        encoded = await codec.encode(payloads)
        return encoded, await codec.decode(encoded)


def test_many_payloads_round_trip_in_one_call_each(server):
    payloads = [plain(i, size=i * 37 % 5000) for i in range(300)]
    codec = RemotePayloadCodec(server.target, namespace="orders")

    encoded, decoded = run(round_trip, codec, payloads)

    assert len(encoded) == len(payloads)
    assert all(p.metadata["encoding"] == ENCRYPTED for p in encoded)
    assert all(p.metadata["encryption-namespace"] == b"orders" for p in encoded)
    assert decoded == payloads
    # One Encode call for 300 payloads asks KMS for one data key.
    assert server.kms["GenerateDataKey"] == 1


def test_input_is_not_mutated_and_empty_input_is_empty(server):
    payloads = [plain(1), plain(2)]
    before = [p.SerializeToString() for p in payloads]
    codec = RemotePayloadCodec(server.target)

    async def calls():
        async with codec:
            await codec.encode(payloads)
            return await codec.encode([]), await codec.decode([])

    assert run(calls) == ([], [])
    assert [p.SerializeToString() for p in payloads] == before


def test_external_payloads_field_survives(server):
    payload = plain(7)
    payload.external_payloads.add(size_bytes=123_456)
    codec = RemotePayloadCodec(server.target)

    encoded, decoded = run(round_trip, codec, [payload])

    assert not encoded[0].external_payloads  # inside the ciphertext, not beside it
    assert decoded == [payload]
    assert decoded[0].external_payloads[0].size_bytes == 123_456


def test_decode_passes_unencrypted_payloads_through_in_order(server):
    codec = RemotePayloadCodec(server.target)

    async def mixed():
        async with codec:
            encrypted = await codec.encode([plain(1), plain(3)])
            batch = [plain(0), encrypted[0], plain(2), encrypted[1], Payload()]
            return await codec.decode(batch)

    assert run(mixed) == [plain(0), plain(1), plain(2), plain(3), Payload()]


def test_payload_of_another_namespace_is_refused(server):
    writer = RemotePayloadCodec(server.target, namespace="ns-a")
    reader = RemotePayloadCodec(server.target, namespace="ns-b")

    async def cross():
        async with writer, reader:
            return await reader.decode(await writer.encode([plain(1)]))

    with pytest.raises(CodecPermissionError) as caught:
        run(cross)
    error = caught.value
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert "'ns-a'" in error.details
    assert "'ns-b'" in error.details
    assert not error.retryable
    assert str(error).startswith("codec service Decode failed: PERMISSION_DENIED: payload 0:")


def test_tampered_payload_is_refused(server):
    codec = RemotePayloadCodec(server.target)

    async def tampered():
        async with codec:
            encoded = await codec.encode([plain(1), plain(2)])
            altered = Payload()
            altered.CopyFrom(encoded[1])
            altered.data = altered.data[:-1] + bytes([altered.data[-1] ^ 1])
            return await codec.decode([encoded[0], altered])

    with pytest.raises(CodecInvalidPayloadError) as caught:
        run(tampered)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "payload 1: decryption failed" in caught.value.details
    assert not caught.value.retryable


def test_nothing_listening_is_retryable_unavailable():
    codec = RemotePayloadCodec(f"127.0.0.1:{free_port()}", timeout=5)

    with pytest.raises(CodecUnavailableError) as caught:
        run(codec.encode, [plain(1)])
    assert caught.value.retryable
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert isinstance(caught.value, CodecServiceError)


def test_server_stopped_after_use_is_retryable_unavailable(server):
    codec = RemotePayloadCodec(server.target)

    async def before_and_after_stop():
        encoded = await codec.encode([plain(1)])
        server.app.server.stop(grace=None).wait()
        try:
            await codec.decode(encoded)
        finally:
            await codec.close()

    with pytest.raises(CodecUnavailableError) as caught:
        run(before_and_after_stop)
    assert caught.value.retryable


def test_kms_unreachable_behind_the_service_is_retryable(codec_server, make_key):
    alias, _ = make_key()
    server = codec_server(
        KMS_KEY_ALIAS=alias,
        AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{free_port()}",
        KMS_CONNECT_TIMEOUT="0.5",
    )
    codec = RemotePayloadCodec(server.target)

    with pytest.raises(CodecUnavailableError) as caught:
        run(codec.encode, [plain(1)])
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_one_codec_serves_successive_and_concurrent_event_loops(server):
    codec = RemotePayloadCodec(server.target)
    payloads = [plain(i) for i in range(5)]

    async def trip():
        return await codec.decode(await codec.encode(payloads))

    # Successive loops (asyncio.run closes each): each gets its own channel.
    assert run(trip) == payloads
    assert run(trip) == payloads

    # Two threads, each running its own loop at the same time.
    results: list[object] = []
    barrier = threading.Barrier(2)

    def in_thread():
        async def together():
            barrier.wait(timeout=10)
            return await asyncio.gather(*(trip() for _ in range(5)))

        try:
            results.append(asyncio.run(together()))
        except Exception as exc:  # reported below, not lost in the thread
            results.append(exc)

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [[payloads] * 5, [payloads] * 5]
    # Channels of loops that closed are dropped once a new loop opens one.
    assert run(trip) == payloads
    assert len(codec._calls) == 1


def test_close_then_reuse_opens_a_new_channel(server):
    codec = RemotePayloadCodec(server.target)

    async def close_and_reuse():
        first = await codec.encode([plain(1)])
        await codec.close()
        await codec.close()  # idempotent
        return await codec.decode(first)

    assert run(close_and_reuse) == [plain(1)]
