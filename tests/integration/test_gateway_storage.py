"""The storage-aware gateway against moto's S3: what temporalio's own S3StorageDriver writes (after our
codec encrypted it), resolved by /decode, kept by ?preserveStorageRefs=true, downloaded by /download,
and offloaded by /encode; and every refusal, with the S3 requests it did (not) make."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from temporal_codec_client import RemotePayloadCodec
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.contrib.aws.s3driver import S3StorageDriver
from temporalio.converter import (
    DataConverter,
    ExternalStorage,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)

from tests.support.gateway import UI_ORIGIN, Gateway, assert_cors, b64, plain_payload, unb64
from tests.support.storage import Boto3DriverClient, boto_s3, objects_in

NAMESPACE = "orders"
THRESHOLD = 2048
SMALL = {"card": "4242 small secret"}
LARGE = {"card": "4242 large secret", "padding": "x" * 8000}


@pytest.fixture
def bucket(make_bucket) -> str:
    return str(make_bucket())


@pytest.fixture
def storage_gateway(start_gateway, kms_endpoint, bucket):
    def start(**settings: Any) -> Gateway:
        settings = {
            "EXTERNAL_STORAGE_BUCKETS": bucket,
            "AWS_ENDPOINT_URL_S3": kms_endpoint,
            "S3_MAX_ATTEMPTS": 1,
            **settings,
        }
        gateway: Gateway = start_gateway(**settings)
        return gateway

    return start


def sdk_converter(
    gateway: Gateway, endpoint: str, bucket: str, namespace: str = NAMESPACE, *, scoped: bool = True
) -> DataConverter:
    """A worker's converter: our codec, then temporalio's S3 driver, scoped to a workflow of ``namespace``
    (unscoped, the driver's keys name no namespace)."""
    driver = S3StorageDriver(client=Boto3DriverClient(boto_s3(endpoint)), bucket=bucket)
    converter = dataclasses.replace(
        DataConverter.default,
        payload_codec=RemotePayloadCodec(gateway.codec.target, namespace=namespace),
        external_storage=ExternalStorage(drivers=[driver], payload_size_threshold=THRESHOLD),
    )
    if not scoped:
        return converter
    target = StorageDriverWorkflowInfo(namespace=namespace, id="wf-1", run_id="run-1", type="Charge")
    return converter._with_store_context(StorageDriverStoreContext(target=target))


def written(converter: DataConverter, values: Sequence[Any]) -> list[Payload]:
    return asyncio.run(converter.encode(list(values)))


def as_json(payloads: Sequence[Payload]) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def values_of(document: dict[str, Any]) -> list[Any]:
    return [json.loads(unb64(payload["data"])) for payload in document["payloads"]]


def s3_requests(gateway: Gateway, operation: str = "GetObject") -> float:
    registry = gateway.registry
    assert registry is not None
    total = 0.0
    for metric in registry.collect():
        if metric.name == "temporal_codec_s3_requests":
            total += sum(
                s.value for s in metric.samples if s.name.endswith("_total") and s.labels["operation"] == operation
            )
    return total


def refused(registry: CollectorRegistry | None, reason: str) -> float | None:
    assert registry is not None
    return registry.get_sample_value("temporal_codec_storage_references_refused_total", {"reason": reason})


def test_decode_resolves_references_and_preserve_keeps_them(storage_gateway, kms_endpoint, bucket, s3_admin):
    gateway = storage_gateway()
    history = written(sdk_converter(gateway, kms_endpoint, bucket), [SMALL, LARGE])
    # What temporalio 1.35 leaves in the history: the small one encrypted, a reference for the large one.
    assert history[0].metadata["encoding"] == b"binary/encrypted"
    assert history[1].metadata["messageType"] == b"temporal.api.sdk.v1.ExternalStorageReference"
    stored = objects_in(s3_admin, bucket)
    [key] = stored
    assert key.startswith("v0/ns/orders/wt/Charge/wi/wf-1/ri/run-1/d/sha256/")
    assert b"large secret" not in stored[key]  # the bucket holds ciphertext only

    reply = gateway.post("/decode", as_json(history), X_Namespace=NAMESPACE)
    assert reply.status == 200, reply.body
    assert values_of(reply.json()) == [SMALL, LARGE]

    kept = gateway.post(
        "/api/codec/decode?preserveStorageRefs=true", as_json(history), X_Namespace=NAMESPACE, Origin=UI_ORIGIN
    )
    assert kept.status == 200, kept.body
    assert_cors(kept)
    small, reference = kept.json()["payloads"]
    assert json.loads(unb64(small["data"])) == SMALL
    assert reference == as_json(history[1:])["payloads"][0]  # as it is, size for the UI included
    assert int(reference["externalPayloads"][0]["sizeBytes"]) > THRESHOLD


def test_download_answers_the_stored_payload_decoded(storage_gateway, kms_endpoint, bucket):
    gateway = storage_gateway()
    [reference] = written(sdk_converter(gateway, kms_endpoint, bucket), [LARGE])

    # As the Web UI 2.54 sends it: the payload as the history holds it, the query on every call.
    reply = gateway.post(
        "/api/codec/download?preserveStorageRefs=true",
        as_json([reference]),
        X_Namespace=NAMESPACE,
        Origin=UI_ORIGIN,
    )

    assert reply.status == 200, reply.body
    assert_cors(reply)
    assert values_of(reply.json()) == [LARGE]
    [payload] = reply.json()["payloads"]
    assert unb64(payload["metadata"]["encoding"]) == b"json/plain"


def test_download_needs_one_reference(storage_gateway):
    gateway = storage_gateway()
    for payloads in ([], [plain_payload('"x"')], [plain_payload('"x"'), plain_payload('"y"')]):
        reply = gateway.post("/download", {"payloads": payloads}, X_Namespace=NAMESPACE)
        assert reply.status == 400
        assert reply.error.startswith("…/download takes one external storage reference")


def test_marked_references_of_later_sdks_are_read(storage_gateway, kms_endpoint, bucket, monkeypatch):
    import temporalio.converter._extstore as extstore

    monkeypatch.setattr(extstore, "_ENCODE_STORAGE_REFERENCES", True)
    gateway = storage_gateway()
    converter = sdk_converter(gateway, kms_endpoint, bucket)
    [marked] = written(converter, [LARGE])
    # The reference itself went through our codec: nothing about the object is readable in the history.
    assert marked.metadata["encoding"] == b"binary/encrypted"
    assert marked.metadata["__temporal_external_storage_reference"] == b"true"
    assert b"v0/ns" not in marked.SerializeToString()
    assert asyncio.run(converter.decode([marked])) == [LARGE]  # the SDK reads it back

    resolved = gateway.post("/decode", as_json([marked]), X_Namespace=NAMESPACE)
    assert resolved.status == 200, resolved.body
    assert values_of(resolved.json()) == [LARGE]

    kept = gateway.post("/decode?preserveStorageRefs=true", as_json([marked]), X_Namespace=NAMESPACE)
    assert kept.status == 200, kept.body
    [reference] = kept.json()["payloads"]
    assert unb64(reference["metadata"]["messageType"]) == b"temporal.api.sdk.v1.ExternalStorageReference"
    assert reference["externalPayloads"] == as_json([marked])["payloads"][0]["externalPayloads"]

    downloaded = gateway.post("/download?preserveStorageRefs=true", as_json([marked]), X_Namespace=NAMESPACE)
    assert downloaded.status == 200, downloaded.body
    assert values_of(downloaded.json()) == [LARGE]


def test_encode_offloads_what_the_sdk_then_reads(storage_gateway, kms_endpoint, bucket, s3_admin):
    gateway = storage_gateway(EXTERNAL_STORAGE_BUCKET=bucket, EXTERNAL_STORAGE_THRESHOLD=THRESHOLD)
    inputs = [plain_payload(json.dumps(SMALL)), plain_payload(json.dumps(LARGE))]

    reply = gateway.post("/encode", {"payloads": inputs}, X_Namespace=NAMESPACE)

    assert reply.status == 200, reply.body
    small, reference = json_format.ParseDict(reply.json(), Payloads()).payloads
    assert small.metadata["encoding"] == b"binary/encrypted"
    assert reference.metadata["encoding"] == b"json/protobuf"
    claim = json.loads(reference.data)["claimData"]
    assert claim["bucket"] == bucket
    assert claim["key"] == f"v0/ns/{NAMESPACE}/d/sha256/{claim['hash_value']}"
    assert b"large secret" not in objects_in(s3_admin, bucket)[claim["key"]]
    assert s3_requests(gateway, "PutObject") == 1
    # temporalio's own driver reads it back, and our codec decrypts it.
    assert asyncio.run(sdk_converter(gateway, kms_endpoint, bucket).decode([small, reference])) == [SMALL, LARGE]
    # And so does the gateway.
    again = gateway.post("/decode", reply.json(), X_Namespace=NAMESPACE)
    assert values_of(again.json()) == [SMALL, LARGE]


def test_a_bucket_not_listed_is_refused_before_any_s3_request(storage_gateway, kms_endpoint, bucket, make_bucket):
    other = make_bucket()
    gateway = storage_gateway()
    history = written(sdk_converter(gateway, kms_endpoint, other), [SMALL, LARGE])

    reply = gateway.post("/decode", as_json(history), X_Namespace=NAMESPACE, Origin=UI_ORIGIN)

    assert reply.status == 403
    assert_cors(reply)
    assert reply.error == f"payload 1: bucket {other!r} is not one of EXTERNAL_STORAGE_BUCKETS: not retrieved"
    assert s3_requests(gateway) == 0
    assert refused(gateway.registry, "bucket") == 1


def test_a_key_of_another_namespace_is_refused_before_any_s3_request(storage_gateway, kms_endpoint, bucket):
    gateway = storage_gateway()
    [reference] = written(sdk_converter(gateway, kms_endpoint, bucket, namespace="billing"), [LARGE])

    reply = gateway.post("/download", as_json([reference]), X_Namespace=NAMESPACE)

    assert reply.status == 403
    assert reply.error.startswith("payload 0: the stored payload is in namespace 'billing', requested as 'orders'")
    assert s3_requests(gateway) == 0


def test_a_stored_payload_bound_to_another_namespace_is_refused(storage_gateway, kms_endpoint, bucket):
    gateway = storage_gateway()
    # Without a target the driver's key names no namespace: only the payload's own binding can tell.
    [reference] = written(sdk_converter(gateway, kms_endpoint, bucket, namespace="billing", scoped=False), [LARGE])
    assert json.loads(reference.data)["claimData"]["key"].startswith("v0/d/sha256/")

    reply = gateway.post("/decode", as_json([reference]), X_Namespace=NAMESPACE)

    assert reply.status == 403
    assert reply.error.startswith("payload 0: written for namespace 'billing', requested as 'orders'")


def test_a_missing_object_and_an_altered_one_are_400(storage_gateway, kms_endpoint, bucket, s3_admin):
    gateway = storage_gateway()
    [reference] = written(sdk_converter(gateway, kms_endpoint, bucket), [LARGE])
    key = json.loads(reference.data)["claimData"]["key"]

    s3_admin.put_object(Bucket=bucket, Key=key, Body=b"\x0a\x00tampered")
    altered = gateway.post("/decode", as_json([reference]), X_Namespace=NAMESPACE)
    assert altered.status == 400
    assert altered.error == (
        f"payload 0: the stored payload s3://{bucket}/{key} does not have the SHA-256 its reference claims: "
        "it was altered, or the reference is not genuine"
    )
    assert refused(gateway.registry, "integrity") == 1

    s3_admin.delete_object(Bucket=bucket, Key=key)
    missing = gateway.post("/download", as_json([reference]), X_Namespace=NAMESPACE)
    assert missing.status == 400  # not 404, which the Web UI takes for "no /download endpoint"
    assert missing.error == (
        f"payload 0: the stored payload s3://{bucket}/{key} does not exist "
        "(deleted, or expired by the bucket's lifecycle rule?)"
    )


def test_malformed_references_are_400(storage_gateway, bucket):
    gateway = storage_gateway()

    def reference(data: str) -> dict[str, Any]:
        return {
            "metadata": {
                "encoding": b64("json/protobuf"),
                "messageType": b64("temporal.api.sdk.v1.ExternalStorageReference"),
            },
            "data": b64(data),
        }

    good = {"bucket": bucket, "key": "v0/d/sha256/" + "0" * 64, "hash_algorithm": "sha256", "hash_value": "0" * 64}
    cases = {
        "not json": "payload 0: the reference is not valid JSON",
        json.dumps({"claimData": {**good, "hash_algorithm": "md5"}}): (
            "payload 0: unsupported hash algorithm 'md5': expected sha256"
        ),
        json.dumps({"claimData": {**good, "hash_value": "ABC"}}): (
            "payload 0: hash_value is not a lower-case hex SHA-256 digest"
        ),
        json.dumps({"claimData": {"path": "/tmp/x"}, "driverName": "local"}): (
            "payload 0: not an S3 claim: 'bucket' is missing"
        ),
        json.dumps({"claimData": good, "extra": 1}): "payload 0: unknown field 'extra' in the reference",
    }
    for data, error in cases.items():
        reply = gateway.post("/decode", {"payloads": [reference(data)]}, X_Namespace=NAMESPACE)
        assert (reply.status, reply.error) == (400, error)
    assert s3_requests(gateway) == 0


def test_limits_on_references_and_bytes(storage_gateway, kms_endpoint, bucket):
    gateway = storage_gateway(EXTERNAL_STORAGE_MAX_REFERENCES=2, EXTERNAL_STORAGE_MAX_BYTES=12_000)
    converter = sdk_converter(gateway, kms_endpoint, bucket)
    three = written(converter, [LARGE, {**LARGE, "n": 2}, {**LARGE, "n": 3}])

    too_many = gateway.post("/decode", as_json(three), X_Namespace=NAMESPACE)
    assert too_many.status == 413
    assert too_many.error == (
        "3 external storage references in one request; the limit is 2 (EXTERNAL_STORAGE_MAX_REFERENCES): "
        "split the batch"
    )
    assert s3_requests(gateway) == 0

    too_big = gateway.post("/decode", as_json(three[:2]), X_Namespace=NAMESPACE)
    assert too_big.status == 413
    assert "(EXTERNAL_STORAGE_MAX_BYTES)" in too_big.error
    assert gateway.post("/decode", as_json(three[:1]), X_Namespace=NAMESPACE).status == 200


@pytest.mark.parametrize("upstream_mode", ["in-process"])
def test_s3_unreachable_is_503_with_a_message(storage_gateway, kms_endpoint, bucket):
    from tests.support.fixtures import free_port

    gateway = storage_gateway(AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{free_port()}", S3_CONNECT_TIMEOUT=1)
    reference = {
        "metadata": {
            "encoding": b64("json/protobuf"),
            "messageType": b64("temporal.api.sdk.v1.ExternalStorageReference"),
        },
        "data": b64(
            json.dumps(
                {
                    "claimData": {
                        "bucket": bucket,
                        "key": "v0/d/sha256/" + "a" * 64,
                        "hash_algorithm": "sha256",
                        "hash_value": "a" * 64,
                    },
                    "driverName": "aws.s3driver",
                }
            )
        ),
    }

    reply = gateway.post("/download", {"payloads": [reference]}, X_Namespace=NAMESPACE, Origin=UI_ORIGIN)

    assert reply.status == 503
    assert_cors(reply)
    assert reply.error == (
        f"payload 0: S3 GetObject on s3://{bucket}/v0/d/sha256/{'a' * 64}: cannot reach S3 "
        "(EndpointConnectionError); retry later"
    )
    registry = gateway.registry
    assert registry is not None
    sample = {"operation": "GetObject", "outcome": "unavailable"}
    assert registry.get_sample_value("temporal_codec_s3_requests_total", sample) == 1


def test_metrics_count_s3_requests_and_bytes(storage_gateway, kms_endpoint, bucket):
    gateway = storage_gateway()
    [reference] = written(sdk_converter(gateway, kms_endpoint, bucket), [LARGE])
    size = int(as_json([reference])["payloads"][0]["externalPayloads"][0]["sizeBytes"])

    assert gateway.post("/download", as_json([reference]), X_Namespace=NAMESPACE).status == 200

    registry = gateway.registry
    assert registry is not None
    get = {"operation": "GetObject"}
    assert registry.get_sample_value("temporal_codec_s3_requests_total", {**get, "outcome": "success"}) == 1
    assert registry.get_sample_value("temporal_codec_s3_bytes_total", get) == size
    assert registry.get_sample_value("temporal_codec_s3_request_duration_seconds_count", get) == 1


@pytest.mark.parametrize("upstream_mode", ["in-process"])
def test_without_buckets_nothing_changes(start_gateway, kms_endpoint, bucket, make_bucket):
    gateway: Gateway = start_gateway()
    plain = {"payloads": [plain_payload('"x"')]}
    assert gateway.post("/download", plain).status == 404
    reference = base64.b64encode(b"temporal.api.sdk.v1.ExternalStorageReference").decode()
    passthrough = {"payloads": [{"metadata": {"encoding": b64("json/protobuf"), "messageType": reference}}]}
    reply = gateway.post("/decode", passthrough)
    assert reply.status == 200
    assert reply.json() == passthrough
