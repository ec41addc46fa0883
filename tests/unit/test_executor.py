"""The gRPC server's thread pool (codec_grpc.rpc.executor.CallExecutor): few calls running, calls
waiting for KMS stepped aside, threads bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures

import pytest

from codec_grpc.rpc.executor import CallExecutor

WAIT = 10.0  # seconds any event of these tests may take on a loaded machine


class Running:
    """Counts the calls running at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def test_calls_run_and_their_futures_carry_results_and_exceptions() -> None:
    pool = CallExecutor(running=2, max_threads=4)

    def fails() -> None:
        raise ValueError("boom")

    assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(WAIT) == 5
    with pytest.raises(ValueError, match="boom"):
        pool.submit(fails).result(WAIT)
    pool.shutdown()


def test_at_most_running_calls_run_at_once_and_the_rest_queue() -> None:
    pool = CallExecutor(running=2, max_threads=8)
    running = Running()

    def call() -> None:
        with running:
            time.sleep(0.02)

    done = [pool.submit(call) for _ in range(12)]
    futures.wait(done, WAIT)
    assert all(f.done() and f.exception() is None for f in done)
    assert running.most == 2
    assert pool.threads == 2  # queued calls waited for a running thread instead of starting more
    pool.shutdown()


def test_one_call_after_another_reuses_the_threads_it_started() -> None:
    """Threads start for turns, not for calls: a call may come before the thread that answered the
    last one is idle again (so a second one starts), but never more than the turns."""
    pool = CallExecutor(running=2, max_threads=16)
    names = {pool.submit(lambda: threading.current_thread().name).result(WAIT) for _ in range(50)}
    assert 1 <= len(names) <= 2
    assert pool.threads <= 2
    pool.shutdown()


def test_a_call_waiting_for_kms_steps_aside_for_a_queued_call() -> None:
    """With one call running at a time, a call stepped aside (waiting for KMS) lets the next run."""
    pool = CallExecutor(running=1, max_threads=2)
    kms_answered = threading.Event()

    def waits_for_kms() -> str:
        with pool.stepping_aside():
            assert kms_answered.wait(WAIT)
        return "cold"

    cold = pool.submit(waits_for_kms)
    warm = pool.submit(lambda: "warm")
    assert warm.result(WAIT) == "warm"  # while the cold call still waits
    assert not cold.done()
    kms_answered.set()
    assert cold.result(WAIT) == "cold"
    pool.shutdown()


def test_a_call_back_from_kms_runs_before_queued_calls() -> None:
    pool = CallExecutor(running=1, max_threads=3)
    order: list[str] = []
    kms_answered, warm_started = threading.Event(), threading.Event()
    release_warm = threading.Event()

    def cold() -> None:
        with pool.stepping_aside():
            assert kms_answered.wait(WAIT)
        order.append("cold")

    def warm(name: str, block: bool) -> None:
        if block:
            warm_started.set()
            assert release_warm.wait(WAIT)
        order.append(name)

    first = pool.submit(cold)
    running = pool.submit(warm, "warm-1", True)
    assert warm_started.wait(WAIT)
    queued = pool.submit(warm, "warm-2", False)
    kms_answered.set()  # the cold call waits for a turn; warm-2 waits in the queue
    time.sleep(0.1)
    release_warm.set()
    futures.wait([first, running, queued], WAIT)
    assert order == ["warm-1", "cold", "warm-2"]
    pool.shutdown()


def test_threads_are_bounded_even_when_every_call_waits_for_kms() -> None:
    pool = CallExecutor(running=1, max_threads=2)
    kms_answered = threading.Event()
    started: list[int] = []

    def cold(number: int) -> None:
        started.append(number)
        with pool.stepping_aside():
            assert kms_answered.wait(WAIT)

    calls = [pool.submit(cold, n) for n in range(3)]
    time.sleep(0.2)
    assert sorted(started) == [0, 1]  # the third waits for one of the two threads
    assert pool.threads == 2
    kms_answered.set()
    futures.wait(calls, WAIT)
    assert sorted(started) == [0, 1, 2]
    pool.shutdown()


def test_stepping_aside_outside_the_pool_does_nothing() -> None:
    pool = CallExecutor(running=1, max_threads=1)
    with pool.stepping_aside():
        pass
    assert pool.submit(lambda: 1).result(WAIT) == 1
    pool.shutdown()


def test_shutdown_ends_the_threads_and_refuses_new_calls() -> None:
    pool = CallExecutor(running=2, max_threads=2, name="ending")
    futures.wait([pool.submit(time.sleep, 0.01) for _ in range(4)], WAIT)
    pool.shutdown(wait=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("ending-executor-")]
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(lambda: None)


@pytest.mark.parametrize("running,max_threads", [(0, 1), (3, 2)])
def test_impossible_sizes_are_refused(running: int, max_threads: int) -> None:
    with pytest.raises(ValueError, match="running"):
        CallExecutor(running=running, max_threads=max_threads)


def test_many_calls_from_many_threads_all_complete() -> None:
    """A stress run: submitters on several threads, a third of the calls stepping aside."""
    pool = CallExecutor(running=2, max_threads=6)
    running = Running()
    results: list[futures.Future[int]] = []
    lock = threading.Lock()

    def call(n: int) -> int:
        if n % 3 == 0:
            with pool.stepping_aside():
                time.sleep(0.001)
        with running:
            return n

    def submitter(base: int, submit: Callable[..., futures.Future[int]]) -> None:
        mine = [submit(call, base + i) for i in range(200)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=submitter, args=(k * 1000, pool.submit)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    futures.wait(results, WAIT * 3)
    assert sorted(f.result() for f in results) == sorted(k * 1000 + i for k in range(4) for i in range(200))
    assert running.most <= 2  # stepped-aside calls count again only once they have a turn back
    assert pool.threads <= 6
    pool.shutdown()
