"""Compression before encryption through real servers: payloads round trip compressed over gRPC and the
HTTP gateway, servers with compression off still decode them, and decompression bombs, sealed under a
real data key from KMS as only a holder of that key could, are refused (INVALID_ARGUMENT / 400, naming
the payload) with server.py's peak resident memory measured from /proc."""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from codec_grpc.core.envelope import COMPRESSION_KEY, DataKey
from codec_grpc.kms.provider import NAMESPACE_CONTEXT_KEY
from codec_grpc.v1 import codec_pb2 as pb
from codec_grpc.v1 import codec_pb2_grpc
from tests.integration.test_bombs import ServerMemory
from tests.integration.test_fuzz import mutated
from tests.support.fixtures import REGION, RunningCodec, free_port, wait_for_port
from tests.support.fuzzing import assert_healthy, examples
from tests.support.gateway import post_for_error
from tests.support.server_process import ServerProcess

MiB = 1024 * 1024
GiB = 1024 * MiB


def orders_payload(size: int) -> pb.Payload:
    records = [
        {"orderId": f"ord-{i:08}", "customer": f"cus-{i * 7919 % 100_000:06}", "cents": i * 37}
        for i in range(size // 60)
    ]
    return pb.Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(records).encode())


def test_a_compressing_server_writes_version_2_that_a_server_with_compression_off_decodes(
    codec_server: Callable[..., RunningCodec], make_key: Callable[..., tuple[str, str]]
) -> None:
    alias, _ = make_key()
    writer = codec_server(KMS_KEY_ALIAS=alias, COMPRESSION="zstd")
    reader = codec_server(KMS_KEY_ALIAS=alias)  # COMPRESSION=off: the default
    batch = [orders_payload(256 * 1024), pb.Payload(metadata={"encoding": b"json/plain"}, data=b'"small"')]
    encoded = writer.stub.Encode(pb.EncodeRequest(payloads=batch), timeout=30).payloads
    assert [p.metadata.get(COMPRESSION_KEY) for p in encoded] == [b"zstd", None]  # the small one stays v1
    assert encoded[0].ByteSize() < batch[0].ByteSize() / 3
    for server in (writer, reader):
        assert list(server.stub.Decode(pb.DecodeRequest(payloads=encoded), timeout=30).payloads) == batch


# --- bombs, against server.py as its own process


