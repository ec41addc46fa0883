"""Key management with a fake provider and a fake clock: caches, rotation, single-flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec_grpc import errors
from codec_grpc.core.envelope import DataKey
from codec_grpc.keys import KeyManager, KeyPolicy
from codec_grpc.keys.caches import CurrentKeyCache, DecryptedKeyCache
from codec_grpc.keys.singleflight import SingleFlight
from tests.support.fakes import FakeClock, FakeProvider
from tests.support.fuzzing import examples


def inline(task: Callable[[], None]) -> None:
    task()


def manager(
    provider: FakeProvider, clock: FakeClock, spawn: Callable[[Callable[[], None]], None] = inline, **policy: object
) -> KeyManager[DataKey]:
    """Background refreshes run inline (at once, in the caller) unless ``spawn`` says otherwise."""
    settings: dict[str, object] = {"default_alias": "alias/default", **policy}
    return KeyManager(provider, KeyPolicy(**settings), DataKey, clock=clock, spawn=spawn)  # type: ignore[arg-type]


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_current_key_is_reused_until_rotation_interval(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, rotation_interval=60)
    first = keys.encryption_key("ns", "ns", 1)
    for _ in range(1000):
        assert keys.encryption_key("ns", "ns", 1) is first
    assert provider.calls["GenerateDataKey"] == 1
    clock.advance(30)  # halfway: the next key is fetched ahead, the current one still serves
    assert keys.encryption_key("ns", "ns", 1) is first
    assert provider.calls["GenerateDataKey"] == 2
    assert keys.stats().current_keys[0].next_ready
    clock.advance(29.9)
    assert keys.encryption_key("ns", "ns", 1) is first
    clock.advance(0.1)
    second = keys.encryption_key("ns", "ns", 1)
    assert second is not first
    assert provider.calls["GenerateDataKey"] == 2  # the next key was ready: no KMS call at rotation
    info = keys.stats().current_keys[0]
    assert (info.age, info.encryptions, info.next_ready) == (0, 1, False)


def test_current_key_retires_after_max_encryptions(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, max_encryptions=10)
    first = keys.encryption_key("ns", "ns", 4)
    assert provider.calls["GenerateDataKey"] == 1
    assert keys.encryption_key("ns", "ns", 6) is first  # half used: the next key is fetched ahead
    assert provider.calls["GenerateDataKey"] == 2
    second = keys.encryption_key("ns", "ns", 1)
    assert second is not first
    assert keys.stats().current_keys[0].encryptions == 1
    assert provider.calls["GenerateDataKey"] == 2


def test_encryption_limit_is_never_exceeded_even_in_grace(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, max_encryptions=10, spawn=lambda task: None)  # refreshes never run
    keys.encryption_key("ns", "ns", 10)
    provider.fail_with = errors.KmsUnavailableError("KMS down")
    with pytest.raises(errors.KmsUnavailableError):
        keys.encryption_key("ns", "ns", 1)  # fresh by age, but used up: no grace for the count
    assert keys.stats().current_keys[0].encryptions == 10


class StopRetrying(BaseException):
    """Ends a refresh loop from the test's fake sleep (not an Exception: the loop must not catch it)."""


def test_refresh_failures_keep_the_key_through_the_grace_then_fail(clock: FakeClock) -> None:
    provider = FakeProvider()
    tasks: list[Callable[[], None]] = []
    keys = manager(
        provider,
        clock,
        spawn=tasks.append,
        rotation_interval=60,
        outage_grace=100,
        refresh_backoff=1,
        refresh_backoff_max=4,
    )
    first = keys.encryption_key("ns", "ns", 1)
    provider.fail_with = errors.KmsUnavailableError("KMS GenerateDataKey with key alias/default: cannot reach KMS")
    clock.advance(30)
    assert keys.encryption_key("ns", "ns", 1) is first
    assert len(tasks) == 1
    keys.encryption_key("ns", "ns", 1)
    assert len(tasks) == 1  # one refresh per slot at a time
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 5:
            raise StopRetrying

    keys._sleep = sleep
    with pytest.raises(StopRetrying):
        tasks.pop()()
    assert slept == [1, 2, 4, 4, 4]
    stats = keys.stats()
    assert stats.degraded and stats.refresh_failures == 5
    assert "cannot reach KMS" in stats.last_refresh_error
    clock.advance(30 + 99)  # 159 s old: past rotation, within the 100 s grace
    assert keys.encryption_key("ns", "ns", 1) is first
    assert keys.stats().current_keys[0].overdue
    clock.advance(1)  # grace over: every encode now needs KMS, and fails
    with pytest.raises(errors.KmsUnavailableError):
        keys.encryption_key("ns", "ns", 1)
    provider.fail_with = None  # KMS back: the next encode succeeds, no restart
    assert keys.encryption_key("ns", "ns", 1) is not first
    assert not keys.stats().degraded


