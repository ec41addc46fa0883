"""The storage layer without sockets: reference shapes against temporalio's own, and the store's bounds
with a fake object store (what it asks S3 for, and what it never asks)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest
from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference
from temporalio.converter import ExternalStorage

from codec_grpc.storage import references
from codec_grpc.storage.errors import (
    IntegrityError,
    StorageForbiddenError,
    StorageLimitError,
    StorageReferenceError,
    StorageUnavailableError,
)
from codec_grpc.storage.references import Kind, S3Claim
from codec_grpc.storage.s3 import ObjectTooLarge
from codec_grpc.storage.store import PayloadStore, StorageLimits
from codec_grpc.v1.codec_pb2 import Payload

BUCKET = "payloads"
STORED = Payload(metadata={"encoding": b"binary/encrypted"}, data=b"ciphertext").SerializeToString()
DIGEST = references.digest(STORED)


def sdk_reference(claim: dict[str, str], size: int = 1234) -> bytes:
    """A reference exactly as temporalio 1.35's ExternalStorage writes it."""
    reference = ExternalStorage._claim_converter.to_payload(
        ExternalStorageReference(driver_name="aws.s3driver", claim_data=claim)
    )
    assert reference is not None
    reference.external_payloads.add().size_bytes = size
    return bytes(reference.SerializeToString(deterministic=True))


def claim_data(key: str = f"v0/ns/orders/d/sha256/{DIGEST}", digest: str = DIGEST) -> dict[str, str]:
    return {"bucket": BUCKET, "key": key, "hash_algorithm": "sha256", "hash_value": digest}


def test_our_references_are_byte_for_byte_the_sdks():
    claim = S3Claim(BUCKET, references.object_key("orders", DIGEST), DIGEST)
    ours = Payload.FromString(references.reference_payload(claim, 1234))
    assert ours.SerializeToString(deterministic=True) == sdk_reference(claim_data())


def test_kinds():
    reference = sdk_reference(claim_data())
    marked = Payload(metadata={"encoding": b"binary/encrypted", references.MARKER_KEY: b"true"}, data=b"x")
    legacy = Payload(metadata={"encoding": b"json/external-storage-reference"}, data=b"{}")
    assert references.kind(STORED) is Kind.ORDINARY
    assert references.kind(reference) is Kind.REFERENCE
    assert references.kind(marked.SerializeToString()) is Kind.MARKED
    assert references.kind(legacy.SerializeToString()) is Kind.REFERENCE
    # A decoded marked reference keeps its inner marker and is readable.
    inner = Payload.FromString(reference)
    inner.metadata[references.MARKER_KEY] = b"true"
    assert references.kind(inner.SerializeToString()) is Kind.REFERENCE
    # The signs of a reference in bytes that are no payload: the codec words that error.
    assert references.kind(b"\xff" + references.MESSAGE_TYPE) is Kind.ORDINARY


def test_a_marked_reference_is_stripped_for_its_codec_and_keeps_its_size():
    marked = Payload(metadata={"encoding": b"binary/encrypted", references.MARKER_KEY: b"true"}, data=b"x")
    marked.external_payloads.add().size_bytes = 99
    stripped = Payload.FromString(references.unmarked(marked.SerializeToString()))
    assert dict(stripped.metadata) == {"encoding": b"binary/encrypted"}
    assert not stripped.external_payloads
    decoded = Payload(metadata={"encoding": b"json/protobuf"}, data=b"{}").SerializeToString()
    sized = Payload.FromString(references.with_size_of(decoded, marked.SerializeToString()))
    assert [d.size_bytes for d in sized.external_payloads] == [99]


def test_the_legacy_form_is_read():
    data = {"driver_name": "aws.s3driver", "driver_claim": {"claim_data": claim_data()}}
    legacy = Payload(metadata={"encoding": b"json/external-storage-reference"}, data=json.dumps(data).encode())
    assert references.s3_claim(0, legacy.SerializeToString()) == S3Claim(BUCKET, claim_data()["key"], DIGEST)


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        ("v0/ns/orders/wt/T/wi/w/ri/null/d/sha256/x", "orders"),
        ("v0/ns/a%2Db/d/sha256/x", "a-b"),
        ("v0/ns/null/wt/T/wi/w/ri/null/d/sha256/x", None),
        ("v0/d/sha256/x", None),
        ("elsewhere/ns/orders/x", None),
    ],
)
def test_the_namespace_of_a_key(key: str, namespace: str | None):
    assert S3Claim(BUCKET, key, DIGEST).namespace == namespace


def test_a_key_whose_namespace_is_not_utf8_is_refused():
    with pytest.raises(StorageReferenceError, match="payload 3: the key's namespace segment is not"):
        references.s3_claim(3, sdk_reference(claim_data(key="v0/ns/%FF/d/sha256/x")))


def test_object_keys_are_percent_encoded_as_the_sdk_does():
    assert references.object_key("a b/c", DIGEST) == f"v0/ns/a%20b%2Fc/d/sha256/{DIGEST}"


