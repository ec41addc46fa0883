"""The best proof that the Temporal Web UI will work: a real headless Chromium loads a page from
another origin and calls the gateway exactly as the UI does (fetch with credentials: 'include',
Content-Type application/json and X-Namespace, so every call is preflighted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.cdp import FLAGS as CHROMIUM_FLAGS
from tests.support.gateway import Gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RESULT_TIMEOUT_SECONDS = 90

PAGE = """<!doctype html>
<html><body><pre id="out">running</pre><script>
const gateway = "http://127.0.0.1:%(gateway_port)d";
function call(path, body) {
  return fetch(gateway + path, {
    method: "POST",
    credentials: "include",
    headers: {"Content-Type": "application/json", "X-Namespace": "default"},
    body: JSON.stringify(body),
  });
}
async function run() {
  const payloads = [{metadata: {encoding: btoa("json/plain")}, data: btoa('{"hello":"browser"}')}];
  const encoded = await call("/api/codec/encode", {payloads});
  const encodedBody = await encoded.json();
  const decoded = await call("/api/codec/decode?preserveStorageRefs=true", encodedBody);
  const decodedBody = await decoded.json();
  // An error answer must be readable by the page too, or the UI cannot say what went wrong.
  const bad = await call("/api/codec/encode", {payloads: [{metadata: {encoding: "json/plain"}}]});
  const badBody = await bad.json();
  return {
    encodeStatus: encoded.status,
    encoding: atob(encodedBody.payloads[0].metadata.encoding),
    decodeStatus: decoded.status,
    decoded: atob(decodedBody.payloads[0].data),
    decodedEncoding: atob(decodedBody.payloads[0].metadata.encoding),
    badStatus: bad.status,
    badError: badBody.error,
  };
}
run().catch((e) => ({failure: String(e)})).then((result) => {
  document.getElementById("out").textContent = JSON.stringify(result);
  return fetch("/result", {method: "POST", body: JSON.stringify(result)});
});
</script></body></html>
"""


class PageOrigin:
    """The page's own origin (another port on 127.0.0.1); it collects the page's result."""

    def __init__(self) -> None:
        self.html = ""  # set once the gateway's port is known
        self.result: dict[str, Any] | None = None
        self.received = threading.Event()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = origin.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                origin.result = json.loads(self.rfile.read(length))
                origin.received.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PageOrigin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def chromium() -> Iterator[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI: apt-get update && apt-get install -y chromium)")
    yield CHROMIUM


def run_page(chromium: str, url: str, page: PageOrigin) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as profile:
        # The flags of the end-to-end tests' browser, less the debugging port this test does not use.
        flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith(("--remote-debugging", "--window-size"))]
        args = [chromium, *flags, f"--user-data-dir={profile}", url]
        browser = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            if not page.received.wait(RESULT_TIMEOUT_SECONDS):
                browser.kill()
                _, err = browser.communicate(timeout=30)
                pytest.fail(
                    f"the page reported nothing in {RESULT_TIMEOUT_SECONDS}s; chromium said:\n{err.decode()[-3000:]}"
                )
        finally:
            if browser.poll() is None:
                browser.terminate()
                try:
                    browser.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    browser.kill()
                    browser.communicate(timeout=30)
    assert page.result is not None
    return page.result


@pytest.mark.parametrize("upstream_mode", ["in-process"])  # CORS is the HTTP side's: one upstream is enough
def test_browser_on_another_origin_encodes_and_decodes_with_credentials(start_gateway, chromium: str) -> None:
    with PageOrigin() as page:
        gateway: Gateway = start_gateway(CORS_ALLOWED_ORIGINS=f"http://127.0.0.1:{page.port}")
        page.html = PAGE % {"gateway_port": gateway.port}
        result = run_page(chromium, f"http://127.0.0.1:{page.port}/", page)
    assert result == {
        "encodeStatus": 200,
        "encoding": "binary/encrypted",
        "decodeStatus": 200,
        "decoded": '{"hello":"browser"}',
        "decodedEncoding": "json/plain",
        "badStatus": 400,
        "badError": 'payloads[0].metadata["encoding"]: not valid base64 '
        "(non-zero bits after the last byte: is it base64-encoded?)",
    }


@pytest.mark.parametrize("upstream_mode", ["in-process"])  # CORS is the HTTP side's: one upstream is enough
def test_browser_on_an_unlisted_origin_is_refused(start_gateway, chromium: str) -> None:
    with PageOrigin() as page:
        gateway: Gateway = start_gateway(CORS_ALLOWED_ORIGINS="http://127.0.0.1:1")
        page.html = PAGE % {"gateway_port": gateway.port}
        result = run_page(chromium, f"http://127.0.0.1:{page.port}/", page)
    assert result == {"failure": "TypeError: Failed to fetch"}
