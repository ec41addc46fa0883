"""Key management: which master key a namespace uses, and the data-key caches.

:class:`KeyManager` answers the codec's two questions, "which data key encrypts
this batch?" and "which data key decrypts this payload?", from its caches when
it can and through the key provider (KMS) when it must. Concurrent misses for
the same key share one provider call (single-flight). Thread-safe.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from codec_grpc import errors
from codec_grpc.caches import Clock, CurrentKeyCache, CurrentKeyInfo, DecryptedKeyCache
from codec_grpc.kms import GeneratedKey
from codec_grpc.singleflight import SingleFlight
from codec_grpc.wireformat import DataKey

log = logging.getLogger(__name__)
Slot = tuple[str, str | None]


class KeyProvider(Protocol):
    """What key management needs from KMS (see ``codec_grpc.kms.KmsKeyProvider``)."""

    def generate_data_key(self, key_id: str, namespace: str | None) -> GeneratedKey: ...

    def decrypt_data_key(self, encrypted_key: bytes, key_arn: str, namespace: str | None) -> bytes: ...


@dataclass(frozen=True)
class KeyPolicy:
    """Master keys per namespace and the limits of the data-key caches."""

    default_alias: str
    namespace_aliases: Mapping[str, str] = field(default_factory=dict)
    rotation_interval: float = 3600.0
    max_encryptions: int = 10_000_000
    cache_ttl: float = 86400.0
    cache_capacity: int = 10_000
    outage_grace: float = 3600.0
    refresh_backoff: float = 1.0
    refresh_backoff_max: float = 60.0

    def alias_for(self, namespace: str) -> str:
        return self.namespace_aliases.get(namespace, self.default_alias)


@dataclass(frozen=True)
class CurrentKeyStats:
    alias: str
    namespace: str | None
    key_arn: str
    age: float
    expires_in: float
    expired: bool
    encryptions: int
    overdue: bool = False
    next_ready: bool = False


@dataclass(frozen=True)
class KeyStats:
    cached_keys: int
    current_keys: list[CurrentKeyStats]
    hot_hits: int
    hot_misses: int
    cold_hits: int
    cold_misses: int
    cold_evictions: int
    cold_size: int
    cold_capacity: int
    refresh_failures: int = 0
    degraded: bool = False
    last_refresh_error: str = ""


class KeyManager:
    """Data keys for encryption (current key per slot) and decryption (unwrapped keys)."""

    def __init__(
        self,
        provider: KeyProvider,
        policy: KeyPolicy,
        clock: Clock = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self._provider = provider
        self._current = CurrentKeyCache(
            max_age=policy.rotation_interval,
            max_encryptions=policy.max_encryptions,
            grace=policy.outage_grace,
            clock=clock,
        )
        self._spawn = spawn or _daemon_thread
        self._sleep = sleep
        self._lock = threading.Lock()
        self._refreshing: set[Slot] = set()
        self._failing: dict[Slot, str] = {}
        self._refresh_failures = 0
        self._decrypted = DecryptedKeyCache(ttl=policy.cache_ttl, capacity=policy.cache_capacity, clock=clock)
        self._generating: SingleFlight[None] = SingleFlight()
        self._unwrapping: SingleFlight[DataKey] = SingleFlight()

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey:
        """The current data key for ``namespace``'s master key, reserved for ``count`` uses.

        ``binding`` is the namespace the key is bound to (None: unbound). A new key
        is generated when there is none, or the current one is too old or used up.
        """
        if count > self.policy.max_encryptions:
            raise errors.RequestTooLargeError(
                f"a batch of {count} payloads exceeds DATA_KEY_MAX_ENCRYPTIONS={self.policy.max_encryptions}"
            )
        slot = (self.policy.alias_for(namespace), binding)
        while True:
            reserved = self._current.reserve(slot, count)
            if reserved.key is not None:
                if reserved.replaced is not None:
                    _log_rotation(slot, reserved.key.key_id, reserved.replaced)
                if reserved.refresh:
                    self._refresh_ahead(slot)
                return reserved.key
            try:
                self._generating.do(slot, functools.partial(self._rotate, slot, reserved.generation))
            except errors.KmsUnavailableError as exc:
                return self._outage_key(slot, count, exc)
            except errors.KeyProviderError as exc:
                self._failed(slot, exc)  # degraded in Stats too: KMS refuses, and no grace applies
                raise

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        """The data key ``encrypted_key`` wraps, unwrapped through KMS at most once while cached."""
        cache_key = (key_arn, encrypted_key, binding)
        key = self._decrypted.get(cache_key)
        if key is not None:
            return key
        return self._unwrapping.do(cache_key, lambda: self._unwrap(key_arn, encrypted_key, binding))

    def cached_encryption_key(self, namespace: str, binding: str | None, count: int) -> DataKey | None:
        """Like :meth:`encryption_key` without ever calling KMS or waiting for a call: the current key,
        reserved for ``count`` uses, or None when a new key would be needed. None reserves nothing and
        counts no miss: the caller asks :meth:`encryption_key` next, which counts it."""
        if count > self.policy.max_encryptions:
            return self.encryption_key(namespace, binding, count)  # raises RequestTooLargeError, no KMS
        slot = (self.policy.alias_for(namespace), binding)
        reserved = self._current.reserve_cached(slot, count)
        if reserved.key is None:
            return None
        if reserved.replaced is not None:
            _log_rotation(slot, reserved.key.key_id, reserved.replaced)
        if reserved.refresh:
            self._refresh_ahead(slot)  # starts a thread: does not wait for KMS
        return reserved.key

    def cached_decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey | None:
        """Like :meth:`decryption_key` without ever calling KMS or waiting for a call: None when the key
        is not cached. Counts nothing: a call that will not be redone through :meth:`decryption_key`
        reports the keys it found with :meth:`count_cached_hits`."""
        return self._decrypted.peek((key_arn, encrypted_key, binding))

    def count_cached_hits(self, found: Iterable[tuple[str, bytes, str | None]]) -> None:
        """Count as cache hits (and as recently used) the keys :meth:`cached_decryption_key` found,
        given as its arguments."""
        for wrapped in found:
            self._decrypted.touch(wrapped)

    def stats(self) -> KeyStats:
        current = self._current.describe()
        held = self._current.current_keys()
        in_cold = sum(1 for k in held if (k.key_id, k.encrypted_key, k.namespace) in self._decrypted)
        cold_size = len(self._decrypted)
        with self._lock:
            failing = dict(self._failing)
            refresh_failures = self._refresh_failures
        return KeyStats(
            refresh_failures=refresh_failures,
            degraded=bool(failing),
            last_refresh_error=next(iter(failing.values()), ""),
            cached_keys=cold_size + len(held) - in_cold,
            current_keys=[_current_stats(info) for info in current],
            hot_hits=self._current.hits,
            hot_misses=self._current.misses,
            cold_hits=self._decrypted.hits,
            cold_misses=self._decrypted.misses,
            cold_evictions=self._decrypted.evictions,
            cold_size=cold_size,
            cold_capacity=self._decrypted.capacity,
        )

    def _rotate(self, slot: Slot, seen: int) -> None:
        """Generate a key for a slot with none usable; every caller waits for it."""
        if self._current.generation(slot) != seen or self._current.has_next(slot):
            return  # replaced meanwhile, or a next key arrived: the caller's next reserve takes it
        key = self._generate(slot)
        previous = next((info for info in self._current.describe() if info.slot == slot), None)
        self._current.install(slot, key)
        self._recovered(slot)
        _log_rotation(slot, key.key_id, previous)

    def _outage_key(self, slot: Slot, count: int, error: errors.KmsUnavailableError) -> DataKey:
        """KMS cannot renew the slot's key: the last good one serves through the grace, or ``error`` stands."""
        self._failed(slot, error)
        reserved = self._current.reserve(slot, count)
        if reserved.key is None:
            raise error
        self._refresh_ahead(slot)
        return reserved.key

    def _refresh_ahead(self, slot: Slot) -> None:
        """Fetch the slot's next key in the background, unless that is already under way."""
        with self._lock:
            if slot in self._refreshing:
                return
            self._refreshing.add(slot)
        self._spawn(functools.partial(self._refresh_loop, slot))

    def _refresh_loop(self, slot: Slot) -> None:
        """Until the slot has a next key: generate one, backing off while KMS fails."""
        delay = self.policy.refresh_backoff
        try:
            while self._current.wants_next(slot):
                try:
                    # Under the slot's single-flight: a caller that cannot wait any more joins this call.
                    self._generating.do(slot, functools.partial(self._fetch_next, slot))
                except errors.KeyProviderError as exc:
                    self._failed(slot, exc, delay)
                    self._sleep(delay)
                    delay = min(delay * 2, self.policy.refresh_backoff_max)
                    continue
                self._recovered(slot)
                return
        except Exception:
            log.exception("data key refresh for %s stopped", _slot_name(slot))
        finally:
            with self._lock:
                self._refreshing.discard(slot)

    def _fetch_next(self, slot: Slot) -> None:
        if self._current.wants_next(slot):
            key = self._generate(slot)
            if self._current.offer_next(slot, key):
                log.info("next data key ready under %s for %s", key.key_id, _slot_name(slot))

    def _generate(self, slot: Slot) -> DataKey:
        alias, binding = slot
        generated = self._provider.generate_data_key(alias, binding)
        key = DataKey(generated.plaintext, generated.key_arn, generated.encrypted_key, binding)
        self._decrypted.put((key.key_id, key.encrypted_key, binding), key)
        return key

    def _failed(self, slot: Slot, error: errors.KeyProviderError, retry_in: float | None = None) -> None:
        """Record a failed renewal; only an unavailable KMS lets the current key serve through the grace."""
        outage = isinstance(error, errors.KmsUnavailableError) and self._current.set_outage(slot, True)
        with self._lock:
            self._failing[slot] = str(error)
            self._refresh_failures += 1
        retry = "" if retry_in is None else f", retrying in {retry_in:.1f}s"
        grace = f"; the current key serves up to {self.policy.outage_grace:g}s past its rotation" if outage else ""
        log.warning("data key renewal for %s failed%s%s: %s", _slot_name(slot), retry, grace, error)

    def _recovered(self, slot: Slot) -> None:
        self._current.set_outage(slot, False)
        with self._lock:
            failed = self._failing.pop(slot, None)
        if failed is not None:
            log.warning("data key refresh for %s recovered", _slot_name(slot))

    def _unwrap(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        cache_key = (key_arn, encrypted_key, binding)
        key = self._decrypted.peek(cache_key)
        if key is not None:
            return key  # filled by a call that finished while this one was queued
        plaintext = self._provider.decrypt_data_key(encrypted_key, key_arn, binding)
        key = DataKey(plaintext, key_arn, encrypted_key, binding)
        self._decrypted.put(cache_key, key)
        return key


def _daemon_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="data-key-refresh", daemon=True).start()