def test_no_request_waits_on_kms_at_a_scheduled_rotation() -> None:
    """Real threads, real time: rotation every 0.6 s, a KMS that answers in 0.25 s."""
    provider = FakeProvider(delay=0.25)
    keys = KeyManager(provider, KeyPolicy(default_alias="alias/x", rotation_interval=0.6), DataKey)
    keys.encryption_key("ns", "ns", 1)  # the first key is waited for
    slowest = 0.0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        started = time.monotonic()
        keys.encryption_key("ns", "ns", 1)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.005)
    assert provider.calls["GenerateDataKey"] >= 4  # rotated several times
    assert slowest < 0.1


def test_batch_larger_than_key_limit_is_refused(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, max_encryptions=10)
    with pytest.raises(errors.RequestTooLargeError, match="a batch of 11 payloads exceeds DATA_KEY_MAX_ENCRYPTIONS=10"):
        keys.encryption_key("ns", "ns", 11)


def test_slots_per_alias_and_binding(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, namespace_aliases={"team-a": "alias/a"})
    a = keys.encryption_key("team-a", "team-a", 1)
    b = keys.encryption_key("team-b", "team-b", 1)
    c = keys.encryption_key("team-c", "team-c", 1)
    unbound_a = keys.encryption_key("team-a", None, 1)
    unbound_b = keys.encryption_key("team-b", None, 1)
    assert a.key_id.endswith("alias/a") and b.key_id.endswith("alias/default")
    assert len({id(k) for k in (a, b, c, unbound_a, unbound_b)}) == 5
    assert keys.encryption_key("team-d", None, 1) is unbound_b
    slots = {(k.alias, k.namespace) for k in keys.stats().current_keys}
    assert ("alias/a", "team-a") in slots and ("alias/default", None) in slots


def test_generated_key_decrypts_without_provider_call(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock)
    key = keys.encryption_key("ns", "ns", 1)
    assert keys.decryption_key(key.key_id, key.encrypted_key, "ns") is key
    assert provider.calls["Decrypt"] == 0


def test_decryption_key_unwrapped_once_then_cached_until_ttl(provider: FakeProvider, clock: FakeClock) -> None:
    writer = manager(FakeProvider(), clock)
    written = writer.encryption_key("ns", "ns", 1)
    keys = manager(provider, clock, cache_ttl=100)
    for _ in range(1000):
        keys.decryption_key(written.key_id, written.encrypted_key, "ns")
    assert provider.calls["Decrypt"] == 1
    clock.advance(100)
    keys.decryption_key(written.key_id, written.encrypted_key, "ns")
    assert provider.calls["Decrypt"] == 2


def test_decrypted_cache_evicts_least_recently_used(provider: FakeProvider, clock: FakeClock) -> None:
    writer = manager(FakeProvider(), clock, max_encryptions=1)
    written = [writer.encryption_key("ns", "ns", 1) for _ in range(3)]
    keys = manager(provider, clock, cache_capacity=2)
    for key in written[:2]:
        keys.decryption_key(key.key_id, key.encrypted_key, "ns")
    keys.decryption_key(written[0].key_id, written[0].encrypted_key, "ns")  # 0 is now most recent
    keys.decryption_key(written[2].key_id, written[2].encrypted_key, "ns")  # evicts 1
    assert provider.calls["Decrypt"] == 3
    keys.decryption_key(written[0].key_id, written[0].encrypted_key, "ns")
    assert provider.calls["Decrypt"] == 3
    keys.decryption_key(written[1].key_id, written[1].encrypted_key, "ns")
    assert provider.calls["Decrypt"] == 4
    stats = keys.stats()
    assert (stats.decrypted_size, stats.decrypted_capacity, stats.decrypted_evictions) == (2, 2, 2)


