"""Composition root: builds the service's objects from a :class:`~codec_grpc.runtime.config.Config`.

Layers, each built from the one below: boto3 KMS client → KMS key provider →
key manager (caches) → envelope codec → service → gRPC servicer and server; and
the in-process upstream through which ``server.py``'s HTTP gateway calls the
same service.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from codec_grpc.access import AccessPolicy, TokenVerifier
from codec_grpc.core import DataKey, EnvelopeCodec
from codec_grpc.gateway import InProcessUpstream
from codec_grpc.keys import KeyManager, KeyPolicy
from codec_grpc.kms import KmsKeyProvider
from codec_grpc.kms.client import kms_client as boto_kms_client
from codec_grpc.rpc import CallObserver, CodecServicer, ObservedHealthServicer, ServerOptions, create_server
from codec_grpc.rpc.server import serving_status
from codec_grpc.runtime.access import access_policy, grpc_authenticator, token_verifier
from codec_grpc.runtime.config import Config
from codec_grpc.runtime.metrics import GrpcMetrics, KeyCacheCollector, KmsMetrics
from codec_grpc.runtime.tls import grpc_server_credentials
from codec_grpc.service import CodecService, ServiceLimits


def kms_client(config: Config, **overrides: Any) -> Any:
    """The boto3 KMS client the settings describe; ``overrides`` are ``client()`` arguments that win
    over the settings (the development KMS gives its own endpoint, region and credentials)."""
    return boto_kms_client(
        region=overrides.pop("region_name", config.aws_region),
        endpoint_url=overrides.pop("endpoint_url", config.aws_endpoint_url_kms),
        connect_timeout=config.kms_connect_timeout,
        read_timeout=config.kms_read_timeout,
        retry_mode=config.kms_retry_mode,
        max_attempts=config.kms_max_attempts,
        **overrides,
    )


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
    keys: KeyManager[DataKey]
    codec: EnvelopeCodec
    service: CodecService
    health: health.HealthServicer
    server: grpc.Server
    port: int
    registry: CollectorRegistry
    observer: CallObserver
    verifier: TokenVerifier | None  # None: no bearer tokens checked
    access: AccessPolicy
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
    keys = KeyManager(provider, key_policy(config), DataKey)
    KeyCacheCollector(keys.stats, registry)
    codec = EnvelopeCodec(keys, bind_namespace=config.namespace_binding, accept_unbound=config.accept_unbound_payloads)
    limits = ServiceLimits(default_namespace=config.default_namespace, max_payloads=config.max_payloads_per_request)
    access = access_policy(config)
    verifier = token_verifier(config)
    service = CodecService(codec, keys, provider.stats, limits, access)
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
    observer = CallObserver(grpc_metrics)
    health_servicer = ObservedHealthServicer(observer)
    servicer = CodecServicer(service, grpc_authenticator(config, verifier))
    server, port = create_server(servicer, options, health_servicer, observer=observer)
    return CodecApp(
        config,
        provider,
        keys,
        codec,
        service,
        health_servicer,
        server,
        port,
        registry,
        observer,
        verifier,
        access,
        grpc_metrics,
    )


def in_process_upstream(app: CodecApp, executor: ThreadPoolExecutor | None = None) -> InProcessUpstream:
    """The gateway's upstream for ``app``'s own service. Calls that wait for KMS run on ``executor``:
    by default as many threads as the gRPC server's pool, started when first needed."""
    config = app.config
    if executor is None:
        executor = ThreadPoolExecutor(max_workers=config.grpc_max_workers, thread_name_prefix="gateway-kms")
    metrics = app.grpc_metrics
    return InProcessUpstream(
        app.service,
        executor,
        functools.partial(serving_status, app.health),
        max_message_bytes=config.grpc_max_message_bytes,
        on_processed=None if metrics is None else metrics.payloads_processed,
    )