def _slot_name(slot: Slot) -> str:
    alias, binding = slot
    return f"{alias} (namespace {binding})" if binding is not None else f"{alias} (unbound)"


def _log_rotation(slot: tuple[str, str | None], key_arn: str, previous: CurrentKeyInfo | None) -> None:
    """One line per new data key: which master key wrapped it and how old the key it replaces was."""
    alias, namespace = slot
    age = None if previous is None else round(previous.age, 3)
    log.info(
        "new data key for %s (namespace %s) under %s; previous key age %s s",
        alias,
        namespace or "unbound",
        key_arn,
        "-" if age is None else f"{age:.1f}",
        extra={
            "event": "data_key_rotated",
            "key_alias": alias,
            "namespace": namespace or "",
            "key_arn": key_arn,
            "previous_key_arn": None if previous is None else previous.key_arn,
            "previous_key_age_seconds": age,
            "previous_key_encryptions": None if previous is None else previous.encryptions,
        },
    )


def _current_stats(info: CurrentKeyInfo) -> CurrentKeyStats:
    alias, namespace = info.slot
    return CurrentKeyStats(
        alias=alias,
        namespace=namespace,
        key_arn=info.key_arn,
        age=info.age,
        expires_in=info.expires_in,
        expired=info.expired,
        encryptions=info.encryptions,
        overdue=info.overdue,
        next_ready=info.next_ready,
    )
