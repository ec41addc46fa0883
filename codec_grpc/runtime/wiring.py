"""Composition root: builds the service's objects from a :class:`~codec_grpc.runtime.config.Config`.

Layers, each built from the one below: boto3 KMS client (one per Region with
KMS_REGIONS) → KMS key provider → key manager (caches) → envelope codec → service →
gRPC servicer and server; and the in-process upstream through which ``server.py``'s
HTTP gateway calls the same service.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from codec_grpc.access import AccessPolicy, TokenVerifier
from codec_grpc.core import CompressionPolicy, DataKey, EnvelopeCodec
from codec_grpc.core.namespaces import NamespaceScope
from codec_grpc.gateway import InProcessUpstream
from codec_grpc.keys import KeyManager, KeyPolicy
from codec_grpc.kms import KmsKeyProvider, KmsLimiter, KmsLimits, RegionalKmsKeyProvider
from codec_grpc.kms.client import kms_client as boto_kms_client
from codec_grpc.rpc import (
    CallObserver,
    CodecServicer,
    ObservedHealthServicer,
    ServerOptions,
    call_executor,
    create_server,
)
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


def kms_clients(config: Config, **overrides: Any) -> dict[str, Any]:
    """With KMS_REGIONS: a boto3 KMS client per Region, in their order. Each Region's endpoint is its
    KMS_REGION_ENDPOINTS entry, else AWS_ENDPOINT_URL_KMS, else AWS's; an ``endpoint_url`` override
    (the development KMS) serves every Region. Other ``overrides`` as for :func:`kms_client`."""
    overrides.pop("region_name", None)
    endpoint = overrides.pop("endpoint_url", None)
    return {
        region: kms_client(
            config,
            region_name=region,
            endpoint_url=endpoint or config.kms_region_endpoints.get(region) or config.aws_endpoint_url_kms,
            **overrides,
        )
        for region in config.kms_regions
    }


def kms_provider(config: Config, client: Any, metrics: KmsMetrics) -> KmsKeyProvider | RegionalKmsKeyProvider:
    """The KMS key provider around ``client`` (with KMS_REGIONS: each Region's client, :func:`kms_clients`),
    its calls counted in ``metrics``; every Region shares the process's spend limits."""
    limits = KmsLimits(
        decrypt_rate=config.kms_decrypt_rate,
        decrypt_burst=config.kms_decrypt_burst,
        max_concurrent=config.kms_max_concurrent_calls,
    )
    limiter = KmsLimiter(limits, observer=metrics.limited)

    def provider(region_client: Any, region: str, label: str) -> KmsKeyProvider:
        return KmsKeyProvider(
            region_client,
            observer=metrics.observer(label),
            fail_fast=config.kms_fail_fast_seconds,
            short_circuit_observer=metrics.short_circuit_observer(label),
            region=region,
            limiter=limiter,
        )

    if not config.kms_regions:
        return provider(client, "", client_region(client))
    if not isinstance(client, Mapping) or tuple(client) != config.kms_regions:
        raise ValueError(f"KMS_REGIONS needs one KMS client per Region, in its order: {config.kms_regions}")
    return RegionalKmsKeyProvider({region: provider(client[region], region, region) for region in config.kms_regions})


def client_region(client: Any) -> str:
    """The Region a boto3 client was made for ('' for a stand-in without one)."""
    return str(getattr(getattr(client, "meta", None), "region_name", "") or "")


def key_policy(config: Config) -> KeyPolicy:
    return KeyPolicy(
        default_alias=config.kms_key_alias,
        namespace_aliases=config.namespace_key_aliases,
        rotation_interval=config.data_key_rotation_interval,
        max_encryptions=config.data_key_max_encryptions,
        cache_ttl=config.kms_cache_ttl,
        cache_capacity=config.kms_cache_max_keys,
        outage_grace=config.kms_outage_grace,
        decrypt_key_patterns=config.decrypt_key_arns,
        refusal_ttl=config.kms_refusal_ttl,
        max_slots=config.current_keys_max,
    )


def compression_policy(config: Config) -> CompressionPolicy:
    """What Encode compresses (COMPRESSION) and the bounds of what Decode decompresses."""
    return CompressionPolicy(
        algorithm=None if config.compression == "off" else config.compression,
        level=config.compression_level,
        min_bytes=config.compression_min_bytes,
        max_ratio=config.compression_max_ratio,
        max_decompressed_bytes=config.decompressed_max_bytes or config.grpc_max_message_bytes,
    )


def namespace_scope(config: Config) -> NamespaceScope:
    """The namespaces served: ALLOWED_NAMESPACES, and the configured ones (which metrics label by name)."""
    return NamespaceScope(config.allowed_namespaces, (config.default_namespace, *config.namespace_key_aliases))


@dataclass
class CodecApp:
    """Everything a running codec server holds."""

    config: Config
    provider: KmsKeyProvider | RegionalKmsKeyProvider
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


@dataclass
class ServiceParts:
    """The service and what it is built on: the codec server without its transports."""

    provider: KmsKeyProvider | RegionalKmsKeyProvider
    keys: KeyManager[DataKey]
    codec: EnvelopeCodec
    service: CodecService
    access: AccessPolicy


def build_service(
    config: Config,
    client: Any,
    registry: CollectorRegistry,
    waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> ServiceParts:
    """The service over an injected boto3 KMS client (with KMS_REGIONS, a mapping of each Region to
    its client: :func:`kms_clients`), its KMS and key-cache metrics in ``registry``. ``waiting`` is
    entered around every wait for KMS (the gRPC pool's ``stepping_aside``). Also what a worker that
    embeds the codec builds (bench/workflow_worker.py)."""
    # What the configuration alone can refuse (the policy file), before anything asks KMS.
    access = access_policy(config)
    regions = config.kms_regions or (client_region(client),)
    kms_metrics = KmsMetrics(registry, regions, fallbacks=bool(config.kms_regions))
    provider = kms_provider(config, client, kms_metrics)
    keys = KeyManager(provider, key_policy(config), DataKey, on_fallback=kms_metrics.fallback, waiting=waiting)
    keys.resolve_master_keys()  # the allowlist; a failure is logged and retried when a payload needs it
    scope = namespace_scope(config)
    KeyCacheCollector(keys.stats, registry, scope.configured.__contains__)
    codec = EnvelopeCodec(
        keys,
        bind_namespace=config.namespace_binding,
        accept_unbound=config.accept_unbound_payloads,
        compression=compression_policy(config),
    )
    limits = ServiceLimits(
        default_namespace=config.default_namespace,
        max_payloads=config.max_payloads_per_request,
        max_kms_decrypts=config.max_kms_decrypts_per_request,
        namespaces=scope,
    )
    return ServiceParts(provider, keys, codec, CodecService(codec, keys, provider.stats, limits, access), access)


def server_options(config: Config) -> ServerOptions:
    return ServerOptions(
        host=config.grpc_host,
        port=config.grpc_port,
        max_message_bytes=config.grpc_max_message_bytes,
        max_workers=config.grpc_max_workers,
        running_calls=config.grpc_running_calls,
        credentials=grpc_server_credentials(config),
        reuse_port=config.workers > 1,
        max_concurrent_rpcs=config.grpc_max_concurrent_rpcs,
        max_metadata_bytes=config.grpc_max_metadata_bytes,
        reflection=config.grpc_reflection,
    )


def build_app(config: Config, client: Any, registry: CollectorRegistry | None = None) -> CodecApp:
    """Wire the layers together around an injected boto3 KMS client (see :func:`build_service`); the
    server is not started.

    Metrics go to ``registry`` (a fresh one when None); serving them is the caller's choice.
    """
    registry = CollectorRegistry() if registry is None else registry
    verifier = token_verifier(config)
    options = server_options(config)
    # gRPC calls that wait for KMS step aside in the pool, so calls that cached keys answer keep running.
    executor = call_executor(options)
    parts = build_service(config, client, registry, waiting=executor.stepping_aside)
    # METRICS_ENABLED=false: calls are not counted at all (nothing could read the counts).
    grpc_metrics = GrpcMetrics(registry) if config.metrics_enabled else None
    observer = CallObserver(grpc_metrics)
    health_servicer = ObservedHealthServicer(observer)
    servicer = CodecServicer(parts.service, grpc_authenticator(config, verifier))
    server, port = create_server(servicer, options, health_servicer, observer=observer, executor=executor)
    return CodecApp(
        config,
        parts.provider,
        parts.keys,
        parts.codec,
        parts.service,
        health_servicer,
        server,
        port,
        registry,
        observer,
        verifier,
        parts.access,
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
