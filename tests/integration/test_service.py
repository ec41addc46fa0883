"""CodecService over a real gRPC channel, against moto's KMS server through boto3."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from temporalio.api.common.v1 import Payload as TemporalPayload
from temporalio.api.common.v1 import Payloads as TemporalPayloads

from codec_grpc.core import EnvelopeCodec
from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec, details, free_port

Start = Callable[..., RunningCodec]


def payloads(n: int, size: int = 64) -> list[pb.Payload]:
    return [
        pb.Payload(
            metadata={"encoding": b"json/plain", "seq": str(i).encode()},
            data=(f'"{i}"' + "x" * size).encode(),
            external_payloads=[pb.Payload.ExternalPayloadDetails(size_bytes=i + 1)] if i % 3 == 0 else [],
        )
        for i in range(n)
    ]


def encode(server: RunningCodec, items: list[pb.Payload], namespace: str = "", **kw: Any) -> list[pb.Payload]:
    return list(server.stub.Encode(pb.EncodeRequest(payloads=items, namespace=namespace), **kw).payloads)


def decode(server: RunningCodec, items: list[pb.Payload], namespace: str = "", **kw: Any) -> list[pb.Payload]:
    return list(server.stub.Decode(pb.DecodeRequest(payloads=items, namespace=namespace), **kw).payloads)


@pytest.fixture
def key(make_key: Any) -> tuple[str, str]:
    result: tuple[str, str] = make_key()
    return result


@pytest.fixture
def server(codec_server: Start, key: tuple[str, str]) -> RunningCodec:
    return codec_server(KMS_KEY_ALIAS=key[0])


def test_round_trip_of_many_payloads(server: RunningCodec, key: tuple[str, str]) -> None:
    original = payloads(500)
    encoded = encode(server, original)
    assert len(encoded) == 500
    for p in encoded:
        assert p.metadata["encoding"] == b"binary/encrypted"
        assert p.metadata["encryption-key-id"] == key[1].encode()
        assert p.metadata["encryption-algorithm"] == b"AES-256-GCM"
        assert p.metadata["encryption-namespace"] == b"default"
        assert len(p.metadata["encrypted-data-key"]) > 0
        assert not p.external_payloads
    decoded = decode(server, encoded)
    assert decoded == original
    assert decoded[0].external_payloads[0].size_bytes == 1


def test_temporalio_payloads_are_valid_requests_and_answers(server: RunningCodec) -> None:
    """A worker's serialized Payloads is a request; our answer parses as Payloads."""
    temporal = TemporalPayloads(
        payloads=[
            TemporalPayload(metadata={"encoding": b"json/plain"}, data=b'{"a":1}'),
            TemporalPayload(metadata={"encoding": b"binary/null"}, data=b""),
        ]
    )
    temporal.payloads[0].external_payloads.add(size_bytes=77)
    encode_raw = server.channel.unary_unary("/codec_grpc.v1.CodecService/Encode", None, None)
    decode_raw = server.channel.unary_unary("/codec_grpc.v1.CodecService/Decode", None, None)
    encoded = TemporalPayloads.FromString(encode_raw(temporal.SerializeToString()))
    assert [p.metadata["encoding"] for p in encoded.payloads] == [b"binary/encrypted"] * 2
    decoded = TemporalPayloads.FromString(decode_raw(encoded.SerializeToString()))
    assert decoded == temporal
    assert decoded.payloads[0].external_payloads[0].size_bytes == 77


def test_decode_passes_through_other_payloads(server: RunningCodec) -> None:
    plain = payloads(3)
    mixed = [plain[0], *encode(server, [plain[1]]), plain[2]]
    assert decode(server, mixed) == plain
    assert server.kms["Decrypt"] == 0


def test_empty_requests(server: RunningCodec) -> None:
    assert encode(server, []) == []
    assert decode(server, []) == []
    assert server.kms["GenerateDataKey"] == 0


def _flip(payload: pb.Payload, position: int) -> pb.Payload:
    data = bytearray(payload.data)
    data[position] ^= 0x80
    return pb.Payload(metadata=payload.metadata, data=bytes(data))


def test_tampered_data_is_invalid_argument_naming_the_index(server: RunningCodec) -> None:
    encoded = encode(server, payloads(4))
    encoded[3] = _flip(encoded[3], 20)
    with pytest.raises(grpc.RpcError) as caught:
        decode(server, encoded)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught).startswith("payload 3: decryption failed")


