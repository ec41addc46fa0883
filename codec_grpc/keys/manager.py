"""Key management: which master key a namespace uses, and the data-key caches.

:class:`KeyManager` answers the codec's two questions, "which data key encrypts
this batch?" and "which data key decrypts this payload?", from its caches when
it can and through the key provider (KMS) when it must. Concurrent misses for
the same key share one provider call (single-flight). Thread-safe.

With KMS_REGIONS the provider has Regions, and :mod:`~codec_grpc.keys.regions` chooses the
Region of every call: encodes in the first Region available, decodes of multi-Region keys in
the next Region when the payload's own is unavailable.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Generic

from codec_grpc import errors
from codec_grpc.keys.allowlist import KeyAllowlist
from codec_grpc.keys.caches import Clock, CurrentKeyCache, CurrentKeyInfo, DecryptedKeyCache, K, Slot
from codec_grpc.keys.provider import KeyProvider, RegionalKeyProvider
from codec_grpc.keys.regions import FallbackObserver, Target, routes_for
from codec_grpc.keys.singleflight import SingleFlight

log = logging.getLogger(__name__)
# Builds the key object the caches hold from (plaintext, master key ARN, encrypted key, bound namespace):
# the codec core's DataKey in production, which precomputes what every payload under the key shares.
KeyFactory = Callable[[bytes, str, bytes, str | None], K]


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
    decrypt_key_patterns: tuple[str, ...] = ()  # DECRYPT_KEY_ARNS: keys that may decrypt beside the configured ones
    refusal_ttl: float = 60.0  # seconds a data key KMS refused to unwrap is refused again without asking
    refusal_capacity: int = 10_000
    max_slots: int = 1000  # current keys held (one per master key and namespace), least recently used go
    resolve_interval: float = 30.0  # fewest seconds between retries of a master key DescribeKey failed for

    def alias_for(self, namespace: str) -> str:
        return self.namespace_aliases.get(namespace, self.default_alias)

    @property
    def master_keys(self) -> tuple[str, ...]:
        """Every configured master key (alias, key id or ARN), each once."""
        return tuple(dict.fromkeys((self.default_alias, *self.namespace_aliases.values())))


class UnwrapBudget:
    """How many data keys one request may still have unwrapped through KMS (MAX_KMS_DECRYPTS_PER_REQUEST)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self) -> None:
        if self.left <= 0:
            raise errors.KmsBudgetError(
                f"this request needs more than {self.limit} data keys that are not cached "
                f"(MAX_KMS_DECRYPTS_PER_REQUEST); those unwrapped so far stay cached: retry in 1s, "
                "or send fewer payloads per request"
            )
        self.left -= 1


@dataclass(frozen=True)
class KeyStats:
    """Counters and current keys of both caches, as Stats and the metrics show them: never key material."""

    cached_keys: int  # distinct data keys held in memory, both caches
    current_keys: list[CurrentKeyInfo]
    current_hits: int
    current_misses: int
    decrypted_hits: int
    decrypted_misses: int
    decrypted_evictions: int
    decrypted_size: int
    decrypted_capacity: int
    refresh_failures: int = 0
    degraded: bool = False
    last_refresh_error: str = ""
    # With KMS_REGIONS: KMS calls another Region served, by (operation, the Region that served them).
    fallbacks: Mapping[tuple[str, str], int] = field(default_factory=dict)


