"""A KMS-compatible endpoint that misbehaves on demand: a proxy in front of moto's server.

Tests point the codec at the proxy (``AWS_ENDPOINT_URL_KMS``) and switch its fault
while the codec runs: answer slowly, drop connections, throttle, or fail with 5xx.
Everything goes through boto3's real HTTP path, retries and timeouts included.

With KMS_REGIONS, one proxy per Region stands for that Region's KMS endpoint
(``KMS_REGION_ENDPOINTS``) in front of one moto server holding every Region. Such a
proxy answers only requests signed for its Region (as AWS's endpoints do), so a call
sent to the wrong Region's endpoint fails the test, and it can go down altogether
(:meth:`KmsProxy.down`: nothing listens, open connections are dropped) and come back.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

# KMS's answers for the error modes: (HTTP status, error code).
ERRORS = {
    "throttle": (400, "ThrottlingException"),
    "error500": (500, "KMSInternalException"),
    "deny": (400, "AccessDeniedException"),
    "disabled": (400, "DisabledException"),
    "pending_deletion": (400, "KMSInvalidStateException"),
}
# The Region a request is signed for: its SigV4 credential scope, ACCESS_KEY/DATE/REGION/kms/aws4_request.
_SCOPE = re.compile(r"Credential=[^/,]+/[0-9]{8}/([a-z0-9-]+)/kms/aws4_request")


@dataclass
class Faults:
    """What the proxy does to the requests of the named operations (empty: all of them)."""

    delay: float = 0.0
    mode: str = "pass"  # pass | drop | one of ERRORS
    operations: frozenset[str] = frozenset()
    seen: Counter[str] = field(default_factory=Counter)

    def applies(self, operation: str) -> bool:
        return not self.operations or operation in self.operations


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client gone while a request was held (hang), or KMS gone at the end of a test: not worth
        a traceback on stderr. Anything else is."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class KmsProxy:
    def __init__(self, upstream: str, region: str | None = None) -> None:
        self.faults = Faults()
        self.region = region
        self._lock = threading.Lock()
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY the body waits for the client's
            # delayed ACK (40 ms on Linux), which would be most of what a call through the proxy takes.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                signed_for = _SCOPE.search(self.headers.get("Authorization", ""))
                if proxy.region is not None and (signed_for is None or signed_for.group(1) != proxy.region):
                    self._error("wrong_region")
                    return
                with proxy._lock:
                    faults = proxy.faults
                    faults.seen[operation] += 1
                if faults.applies(operation):
                    if faults.delay:
                        time.sleep(faults.delay)
                    if faults.mode == "drop":
                        self.close_connection = True
                        self.connection.close()
                        return
                    if faults.mode in ERRORS:
                        self._error(faults.mode)
                        return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request("POST", self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    payload = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, mode: str) -> None:
                status, kind = ERRORS.get(mode, (400, "InvalidSignatureException"))
                message = "injected by the test proxy"
                if mode == "wrong_region":
                    message = f"Credential should be scoped to a valid region, the test proxy of {proxy.region}"
                payload = json.dumps({"__type": kind, "message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._handler = Handler
        self._server = self._listen(0)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._up = True

    def _listen(self, port: int) -> ThreadingHTTPServer:
        server = _QuietServer(("127.0.0.1", port), self._handler)
        server.daemon_threads = True
        return server

    def set(self, delay: float = 0.0, mode: str = "pass", operations: Iterable[str] = ()) -> None:
        """Switch faults: ``proxy.set(delay=1.0)``, ``proxy.set(mode="drop", operations={"Decrypt"})``."""
        with self._lock:
            self.faults = Faults(delay, mode, frozenset(operations), self.faults.seen)

    def seen(self, operation: str) -> int:
        with self._lock:
            return self.faults.seen[operation]

    def start(self) -> KmsProxy:
        self._thread.start()
        return self

    def down(self) -> None:
        """The endpoint goes away: connections are refused, and those open are dropped at their next request."""
        with self._lock:
            self.faults = Faults(0.0, "drop", frozenset(), self.faults.seen)
            if not self._up:
                return
            self._up = False
        self._server.shutdown()
        self._server.server_close()

    def up(self) -> None:
        """The endpoint is back on the same port, passing every request."""
        with self._lock:
            self.faults = Faults(0.0, "pass", frozenset(), self.faults.seen)
            if self._up:
                return
            self._up = True
        self._server = self._listen(self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._up:
            self._up = False
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def kms_proxy(kms_endpoint: str) -> Iterator[KmsProxy]:
    proxy = KmsProxy(kms_endpoint).start()
    yield proxy
    proxy.stop()