def zlib_bomb(size: int = GiB) -> bytes:
    """``size`` zero bytes through zlib at level 9 in 1 MiB steps: 1 GiB becomes about 1 MiB."""
    stream, chunk = zlib.compressobj(9), bytes(MiB)
    return b"".join(stream.compress(chunk) for _ in range(size // MiB)) + stream.flush()


def zstd_bomb(size: int = GiB) -> bytes:
    """``size`` zero bytes through zstd, its content size declared: 1 GiB becomes 32 KiB."""
    stream, chunk = zstandard.ZstdCompressor(level=1).compressobj(size=size), bytes(MiB)
    return b"".join(stream.compress(chunk) for _ in range(size // MiB)) + stream.flush()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    made = {"zlib": zlib_bomb(), "zstd": zstd_bomb()}
    assert 0.9 * MiB < len(made["zlib"]) < 1.1 * MiB
    assert zstandard.get_frame_parameters(made["zstd"]).content_size == GiB
    return made


class Server(ServerMemory):
    grpc_port: int
    key: DataKey

    def sealed(self, algorithm: str, compressed: bytes) -> pb.Payload:
        """An encrypted payload of ``compressed`` as a holder of this server's data key could make it."""
        return pb.Payload.FromString(self.key.seal(compressed, os.urandom(12), algorithm))

    def decode_grpc(self, payloads: list[pb.Payload]) -> grpc.RpcError | None:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = codec_pb2_grpc.CodecServiceStub(channel)
            try:
                stub.Decode(pb.DecodeRequest(payloads=payloads), metadata=[("x-namespace", "default")], timeout=60)
            except grpc.RpcError as exc:
                return exc
        return None

    def decode_http(self, payloads: list[pb.Payload]) -> tuple[int, str]:
        body = json.dumps(
            {
                "payloads": [
                    {
                        "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                        "data": base64.b64encode(p.data).decode(),
                    }
                    for p in payloads
                ]
            }
        )
        headers = {"Content-Type": "application/json", "X-Namespace": "default"}
        return post_for_error(self.port, "/decode", body.encode(), headers)


@pytest.fixture
def server(
    server_script_env: dict[str, str], kms_endpoint: str, make_key: Callable[..., tuple[str, str]], admin_kms: Any
) -> Iterator[Callable[..., Any]]:
    @contextmanager
    def start(**settings: str) -> Iterator[Server]:
        alias, arn = make_key()
        port, grpc_port = free_port(), free_port()
        env = {
            **server_script_env,
            "AWS_ENDPOINT_URL_KMS": kms_endpoint,
            "AWS_REGION": REGION,
            "KMS_KEY_ALIAS": alias,
            "GRPC_PORT": str(grpc_port),
            "PORT": str(port),
            "METRICS_ENABLED": "false",
            "LOG_LEVEL": "warning",
            **settings,
        }
        process = ServerProcess(env)
        try:
            wait_for_port(port, proc=process.proc)
            wait_for_port(grpc_port, proc=process.proc)
            running = Server(process.proc.pid, port)
            running.grpc_port = grpc_port
            answer = admin_kms.generate_data_key(
                KeyId=arn, KeySpec="AES_256", EncryptionContext={NAMESPACE_CONTEXT_KEY: "default"}
            )
            running.key = DataKey(answer["Plaintext"], answer["KeyId"], answer["CiphertextBlob"], "default")
            # A first call of each kind: the data key cached, the code paths warm.
            small = running.sealed("zlib", zlib.compress(orders_payload(4096).SerializeToString()))
            assert running.decode_grpc([small]) is None
            assert running.decode_http([small]) == (200, "")
            yield running
        finally:
            process.proc.terminate()
            try:
                process.finish(timeout=30)
            finally:
                process.kill()

    yield start


BOMB_MESSAGES = {
    # 1 GiB in about 1 MiB: within COMPRESSION_MAX_RATIO's 100 MiB, so DECOMPRESSED_MAX_BYTES stops it.
    "zlib": f"payload 1: decompresses to more than {16 * MiB} bytes (DECOMPRESSED_MAX_BYTES): refused as a "
    "decompression bomb",
    # 1 GiB declared by a 32 KiB frame: COMPRESSION_MAX_RATIO (100 times 32 KiB) stops it first.
    "zstd": "payload 1: decompresses to more than 100 times its ",
}


@pytest.mark.parametrize("algorithm", ["zlib", "zstd"])
def test_a_gibibyte_bomb_is_invalid_argument_over_grpc_and_400_over_http_in_bounded_memory(
    server: Callable[..., Any], bombs: dict[str, bytes], algorithm: str
) -> None:
    """Unbounded, each would inflate to 1 GiB. Bounded, the zstd bomb is refused from its frame header
    (the peak moves by under 1 MiB) and the zlib bomb after 16 MiB inflated in 1 MiB steps: the peak
    grew by 26 MiB over gRPC, 40 MiB over gRPC then HTTP (the allocator keeps what it freed). The
    server goes on serving."""
    with server() as running:
        payloads = [running.sealed("zlib", zlib.compress(b"")), running.sealed(algorithm, bombs[algorithm])]
        before = running.reset_peak()
        refused = running.decode_grpc(payloads)
        status, error = running.decode_http(payloads)
        grown = running.status()["VmHWM"] - before
        assert running.decode_http(payloads[:1]) == (200, "")
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.details() or "").startswith(BOMB_MESSAGES[algorithm]), refused.details()
    assert status == 400
    assert error.startswith(BOMB_MESSAGES[algorithm]), error
    assert grown < 64, f"the peak grew by {grown:.1f} MiB"


def test_many_bombs_in_one_request_share_one_budget(server: Callable[..., Any]) -> None:
    """Ten payloads of 6 MiB each (each within both limits alone) are refused at the third: one
    request decompresses DECOMPRESSED_MAX_BYTES at most, whatever it holds."""
    with server(COMPRESSION_MAX_RATIO="1000000") as running:
        inner = pb.Payload(data=bytes(6 * MiB)).SerializeToString()
        piece = running.sealed("zstd", zstandard.ZstdCompressor(level=1).compress(inner))
        before = running.reset_peak()
        refused = running.decode_grpc([piece] * 10)
        grown = running.status()["VmHWM"] - before
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.details() or "").startswith("payload 2: decompresses to more than the "), refused.details()
    assert grown < 64, f"the peak grew by {grown:.1f} MiB"


def test_garbage_compressed_bytes_are_invalid_argument_and_400(server: Callable[..., Any]) -> None:
    with server() as running:
        frame = zstandard.ZstdCompressor(level=1).compress(orders_payload(8192).SerializeToString())
        for payload, reason in [
            (running.sealed("zstd", frame[:-5]), "the zstd frame is corrupt, truncated"),
            (running.sealed("zstd", b"not zstd at all"), "not a zstd frame"),
            (running.sealed("zlib", frame), "not a well-formed zlib stream"),
        ]:
            refused = running.decode_grpc([payload])
            assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (refused.details() or "").startswith(f"payload 0: decompression failed: {reason}")
            status, error = running.decode_http([payload])
            assert status == 400
            assert error.startswith(f"payload 0: decompression failed: {reason}")


@pytest.mark.fuzz
def test_garbage_compressed_bytes_sealed_under_the_servers_key_never_break_it(
    codec_server: Callable[..., RunningCodec], make_key: Callable[..., tuple[str, str]]
) -> None:
    """Whatever a holder of the data key seals as version 2, gRPC answers a payload or INVALID_ARGUMENT
    naming it (never UNKNOWN or INTERNAL), and the server stays healthy."""
    running = codec_server(KMS_KEY_ALIAS=make_key()[0], COMPRESSION="zstd", DECOMPRESSED_MAX_BYTES=str(MiB))
    key = running.app.keys.encryption_key("default", "default", 1)
    seeds = [
        zstandard.ZstdCompressor(level=1).compress(orders_payload(8192).SerializeToString()),
        zlib.compress(orders_payload(8192).SerializeToString()),
        zstd_bomb(64 * MiB),
    ]

    @examples(150)
    @given(
        st.sampled_from(["zstd", "zlib"]),
        st.one_of(st.binary(max_size=200), mutated(seeds)),
    )
    def decode(algorithm: str, data: bytes) -> None:
        payload = pb.Payload.FromString(key.seal(data, os.urandom(12), algorithm))
        try:
            answer = running.stub.Decode(pb.DecodeRequest(payloads=[payload]), timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            assert (exc.details() or "").startswith("payload 0: "), exc.details()
        else:
            assert len(answer.payloads) == 1

    decode()
    assert_healthy(running)