class FakeObjects:
    """Objects in memory; counts and times every get; can hold gets until released."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def get(self, claim: S3Claim, max_bytes: int, reserve: Callable[[int], None]) -> bytes:
        with self._lock:
            self.gets.append(claim.key)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.release.wait(10)
            data = self.objects[claim.key]
            if len(data) > max_bytes:
                raise ObjectTooLarge(len(data))
            reserve(len(data))
            return data
        finally:
            with self._lock:
                self.in_flight -= 1

    def put(self, claim: S3Claim, data: bytes) -> None:
        self.objects[claim.key] = data


def store(objects: FakeObjects, **limits: object) -> tuple[PayloadStore, list[str]]:
    refusals: list[str] = []
    settings = {"buckets": frozenset({BUCKET}), **limits}
    return PayloadStore(objects, StorageLimits(**settings), refusals.append), refusals  # type: ignore[arg-type]


def test_references_are_checked_before_any_s3_request():
    objects = FakeObjects({})
    payloads, refusals = store(objects)
    other_bucket = sdk_reference({**claim_data(), "bucket": "elsewhere"})
    other_namespace = sdk_reference(claim_data(key=f"v0/ns/billing/d/sha256/{DIGEST}"))

    with pytest.raises(StorageForbiddenError, match="payload 1: bucket 'elsewhere' is not one of"):
        payloads.claims([(0, sdk_reference(claim_data())), (1, other_bucket)], "orders")
    with pytest.raises(StorageForbiddenError, match="payload 0: the stored payload is in namespace 'billing'"):
        payloads.claims([(0, other_namespace)], "orders")
    assert objects.gets == []
    assert refusals == ["bucket", "namespace"]


def test_retrieval_checks_the_sha256_before_parsing():
    key = claim_data()["key"]
    objects = FakeObjects({key: b"\xff not a payload"})
    payloads, refusals = store(objects)
    claims = payloads.claims([(2, sdk_reference(claim_data()))], "orders")

    with pytest.raises(
        IntegrityError, match="payload 2: the stored payload s3://payloads/.* does not have the SHA-256"
    ):
        asyncio.run(payloads.retrieve(claims, 5))
    assert refusals == ["integrity"]

    objects.objects[key] = STORED
    assert asyncio.run(payloads.retrieve(claims, 5)) == [STORED]


def test_counts_and_bytes_per_request_are_bounded():
    keys = [f"v0/ns/orders/d/sha256/{n}" for n in range(3)]
    objects = FakeObjects(dict.fromkeys(keys, STORED))
    payloads, refusals = store(objects, max_references=2, max_bytes=len(STORED) * 2 - 1)
    found = [(n, sdk_reference(claim_data(key=key))) for n, key in enumerate(keys)]

    with pytest.raises(StorageLimitError, match=r"^3 external storage references in one request; the limit is 2"):
        payloads.claims(found, "orders")
    claims = payloads.claims(found[:2], "orders")
    with pytest.raises(StorageLimitError, match=rf"exceed {len(STORED) * 2 - 1} bytes \(EXTERNAL_STORAGE_MAX_BYTES\)"):
        asyncio.run(payloads.retrieve(claims, 5))
    assert refusals == ["too_many", "too_large"]


def test_at_most_max_concurrency_s3_requests_at_once():
    keys = [f"v0/ns/orders/d/sha256/{n}" for n in range(12)]
    objects = FakeObjects(dict.fromkeys(keys, STORED))
    payloads, _ = store(objects, max_concurrency=3, max_references=20, max_bytes=10_000)
    claims = [(n, S3Claim(BUCKET, key, DIGEST)) for n, key in enumerate(keys)]
    objects.release.clear()
    threading.Timer(0.3, objects.release.set).start()

    assert asyncio.run(payloads.retrieve(claims, 10)) == [STORED] * 12
    assert objects.most_in_flight == 3
    payloads.close()


def test_a_slow_s3_is_503_after_the_timeout():
    objects = FakeObjects({"k": STORED})
    payloads, _ = store(objects)
    objects.release.clear()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"S3 did not answer within 0.2s \(GATEWAY_UPSTREAM_TIMEOUT\)"):
        asyncio.run(payloads.retrieve([(0, S3Claim(BUCKET, "k", DIGEST))], 0.2))
    assert time.monotonic() - started < 5
    objects.release.set()
    payloads.close()


def test_offloading_stores_ciphertext_under_the_namespace():
    objects = FakeObjects({})
    payloads, _ = store(objects, offload_bucket=BUCKET, offload_threshold=10)
    assert payloads.offloads(10) and not payloads.offloads(9)

    [reference] = asyncio.run(payloads.offload([STORED], "orders", 5))

    claim = references.s3_claim(0, reference)
    assert claim == S3Claim(BUCKET, f"v0/ns/orders/d/sha256/{DIGEST}", DIGEST)
    assert objects.objects == {claim.key: STORED}
    assert [d.size_bytes for d in Payload.FromString(reference).external_payloads] == [len(STORED)]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"buckets": frozenset()}, "buckets must name at least one bucket"),
        ({"max_bytes": 0}, "max_bytes must be at least 1, got 0"),
        ({"offload_bucket": BUCKET}, "offload_bucket and offload_threshold must be given together"),
        ({"offload_bucket": "other", "offload_threshold": 1}, "offload_bucket 'other' must be one of buckets"),
    ],
)
def test_limits_are_validated(limits: dict[str, object], message: str):
    settings = {"buckets": frozenset({BUCKET}), **limits}
    with pytest.raises(ValueError, match=f"^{message}$"):
        StorageLimits(**settings)  # type: ignore[arg-type]