def test_cache_key_includes_namespace(provider: FakeProvider, clock: FakeClock) -> None:
    """A key unwrapped for one namespace is not handed out for another without KMS."""
    keys = manager(provider, clock)
    key = keys.encryption_key("ns", "ns", 1)
    with pytest.raises(errors.KmsInvalidCiphertextError):
        keys.decryption_key(key.key_id, key.encrypted_key, "other")
    assert provider.calls["Decrypt"] == 1


def test_concurrent_misses_make_one_generate_call(clock: FakeClock) -> None:
    provider = FakeProvider(delay=0.2)
    keys = manager(provider, clock)
    barrier = threading.Barrier(16)

    def encrypt() -> object:
        barrier.wait()
        return keys.encryption_key("ns", "ns", 1)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: encrypt(), range(16)))
    assert provider.calls["GenerateDataKey"] == 1
    assert len({id(k) for k in results}) == 1
    assert keys.stats().current_keys[0].encryptions == 16


def test_concurrent_rotation_makes_one_generate_call(clock: FakeClock) -> None:
    provider = FakeProvider(delay=0.1)
    keys = manager(provider, clock, rotation_interval=10)
    keys.encryption_key("ns", "ns", 1)
    clock.advance(10)
    barrier = threading.Barrier(12)

    def encrypt() -> object:
        barrier.wait()
        return keys.encryption_key("ns", "ns", 1)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda _: encrypt(), range(12)))
    assert provider.calls["GenerateDataKey"] == 2


def test_concurrent_decrypted_cache_misses_make_one_decrypt_call(clock: FakeClock) -> None:
    written = manager(FakeProvider(), clock).encryption_key("ns", "ns", 1)
    provider = FakeProvider(delay=0.2)
    keys = manager(provider, clock)
    barrier = threading.Barrier(16)

    def unwrap() -> object:
        barrier.wait()
        return keys.decryption_key(written.key_id, written.encrypted_key, "ns")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: unwrap(), range(16)))
    assert provider.calls["Decrypt"] == 1
    assert len({id(k) for k in results}) == 1


def test_waiters_share_the_leaders_error_and_later_calls_retry(clock: FakeClock) -> None:
    provider = FakeProvider(delay=0.2)
    provider.fail_with = errors.KmsUnavailableError("KMS down")
    keys = manager(provider, clock)
    barrier = threading.Barrier(8)

    def encrypt() -> BaseException | None:
        barrier.wait()
        try:
            keys.encryption_key("ns", "ns", 1)
        except errors.KmsUnavailableError as exc:
            return exc
        return None

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: encrypt(), range(8)))
    assert all(isinstance(o, errors.KmsUnavailableError) for o in outcomes)
    assert provider.calls["GenerateDataKey"] == 1
    provider.fail_with = None
    keys.encryption_key("ns", "ns", 1)
    assert provider.calls["GenerateDataKey"] == 2


