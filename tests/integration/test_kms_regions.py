"""Multi-Region KMS keys (KMS_REGIONS) against moto behind two KMS endpoints on loopback, one per
Region (tests/support/regions.py): a Region going down while encodes and cold decodes run, the
faults that fall back to the other Region and the refusals that do not, the Regions outside
KMS_REGIONS and the allowlist, and what Stats and /metrics say per Region."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from botocore.exceptions import ClientError
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from codec_grpc.v1 import codec_pb2 as pb
from tests.support.fixtures import RunningCodec, boto_kms, details
from tests.support.regions import EAST, WEST, TwoRegions, region_client

Start = Callable[..., RunningCodec]
CONTEXT = {"temporal-namespace": "default"}


def payload(i: int) -> pb.Payload:
    return pb.Payload(metadata={"encoding": b"json/plain"}, data=f'{{"n": {i}}}'.encode())


def encode(server: RunningCodec, i: int, namespace: str = "default") -> pb.Payload:
    (encoded,) = server.stub.Encode(pb.EncodeRequest(payloads=[payload(i)], namespace=namespace), timeout=30).payloads
    return encoded


def decode(server: RunningCodec, encoded: pb.Payload, namespace: str = "default") -> pb.Payload:
    (decoded,) = server.stub.Decode(pb.DecodeRequest(payloads=[encoded], namespace=namespace), timeout=30).payloads
    return decoded


def key_arn(encoded: pb.Payload) -> str:
    return encoded.metadata["encryption-key-id"].decode()


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), details(caught)


def region_stats(server: RunningCodec) -> dict[str, pb.KmsRegion]:
    return {region.region: region for region in server.stub.Stats(pb.StatsRequest()).kms_regions}


def metric(server: RunningCodec, name: str, **labels: str) -> float:
    text = generate_latest(server.app.registry).decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# The test double ------------------------------------------------------------------------------------


def test_what_moto_does_with_replicas(two_regions: TwoRegions, kms_endpoint: str) -> None:
    """Why the endpoints look as they do. Through the patched moto (tests/support/mrk_moto.py), a data key
    made in us-east-1 unwraps with the replica through us-west-2's endpoint, under the same encryption
    context only; each endpoint answers only its own Region's requests. A replica lives in one moto
    process's memory: another (the session's plain moto) has never heard of it. And plain moto refuses
    every multi-Region key's data key, which is what the patch is for."""
    alias, arns = two_regions.multi_region_key()
    east = region_client(two_regions.proxies[EAST].url, EAST)
    west = region_client(two_regions.proxies[WEST].url, WEST)
    made = east.generate_data_key(KeyId=alias, KeySpec="AES_256", EncryptionContext=CONTEXT)
    assert made["KeyId"] == arns[EAST] and arns[WEST] == arns[EAST].replace(EAST, WEST)
    unwrapped = west.decrypt(CiphertextBlob=made["CiphertextBlob"], KeyId=arns[WEST], EncryptionContext=CONTEXT)
    assert unwrapped["Plaintext"] == made["Plaintext"] and unwrapped["KeyId"] == arns[WEST]
    assert west.describe_key(KeyId=alias)["KeyMetadata"]["Arn"] == arns[WEST]  # the alias, per Region
    with pytest.raises(ClientError, match="InvalidCiphertextException"):
        west.decrypt(CiphertextBlob=made["CiphertextBlob"], KeyId=arns[WEST], EncryptionContext={"x": "y"})
    with pytest.raises(ClientError, match="InvalidSignatureException"):  # us-west-2's call at us-east-1's endpoint
        region_client(two_regions.proxies[EAST].url, WEST).describe_key(KeyId=alias)

    with pytest.raises(ClientError, match="NotFoundException"):
        region_client(kms_endpoint, WEST).describe_key(KeyId=arns[WEST])
    plain = boto_kms(kms_endpoint)
    key = plain.create_key(MultiRegion=True)["KeyMetadata"]
    blob = plain.generate_data_key(KeyId=key["Arn"], KeySpec="AES_256")["CiphertextBlob"]
    with pytest.raises(ClientError, match="AccessDeniedException"):  # moto 5.2 without the patch
        plain.decrypt(CiphertextBlob=blob, KeyId=key["Arn"])


def test_two_moto_servers_in_one_process_share_one_state() -> None:
    """Why two endpoints need no second moto process: moto's state is the process's, whichever
    ThreadedMotoServer a request reaches (so two of them stand for one KMS, not two)."""
    from moto.server import ThreadedMotoServer

    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        first, second = (region_client("http://{}:{}".format(*s.get_host_and_port()), EAST) for s in servers)
        made = first.create_key(Description="made through the first server")["KeyMetadata"]
        assert second.describe_key(KeyId=made["KeyId"])["KeyMetadata"]["Arn"] == made["Arn"]
    finally:
        for server in servers:
            server.stop()


