"""Prometheus metrics: all of the service's metric definitions, each in an injected registry.

Nothing registers into prometheus_client's global registry: the server builds
one registry (:func:`new_registry`), tests build fresh ones. The layers below
feed these through hooks and small interfaces, and import no Prometheus code:

* gRPC calls (:class:`GrpcMetrics`, the ``rpc.observe.CallMetrics`` of the call
  observer), named as in go-grpc-prometheus so existing dashboards work:
  ``grpc_server_started_total``, ``grpc_server_handled_total``,
  ``grpc_server_handling_seconds``; plus payloads and bytes per method.
* KMS requests (:class:`KmsMetrics`, fed by the KMS provider's ``observer`` hook),
  and the calls its fail-fast pause refused without a request
  (``short_circuit_observer`` hook), by Region; with KMS_REGIONS, the calls another
  Region served (the key manager's ``on_fallback`` hook).
* Data-key caches and current keys (:data:`CACHE_FAMILIES`, exposed by
  :class:`KeyCacheCollector`), read from the key manager's ``stats()`` at scrape
  time: no state is copied or can go stale.
* HTTP gateway requests (:class:`GatewayMetrics`, the gateway's ``RequestMetrics``).
* External Storage (:class:`StorageMetrics`, fed by the storage layer's hooks): S3
  requests, bytes, latency, refused references.
"""

from __future__ import annotations

import hmac
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from codec_grpc.errors import ConfigError
from codec_grpc.gateway.app import ROUTES
from codec_grpc.keys import KeyStats

PREFIX = "temporal_codec"
# Codec calls take about a millisecond when keys are cached and a KMS round trip (10-300 ms)
# when not; the buckets resolve both, and the multi-second tail of KMS retries.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

__all__ = [
    "CACHE_FAMILIES",
    "GatewayMetrics",
    "GrpcMetrics",
    "KeyCacheCollector",
    "KmsMetrics",
    "StorageMetrics",
    "new_registry",
    "start_metrics_server",
]


def new_registry() -> CollectorRegistry:
    """A registry holding the process and platform collectors (memory, CPU, open fds, Python version)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, bearer_token: str | None = None
) -> tuple[WSGIServer, int]:
    """Serve ``registry`` at ``/metrics`` from a daemon thread; returns the server and its bound port.

    ``/healthz`` answers 200 ``ok`` to anyone while the process runs: a liveness probe for a pod
    whose Encode/Decode ports listen on loopback only (the Helm chart without authentication).
    With ``bearer_token``, a scrape must send ``Authorization: Bearer <bearer_token>`` (Prometheus:
    ``authorization.credentials_file``); others get 401. Call ``server.shutdown()`` to stop it.
    """
    app = make_wsgi_app(registry)
    if bearer_token is not None:
        app = _bearer_only(app, bearer_token)
    app = _with_liveness(app)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host.strip("[]"), port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server, int(server.server_address[1])


def read_bearer_token(path: str) -> str:
    """The secret of METRICS_BEARER_TOKEN_FILE; ConfigError when it cannot be read or is empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("METRICS_BEARER_TOKEN_FILE", f"cannot read {path}: {exc}") from None
    if not token:
        raise ConfigError("METRICS_BEARER_TOKEN_FILE", f"{path} is empty")
    return token


def _with_liveness(app: Any) -> Any:
    def served(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return app(environ, start_response)

    return served


def _bearer_only(app: Any, token: str) -> Any:
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"metrics need 'Authorization: Bearer <METRICS_BEARER_TOKEN_FILE secret>'\n"]
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def unauthenticated_gauge(registry: CollectorRegistry, ports: int) -> Gauge:
    """1 while ALLOW_UNAUTHENTICATED lets ports beyond loopback take unauthenticated callers."""
    gauge = Gauge(
        f"{PREFIX}_unauthenticated_allowed",
        "1 when ALLOW_UNAUTHENTICATED lets a port beyond loopback serve Encode/Decode to unauthenticated callers.",
        registry=registry,
        multiprocess_mode="max",
    )
    gauge.set(1 if ports else 0)
    return gauge


