"""External Storage built from the configuration: the S3 client, the store and its metrics.

Both gateways (in ``server.py``'s process and ``codec-gateway``) build theirs here,
so that the in-process and the sidecar gateway resolve references alike.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from codec_grpc.gateway.storage import StorageRoutes
from codec_grpc.runtime.config import Config
from codec_grpc.runtime.metrics import StorageMetrics
from codec_grpc.storage import PayloadStore, S3Objects, StorageLimits, s3_client
from codec_grpc.storage.s3 import OUTCOMES
from codec_grpc.storage.store import REFUSALS


def storage_limits(config: Config) -> StorageLimits:
    return StorageLimits(
        buckets=config.external_storage_buckets,
        max_bytes=config.external_storage_max_bytes,
        max_references=config.external_storage_max_references,
        max_concurrency=config.external_storage_max_concurrency,
        offload_bucket=config.external_storage_bucket,
        offload_threshold=config.external_storage_threshold,
    )


def external_storage(
    config: Config, registry: CollectorRegistry | None = None, **client_overrides: Any
) -> StorageRoutes | None:
    """The gateway's storage routes, or None when EXTERNAL_STORAGE_BUCKETS is unset. ``client_overrides``
    are boto3 ``client()`` arguments that win over the settings (tests give credentials)."""
    if not config.external_storage_buckets:
        return None
    client = s3_client(
        region=config.aws_region,
        endpoint_url=config.aws_endpoint_url_s3,
        connect_timeout=config.s3_connect_timeout,
        read_timeout=config.s3_read_timeout,
        max_attempts=config.s3_max_attempts,
        max_pool_connections=config.external_storage_max_concurrency,
        **client_overrides,
    )
    metrics = StorageMetrics(registry, OUTCOMES, REFUSALS) if registry is not None else None
    objects = S3Objects(client, None if metrics is None else metrics.observe)
    store = PayloadStore(objects, storage_limits(config), None if metrics is None else metrics.refused)
    return StorageRoutes(store)