# A Region goes down ---------------------------------------------------------------------------------


def test_encodes_and_cold_decodes_go_on_while_a_region_is_down(codec_server: Start, two_regions: TwoRegions) -> None:
    """us-east-1's endpoint goes down while a writer encodes (every payload under a new data key, so each
    encode needs KMS, and no outage grace to hide behind) and a cold reader decodes payloads written
    before (under us-east-1's key: unwrapped with the replica in us-west-2) and during (under
    us-west-2's). No call fails. A single-Region key's payload gets a clear UNAVAILABLE. When us-east-1
    is back, new data keys come from it again."""
    alias, arns = two_regions.multi_region_key()
    single_alias, single_arn = two_regions.single_region_key(EAST)
    settings = two_regions.settings(
        KMS_KEY_ALIAS=alias,
        NAMESPACE_KEY_ALIASES=f"orders={single_alias}",
        MAX_PAYLOADS_PER_REQUEST=1,
        DATA_KEY_MAX_ENCRYPTIONS=1,  # a data key per payload: each encode needs GenerateDataKey
        KMS_OUTAGE_GRACE=0,
        KMS_FAIL_FAST_SECONDS=1,
    )
    writer = codec_server(**settings)
    before = [encode(writer, i) for i in range(60)]
    assert {key_arn(p) for p in before} == {arns[EAST]}
    orders = encode(writer, 0, "orders")
    assert key_arn(orders) == single_arn
    reader = codec_server(**settings)  # has seen none of these data keys

    failures: list[str] = []
    during: list[pb.Payload] = []
    decoded_before = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal decoded_before
        index = 1000
        while not stop.is_set() and before:
            index += 1
            try:
                written = encode(writer, index)
                during.append(written)
                assert decode(reader, written) == payload(index)
                assert decode(reader, before.pop()) == payload(len(before))
                decoded_before += 1
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
            except AssertionError as exc:
                failures.append(f"decoded something else: {exc}")

    worker = threading.Thread(target=load)
    worker.start()
    eventually(lambda: len(during) >= 10)
    two_regions.proxies[EAST].down()
    marked = len(during)
    time.sleep(2.5)
    stop.set()
    worker.join(30)
    assert failures == []
    after_down = during[marked + 1 :]  # the one in flight when the endpoint went may have made it
    assert len(after_down) >= 10 and decoded_before >= 20, (len(after_down), decoded_before)
    assert {key_arn(p) for p in after_down} == {arns[WEST]}  # new data keys from us-west-2
    written, read = region_stats(writer), region_stats(reader)
    assert written[WEST].generate_data_key_fallbacks >= len(after_down)
    assert written[EAST].unavailable >= 1 and "cannot reach KMS" in written[EAST].last_error
    assert read[WEST].decrypt_fallbacks >= 1  # before's payloads, unwrapped with the replica
    assert read[EAST].unavailable >= 1 and read[EAST].decrypt_short_circuited >= 1  # paused: not asked each time
    assert metric(reader, "temporal_codec_kms_fallbacks_total", region=WEST, operation="Decrypt") >= 1
    assert metric(reader, "temporal_codec_kms_requests_total", region=EAST, outcome="unavailable") >= 1
    assert metric(writer, "temporal_codec_kms_fallbacks_total", region=WEST, operation="GenerateDataKey") >= 10

    # The reader resolved the single-Region key at its start (a server started during the outage could
    # not: it would refuse the key as not allowed until us-east-1 answers DescribeKey again).
    code, message = refused(lambda: decode(reader, orders, "orders"))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message.startswith(f"payload 0: KMS Decrypt with key {single_arn}: cannot reach KMS (")
    assert message.endswith(f"; {single_arn} is a single-Region key: no other Region can unwrap its data keys")

    two_regions.proxies[EAST].up()
    eventually(lambda: key_arn(encode(writer, 0)) == arns[EAST])  # once the pause is over
    assert decode(codec_server(**settings), orders, "orders") == payload(0)