class GrpcMetrics:
    """Counters and the latency histogram of gRPC calls, by service, method and status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        call_labels = ("grpc_service", "grpc_method", "grpc_type")
        self.started = Counter(
            "grpc_server_started", "gRPC calls started on the server.", call_labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "gRPC calls completed on the server, by status code.",
            (*call_labels, "grpc_code"),
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving a gRPC request to sending its answer.",
            call_labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.payloads = Counter(
            f"{PREFIX}_payloads",
            "Payloads encoded or decoded in successful calls.",
            ("grpc_method",),
            registry=registry,
        )
        self.payload_bytes = Counter(
            f"{PREFIX}_payload_bytes",
            "Serialized request (received) and response (sent) bytes of successful codec calls.",
            ("grpc_method", "direction"),
            registry=registry,
        )

    def for_method(self, service: str, method: str) -> MethodMetrics:
        """One method's labelled children, looked up once: the observer holds it for every call."""
        return MethodMetrics(self, service, method)

    def payloads_processed(self, method: str, count: int, received: int, sent: int) -> None:
        self.payloads.labels(method).inc(count)
        self.payload_bytes.labels(method, "received").inc(received)
        self.payload_bytes.labels(method, "sent").inc(sent)


class MethodMetrics:
    """The labelled children of one unary method, bound once.

    ``.labels()`` costs about 1.5 µs and a call records up to six values, so the
    observer binds a method's children when it wraps the method's handler. Status
    codes and the payload counters (codec methods only) are bound on first use.
    """

    __slots__ = ("_handled", "_labels", "_metrics", "_payloads", "_started", "latency")

    def __init__(self, metrics: GrpcMetrics, service: str, method: str) -> None:
        self._metrics = metrics
        self._labels = (service, method, "unary")
        self._started = metrics.started.labels(*self._labels)
        self.latency = metrics.latency.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}
        self._payloads: tuple[Any, Any, Any] | None = None

    def start(self) -> None:
        self._started.inc()

    def finished(self, code: grpc.StatusCode, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._metrics.handled.labels(*self._labels, code.name)
        child.inc()
        self.latency.observe(seconds)

    def processed(self, count: int, received: int, sent: int) -> None:
        children = self._payloads
        if children is None:
            method, metrics = self._labels[1], self._metrics
            children = self._payloads = (
                metrics.payloads.labels(method),
                metrics.payload_bytes.labels(method, "received"),
                metrics.payload_bytes.labels(method, "sent"),
            )
        children[0].inc(count)
        children[1].inc(received)
        children[2].inc(sent)


class KmsMetrics:
    """KMS requests by Region, operation and outcome, their latency, and calls refused without a request.

    ``regions`` are the values of the ``region`` label: KMS_REGIONS, or the one Region of the KMS
    client, so the label is bounded by the configuration. Pass :meth:`observer` (one Region's
    :meth:`observe`) as each Region's KMS provider's ``observer``; it is called once per KMS call
    (retries inside botocore included in its duration). Pass :meth:`short_circuit_observer` as its
    ``short_circuit_observer``: called once per call that KMS_FAIL_FAST_SECONDS refused at once (no
    KMS request, so not in ``kms_requests_total``). Pass :meth:`fallback` as the key manager's
    ``on_fallback``. Counters fed by hooks, not read from the provider's ``stats()`` at scrape time,
    so that they also add up across WORKERS > 1.
    """

    # The only operation the provider short-circuits (GenerateDataKey never is); its series exists
    # from the start, at 0, so that rate() and increase() see the first refusal.
    SHORT_CIRCUITED_OPERATIONS = ("Decrypt",)
    FALLBACK_OPERATIONS = ("Decrypt", "GenerateDataKey")

    def __init__(
        self, registry: CollectorRegistry, regions: tuple[str, ...] = ("",), *, fallbacks: bool = False
    ) -> None:
        self.requests = Counter(
            f"{PREFIX}_kms_requests",
            "KMS calls by Region, operation (GenerateDataKey, Decrypt, DescribeKey) and outcome "
            "(success, unavailable, access_denied, invalid_ciphertext, error).",
            ("region", "operation", "outcome"),
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_kms_request_duration_seconds",
            "Duration of KMS calls, botocore retries included.",
            ("region", "operation"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.short_circuits = Counter(
            f"{PREFIX}_kms_short_circuited",
            "KMS calls refused at once, without a request, because KMS in that Region was found unavailable "
            "for their master key less than KMS_FAIL_FAST_SECONDS ago (Decrypt only).",
            ("region", "operation"),
            registry=registry,
        )
        for region in regions:
            for operation in self.SHORT_CIRCUITED_OPERATIONS:
                self.short_circuits.labels(region, operation)
        self.fallbacks = Counter(
            f"{PREFIX}_kms_fallbacks",
            "With KMS_REGIONS: KMS calls served by another Region than the first choice (the payload key's own "
            "Region for Decrypt, the first of KMS_REGIONS for GenerateDataKey) because KMS there was "
            "unavailable, by the Region that served them.",
            ("region", "operation"),
            registry=registry,
        )
        for region in regions if fallbacks else ():
            for operation in self.FALLBACK_OPERATIONS:
                self.fallbacks.labels(region, operation)
        self.limits = Counter(
            f"{PREFIX}_kms_limited",
            "KMS calls refused at once, without a request, because this server's own limits were "
            "reached (KMS_DECRYPT_RATE, KMS_DECRYPT_BURST, KMS_MAX_CONCURRENT_CALLS).",
            ("operation",),
            registry=registry,
        )
        for operation in ("Decrypt", "GenerateDataKey"):
            self.limits.labels(operation)

    def observe(self, operation: str, outcome: str, seconds: float, region: str = "") -> None:
        self.requests.labels(region, operation, outcome).inc()
        self.latency.labels(region, operation).observe(seconds)

    def short_circuited(self, operation: str, region: str = "") -> None:
        self.short_circuits.labels(region, operation).inc()

    def observer(self, region: str) -> Callable[[str, str, float], None]:
        """:meth:`observe` for the KMS provider of ``region``."""
        return lambda operation, outcome, seconds: self.observe(operation, outcome, seconds, region)

    def short_circuit_observer(self, region: str) -> Callable[[str], None]:
        """:meth:`short_circuited` for the KMS provider of ``region``."""
        return lambda operation: self.short_circuited(operation, region)

    def fallback(self, operation: str, region: str) -> None:
        self.fallbacks.labels(region, operation).inc()

    def limited(self, operation: str) -> None:
        self.limits.labels(operation).inc()


@dataclass(frozen=True)
class CacheFamily:
    """One metric family read from the key manager's stats: defined once, for both ways of exposing
    them (:class:`KeyCacheCollector` in one process, ``multiprocess.KeyStatsPublisher`` with WORKERS > 1).
    ``multiprocess_mode`` says how the workers' gauges combine."""

    name: str
    documentation: str
    kind: str  # "counter" or "gauge"
    labels: tuple[str, ...] = ()
    multiprocess_mode: str = "livesum"


# not "namespace": Prometheus attaches the Kubernetes namespace under that name at scrape time
_SLOT = ("key_alias", "temporal_namespace")
CACHE_FAMILIES = {
    family.name: family
    for family in (
        CacheFamily("cache_hits", "Data-key cache hits.", "counter", ("cache",)),
        CacheFamily("cache_misses", "Data-key cache misses.", "counter", ("cache",)),
        CacheFamily("cache_evictions", "Data keys evicted at capacity (decrypted cache only).", "counter", ("cache",)),
        CacheFamily("cache_entries", "Data keys held per cache.", "gauge", ("cache",)),
        CacheFamily("cache_capacity_entries", "Most data keys the decrypted cache holds.", "gauge"),
        CacheFamily("cached_keys", "Distinct data keys held in memory (both caches).", "gauge"),
        # With WORKERS > 1 each worker has its own current key per slot: the one closest to rotation shows.
        CacheFamily("current_key_age_seconds", "Age of the current data key.", "gauge", _SLOT, "livemax"),
        CacheFamily(
            "current_key_expires_in_seconds", "Seconds until the current data key retires.", "gauge", _SLOT, "livemin"
        ),
        CacheFamily(
            "current_key_expired",
            "1 when the current data key is retired and not yet replaced (the next Encode replaces it).",
            "gauge",
            _SLOT,
            "livemax",
        ),
        CacheFamily(
            "current_key_encryptions", "Payloads encrypted under the current data key.", "gauge", _SLOT, "livemax"
        ),
    )
}


OTHER_NAMESPACES = "other"


def cache_samples(
    stats: KeyStats, labelled: Callable[[str], bool] | None = None
) -> Iterator[tuple[CacheFamily, tuple[str, ...], float]]:
    """Every value of :data:`CACHE_FAMILIES` in ``stats``: (family, label values, value).

    Caches: ``current`` holds the data key each (master key, namespace) slot encrypts
    with; ``decrypted`` holds unwrapped data keys for decoding. Only ``decrypted``
    evicts (LRU at capacity); a current key is replaced, not evicted. The per-key series
    name only the namespaces ``labelled`` accepts (the configured ones): the others are
    added up under ``temporal_namespace="other"``, so callers cannot grow the series.
    """
    family = CACHE_FAMILIES
    yield family["cache_hits"], ("current",), stats.current_hits
    yield family["cache_hits"], ("decrypted",), stats.decrypted_hits
    yield family["cache_misses"], ("current",), stats.current_misses
    yield family["cache_misses"], ("decrypted",), stats.decrypted_misses
    yield family["cache_evictions"], ("decrypted",), stats.decrypted_evictions
    yield family["cache_entries"], ("current",), len(stats.current_keys)
    yield family["cache_entries"], ("decrypted",), stats.decrypted_size
    yield family["cache_capacity_entries"], (), stats.decrypted_capacity
    yield family["cached_keys"], (), stats.cached_keys
    # Per slot: (age, expires in, expired, encryptions); slots outside ``labelled`` combined.
    slots: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for key in stats.current_keys:
        namespace = key.namespace or ""
        if namespace and labelled is not None and not labelled(namespace):
            namespace = OTHER_NAMESPACES
        values = (key.age, key.expires_in, 1.0 if key.expired else 0.0, float(key.encryptions))
        seen = slots.get((key.alias, namespace))
        if seen is not None:  # the oldest age, the soonest expiry, any expired, all encryptions
            values = (max(seen[0], values[0]), min(seen[1], values[1]), max(seen[2], values[2]), seen[3] + values[3])
        slots[(key.alias, namespace)] = values
    for slot, (age, expires_in, expired, encryptions) in slots.items():
        yield family["current_key_age_seconds"], slot, age
        yield family["current_key_expires_in_seconds"], slot, expires_in
        yield family["current_key_expired"], slot, expired
        yield family["current_key_encryptions"], slot, encryptions


class KeyCacheCollector(Collector):
    """The :data:`CACHE_FAMILIES`, read from the key manager at every scrape: nothing copied, nothing stale."""

    def __init__(
        self,
        stats: Callable[[], KeyStats],
        registry: CollectorRegistry | None = None,
        labelled: Callable[[str], bool] | None = None,
    ) -> None:
        self._stats = stats
        self._labelled = labelled
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary with the slots in use; collect() is cheap, so no description

    def collect(self) -> Iterator[Metric]:
        built: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for family in CACHE_FAMILIES.values():  # every family, even with no sample (no current key yet)
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            built[family.name] = kind(f"{PREFIX}_{family.name}", family.documentation, labels=list(family.labels))
        for family, labels, value in cache_samples(self._stats(), self._labelled):
            built[family.name].add_metric(list(labels), value)
        yield from built.values()


class GatewayMetrics:
    """HTTP gateway requests by route, method and status, and their latency.

    Call :meth:`observe` once per answered request. ``route`` must be one of the
    gateway's ``ROUTES`` (the last path segment it routed on); anything else is
    counted as ``other``, so a scanner requesting random paths cannot create
    unbounded label values.
    """

    METHODS = frozenset({"GET", "POST", "OPTIONS", "HEAD", "other"})

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP gateway requests by route, method and status code.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time from receiving an HTTP gateway request to answering it.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        route = route if route in ROUTES else "other"
        method = method.upper() if method.upper() in self.METHODS else "other"
        # Labelled children kept by label values, as in GrpcMetrics: bounded (routes, methods, statuses).
        children = self._children.get((route, method, status))
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)


class StorageMetrics:
    """External Storage: S3 requests by operation and outcome, their latency and bytes, and references
    refused before any S3 request (by reason).

    Pass :meth:`observe` as ``codec_grpc.storage.S3Objects``'s ``observer`` and :meth:`refused` as
    ``PayloadStore``'s ``refused``. Every outcome and reason series exists from the start, at 0.
    """

    OPERATIONS = ("GetObject", "PutObject")

    def __init__(self, registry: CollectorRegistry, outcomes: tuple[str, ...], reasons: tuple[str, ...]) -> None:
        self.requests = Counter(
            f"{PREFIX}_s3_requests",
            "S3 requests of External Storage by operation (GetObject, PutObject) and outcome "
            "(success, not_found, access_denied, unavailable, too_large, error).",
            ("operation", "outcome"),
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_s3_request_duration_seconds",
            "Duration of S3 requests, botocore retries and reading the object included.",
            ("operation",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            f"{PREFIX}_s3_bytes",
            "Bytes of stored payloads retrieved (GetObject) and offloaded (PutObject).",
            ("operation",),
            registry=registry,
        )
        self.refusals = Counter(
            f"{PREFIX}_storage_references_refused",
            "External Storage references refused, by reason (bucket, namespace, malformed, integrity, "
            "too_large, too_many); bucket, namespace, malformed and too_many before any S3 request.",
            ("reason",),
            registry=registry,
        )
        for operation in self.OPERATIONS:
            self.latency.labels(operation)
            self.bytes.labels(operation)
            for outcome in outcomes:
                self.requests.labels(operation, outcome)
        for reason in reasons:
            self.refusals.labels(reason)

    def observe(self, operation: str, outcome: str, seconds: float, size: int) -> None:
        self.requests.labels(operation, outcome).inc()
        self.latency.labels(operation).observe(seconds)
        if size:
            self.bytes.labels(operation).inc(size)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()
