"""The two data-key caches, each with explicit, validated limits and its own lock.

* :class:`CurrentKeyCache` holds the data key used for new encryptions, one per
  slot (master key alias, bound namespace), and the next one fetched ahead. A key
  retires after ``max_age`` seconds or ``max_encryptions`` uses, whichever comes
  first.
* :class:`DecryptedKeyCache` holds unwrapped data keys by their encrypted form, so
  each is unwrapped through KMS once: entries expire ``ttl`` seconds after
  insertion and the least recently used entry goes when ``capacity`` is reached.

Both hold keys of any type with a ``key_id`` (:class:`ManagedKey`): the codec
core's ``DataKey`` in production. Time comes from an injected monotonic clock, so
tests can move it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

Clock = Callable[[], float]
Slot = tuple[str, str | None]  # (master key alias, bound namespace or None)
MAX_ENCRYPTIONS_LIMIT = 2**32  # NIST SP 800-38D bound for random 96-bit nonces


class ManagedKey(Protocol):
    """What key management reads of a data key: which master key wrapped it, how, for which namespace."""

    @property
    def key_id(self) -> str: ...

    @property
    def encrypted_key(self) -> bytes: ...

    @property
    def namespace(self) -> str | None: ...


K = TypeVar("K", bound=ManagedKey)
V = TypeVar("V")  # what a DecryptedKeyCache holds: data keys, or remembered refusals


@dataclass(frozen=True)
class CurrentKeyInfo:
    """What may be shown about a current key: never the key itself."""

    alias: str
    namespace: str | None
    key_arn: str
    age: float
    expires_in: float
    expired: bool
    overdue: bool
    encryptions: int
    next_ready: bool

    @property
    def slot(self) -> Slot:
        return (self.alias, self.namespace)


class Reservation(NamedTuple, Generic[K]):
    """The answer of :meth:`CurrentKeyCache.reserve`.

    ``key`` is None when the caller must generate a key and wait for it;
    ``generation`` identifies the slot state the caller saw; ``refresh`` asks the
    caller to fetch the next key in the background; ``overdue`` says the key is
    past its rotation time and is used only because no next key could be had.
    """

    key: K | None
    generation: int
    refresh: bool = False
    overdue: bool = False
    replaced: CurrentKeyInfo | None = None  # the key the next key took over from, at this call
    # A NamedTuple, not a frozen dataclass: one is made per Encode call, and it is 0.6 µs cheaper.


class _Current(Generic[K]):
    __slots__ = ("created", "encryptions", "generation", "key", "next", "outage", "quiet", "quiet_until")

    def __init__(self, key: K, created: float, generation: int, quiet_for: float) -> None:
        self.key = key
        self.next: K | None = None
        self.outage = False  # KMS failed to give this slot a new key: the grace applies
        self.start(key, created, generation, quiet_for)

    def start(self, key: K, created: float, generation: int, quiet_for: float) -> None:
        """(Re)start the slot's life with ``key``."""
        self.key = key
        self.created = created
        self.encryptions = 0
        self.generation = generation
        # Until quiet_until (and below half the encryption limit) a reservation has nothing to decide:
        # no refresh is due and the key is usable. Its answer is always this one.
        self.quiet: Reservation[K] = Reservation(key, generation)
        self.quiet_until = created + quiet_for