def test_swapped_data_keys_between_payloads_are_refused(codec_server: Start, make_key: Any) -> None:
    """Two payloads under different data keys: exchanging their encrypted-data-key fails."""
    server = codec_server(KMS_KEY_ALIAS=make_key()[0], DATA_KEY_MAX_ENCRYPTIONS=1, MAX_PAYLOADS_PER_REQUEST=1)
    first = encode(server, payloads(1))[0]
    second = encode(server, payloads(1))[0]
    assert first.metadata["encrypted-data-key"] != second.metadata["encrypted-data-key"]
    swapped = pb.Payload(
        metadata={**first.metadata, "encrypted-data-key": second.metadata["encrypted-data-key"]}, data=first.data
    )
    with pytest.raises(grpc.RpcError) as caught:
        decode(server, [swapped])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught).startswith("payload 0: decryption failed")


def test_swapped_key_id_is_refused(codec_server: Start, make_key: Any) -> None:
    """AWS answers IncorrectKeyException (INVALID_ARGUMENT); moto answers AccessDenied (PERMISSION_DENIED)."""
    _, other_arn = make_key()
    server = codec_server(KMS_KEY_ALIAS=make_key()[0])
    (encoded,) = encode(server, payloads(1))
    # Its cache does not know the data key; the other key is on its allowlist, so KMS is asked.
    fresh = codec_server(KMS_KEY_ALIAS="alias/unused", DECRYPT_KEY_ARNS=other_arn)
    altered = pb.Payload(metadata={**encoded.metadata, "encryption-key-id": other_arn.encode()}, data=encoded.data)
    with pytest.raises(grpc.RpcError) as caught:
        decode(fresh, [pb.Payload(), altered])
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert details(caught).startswith(f"payload 1: KMS Decrypt with key {other_arn}")


def test_altered_namespace_metadata_is_refused_by_kms(
    server: RunningCodec, codec_server: Start, key: tuple[str, str]
) -> None:
    (encoded,) = encode(server, payloads(1), namespace="team-a")
    moved = pb.Payload(metadata={**encoded.metadata, "encryption-namespace": b"team-b"}, data=encoded.data)
    fresh = codec_server(KMS_KEY_ALIAS="alias/unused", DECRYPT_KEY_ARNS=key[1])
    with pytest.raises(grpc.RpcError) as caught:
        decode(fresh, [moved], namespace="team-b")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payload 0: KMS Decrypt" in details(caught)
    assert "InvalidCiphertextException" in details(caught)


def test_namespace_from_field_header_or_default(server: RunningCodec) -> None:
    by_field = encode(server, payloads(1), namespace="team-a")[0]
    by_header = encode(server, payloads(1), metadata=[("x-namespace", "team-b")])[0]
    by_default = encode(server, payloads(1))[0]
    field_wins = encode(server, payloads(1), namespace="team-c", metadata=[("x-namespace", "team-b")])[0]
    written = [p.metadata["encryption-namespace"] for p in (by_field, by_header, by_default, field_wins)]
    assert written == [b"team-a", b"team-b", b"default", b"team-c"]
    assert server.kms["GenerateDataKey"] == 4  # one data key per namespace
    assert decode(server, [by_header], metadata=[("x-namespace", "team-b")]) == payloads(1)


def test_namespace_isolation(server: RunningCodec) -> None:
    encoded = encode(server, payloads(2), namespace="team-a")
    for kwargs in ({"namespace": "team-b"}, {"metadata": [("x-namespace", "team-b")]}):
        with pytest.raises(grpc.RpcError) as caught:
            decode(server, encoded, **kwargs)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details(caught).startswith("payload 0: written for namespace 'team-a', requested as 'team-b'")
    with pytest.raises(grpc.RpcError) as caught:
        decode(server, encoded)
    assert "requested as 'default'" in details(caught)


def test_invalid_namespace_is_invalid_argument(server: RunningCodec) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        encode(server, payloads(1), namespace="no spaces allowed")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught).startswith("invalid namespace: must be a Temporal namespace name")


def test_binding_off_decodes_under_any_namespace(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], NAMESPACE_BINDING="false")
    encoded = encode(server, payloads(2), namespace="team-a")
    assert "encryption-namespace" not in encoded[0].metadata
    assert decode(server, encoded, namespace="team-b") == payloads(2)


