"""Headless Chromium driven over the Chrome DevTools Protocol, with nothing but aiohttp's websocket.

Enough to use a real web application as a person does: open a page, wait for text, click,
read what it downloaded, take a screenshot. Chromium is Debian's (``/usr/bin/chromium``),
started with the flags this machine needs (no background networking, a fresh profile).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1200",
    "--remote-debugging-port=0",
)


class Page:
    """One page target: commands in, events remembered."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            document = json.loads(message.data)
            waiting = self._waiting.pop(document.get("id", -1), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(document)
            elif "method" in document:
                self.events.append(document)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        await self._socket.send_str(json.dumps({"id": number, "method": method, "params": params}))
        document = await asyncio.wait_for(answer, 60)
        if "error" in document:
            raise RuntimeError(f"{method}: {document['error']}")
        result: dict[str, Any] = document.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression[:80]}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """The first truthy value of ``expression``, polled."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:  # the page is between two documents
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout}s: {expression[:200]}")
            await asyncio.sleep(0.25)

    async def wait_for_files(self, folder: Path, timeout: float = 30.0) -> list[Path]:
        """The files of ``folder`` once one is there and none is still being downloaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = sorted(folder.iterdir())
            if files and not any(file.suffix == ".crdownload" for file in files):
                return files
            await asyncio.sleep(0.2)
        raise TimeoutError(f"nothing downloaded into {folder} within {timeout}s")

    async def text(self) -> str:
        """What a person reads on the page."""
        return str(await self.evaluate("document.body ? document.body.innerText : ''"))

    async def screenshot(self, path: Path) -> None:
        answer = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(answer["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        await self._socket.close()


@asynccontextmanager
async def chromium_page(chromium: str, profile: Path, downloads: Path) -> AsyncIterator[Page]:
    """A fresh Chromium with one blank page whose downloads go to ``downloads``."""
    browser = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = await _devtools_port(profile, browser)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                targets = await answer.json()
            url = next(target["webSocketDebuggerUrl"] for target in targets if target["type"] == "page")
            socket = await session.ws_connect(url, max_msg_size=0)
            page = Page(socket)
            try:
                await page.send("Page.enable")
                await page.send("Network.enable")
                await page.send("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
                yield page
            finally:
                await page.close()
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait(timeout=20)


async def _devtools_port(profile: Path, browser: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """Chromium writes the port it chose to DevToolsActivePort in its profile."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise RuntimeError(f"chromium exited with {browser.returncode}")
        if marker.exists():
            lines = marker.read_text().split()
            if lines:
                return int(lines[0])
        await asyncio.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")