def test_stats_count_distinct_keys_and_expiry(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, rotation_interval=100)
    keys.encryption_key("a", "a", 3)
    keys.encryption_key("b", "b", 1)
    clock.advance(40)
    stats = keys.stats()
    assert stats.cached_keys == 2
    current = {k.namespace: k for k in stats.current_keys}
    assert current["a"].age == pytest.approx(40)
    assert current["a"].expires_in == pytest.approx(60)
    assert current["a"].encryptions == 3 and not current["a"].expired
    clock.advance(60)
    assert all(k.expired and k.expires_in == 0 for k in keys.stats().current_keys)
    assert "plaintext" not in repr(stats)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_age": 0, "max_encryptions": 1}, "max_age must be greater than 0, got 0"),
        ({"max_age": 1, "max_encryptions": 0}, "max_encryptions must be between 1 and 2\\*\\*32, got 0"),
        (
            {"max_age": 1, "max_encryptions": 2**32 + 1},
            "max_encryptions must be between 1 and 2\\*\\*32, got 4294967297",
        ),
    ],
)
def test_current_cache_limits_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        CurrentKeyCache(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0, "capacity": 1}, "ttl must be greater than 0, got 0"),
        ({"ttl": 1, "capacity": 0}, "capacity must be at least 1, got 0"),
    ],
)
def test_decrypted_cache_limits_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        DecryptedKeyCache(clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


def test_single_flight_forgets_completed_calls() -> None:
    flight: SingleFlight[int] = SingleFlight()
    assert flight.do("k", lambda: 1) == 1
    assert flight.do("k", lambda: 2) == 2

    def failing() -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        flight.do("k", failing)
    assert flight.do("k", lambda: 3) == 3  # a failed call is forgotten too: nobody waits on it


def test_kms_down_at_an_idle_rotation_uses_the_grace(provider: FakeProvider, clock: FakeClock) -> None:
    tasks: list[Callable[[], None]] = []
    keys = manager(provider, clock, spawn=tasks.append, rotation_interval=60, outage_grace=100)
    first = keys.encryption_key("ns", "ns", 1)
    clock.advance(61)  # nobody encoded in the second half: no next key was fetched
    provider.fail_with = errors.KmsUnavailableError("KMS down")
    assert keys.encryption_key("ns", "ns", 1) is first  # the KMS call failed: the grace applies
    assert len(tasks) == 1  # and a background renewal is under way
    assert keys.stats().degraded
    provider.fail_with = None
    tasks.pop()()
    clock.advance(1)
    assert keys.encryption_key("ns", "ns", 1) is not first
    assert not keys.stats().degraded


def test_only_an_unavailable_kms_opens_the_grace(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, spawn=lambda task: None, rotation_interval=60, outage_grace=100)
    keys.encryption_key("ns", "ns", 1)
    clock.advance(61)
    provider.fail_with = errors.KmsAccessDeniedError("access denied")
    with pytest.raises(errors.KmsAccessDeniedError):
        keys.encryption_key("ns", "ns", 1)


@st.composite
def _reservations(draw: st.DrawFn) -> list[tuple[str, float]]:
    steps = st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
        st.tuples(st.just("reserve"), st.integers(1, 30).map(float)),
        st.tuples(st.just("next"), st.just(0.0)),
        st.tuples(st.just("outage"), st.sampled_from([0.0, 1.0])),
    )
    return draw(st.lists(steps, min_size=1, max_size=60))


@dataclass
class _Slot:
    """The test's model of one slot of the current-key cache."""

    key: DataKey
    created: float
    uses: int = 0
    generation: int = 1
    next: DataKey | None = None
    outage: bool = False

    def usable(self, now: float, count: int, max_age: float, limit: int, grace: float) -> bool:
        return now - self.created < max_age + grace and self.uses + count <= limit


@examples(300)
@given(steps=_reservations(), max_age=st.sampled_from([10.0, 60.0, 100.0]), limit=st.sampled_from([7, 50, 1000]))
def test_reservations_follow_the_documented_rules(steps: list[tuple[str, float]], max_age: float, limit: int) -> None:
    """The cache (with its shortcut for the common case) answers as the rules in its docstring say,
    checked against a model of those rules kept here: usable while younger than max_age (+ grace in
    an outage) and within the encryption limit; the next key fetched from half the age or half the
    encryptions; a next key takes over when the current one can no longer serve."""
    clock = FakeClock()
    grace = 15.0
    cache: CurrentKeyCache[DataKey] = CurrentKeyCache(max_age=max_age, max_encryptions=limit, clock=clock, grace=grace)
    slot = ("alias/default", "default")
    provider = FakeProvider()

    def new_key() -> DataKey:
        generated = provider.generate_data_key("alias/default", None)
        return DataKey(generated.plaintext, generated.key_arn, generated.encrypted_key, "default")

    model = _Slot(new_key(), clock())
    cache.install(slot, model.key)
    lead = min(max_age / 2, 300.0)
    for action, value in steps:
        now = clock()
        if action == "advance":
            clock.advance(value)
        elif action == "next":
            key = new_key()
            assert cache.offer_next(slot, key) == (model.next is None)
            model.next = model.next or key
        elif action == "outage":
            cache.set_outage(slot, bool(value))
            model.outage = bool(value)
        else:
            count = int(value)
            answer = cache.reserve(slot, count)
            if model.next is not None and not model.usable(now, count, max_age, limit, 0.0):
                model = _Slot(model.next, now, generation=model.generation + 1, outage=model.outage)
            if not model.usable(now, count, max_age, limit, grace if model.outage else 0.0):
                assert (answer.key, answer.generation) == (None, model.generation)
                continue
            model.uses += count
            age = now - model.created
            assert answer.key is model.key
            assert answer.generation == model.generation
            assert answer.refresh == ((age >= max_age - lead or model.uses >= limit / 2) and model.next is None)
            assert answer.overdue == (age >= max_age)