class KeyManager(Generic[K]):
    """Data keys for encryption (current key per slot) and decryption (unwrapped keys).

    ``make_key`` builds the key objects the caches hold (see :data:`KeyFactory`). A ``provider`` with
    Regions (:class:`~codec_grpc.keys.provider.RegionalKeyProvider`) is asked Region by Region
    (:mod:`~codec_grpc.keys.regions`), and ``on_fallback`` told of every call another Region served.
    """

    def __init__(
        self,
        provider: KeyProvider | RegionalKeyProvider,
        policy: KeyPolicy,
        make_key: KeyFactory[K],
        *,
        clock: Clock = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_fallback: FallbackObserver | None = None,
        waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.policy = policy
        # Entered around every wait for KMS on a caller's thread (a call of its own or another's
        # that this one joins): the gRPC server's pool lets a queued call run meanwhile.
        self._waiting = waiting
        self._make_key = make_key
        self._current: CurrentKeyCache[K] = CurrentKeyCache(
            max_age=policy.rotation_interval,
            max_encryptions=policy.max_encryptions,
            grace=policy.outage_grace,
            clock=clock,
            max_slots=policy.max_slots,
        )
        self._clock = clock
        self.allowlist = KeyAllowlist(policy.decrypt_key_patterns)
        self._routes = routes_for(provider, self._allows, on_fallback)
        # Each master key in each Region (one target without KMS_REGIONS) -> when resolving it last failed.
        self._unresolved: dict[Target, float] = {
            target: float("-inf") for alias in policy.master_keys for target in self._routes.targets(alias)
        }
        # Data keys KMS refused to unwrap, by (key ARN, encrypted key, binding): the error, for a while.
        self._refused: DecryptedKeyCache[_Refusal] = DecryptedKeyCache(
            ttl=policy.refusal_ttl, capacity=policy.refusal_capacity, clock=clock
        )
        self._spawn = spawn or _daemon_thread
        self._sleep = sleep
        self._lock = threading.Lock()
        self._refreshing: set[Slot] = set()
        self._failing: dict[Slot, str] = {}
        self._refresh_failures = 0
        self._decrypted: DecryptedKeyCache[K] = DecryptedKeyCache(
            ttl=policy.cache_ttl, capacity=policy.cache_capacity, clock=clock
        )
        self._generating: SingleFlight[None] = SingleFlight()
        self._unwrapping: SingleFlight[K] = SingleFlight()

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> K:
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
                with self._waiting():
                    self._generating.do(slot, functools.partial(self._rotate, slot, reserved.generation))
            except errors.KmsUnavailableError as exc:
                return self._outage_key(slot, count, exc)
            except errors.KeyProviderError as exc:
                self._failed(slot, exc)  # degraded in Stats too: KMS refuses, and no grace applies
                raise

    def decryption_key(
        self, key_arn: str, encrypted_key: bytes, binding: str | None, budget: UnwrapBudget | None = None
    ) -> K:
        """The data key ``encrypted_key`` wraps, unwrapped through KMS at most once while cached.

        Before any KMS call: ``key_arn`` must be in one of KMS_REGIONS (when set) and allowed
        (:mod:`~codec_grpc.keys.allowlist`), a data key KMS found invalid lately is refused again,
        and the request's ``budget`` must have room.
        """
        cache_key = (key_arn, encrypted_key, binding)
        key = self._decrypted.get(cache_key)
        if key is not None:
            return key
        outside = self._routes.refusal(key_arn)
        if outside is not None:
            raise outside
        if not self._allows(key_arn):
            raise self.allowlist.refusal(key_arn)
        refused = self._refused.peek(cache_key)
        if refused is not None:
            raise refused.error()
        if budget is not None:
            budget.spend()
        with self._waiting():
            return self._unwrapping.do(cache_key, lambda: self._unwrap(key_arn, encrypted_key, binding))

    def resolve_master_keys(self) -> dict[str, str]:
        """Resolve the configured master keys to their ARNs now (DescribeKey), for the allowlist; with
        KMS_REGIONS, in each Region.

        Returns the failures by master key (``alias/x in us-west-2`` with KMS_REGIONS); those are
        retried, at most once per ``resolve_interval``, when a payload names a key not (yet) allowed,
        and again whenever a data key is generated.
        """
        failures: dict[str, str] = {}
        for target in list(self._unresolved):
            try:
                self._resolve(target)
            except errors.KeyProviderError as exc:
                failures[_target_name(target)] = str(exc)
                log.warning(
                    "master key %s not resolved: %s; payloads under it are refused until it is",
                    _target_name(target),
                    exc,
                )
        return failures

    def cached_encryption_key(self, namespace: str, binding: str | None, count: int) -> K | None:
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

    def cached_decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> K | None:
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
        in_both = sum(1 for k in held if (k.key_id, k.encrypted_key, k.namespace) in self._decrypted)
        decrypted_size = len(self._decrypted)
        with self._lock:
            failing = dict(self._failing)
            refresh_failures = self._refresh_failures
        return KeyStats(
            refresh_failures=refresh_failures,
            degraded=bool(failing),
            last_refresh_error=next(iter(failing.values()), ""),
            fallbacks=self._routes.fallbacks(),
            cached_keys=decrypted_size + len(held) - in_both,
            current_keys=current,
            current_hits=self._current.hits,
            current_misses=self._current.misses,
            decrypted_hits=self._decrypted.hits,
            decrypted_misses=self._decrypted.misses,
            decrypted_evictions=self._decrypted.evictions,
            decrypted_size=decrypted_size,
            decrypted_capacity=self._decrypted.capacity,
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

    def _outage_key(self, slot: Slot, count: int, error: errors.KmsUnavailableError) -> K:
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

    def _resolve(self, target: Target) -> None:
        with self._lock:
            self._unresolved[target] = self._clock()
        arn = self._routes.key_arn(target)
        self.allowlist.allow(arn)
        with self._lock:
            self._unresolved.pop(target, None)
        name = _target_name(target)
        log.info("master key %s is %s", name, arn, extra={"event": "master_key_resolved", "key_arn": arn})

    def _allows(self, key_arn: str) -> bool:
        """The allowlist's answer, for a payload's key and for every Region's ARN a decode falls back to."""
        return self.allowlist.allows(key_arn) or self._resolves_to(key_arn)

    def _resolves_to(self, key_arn: str) -> bool:
        """Retry the master keys not resolved yet (KMS was down at start?), then ask the allowlist again."""
        now = self._clock()
        with self._lock:
            due = [target for target, tried in self._unresolved.items() if now - tried >= self.policy.resolve_interval]
        for target in due:
            try:
                with self._waiting():
                    self._resolve(target)
            except errors.KeyProviderError as exc:
                log.warning("master key %s still not resolved: %s", _target_name(target), exc)
        return bool(due) and self.allowlist.allows(key_arn)

    def _generate(self, slot: Slot) -> K:
        alias, binding = slot
        generated = self._routes.generate(alias, binding)
        self.allowlist.allow(generated.key_arn)  # the alias's key now: an alias moved is picked up here
        key = self._make_key(generated.plaintext, generated.key_arn, generated.encrypted_key, binding)
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

    def _unwrap(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> K:
        cache_key = (key_arn, encrypted_key, binding)
        key = self._decrypted.peek(cache_key)
        if key is not None:
            return key  # filled by a call that finished while this one was queued
        try:
            plaintext = self._routes.unwrap(encrypted_key, key_arn, binding)
        except errors.KmsInvalidCiphertextError as exc:
            # The data key's fault (altered, another key's, another namespace's): the same answer for a
            # while. Not an outage nor IAM or a disabled key, which an operator fixes and which must
            # then work at once.
            self._refused.put(cache_key, _Refusal(type(exc), str(exc)))
            raise
        key = self._make_key(plaintext, key_arn, encrypted_key, binding)
        self._decrypted.put(cache_key, key)
        return key


@dataclass(frozen=True)
class _Refusal:
    """A KMS refusal to unwrap a data key, remembered (as :class:`DecryptedKeyCache` entries are)."""

    kind: type[errors.KeyProviderError]
    message: str

    def error(self) -> errors.KeyProviderError:
        return self.kind(f"{self.message} (remembered: not asked again for a while)")


def _daemon_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="data-key-refresh", daemon=True).start()


def _target_name(target: Target) -> str:
    key_id, region = target
    return key_id if region is None or key_id.startswith("arn:") else f"{key_id} in {region}"


def _slot_name(slot: Slot) -> str:
    alias, binding = slot
    return f"{alias} (namespace {binding})" if binding is not None else f"{alias} (unbound)"


def _log_rotation(slot: Slot, key_arn: str, previous: CurrentKeyInfo | None) -> None:
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


class WouldBlock(Exception):
    """A data key is not in the caches: getting it means waiting for KMS."""


class CachedKeys(Generic[K]):
    """A key source over a :class:`KeyManager` that never calls KMS nor waits for a call: it answers
    from the caches, or raises :class:`WouldBlock`. For a caller that must not block (an event loop)
    and redoes the whole call with the manager itself when a key is missing.

    One per call: the decryption keys it found count as cache hits only once the call is known not
    to be redone (:meth:`count_hits`); a miss reserves nothing and counts nothing, so the caches'
    counters read as for one call through the manager.
    """

    def __init__(self, keys: KeyManager[K]) -> None:
        self._keys = keys
        self._found: list[tuple[str, bytes, str | None]] = []

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> K:
        key = self._keys.cached_encryption_key(namespace, binding, count)
        if key is None:
            raise WouldBlock
        return key

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> K:
        key = self._keys.cached_decryption_key(key_arn, encrypted_key, binding)
        if key is None:
            raise WouldBlock
        self._found.append((key_arn, encrypted_key, binding))
        return key

    def count_hits(self) -> None:
        """The call was answered (or refused) with these keys: count what it found."""
        self._keys.count_cached_hits(self._found)

    def forget(self) -> None:
        """The call is to be redone: what it found must not count."""
        self._found.clear()


class RequestKeys(Generic[K]):
    """The key source of one request: the manager's keys, with at most ``budget`` data keys unwrapped
    through KMS (cached keys cost nothing)."""

    def __init__(self, keys: KeyManager[K], budget: UnwrapBudget) -> None:
        self._keys = keys
        self._budget = budget

    def encryption_key(self, namespace: str, binding: str | None, count: int) -> K:
        return self._keys.encryption_key(namespace, binding, count)

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> K:
        return self._keys.decryption_key(key_arn, encrypted_key, binding, self._budget)
