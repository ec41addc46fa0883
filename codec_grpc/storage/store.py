"""Bounded retrieval and offloading of stored payloads.

Everything an outsider can make this server spend is bounded: a reference in the
history is attacker-controlled input (temporalio 1.35 writes it unencrypted), so

* each reference is checked before any S3 call: its bucket must be one of
  EXTERNAL_STORAGE_BUCKETS, its key must not name another namespace than the
  request's (the stored payload's own namespace binding is checked when it is
  decoded);
* one request retrieves at most ``max_references`` objects and ``max_bytes`` bytes
  (reserved from the size S3 announces, before a byte is read);
* at most ``max_concurrency`` S3 requests run at once in the process, on threads of
  their own, never on the event loop; a request waits at most ``timeout`` seconds;
* a retrieved object's SHA-256 is checked against the reference before anything
  parses it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError

from codec_grpc.storage import references
from codec_grpc.storage.errors import (
    IntegrityError,
    StorageError,
    StorageForbiddenError,
    StorageLimitError,
    StorageReferenceError,
    StorageUnavailableError,
)
from codec_grpc.storage.references import S3Claim
from codec_grpc.storage.s3 import ObjectTooLarge
from codec_grpc.v1.codec_pb2 import Payload

log = logging.getLogger(__name__)
T = TypeVar("T")
# Why a reference was refused, for the metrics: bounded label values.
REFUSALS = ("bucket", "namespace", "malformed", "integrity", "too_large", "too_many")


class ObjectStore(Protocol):
    """Whole objects by claim (``codec_grpc.storage.s3.S3Objects``)."""

    def get(self, claim: S3Claim, max_bytes: int, reserve: Callable[[int], None]) -> bytes: ...

    def put(self, claim: S3Claim, data: bytes) -> None: ...


@dataclass(frozen=True)
class StorageLimits:
    buckets: frozenset[str]
    max_bytes: int = 16 * 1024 * 1024
    max_references: int = 100
    max_concurrency: int = 8
    offload_bucket: str | None = None
    offload_threshold: int | None = None

    def __post_init__(self) -> None:
        if not self.buckets:
            raise ValueError("buckets must name at least one bucket")
        for name in ("max_bytes", "max_references", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if (self.offload_bucket is None) != (self.offload_threshold is None):
            raise ValueError("offload_bucket and offload_threshold must be given together")
        if self.offload_bucket is not None and self.offload_bucket not in self.buckets:
            raise ValueError(f"offload_bucket {self.offload_bucket!r} must be one of buckets")


class PayloadStore:
    """Stored payloads for the gateway: references checked, then retrieved, or payloads offloaded."""

    def __init__(
        self, objects: ObjectStore, limits: StorageLimits, refused: Callable[[str], None] | None = None
    ) -> None:
        self._objects = objects
        self._limits = limits
        self._refused = refused
        self._executor = ThreadPoolExecutor(max_workers=limits.max_concurrency, thread_name_prefix="s3")

    @property
    def limits(self) -> StorageLimits:
        return self._limits

    def offloads(self, size: int) -> bool:
        """Whether /encode stores an encoded payload of ``size`` bytes instead of answering it inline."""
        threshold = self._limits.offload_threshold
        return threshold is not None and size >= threshold

    def claims(self, found: Sequence[tuple[int, bytes]], namespace: str) -> list[tuple[int, S3Claim]]:
        """The S3 claims of readable references ``(index, serialized reference)``, each checked against
        the limits, the bucket list and the request's namespace: no S3 call is made for a refused one."""
        self._check_count(len(found))
        checked = []
        for index, raw in found:
            try:
                claim = references.s3_claim(index, raw)
            except StorageReferenceError:
                self._refuse("malformed")
                raise
            if claim.bucket not in self._limits.buckets:
                self._refuse("bucket")
                raise StorageForbiddenError(
                    f"bucket {claim.bucket[:63]!r} is not one of EXTERNAL_STORAGE_BUCKETS: not retrieved", index
                )
            if claim.namespace is not None and claim.namespace != namespace:
                self._refuse("namespace")
                raise StorageForbiddenError(
                    f"the stored payload is in namespace {claim.namespace[:255]!r}, requested as {namespace!r}; "
                    "send the request with the payload's namespace (header 'x-namespace')",
                    index,
                )
            checked.append((index, claim))
        return checked

    async def retrieve(self, claims: Sequence[tuple[int, S3Claim]], timeout: float) -> list[bytes]:
        """The stored payloads of checked claims, in order, each verified against its SHA-256."""
        budget = _Budget(self._limits.max_bytes, self._refuse)
        fetches = [self._on_thread(self._fetch, index, claim, budget) for index, claim in claims]
        return await self._all(fetches, timeout)

    async def offload(self, payloads: Sequence[bytes], namespace: str, timeout: float) -> list[bytes]:
        """Store each (encoded) payload in the offload bucket; their reference payloads, in order."""
        bucket = self._limits.offload_bucket
        if bucket is None:
            raise ValueError("offloading is not configured")
        self._check_count(len(payloads))
        stores = [self._on_thread(self._store, bucket, namespace, raw) for raw in payloads]
        return await self._all(stores, timeout)

    def close(self) -> None:
        """Stop taking work; S3 calls in flight finish on their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, index: int, claim: S3Claim, budget: _Budget) -> bytes:
        limit = self._limits.max_bytes
        try:
            data = self._objects.get(claim, limit, lambda size: budget.reserve(index, size))
        except ObjectTooLarge as exc:
            self._refuse("too_large")
            raise StorageLimitError(
                f"the stored payload {claim} has {exc.size} bytes, more than EXTERNAL_STORAGE_MAX_BYTES ({limit})",
                index,
            ) from None
        except StorageError as exc:
            if exc.index is None:
                exc = type(exc)(exc.reason, index)
            raise exc from None
        if references.digest(data) != claim.sha256:
            self._refuse("integrity")
            raise IntegrityError(
                f"the stored payload {claim} does not have the SHA-256 its reference claims: "
                "it was altered, or the reference is not genuine",
                index,
            )
        try:
            Payload.FromString(data)  # only now: never parse what the hash did not vouch for
        except DecodeError:
            raise StorageReferenceError(f"the stored object {claim} is not a serialized Payload", index) from None
        return data

    def _store(self, bucket: str, namespace: str, raw: bytes) -> bytes:
        hex_digest = references.digest(raw)
        claim = S3Claim(bucket, references.object_key(namespace, hex_digest), hex_digest)
        self._objects.put(claim, raw)
        return references.reference_payload(claim, len(raw))

    async def _on_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _all(self, calls: Sequence[Any], timeout: float) -> list[Any]:
        tasks = [asyncio.ensure_future(call) for call in calls]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*tasks), timeout))
        except TimeoutError:
            raise StorageUnavailableError(
                f"S3 did not answer within {timeout:g}s (GATEWAY_UPSTREAM_TIMEOUT); retry later"
            ) from None
        finally:
            for task in tasks:  # the first failure ends the request: queued S3 calls are not made
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _check_count(self, count: int) -> None:
        if count > self._limits.max_references:
            self._refuse("too_many")
            raise StorageLimitError(
                f"{count} external storage references in one request; the limit is "
                f"{self._limits.max_references} (EXTERNAL_STORAGE_MAX_REFERENCES): split the batch"
            )

    def _refuse(self, reason: str) -> None:
        if self._refused is not None:
            self._refused(reason)


class _Budget:
    """The bytes one request may still retrieve; reserved by concurrent fetches under a lock."""

    def __init__(self, total: int, refuse: Callable[[str], None]) -> None:
        self._total = total
        self._left = total
        self._lock = threading.Lock()
        self._refuse = refuse

    def reserve(self, index: int, size: int) -> None:
        with self._lock:
            if size <= self._left:
                self._left -= size
                return
        self._refuse("too_large")
        raise StorageLimitError(
            f"the stored payloads of this request exceed {self._total} bytes (EXTERNAL_STORAGE_MAX_BYTES): "
            "fewer at a time",
            index,
        )