def test_cached_encryption_key_never_calls_kms_and_a_miss_costs_nothing(
    provider: FakeProvider, clock: FakeClock
) -> None:
    keys = manager(provider, clock, spawn=lambda task: None, rotation_interval=60, max_encryptions=10)  # no next key
    assert keys.cached_encryption_key("ns", "ns", 1) is None  # nothing cached: no KMS call, no miss counted
    assert provider.calls["GenerateDataKey"] == 0
    assert (keys.stats().current_hits, keys.stats().current_misses) == (0, 0)
    first = keys.encryption_key("ns", "ns", 2)  # the caller's redo: counted as the one miss (then a hit)
    assert (keys.stats().current_hits, keys.stats().current_misses) == (1, 1)
    assert keys.cached_encryption_key("ns", "ns", 3) is first
    info = keys.stats().current_keys[0]
    assert (info.encryptions, keys.stats().current_hits, keys.stats().current_misses) == (5, 2, 1)
    # A batch the key cannot take any more: None, and nothing reserved or counted.
    assert keys.cached_encryption_key("ns", "ns", 6) is None
    assert (keys.stats().current_keys[0].encryptions, keys.stats().current_misses) == (5, 1)
    assert provider.calls["GenerateDataKey"] == 1
    with pytest.raises(errors.RequestTooLargeError, match="DATA_KEY_MAX_ENCRYPTIONS"):
        keys.cached_encryption_key("ns", "ns", 11)
    clock.advance(61)  # retired by age: a new key needs KMS
    assert keys.cached_encryption_key("ns", "ns", 1) is None
    assert keys.stats().current_misses == 1


def test_cached_encryption_key_takes_a_next_key_fetched_ahead(provider: FakeProvider, clock: FakeClock) -> None:
    keys = manager(provider, clock, rotation_interval=60)
    first = keys.encryption_key("ns", "ns", 1)
    clock.advance(31)
    assert keys.cached_encryption_key("ns", "ns", 1) is first  # past halfway: the next key is fetched (inline)
    assert provider.calls["GenerateDataKey"] == 2
    clock.advance(30)
    second = keys.cached_encryption_key("ns", "ns", 1)  # rotation: the next key serves, no KMS call
    assert second is not None and second is not first
    assert provider.calls["GenerateDataKey"] == 2


def test_cached_decryption_key_counts_nothing_until_its_hits_are_reported(
    provider: FakeProvider, clock: FakeClock
) -> None:
    writer = manager(FakeProvider(), clock)
    written = [writer.encryption_key("ns", "ns", 1)]
    clock.advance(3601)
    written.append(writer.encryption_key("ns", "ns", 1))
    keys = manager(provider, clock, cache_ttl=100, cache_capacity=2)
    first, second = [(key.key_id, key.encrypted_key, "ns") for key in written]
    assert keys.cached_decryption_key(*first) is None
    assert (provider.calls["Decrypt"], keys.stats().decrypted_misses, keys.stats().decrypted_hits) == (0, 0, 0)
    unwrapped = keys.decryption_key(*first)
    keys.decryption_key(*second)
    assert (provider.calls["Decrypt"], keys.stats().decrypted_misses) == (2, 2)
    assert keys.cached_decryption_key(*first) is unwrapped
    assert keys.stats().decrypted_hits == 0
    keys.count_cached_hits([first])  # a hit, and the most recently used: the next key evicts the second
    assert keys.stats().decrypted_hits == 1
    keys.decryption_key(written[0].key_id, b"|".join([b"alias/default", b"ns", b"99"]), "ns")
    assert keys.cached_decryption_key(*first) is unwrapped
    assert keys.cached_decryption_key(*second) is None
    clock.advance(101)  # expired: None; an expired key reported as found counts nothing
    assert keys.cached_decryption_key(*first) is None
    keys.count_cached_hits([first])
    assert (keys.stats().decrypted_hits, keys.stats().decrypted_misses) == (1, 3)
