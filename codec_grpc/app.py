"""Composition root: builds the service's objects from a :class:`Config`.

Layers, each built from the one below: boto3 KMS client → KMS key provider →
key manager (caches) → envelope codec → gRPC servicer and server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import boto3
import botocore.config
import grpc
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from codec_grpc.codec import EnvelopeCodec
from codec_grpc.config import Config
from codec_grpc.interceptor import ObservedHealthServicer, ObservingInterceptor
from codec_grpc.keys import KeyManager, KeyPolicy
from codec_grpc.kms import KmsKeyProvider
from codec_grpc.metrics import GrpcMetrics, KeyCacheCollector, KmsMetrics
from codec_grpc.service import CodecServicer, ServerOptions, ServiceLimits, create_server
from codec_grpc.tls import grpc_server_credentials


def kms_client(config: Config, **overrides: Any) -> Any:
    """The boto3 KMS client: credentials from boto3's default chain, retries from botocore."""
    retry_config = botocore.config.Config(
        connect_timeout=config.kms_connect_timeout,
        read_timeout=config.kms_read_timeout,
        retries=cast(Any, {"mode": config.kms_retry_mode, "total_max_attempts": config.kms_max_attempts}),
    )
    params: dict[str, Any] = {"config": retry_config}
    if config.aws_region:
        params["region_name"] = config.aws_region
    if config.aws_endpoint_url_kms:
        params["endpoint_url"] = config.aws_endpoint_url_kms
    params.update(overrides)
    return boto3.session.Session().client("kms", **params)


def key_policy(config: Config) -> KeyPolicy:
    return KeyPolicy(
        default_alias=config.kms_key_alias,
        namespace_aliases=config.namespace_key_aliases,
        rotation_interval=config.data_key_rotation_interval,
        max_encryptions=config.data_key_max_encryptions,
        cache_ttl=config.kms_cache_ttl,
        cache_capacity=config.kms_cache_max_keys,
        outage_grace=config.kms_outage_grace,
    )


@dataclass
class CodecApp:
    """Everything a running codec server holds."""

    config: Config
    provider: KmsKeyProvider
    keys: KeyManager
    codec: EnvelopeCodec
    servicer: CodecServicer
    health: health.HealthServicer
    server: grpc.Server
    port: int
    registry: CollectorRegistry
    interceptor: ObservingInterceptor
    # Also counts the payloads of server.py's in-process gateway; None with METRICS_ENABLED=false.
    grpc_metrics: GrpcMetrics | None


def build_app(config: Config, client: Any, registry: CollectorRegistry | None = None) -> CodecApp:
    """Wire the layers together around an injected boto3 KMS client; the server is not started.

    Metrics go to ``registry`` (a fresh one when None); serving them is the caller's choice.
    """
    registry = CollectorRegistry() if registry is None else registry
    kms_metrics = KmsMetrics(registry)
    provider = KmsKeyProvider(
        client,
        observer=kms_metrics.observe,
        fail_fast=config.kms_fail_fast_seconds,
        short_circuit_observer=kms_metrics.short_circuited,
    )
    keys = KeyManager(provider, key_policy(config))
    KeyCacheCollector(keys.stats, registry)
    codec = EnvelopeCodec(keys, bind_namespace=config.namespace_binding)
    limits = ServiceLimits(default_namespace=config.default_namespace, max_payloads=config.max_payloads_per_request)
    servicer = CodecServicer(codec, keys, provider.stats, limits)
    options = ServerOptions(
        host=config.grpc_host,
        port=config.grpc_port,
        max_message_bytes=config.grpc_max_message_bytes,
        max_workers=config.grpc_max_workers,
        credentials=grpc_server_credentials(config),
        reuse_port=config.workers > 1,
    )
    # METRICS_ENABLED=false: calls are not counted at all (nothing could read the counts).
    grpc_metrics = GrpcMetrics(registry) if config.metrics_enabled else None
    interceptor = ObservingInterceptor(grpc_metrics, config.default_namespace)
    health_servicer = ObservedHealthServicer(interceptor)
    server, port = create_server(servicer, options, health_servicer, observer=interceptor)
    return CodecApp(
        config, provider, keys, codec, servicer, health_servicer, server, port, registry, interceptor, grpc_metrics
    )
