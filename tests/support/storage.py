"""External Storage for tests: moto's S3 (the same moto server as the KMS: ``kms_endpoint``), buckets,
and an ``S3StorageDriverClient`` over boto3 for temporalio's own ``S3StorageDriver``.

The SDK's built-in client adapter needs aioboto3; this one runs boto3 on a thread,
which is all the driver asks of a client (put, exists, get).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from temporalio.contrib.aws.s3driver import S3StorageDriverClient

from tests.support.fixtures import REGION, TEST_CREDENTIALS


def boto_s3(endpoint_url: str) -> Any:
    session: Any = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=REGION, **TEST_CREDENTIALS)


class Boto3DriverClient(S3StorageDriverClient):
    """temporalio's S3 driver client contract, over a (thread-safe) boto3 client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def put_object(self, *, bucket: str, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._client.put_object, Bucket=bucket, Key=key, Body=data)

    async def object_exists(self, *, bucket: str, key: str) -> bool:
        try:
            await asyncio.to_thread(self._client.head_object, Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "404":
                return False
            raise
        return True

    async def get_object(self, *, bucket: str, key: str) -> bytes:
        answer = await asyncio.to_thread(self._client.get_object, Bucket=bucket, Key=key)
        return bytes(await asyncio.to_thread(answer["Body"].read))


@pytest.fixture
def s3_admin(kms_endpoint: str) -> Any:
    """A plain boto3 S3 client against moto (not counted by any metric)."""
    return boto_s3(kms_endpoint)


@pytest.fixture
def make_bucket(s3_admin: Any) -> Callable[[], str]:
    """Create a fresh bucket; returns its name."""

    def make() -> str:
        name = f"payloads-{uuid.uuid4().hex[:16]}"
        s3_admin.create_bucket(Bucket=name)
        return name

    return make


def objects_in(s3_admin: Any, bucket: str) -> dict[str, bytes]:
    """Every object of a bucket: key -> bytes."""
    listed = s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: s3_admin.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}
