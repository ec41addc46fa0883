"""S3 objects over boto3: the storage layer's only AWS calls (``GetObject``, ``PutObject``).

The boto3 client is built once at start-up (:func:`s3_client`) and injected;
credentials come from boto3's default chain (environment, profile, IRSA, instance
role). botocore errors become :mod:`codec_grpc.storage.errors` here, worded for a
person and naming only the bucket and key; every request is reported to an
``observer`` (operation, outcome, seconds, bytes) for the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import boto3
import botocore.config
import botocore.exceptions

from codec_grpc.storage.errors import StorageError, StorageUnavailableError, StoredPayloadNotFoundError
from codec_grpc.storage.references import S3Claim

# (operation, outcome, seconds, bytes): outcome is one of OUTCOMES.
Observer = Callable[[str, str, float, int], None]
OUTCOMES = ("success", "not_found", "access_denied", "unavailable", "too_large", "error")
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId"})


class ObjectTooLarge(Exception):
    """The object is larger than the caller may read: ``size`` is what S3 said it holds."""

    def __init__(self, size: int) -> None:
        super().__init__(f"object of {size} bytes")
        self.size = size


def s3_client(
    *,
    region: str | None,
    endpoint_url: str | None,
    connect_timeout: float,
    read_timeout: float,
    max_attempts: int,
    max_pool_connections: int,
    **overrides: Any,
) -> Any:
    """A boto3 S3 client; ``overrides`` are further ``client()`` arguments (they win).

    ``endpoint_url`` is AWS_ENDPOINT_URL_S3 as the configuration read it (boto3 would
    read the same variable itself; passing it keeps the setting in one place).
    """
    config = botocore.config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries=cast(Any, {"mode": "standard", "total_max_attempts": max_attempts}),
        max_pool_connections=max_pool_connections,
    )
    params: dict[str, Any] = {"config": config}
    if region:
        params["region_name"] = region
    if endpoint_url:
        params["endpoint_url"] = endpoint_url
    params.update(overrides)
    return boto3.session.Session().client("s3", **params)


class S3Objects:
    """Reads and writes whole objects through one boto3 S3 client. Thread-safe (boto3 clients are)."""

    def __init__(self, client: Any, observer: Observer | None = None) -> None:
        self._client = client
        self._observer = observer

    def get(self, claim: S3Claim, max_bytes: int, reserve: Callable[[int], None]) -> bytes:
        """The object's bytes. ``reserve(size)`` is called with the size S3 announces before any byte
        is read, and may refuse by raising; an object over ``max_bytes`` raises :class:`ObjectTooLarge`."""
        started = time.monotonic()
        outcome, size = "error", 0
        try:
            try:
                answer = self._client.get_object(Bucket=claim.bucket, Key=claim.key)
            except botocore.exceptions.ClientError as exc:
                outcome, error = _client_error("GetObject", claim, exc)
                raise error from None
            except botocore.exceptions.BotoCoreError as exc:
                outcome = "unavailable"
                raise _unreachable("GetObject", claim, exc) from None
            body = answer["Body"]
            try:
                announced = answer.get("ContentLength")
                outcome = "too_large"  # a limit refuses it (ObjectTooLarge, or ``reserve`` raising)
                if announced is not None:
                    if int(announced) > max_bytes:
                        raise ObjectTooLarge(int(announced))
                    reserve(int(announced))
                outcome = "unavailable"
                data = self._read(body, announced, max_bytes, claim)
                outcome = "too_large"
                if len(data) > max_bytes:
                    raise ObjectTooLarge(len(data))
                if announced is None:
                    reserve(len(data))
            finally:
                body.close()
            outcome, size = "success", len(data)
            return bytes(data)
        finally:
            self._observe("GetObject", outcome, started, size)

    def put(self, claim: S3Claim, data: bytes) -> None:
        started = time.monotonic()
        outcome = "error"
        try:
            try:
                self._client.put_object(Bucket=claim.bucket, Key=claim.key, Body=data)
            except botocore.exceptions.ClientError as exc:
                outcome, error = _client_error("PutObject", claim, exc)
                raise error from None
            except botocore.exceptions.BotoCoreError as exc:
                outcome = "unavailable"
                raise _unreachable("PutObject", claim, exc) from None
            outcome = "success"
        finally:
            self._observe("PutObject", outcome, started, len(data) if outcome == "success" else 0)

    def _read(self, body: Any, announced: Any, max_bytes: int, claim: S3Claim) -> bytes:
        try:
            data = body.read(max_bytes + 1)  # never more than the limit, whatever ContentLength said
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise _unreachable("GetObject", claim, exc) from None
        if announced is not None and len(data) != int(announced) and len(data) <= max_bytes:
            raise StorageUnavailableError(f"S3 GetObject on {claim}: the answer was cut short; retry later")
        return cast(bytes, data)

    def _observe(self, operation: str, outcome: str, started: float, size: int) -> None:
        if self._observer is not None:
            self._observer(operation, outcome, time.monotonic() - started, size)


def _client_error(operation: str, claim: S3Claim, exc: botocore.exceptions.ClientError) -> tuple[str, StorageError]:
    """The outcome and error for an answer S3 gave; only S3's error code is quoted, never its message."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    if code in _NOT_FOUND:
        return "not_found", StoredPayloadNotFoundError(
            f"the stored payload {claim} does not exist (deleted, or expired by the bucket's lifecycle rule?)"
        )
    if code in _DENIED:
        return "access_denied", StorageUnavailableError(
            f"S3 denied {operation} on {claim} ({code}): the codec server's role needs "
            f"s3:{operation} on the bucket (and s3:ListBucket, without which a missing object is denied too)"
        )
    if code == "NoSuchBucket":
        return "error", StorageUnavailableError(f"S3 {operation} on {claim}: the bucket does not exist ({code})")
    return "unavailable", StorageUnavailableError(f"S3 {operation} on {claim} failed ({code[:60]}); retry later")


def _unreachable(operation: str, claim: S3Claim, exc: Exception) -> StorageUnavailableError:
    return StorageUnavailableError(f"S3 {operation} on {claim}: cannot reach S3 ({type(exc).__name__}); retry later")
