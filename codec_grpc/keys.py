"""Key management: which master key a namespace uses, and the data-key caches.

:class:`KeyManager` answers the codec's two questions, "which data key encrypts
this batch?" and "which data key decrypts this payload?", from its caches when
it can and through the key provider (KMS) when it must. Concurrent misses for
the same key share one provider call (single-flight). Thread-safe.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from codec_grpc import errors
from codec_grpc.caches import Clock, CurrentKeyCache, CurrentKeyInfo, DecryptedKeyCache
from codec_grpc.kms import GeneratedKey
from codec_grpc.singleflight import SingleFlight
from codec_grpc.wireformat import DataKey

log = logging.getLogger(__name__)


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


class KeyManager:
    """Data keys for encryption (current key per slot) and decryption (unwrapped keys)."""

    def __init__(self, provider: KeyProvider, policy: KeyPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._provider = provider
        self._current = CurrentKeyCache(
            max_age=policy.rotation_interval, max_encryptions=policy.max_encryptions, clock=clock
        )
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
            key, seen = self._current.reserve(slot, count)
            if key is not None:
                return key
            self._generating.do(slot, functools.partial(self._rotate, slot, seen))

    def decryption_key(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        """The data key ``encrypted_key`` wraps, unwrapped through KMS at most once while cached."""
        cache_key = (key_arn, encrypted_key, binding)
        key = self._decrypted.get(cache_key)
        if key is not None:
            return key
        return self._unwrapping.do(cache_key, lambda: self._unwrap(key_arn, encrypted_key, binding))

    def stats(self) -> KeyStats:
        current = self._current.describe()
        in_cold = sum(
            1 for k in self._current.current_keys() if (k.key_id, k.encrypted_key, k.namespace) in self._decrypted
        )
        cold_size = len(self._decrypted)
        return KeyStats(
            cached_keys=cold_size + len(current) - in_cold,
            current_keys=[_current_stats(info) for info in current],
            hot_hits=self._current.hits,
            hot_misses=self._current.misses,
            cold_hits=self._decrypted.hits,
            cold_misses=self._decrypted.misses,
            cold_evictions=self._decrypted.evictions,
            cold_size=cold_size,
            cold_capacity=self._decrypted.capacity,
        )

    def _rotate(self, slot: tuple[str, str | None], seen: int) -> None:
        if self._current.generation(slot) != seen:
            return  # another caller already replaced the key this caller found retired
        alias, binding = slot
        generated = self._provider.generate_data_key(alias, binding)
        key = DataKey(generated.plaintext, generated.key_arn, generated.encrypted_key, binding)
        self._decrypted.put((key.key_id, key.encrypted_key, binding), key)
        previous = next((info for info in self._current.describe() if info.slot == slot), None)
        self._current.install(slot, key)
        _log_rotation(slot, key.key_id, previous)

    def _unwrap(self, key_arn: str, encrypted_key: bytes, binding: str | None) -> DataKey:
        cache_key = (key_arn, encrypted_key, binding)
        key = self._decrypted.peek(cache_key)
        if key is not None:
            return key  # filled by a call that finished while this one was queued
        plaintext = self._provider.decrypt_data_key(encrypted_key, key_arn, binding)
        key = DataKey(plaintext, key_arn, encrypted_key, binding)
        self._decrypted.put(cache_key, key)
        return key


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
    )
