"""The gRPC server's thread pool: a few calls running at once, more threads for calls waiting for KMS.

Python runs one thread at a time (the GIL), so a call that encrypts or decrypts with cached keys
gains nothing from a sixteenth thread: under load, sixteen runnable threads only take the GIL
from each other, each hand-off a futex wake and a context switch, and every call is run by a
thread whose caches went cold since its last one. ``make bench``'s concurrency section measured it
(docs/benchmarks.md, "Calls in flight"). So :class:`CallExecutor` keeps at most ``running``
calls running; the others wait in a queue that a running thread drains before it sleeps (no
wake-up per call while busy). A call about to wait for KMS (or for another call's KMS answer)
:meth:`~CallExecutor.stepping_aside`: it gives its turn to a queued call, which may need another
thread (up to ``max_threads``), and takes a turn again, before queued calls, once KMS answered.
So a slow or failing KMS holds threads, never the calls that cached keys can answer.

gRPC calls ``submit`` for every call and ``add_done_callback`` on the future it returns (to count
the calls in progress); that and :class:`concurrent.futures.Executor`'s interface is all it needs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple["futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Thread:
    """One worker thread's wake-up: the lock it sleeps on, and the call handed to it."""

    __slots__ = ("item", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.item: _Item | None = None


class CallExecutor(futures.Executor):
    """Runs submitted calls on at most ``running`` threads at once, out of at most ``max_threads``.

    Threads start when queued calls need them and stay; the most recently idle one is woken first
    (its caches are the warmest). Thread-safe.
    """

    def __init__(self, running: int, max_threads: int, name: str = "grpc") -> None:
        if not 1 <= running <= max_threads:
            raise ValueError(f"need 1 <= running ({running}) <= max_threads ({max_threads})")
        self._limit = running
        self._max_threads = max_threads
        self._name = name
        self._lock = threading.Lock()
        self._work: deque[_Item] = deque()
        self._running = 0  # turns taken: threads running a call or handed one
        self._threads = 0
        self._started: list[threading.Thread] = []
        self._idle: list[_Thread] = []  # a stack: the last one in is woken first
        self._returning: deque[_Thread] = deque()  # stepped aside and done waiting: next to run
        self._shutdown = False
        self._mine = threading.local()  # .thread: this thread's _Thread, in this pool's threads only

    @property
    def threads(self) -> int:
        """Threads started so far (idle ones included)."""
        return self._threads

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> futures.Future[T]:
        future: futures.Future[T] = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._work.append((future, fn, args, kwargs))
            self._dispatch()
        return future

    @contextmanager
    def stepping_aside(self) -> Iterator[None]:
        """Around a wait (KMS): this call's turn goes to another while it waits, and it takes a turn
        again (before queued calls) when the wait is over. Outside this pool's threads, nothing."""
        thread: _Thread | None = getattr(self._mine, "thread", None)
        if thread is None:
            yield
            return
        with self._lock:
            self._running -= 1
            self._dispatch()
        try:
            yield
        finally:
            with self._lock:
                if self._running < self._limit and not self._returning:
                    self._running += 1
                    wait = False
                else:
                    self._returning.append(thread)
                    wait = True
            if wait:
                thread.wake.acquire()  # a turn is handed over (see _dispatch)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            idle, self._idle = self._idle, []
        for thread in idle:
            thread.wake.release()  # with no call: it ends
        if wait:
            with self._lock:
                started = list(self._started)
            for worker in started:
                worker.join()

    def _dispatch(self) -> None:
        """Hand free turns out, the lock held: to stepped-aside calls first, then queued calls."""
        while self._running < self._limit:
            if self._returning:
                self._running += 1
                self._returning.popleft().wake.release()
            elif self._work and self._idle:
                self._running += 1
                thread = self._idle.pop()
                thread.item = self._work.popleft()
                thread.wake.release()
            elif self._work and self._threads < self._max_threads and not self._shutdown:
                self._running += 1
                self._threads += 1
                worker = threading.Thread(
                    target=self._serve,
                    args=(self._work.popleft(),),
                    name=f"{self._name}-executor-{self._threads}",
                    daemon=True,
                )
                self._started.append(worker)
                worker.start()
            else:
                return

    def _serve(self, item: _Item | None) -> None:
        thread = _Thread()
        self._mine.thread = thread
        while item is not None:
            future, fn, args, kwargs = item
            item = None
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # the future carries it, as ThreadPoolExecutor's do
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del future, fn, args, kwargs  # before sleeping: nothing of the call is kept alive
            with self._lock:
                if self._returning:  # a stepped-aside call is ready: it gets this turn
                    self._returning.popleft().wake.release()
                elif self._work:
                    item = self._work.popleft()
                    continue
                else:
                    self._running -= 1
                if self._shutdown:
                    self._threads -= 1
                    return
                self._idle.append(thread)
            thread.wake.acquire()  # until _dispatch hands this thread a call (and a turn)
            item, thread.item = thread.item, None
        with self._lock:
            self._threads -= 1