class CurrentKeyCache(Generic[K]):
    """Current data key per slot, retired by age or by number of encryptions.

    The next key of a slot is fetched ahead (:meth:`offer_next`) once the current
    one has used up half its age (at most ``refresh_lead`` seconds before the end)
    or half its encryptions, and replaces it without waiting when it retires.
    While KMS fails to give a slot a new key (:meth:`set_outage`), a key past its
    age keeps serving for up to ``grace`` seconds more; the encryption limit is
    never exceeded.
    """

    def __init__(
        self,
        *,
        max_age: float,
        max_encryptions: int,
        clock: Clock,
        grace: float = 0.0,
        refresh_lead: float | None = None,
        max_slots: int = 1000,
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        if not max_age > 0:
            raise ValueError(f"max_age must be greater than 0, got {max_age}")
        if not 1 <= max_encryptions <= MAX_ENCRYPTIONS_LIMIT:
            raise ValueError(f"max_encryptions must be between 1 and 2**32, got {max_encryptions}")
        if grace < 0:
            raise ValueError(f"grace must be 0 or more, got {grace}")
        self.max_age = max_age
        self.max_encryptions = max_encryptions
        self.grace = grace
        # Fetch the next key halfway through the current one's life, at most 5 minutes early.
        self.refresh_lead = min(max_age / 2, 300.0) if refresh_lead is None else refresh_lead
        self._refresh_at = max_encryptions / 2  # encryptions after which the next key is fetched
        self._clock = clock
        self._lock = threading.Lock()
        # In order of use, least recent first: past max_slots the least recently used slot goes.
        self._slots: OrderedDict[Slot, _Current[K]] = OrderedDict()
        self.max_slots = max_slots
        self.evictions = 0
        self.hits = 0
        self.misses = 0

    def reserve_cached(self, slot: Slot, count: int) -> Reservation[K]:
        """Like :meth:`reserve`, except that a miss (``key`` None) is not counted: for a caller that
        cannot wait for a new key and will ask again with :meth:`reserve`, which counts it then."""
        return self.reserve(slot, count, count_miss=False)

    def reserve(self, slot: Slot, count: int, *, count_miss: bool = True) -> Reservation[K]:
        """Take ``count`` encryptions from the slot's key (see :class:`Reservation`)."""
        now = self._clock()
        with self._lock:
            entry = self._slots.get(slot)
            if entry is not None and now < entry.quiet_until and entry.encryptions + count < self._refresh_at:
                entry.encryptions += count  # the common case, decided without the rules below
                self.hits += 1
                self._slots.move_to_end(slot)
                return entry.quiet
            if entry is None:
                self.misses += count_miss
                return Reservation(None, 0)
            replaced = None
            if entry.next is not None and not self._usable(entry, count, now, 0.0):
                replaced = self._info(slot, entry, now)
                self._promote(entry, now)
            if not self._usable(entry, count, now, self.grace if entry.outage else 0.0):
                self.misses += count_miss
                return Reservation(None, entry.generation)
            entry.encryptions += count
            self.hits += 1
            self._slots.move_to_end(slot)
            age = now - entry.created
            due = age >= self.max_age - self.refresh_lead or entry.encryptions >= self._refresh_at
            return Reservation(
                entry.key,
                entry.generation,
                refresh=due and entry.next is None,
                overdue=age >= self.max_age,
                replaced=replaced,
            )

    def generation(self, slot: Slot) -> int:
        with self._lock:
            entry = self._slots.get(slot)
            return 0 if entry is None else entry.generation

    def install(self, slot: Slot, key: K) -> None:
        """Make ``key`` the slot's current key, with no encryptions yet."""
        now = self._clock()
        with self._lock:
            previous = self._slots.get(slot)
            generation = 1 if previous is None else previous.generation + 1
            self._slots[slot] = _Current(key, now, generation, self.max_age - self.refresh_lead)
            self._slots.move_to_end(slot)
            while len(self._slots) > self.max_slots:
                # Its namespace's next Encode generates a new key: bounded memory, Stats and metrics.
                self._slots.popitem(last=False)
                self.evictions += 1

    def offer_next(self, slot: Slot, key: K) -> bool:
        """Keep ``key`` as the slot's next key; False when the slot needs none (any more)."""
        with self._lock:
            entry = self._slots.get(slot)
            if entry is None or entry.next is not None:
                return False
            entry.next = key
            return True

    def set_outage(self, slot: Slot, outage: bool) -> bool:
        """Record whether KMS is failing to renew the slot's key; False when the slot has no key."""
        with self._lock:
            entry = self._slots.get(slot)
            if entry is not None:
                entry.outage = outage
            return entry is not None

    def has_next(self, slot: Slot) -> bool:
        with self._lock:
            entry = self._slots.get(slot)
            return entry is not None and entry.next is not None

    def wants_next(self, slot: Slot) -> bool:
        with self._lock:
            entry = self._slots.get(slot)
            return entry is not None and entry.next is None

    def describe(self) -> list[CurrentKeyInfo]:
        now = self._clock()
        with self._lock:
            return [self._info(slot, entry, now) for slot, entry in self._slots.items()]

    def current_keys(self) -> list[K]:
        with self._lock:
            return [key for entry in self._slots.values() for key in (entry.key, entry.next) if key is not None]

    def _usable(self, entry: _Current[K], count: int, now: float, grace: float) -> bool:
        return now - entry.created < self.max_age + grace and entry.encryptions + count <= self.max_encryptions

    def _promote(self, entry: _Current[K], now: float) -> None:
        assert entry.next is not None
        entry.start(entry.next, now, entry.generation + 1, self.max_age - self.refresh_lead)
        entry.next = None

    def _info(self, slot: Slot, entry: _Current[K], now: float) -> CurrentKeyInfo:
        age = max(0.0, now - entry.created)
        expired = age >= self.max_age or entry.encryptions >= self.max_encryptions
        return CurrentKeyInfo(
            alias=slot[0],
            namespace=slot[1],
            key_arn=entry.key.key_id,
            age=age,
            expires_in=0.0 if expired else self.max_age - age,
            expired=expired,
            overdue=expired and entry.outage,
            encryptions=entry.encryptions,
            next_ready=entry.next is not None,
        )


class DecryptedKeyCache(Generic[V]):
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
        self._entries: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, cache_key: Hashable) -> V | None:
        now = self._clock()
        with self._lock:
            key = self._hit(cache_key, now)
            if key is not None:
                return key
            self._entries.pop(cache_key, None)  # there, but expired
            self.misses += 1
            return None

    def touch(self, cache_key: Hashable) -> None:
        """Count a hit and mark the entry recently used, as :meth:`get` does, when it is cached;
        otherwise change nothing. For keys found earlier with :meth:`peek`."""
        now = self._clock()
        with self._lock:
            self._hit(cache_key, now)

    def _hit(self, cache_key: Hashable, now: float) -> V | None:
        """The unexpired key, counted as a hit and marked recently used; None otherwise (lock held)."""
        found = self._entries.get(cache_key)
        if found is None or found[1] <= now:
            return None
        self._entries.move_to_end(cache_key)
        self.hits += 1
        return found[0]

    def peek(self, cache_key: Hashable) -> V | None:
        """Like :meth:`get` without touching counters or recency."""
        now = self._clock()
        with self._lock:
            found = self._entries.get(cache_key)
            return found[0] if found is not None and found[1] > now else None

    def put(self, cache_key: Hashable, key: V) -> None:
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