def test_namespace_key_aliases_route_to_their_master_key(codec_server: Start, make_key: Any) -> None:
    default_alias, default_arn = make_key()
    tenant_alias, tenant_arn = make_key()
    server = codec_server(KMS_KEY_ALIAS=default_alias, NAMESPACE_KEY_ALIASES=f"tenant={tenant_alias}")
    assert encode(server, payloads(1), namespace="tenant")[0].metadata["encryption-key-id"] == tenant_arn.encode()
    assert encode(server, payloads(1), namespace="other")[0].metadata["encryption-key-id"] == default_arn.encode()


def test_master_key_rotation_by_update_alias(codec_server: Start, make_key: Any, admin_kms: Any) -> None:
    alias, old_arn = make_key()
    _, new_arn = make_key()
    server = codec_server(KMS_KEY_ALIAS=alias, DATA_KEY_ROTATION_INTERVAL="0.5")
    before = encode(server, payloads(3))
    assert before[0].metadata["encryption-key-id"] == old_arn.encode()
    admin_kms.update_alias(AliasName=alias, TargetKeyId=new_arn)
    assert (
        encode(server, payloads(1))[0].metadata["encryption-key-id"] == old_arn.encode()
    )  # until the data key rotates
    time.sleep(0.6)
    after = encode(server, payloads(3))
    assert after[0].metadata["encryption-key-id"] == new_arn.encode()
    assert server.kms["GenerateDataKey"] == 2
    # A restarted server knows the alias's new key; the old one must be listed (the allowlist).
    fresh = codec_server(KMS_KEY_ALIAS=alias, DECRYPT_KEY_ARNS=old_arn)
    assert decode(fresh, before + after) == payloads(3) + payloads(3)
    assert fresh.kms["Decrypt"] == 2  # one per data key, old master key included


def test_one_generate_data_key_for_a_thousand_encodes(server: RunningCodec) -> None:
    for i in range(1000):
        encode(server, [pb.Payload(data=str(i).encode())])
    assert server.kms["GenerateDataKey"] == 1
    stats = server.stub.Stats(pb.StatsRequest())
    assert stats.kms_generate_data_key_calls == 1
    assert stats.current_keys[0].encryptions == 1000


def test_one_decrypt_for_a_thousand_decodes_in_a_fresh_server(
    server: RunningCodec, codec_server: Start, key: tuple[str, str]
) -> None:
    encoded = encode(server, payloads(1000, size=8))
    assert decode(server, encoded) == payloads(1000, size=8)
    assert server.kms["Decrypt"] == 0  # its own data key needs no KMS call
    fresh = codec_server(KMS_KEY_ALIAS=key[0])
    for i in range(0, 1000, 10):
        assert decode(fresh, encoded[i : i + 10]) == payloads(1000, size=8)[i : i + 10]
    assert fresh.kms["Decrypt"] == 1


def test_one_decrypt_under_concurrency(server: RunningCodec, codec_server: Start, key: tuple[str, str]) -> None:
    encoded = encode(server, payloads(32))
    fresh = codec_server(KMS_KEY_ALIAS=key[0], GRPC_MAX_WORKERS=16)
    barrier = threading.Barrier(16)

    def call(i: int) -> list[pb.Payload]:
        barrier.wait()
        return decode(fresh, encoded[i * 2 : i * 2 + 2])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(16)))
    assert [p for r in results for p in r] == payloads(32)
    assert fresh.kms["Decrypt"] == 1


def test_one_generate_data_key_under_concurrency(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], GRPC_MAX_WORKERS=16)
    barrier = threading.Barrier(16)

    def call(_: int) -> list[pb.Payload]:
        barrier.wait()
        return encode(server, payloads(2))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(16)))
    assert server.kms["GenerateDataKey"] == 1


def test_request_over_message_limit_is_resource_exhausted(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], GRPC_MAX_MESSAGE_BYTES=64 * 1024)
    with pytest.raises(grpc.RpcError) as caught:
        encode(server, [pb.Payload(data=b"x" * 70 * 1024)])
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(encode(server, [pb.Payload(data=b"x" * 60 * 1024)])) == 1  # still serving


