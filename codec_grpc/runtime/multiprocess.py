"""Metrics across WORKERS > 1 processes: prometheus_client's multiprocess mode.

Every worker writes its counters and histograms to memory-mapped files in one
directory; the supervisor serves a :class:`MultiProcessCollector` over that
directory, so one scrape shows the sum over the workers (and over workers that
have exited: counters never go back).

The live :class:`~codec_grpc.runtime.metrics.KeyCacheCollector` reads a key
manager's state at scrape time, which cannot cross processes. In multiprocess
mode each worker runs a :class:`KeyStatsPublisher` instead, copying the same
figures (``metrics.CACHE_FAMILIES``, the same definitions) into multiprocess
metrics every second and at shutdown. How the workers' gauges combine (each
worker has its own caches and its own current data key per slot) is each
family's ``multiprocess_mode``: entries and capacities add up; a current key's
age, ``expired`` flag and encryption count show the largest over the workers
(the key closest to rotation), its ``expires_in`` the smallest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from codec_grpc.keys import KeyStats
from codec_grpc.runtime.metrics import CACHE_FAMILIES, PREFIX, CacheFamily, cache_samples

__all__ = ["KeyStatsPublisher", "enable_multiprocess_mode", "forget_process", "multiprocess_registry"]


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
        self,
        stats: Callable[[], KeyStats],
        interval: float = 1.0,
        registry: CollectorRegistry | None = None,
        labelled: Callable[[str], bool] | None = None,
    ) -> None:
        self._stats = stats
        self._labelled = labelled
        self._interval = interval
        self._published: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-stats-publisher", daemon=True)
        # In a worker the values go to the shared files and no registry is needed (tests pass one).
        self._metrics = {name: _metric(family, registry) for name, family in CACHE_FAMILIES.items()}

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
        samples = list(cache_samples(self._stats(), self._labelled))
        with self._lock:  # the thread and stop() may both publish
            for family, labels, value in samples:
                metric = self._metrics[family.name]
                child = metric.labels(*labels) if labels else metric
                if isinstance(child, Counter):
                    self._advance(family.name, labels, child, value)
                else:
                    child.set(value)

    def _advance(self, name: str, labels: tuple[str, ...], counter: Counter, total: float) -> None:
        """Counters only go up: add what this worker counted since the last publication."""
        delta = total - self._published.get((name, labels), 0)
        if delta > 0:
            counter.inc(delta)
            self._published[(name, labels)] = total


def _metric(family: CacheFamily, registry: CollectorRegistry | None) -> Counter | Gauge:
    name = f"{PREFIX}_{family.name}"
    if family.kind == "counter":
        return Counter(name, family.documentation, family.labels, registry=registry)
    mode: Any = family.multiprocess_mode
    return Gauge(name, family.documentation, family.labels, registry=registry, multiprocess_mode=mode)
