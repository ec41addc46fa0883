"""Serving the gateway: bound to a port, on an event loop of its own thread when needed.

* :func:`serve` binds an aiohttp application (port 0 picks a free port) and
  returns it running, with the bound port.
* :class:`GatewayThread` gives a gateway an event loop in a daemon thread, so that
  the threaded gRPC server of ``server.py`` (and tests) can start and stop it.

Which application, upstream and TLS context: ``codec_grpc.runtime.gateway_process``
builds them from the configuration.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from codec_grpc.gateway.upstreams import Upstream


@dataclass
class RunningGateway:
    runner: web.AppRunner
    upstream: Upstream
    port: int

    async def stop(self) -> None:
        """Stop accepting, finish the requests in flight, close the upstream."""
        await self.runner.cleanup()
        await self.upstream.close()


async def serve(
    app: web.Application,
    upstream: Upstream,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> RunningGateway:
    """Serve ``app`` on ``host:port``; closes ``upstream`` when it stops, or when binding fails.

    aiohttp's own decompression of request bodies is off: it would inflate a 4 KiB gzip body to
    megabytes before any handler could refuse it (the app answers 415 to any Content-Encoding).
    """
    runner = web.AppRunner(app, handle_signals=False, auto_decompress=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port).start()
    except BaseException:
        await runner.cleanup()
        await upstream.close()
        raise
    return RunningGateway(runner, upstream, int(runner.addresses[0][1]))


class GatewayThread:
    """A gateway on its own event loop in a daemon thread.

    ``start_gateway`` runs on that loop (a ``grpc.aio`` channel belongs to the loop that made it).
    """

    def __init__(self, start_gateway: Callable[[], Coroutine[Any, Any, RunningGateway]]) -> None:
        self._start_gateway = start_gateway
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._gateway: RunningGateway | None = None
        self._thread = threading.Thread(target=self._run, name="http-gateway", daemon=True)

    def start(self, timeout: float = 30.0) -> int:
        """Start serving; returns the bound port. Raises what binding raised (e.g. OSError)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the HTTP gateway did not start within {timeout}s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self._gateway is not None
        return self._gateway.port

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish the requests in flight, close the upstream."""
        if self._gateway is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._gateway.stop(), self._loop).result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            try:
                self._gateway = self._loop.run_until_complete(self._start_gateway())
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._ready.set()
            self._loop.run_forever()
        finally:
            # Requests still being read (a client that stopped sending) end with the loop, quietly.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()