def test_too_many_payloads_is_resource_exhausted(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], MAX_PAYLOADS_PER_REQUEST=10)
    with pytest.raises(grpc.RpcError) as caught:
        encode(server, payloads(11))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(caught) == (
        "11 payloads in one request; the limit is 10 (MAX_PAYLOADS_PER_REQUEST): split the batch"
    )
    assert len(encode(server, payloads(10))) == 10


def test_unreachable_kms_is_unavailable(codec_server: Start) -> None:
    server = codec_server(AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{free_port()}", KMS_CONNECT_TIMEOUT=0.5)
    with pytest.raises(grpc.RpcError) as caught:
        encode(server, payloads(1))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach KMS" in details(caught)
    assert server.stub.Stats(pb.StatsRequest()).kms_errors == 2  # start-up's DescribeKey, then GenerateDataKey


def test_unknown_master_key_is_failed_precondition(codec_server: Start) -> None:
    server = codec_server(KMS_KEY_ALIAS="alias/nobody-created-this")
    with pytest.raises(grpc.RpcError) as caught:
        encode(server, payloads(1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(caught) == (
        "KMS GenerateDataKey with key alias/nobody-created-this: no such key or alias (NotFoundException)"
    )


def test_stats(server: RunningCodec, key: tuple[str, str]) -> None:
    empty = server.stub.Stats(pb.StatsRequest())
    assert (empty.cached_keys_count, empty.current_key_present, empty.namespace) == (0, False, "default")
    encode(server, payloads(5))
    encode(server, payloads(2), namespace="other")
    stats = server.stub.Stats(pb.StatsRequest())
    assert stats.cached_keys_count == 2
    assert stats.current_key_present and not stats.current_key_expired
    assert 0 <= stats.current_key_age_seconds < 60
    assert 3500 < stats.current_key_expires_in_seconds <= 3600
    assert stats.kms_generate_data_key_calls == 2 and stats.kms_decrypt_calls == 0
    assert {(k.namespace, k.encryptions, k.key_arn) for k in stats.current_keys} == {
        ("default", 5, key[1]),
        ("other", 2, key[1]),
    }
    by_header = server.stub.Stats(pb.StatsRequest(), metadata=[("x-namespace", "other")])
    assert by_header.namespace == "other" and by_header.current_key_present
    text = str(stats)
    assert "Plaintext" not in text and "encrypted" not in text.lower()


def test_stats_reports_expired_key(codec_server: Start, key: tuple[str, str]) -> None:
    server = codec_server(KMS_KEY_ALIAS=key[0], DATA_KEY_ROTATION_INTERVAL="0.2")
    encode(server, payloads(1))
    time.sleep(0.3)
    stats = server.stub.Stats(pb.StatsRequest())
    assert stats.current_key_expired and stats.current_key_expires_in_seconds == 0


def test_unexpected_error_is_internal_without_details(
    server: RunningCodec, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug answers INTERNAL with a fixed message; the log names the error type, not the data."""

    def broken(*_: object, **__: object) -> list[bytes]:
        raise ZeroDivisionError("secret-looking detail")

    monkeypatch.setattr(EnvelopeCodec, "encode_response", broken)
    with pytest.raises(grpc.RpcError) as caught:
        encode(server, payloads(1))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert details(caught) == "internal error; the server log has the details"
    assert "ZeroDivisionError" in caplog.text
    assert "secret-looking detail" not in caplog.text


def test_port_in_use_is_a_clear_error(server: RunningCodec, codec_server: Start) -> None:
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server.app.port} \\(address in use"):
        codec_server(GRPC_PORT=server.app.port)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x0a\x05abc", "malformed request: a field runs past the end of the message"),
        (b"\x0f", "malformed request: unsupported wire type 7"),
        (b"\x0a\x02\xff\xff", "payload 0: not a serialized Payload"),
        # Encode checks all payloads with one parse of the request, then names the one at fault.
        (b"\x0a\x00\x0a\x02\xff\xff\x0a\x00", "payload 1: not a serialized Payload"),
    ],
)
@pytest.mark.parametrize("method", ["Encode", "Decode"])
def test_malformed_requests_are_invalid_argument(server: RunningCodec, method: str, raw: bytes, message: str) -> None:
    call = server.channel.unary_unary(f"/codec_grpc.v1.CodecService/{method}", None, None)
    with pytest.raises(grpc.RpcError) as caught:
        call(raw)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught) == message
