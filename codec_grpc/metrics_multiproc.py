"""Metrics across WORKERS > 1 processes: prometheus_client's multiprocess mode.

Every worker writes its counters and histograms to memory-mapped files in one
directory; the supervisor serves a :class:`MultiProcessCollector` over that
directory, so one scrape shows the sum over the workers (and over workers that
have exited: counters never go back).

The live :class:`~codec_grpc.metrics.KeyCacheCollector` reads a key manager's
state at scrape time, which cannot cross processes. In multiprocess mode each
worker runs a :class:`KeyStatsPublisher` instead, copying the same figures into
multiprocess metrics of the same names every second and at shutdown. How the
workers' gauges combine (each worker has its own caches and its own current
data key per slot): entries and capacities add up; a current key's age,
``expired`` flag and encryption count show the largest over the workers (the
key closest to rotation), its ``expires_in`` the smallest.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from codec_grpc.keys import KeyStats
from codec_grpc.metrics import PREFIX

__all__ = ["KeyStatsPublisher", "enable_multiprocess_mode", "forget_process", "multiprocess_registry"]

_SLOT = ("key_alias", "temporal_namespace")


def enable_multiprocess_mode() -> None:
    """Make metrics created from now on write to PROMETHEUS_MULTIPROC_DIR (set it first).

    prometheus_client picks its value class when it is imported, which happened
    before the configuration said WORKERS > 1; picking again is safe as long as
    no metric exists yet, which is true before the workers are forked.
    """
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry summing the metrics every worker wrote to ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def forget_process(pid: int, directory: str) -> None:
    """Drop an exited worker's live gauges (its counters stay: they still count)."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class KeyStatsPublisher:
    """Copies a key manager's stats into multiprocess metrics, every ``interval`` seconds."""

    def __init__(
        self, stats: Callable[[], KeyStats], interval: float = 1.0, registry: CollectorRegistry | None = None
    ) -> None:
        self._stats = stats
        self._interval = interval
        self._published: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-stats-publisher", daemon=True)
        # In a worker the values go to the shared files and no registry is needed (tests pass one).
        self.hits = Counter(f"{PREFIX}_cache_hits", "Data-key cache hits.", ["cache"], registry=registry)
        self.misses = Counter(f"{PREFIX}_cache_misses", "Data-key cache misses.", ["cache"], registry=registry)
        self.evictions = Counter(
            f"{PREFIX}_cache_evictions",
            "Data keys evicted at capacity (decrypted cache only).",
            ["cache"],
            registry=registry,
        )
        gauge = functools.partial(_gauge, registry=registry)
        self.entries = gauge("cache_entries", "Data keys held per cache.", ["cache"], "livesum")
        self.capacity = gauge("cache_capacity_entries", "Most data keys the decrypted caches hold.", [], "livesum")
        self.cached = gauge("cached_keys", "Distinct data keys held in memory (both caches).", [], "livesum")
        self.age = gauge("current_key_age_seconds", "Age of the oldest current data key.", _SLOT, "livemax")
        self.expires = gauge(
            "current_key_expires_in_seconds", "Seconds until the first current data key retires.", _SLOT, "livemin"
        )
        self.expired = gauge(
            "current_key_expired", "1 when a current data key is retired and not yet replaced.", _SLOT, "livemax"
        )
        self.uses = gauge(
            "current_key_encryptions", "Most payloads encrypted under one current data key.", _SLOT, "livemax"
        )

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and publish a last time, so counters include the final calls."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.publish()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.publish()

    def publish(self) -> None:
        stats = self._stats()
        with self._lock:  # the thread and stop() may both publish
            self._advance("hits", self.hits, "current", stats.hot_hits)
            self._advance("hits", self.hits, "decrypted", stats.cold_hits)
            self._advance("misses", self.misses, "current", stats.hot_misses)
            self._advance("misses", self.misses, "decrypted", stats.cold_misses)
            self._advance("evictions", self.evictions, "decrypted", stats.cold_evictions)
        self.entries.labels("current").set(len(stats.current_keys))
        self.entries.labels("decrypted").set(stats.cold_size)
        self.capacity.set(stats.cold_capacity)
        self.cached.set(stats.cached_keys)
        for key in stats.current_keys:
            slot = (key.alias, key.namespace or "")
            self.age.labels(*slot).set(key.age)
            self.expires.labels(*slot).set(key.expires_in)
            self.expired.labels(*slot).set(1.0 if key.expired else 0.0)
            self.uses.labels(*slot).set(key.encryptions)

    def _advance(self, what: str, counter: Counter, cache: str, total: int) -> None:
        """Counters only go up: add what this worker counted since the last publication."""
        name = (what, cache)
        delta = total - self._published.get(name, 0)
        if delta > 0:
            counter.labels(cache).inc(delta)
            self._published[name] = total


def _gauge(
    name: str, documentation: str, labels: list[str] | tuple[str, ...], mode: str, registry: CollectorRegistry | None
) -> Gauge:
    return Gauge(f"{PREFIX}_{name}", documentation, labels, registry=registry, multiprocess_mode=mode)  # type: ignore[arg-type]