@pytest.mark.parametrize("fault", ["throttle", "error500", "hang", "drop"])
def test_an_unavailable_region_falls_back(codec_server: Start, two_regions: TwoRegions, fault: str) -> None:
    alias, _ = two_regions.multi_region_key()
    settings = two_regions.settings(KMS_KEY_ALIAS=alias, KMS_READ_TIMEOUT=0.3, KMS_CONNECT_TIMEOUT=0.3)
    written = encode(codec_server(**settings), 1)
    reader = codec_server(**settings)
    if fault == "hang":
        two_regions.proxies[EAST].set(delay=1.0)
    else:
        two_regions.proxies[EAST].set(mode=fault)
    asked = {region: two_regions.seen(region, "Decrypt") for region in (EAST, WEST)}
    assert decode(reader, written) == payload(1)
    assert {region: two_regions.seen(region, "Decrypt") - asked[region] for region in (EAST, WEST)} == {
        EAST: 1,  # KMS_MAX_ATTEMPTS=1
        WEST: 1,
    }
    stats = region_stats(reader)
    assert (stats[EAST].unavailable, stats[WEST].decrypt_fallbacks, stats[WEST].errors) == (1, 1, 0)


@pytest.mark.parametrize(
    ("fault", "code"),
    [("deny", grpc.StatusCode.PERMISSION_DENIED), ("disabled", grpc.StatusCode.FAILED_PRECONDITION)],
)
def test_a_refusal_never_falls_back(
    codec_server: Start, two_regions: TwoRegions, fault: str, code: grpc.StatusCode
) -> None:
    alias, _ = two_regions.multi_region_key()
    settings = two_regions.settings(KMS_KEY_ALIAS=alias)
    written = encode(codec_server(**settings), 1)
    reader = codec_server(**settings)
    two_regions.proxies[EAST].set(mode=fault, operations={"Decrypt"})
    west = two_regions.seen(WEST, "Decrypt")
    assert refused(lambda: decode(reader, written))[0] == code
    assert two_regions.seen(WEST, "Decrypt") == west  # us-west-2 never asked
    assert region_stats(reader)[WEST].decrypt_fallbacks == 0


def test_an_altered_data_key_is_refused_in_its_region_only(codec_server: Start, two_regions: TwoRegions) -> None:
    alias, _ = two_regions.multi_region_key()
    settings = two_regions.settings(KMS_KEY_ALIAS=alias)
    written = encode(codec_server(**settings), 1)
    edk = bytearray(written.metadata["encrypted-data-key"])
    edk[-5] ^= 1
    altered = pb.Payload(metadata={**written.metadata, "encrypted-data-key": bytes(edk)}, data=written.data)
    reader = codec_server(**settings)
    asked = {region: two_regions.seen(region, "Decrypt") for region in (EAST, WEST)}
    assert refused(lambda: decode(reader, altered))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert {region: two_regions.seen(region, "Decrypt") - asked[region] for region in (EAST, WEST)} == {
        EAST: 1,
        WEST: 0,
    }


def test_every_regions_arn_is_checked_before_any_kms_call(codec_server: Start, two_regions: TwoRegions) -> None:
    """Master keys resolve in both Regions at start; a payload of us-west-2 decodes there first; a key
    ARN of a Region outside KMS_REGIONS, or of a key not allowed, is refused without a KMS call."""
    alias, arns = two_regions.multi_region_key()
    settings = two_regions.settings(KMS_KEY_ALIAS=alias)
    described = {region: two_regions.seen(region, "DescribeKey") for region in (EAST, WEST)}
    reader = codec_server(**settings)
    assert {region: two_regions.seen(region, "DescribeKey") - described[region] for region in (EAST, WEST)} == {
        EAST: 1,
        WEST: 1,
    }
    assert {arns[EAST], arns[WEST]} <= reader.app.keys.allowlist.resolved()

    west_first = codec_server(**two_regions.settings(KMS_KEY_ALIAS=alias, KMS_REGIONS=f"{WEST},{EAST}"))
    written = encode(west_first, 1)
    assert key_arn(written) == arns[WEST]
    assert decode(reader, written) == payload(1)
    assert reader.kms.by_region[WEST]["Decrypt"] == 1 and reader.kms.by_region[EAST]["Decrypt"] == 0

    def naming(arn: str) -> pb.Payload:
        return pb.Payload(metadata={**written.metadata, "encryption-key-id": arn.encode()}, data=written.data)

    eu, foreign = arns[EAST].replace(EAST, "eu-west-1"), arns[EAST].replace(":123456789012:", ":999999999999:")
    code, message = refused(lambda: decode(reader, naming(eu)))
    assert (code, message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"payload 0: KMS key {eu} is in Region eu-west-1, not one of KMS_REGIONS (us-east-1, us-west-2); "
        "not sent to KMS",
    )
    code, message = refused(lambda: decode(reader, naming(foreign)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message.startswith(f"payload 0: KMS key {foreign} is not one this server decrypts with")
    assert reader.kms["Decrypt"] == 1
