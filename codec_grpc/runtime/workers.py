"""WORKERS > 1: a supervisor process forking N identical server processes.

CPython runs one thread's Python at a time, so one process uses about one core.
The supervisor forks the workers before anything gRPC, boto3 or threaded exists
(gRPC's own state does not survive a fork reliably); each worker then builds
the whole server itself and binds the same ports with ``SO_REUSEPORT``, and
the kernel spreads incoming *connections* (not calls) over them.

The supervisor serves no calls. It serves the metrics of all workers (see
:mod:`codec_grpc.runtime.multiprocess`), forwards SIGTERM/SIGINT to the workers,
and waits: each worker drains as a single server does. If a worker dies
unexpectedly the supervisor stops the others and exits non-zero, so the
orchestrator (Kubernetes, systemd) restarts the whole set; restarting one
worker here would need a fork after threads exist, which is what we avoid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import FrameType

from codec_grpc.runtime.config import Config

log = logging.getLogger("codec_server.workers")

POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@contextlib.contextmanager
def reserved_ports(config: Config) -> Iterator[Config]:
    """``config`` with port 0 replaced by one free port, held by the supervisor for all workers.

    The supervisor's socket is bound with SO_REUSEPORT but never listens, so it
    receives no connections; it keeps the port while the workers bind it too.
    """
    held: list[socket.socket] = []
    try:
        if config.grpc_port == 0:
            config = replace(config, grpc_port=_reserve(config.grpc_host, held))
        if config.gateway_enabled and config.port == 0:
            config = replace(config, port=_reserve(config.gateway_host, held))
        yield config
    finally:
        for sock in held:
            sock.close()


def _reserve(host: str, held: list[socket.socket]) -> int:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    held.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return int(sock.getsockname()[1])


def fork_workers(count: int, serve: Callable[[int], int]) -> list[int]:
    """Fork ``count`` processes running ``serve(index)``; a worker exits with what it returns."""
    pids = []
    for index in range(count):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_worker_main(serve, index))  # never return into the supervisor's code
        pids.append(pid)
    return pids


def _worker_main(serve: Callable[[int], int], index: int) -> int:
    code = 1
    try:
        _stop_with_supervisor()
        code = serve(index)
    except BaseException:  # a worker must never fall back into the supervisor's stack
        traceback.print_exc()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _stop_with_supervisor() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL, so no worker is orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: workers then outlive a killed supervisor, as any process's children do
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Waits for the workers; forwards stop signals; stops all when one dies unexpectedly."""

    def __init__(self, pids: list[int], on_exit: Callable[[int], None]) -> None:
        self._alive = set(pids)
        self._on_exit = on_exit  # called with each worker's pid once it is reaped
        self._signals: list[int] = []
        self._stopping = False
        self._code = 0

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)  # only record it: see server._serve

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def wait(self) -> int:
        """Until every worker has exited; 0 when they were asked to stop and all exited with 0."""
        while self._alive:
            if self._signals and not self._stopping:
                name = signal.Signals(self._signals[0]).name
                log.info("received %s: stopping %d workers", name, len(self._alive))
                self._stop_all(self._signals[0])
            if not self._reap():
                time.sleep(POLL_SECONDS)
        return self._code

    def _reap(self) -> bool:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            self._alive.clear()
            return True
        if pid == 0 or pid not in self._alive:
            return False
        self._alive.discard(pid)
        self._on_exit(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not self._stopping:
            how = f"with status {code}" if code >= 0 else f"by signal {signal.Signals(-code).name}"
            log.error("worker %d exited %s; stopping the others", pid, how, extra={"event": "worker_died"})
            self._code = self._code or (code if code > 0 else 1)
            self._stop_all(signal.SIGTERM)
        return True

    def fail(self, code: int) -> None:
        """Stop the workers; :meth:`wait` then returns ``code``."""
        self._code = self._code or code
        self._stop_all(signal.SIGTERM)

    def _stop_all(self, signum: int) -> None:
        self._stopping = True
        for pid in self._alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
