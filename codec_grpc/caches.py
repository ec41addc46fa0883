"""The two data-key caches, each with explicit, validated limits and its own lock.

* :class:`CurrentKeyCache` (hot) holds the data key used for new encryptions, one
  per slot (master key alias, bound namespace). A key retires after ``max_age``
  seconds or ``max_encryptions`` uses, whichever comes first.
* :class:`DecryptedKeyCache` (cold) holds unwrapped data keys by their encrypted
  form, so each is unwrapped through KMS once: entries expire ``ttl`` seconds
  after insertion and the least recently used entry goes when ``capacity`` is
  reached.

Time comes from an injected monotonic clock, so tests can move it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from codec_grpc.wireformat import DataKey

Clock = Callable[[], float]
MAX_ENCRYPTIONS_LIMIT = 2**32  # NIST SP 800-38D bound for random 96-bit nonces


@dataclass(frozen=True)
class CurrentKeyInfo:
    """What may be shown about a current key: never the key itself."""

    slot: tuple[str, str | None]
    key_arn: str
    age: float
    expires_in: float
    expired: bool
    encryptions: int


class _Current:
    __slots__ = ("key", "created", "encryptions", "generation")

    def __init__(self, key: DataKey, created: float, generation: int) -> None:
        self.key = key
        self.created = created
        self.encryptions = 0
        self.generation = generation


class CurrentKeyCache:
    """Current data key per slot, retired by age or by number of encryptions."""

    def __init__(self, *, max_age: float, max_encryptions: int, clock: Clock) -> None:
        if not max_age > 0:
            raise ValueError(f"max_age must be greater than 0, got {max_age}")
        if not 1 <= max_encryptions <= MAX_ENCRYPTIONS_LIMIT:
            raise ValueError(f"max_encryptions must be between 1 and 2**32, got {max_encryptions}")
        self.max_age = max_age
        self.max_encryptions = max_encryptions
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str | None], _Current] = {}
        self.hits = 0
        self.misses = 0

    def reserve(self, slot: tuple[str, str | None], count: int) -> tuple[DataKey | None, int]:
        """Take ``count`` encryptions from the slot's key.

        Returns ``(key, generation)``; ``key`` is None when the slot is empty or its
        key is retired, and ``generation`` then identifies what the caller saw.
        """
        now = self._clock()
        with self._lock:
            entry = self._slots.get(slot)
            if entry is None:
                self.misses += 1
                return None, 0
            fresh = now - entry.created < self.max_age
            if fresh and entry.encryptions + count <= self.max_encryptions:
                entry.encryptions += count
                self.hits += 1
                return entry.key, entry.generation
            self.misses += 1
            return None, entry.generation

    def generation(self, slot: tuple[str, str | None]) -> int:
        with self._lock:
            entry = self._slots.get(slot)
            return 0 if entry is None else entry.generation

    def install(self, slot: tuple[str, str | None], key: DataKey) -> None:
        """Make ``key`` the slot's current key, with no encryptions yet."""
        now = self._clock()
        with self._lock:
            previous = self._slots.get(slot)
            generation = 1 if previous is None else previous.generation + 1
            self._slots[slot] = _Current(key, now, generation)

    def describe(self) -> list[CurrentKeyInfo]:
        now = self._clock()
        with self._lock:
            return [self._info(slot, entry, now) for slot, entry in self._slots.items()]

    def current_keys(self) -> list[DataKey]:
        with self._lock:
            return [entry.key for entry in self._slots.values()]

    def _info(self, slot: tuple[str, str | None], entry: _Current, now: float) -> CurrentKeyInfo:
        age = max(0.0, now - entry.created)
        expired = age >= self.max_age or entry.encryptions >= self.max_encryptions
        return CurrentKeyInfo(
            slot=slot,
            key_arn=entry.key.key_id,
            age=age,
            expires_in=0.0 if expired else self.max_age - age,
            expired=expired,
            encryptions=entry.encryptions,
        )


class DecryptedKeyCache:
    """Unwrapped data keys by their encrypted form: TTL from insertion, LRU capacity."""

    def __init__(self, *, ttl: float, capacity: int, clock: Clock) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be greater than 0, got {ttl}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[DataKey, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def get(self, cache_key: Hashable) -> DataKey | None:
        now = self._clock()
        with self._lock:
            found = self._entries.get(cache_key)
            if found is not None and found[1] > now:
                self._entries.move_to_end(cache_key)
                self.hits += 1
                return found[0]
            if found is not None:
                del self._entries[cache_key]
                self.expirations += 1
            self.misses += 1
            return None

    def peek(self, cache_key: Hashable) -> DataKey | None:
        """Like :meth:`get` without touching counters or recency."""
        now = self._clock()
        with self._lock:
            found = self._entries.get(cache_key)
            return found[0] if found is not None and found[1] > now else None

    def put(self, cache_key: Hashable, key: DataKey) -> None:
        expires = self._clock() + self.ttl
        with self._lock:
            self._entries[cache_key] = (key, expires)
            self._entries.move_to_end(cache_key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.evictions += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, cache_key: Hashable) -> bool:
        return self.peek(cache_key) is not None
