"""Headless Chromium driven over the Chrome DevTools Protocol with aiohttp's websocket client.

Only what the console's browser test needs: a page to navigate, JavaScript to evaluate from the
outside (the console itself runs none), the DOM of frames, screenshots, and every error the
page logged. Every wait has a deadline; the browser's process group is killed at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

PACKAGE = "chromium"  # Debian's; scripts/test installs it when it is missing
STARTUP_SECONDS = 15.0
CALL_SECONDS = 10.0
# Nothing but loopback: every other host name fails to resolve inside the browser.
_ARGS = (
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's own sandbox cannot start
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
)


class Page:
    """One tab, attached with a flat session; console errors are collected as they come."""

    def __init__(self, browser: Chromium, session_id: str) -> None:
        self._browser = browser
        self.session_id = session_id
        self.errors: list[str] = []
        # Out-of-process frames (Chromium puts sandboxed iframes in their own process).
        self.frames: list[Page] = []
        self.loads = 0
        self._loaded = asyncio.Event()

    @property
    def all_errors(self) -> list[str]:
        """This page's errors and those of its frames."""
        return self.errors + [error for frame in self.frames for error in frame.all_errors]

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Target.attachedToTarget":
            frame = Page(self._browser, params["sessionId"])
            self.frames.append(frame)
            self._browser.adopt(frame)
        elif method == "Page.loadEventFired":
            self.loads += 1
            self._loaded.set()
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value")) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + json.dumps(params["exceptionDetails"])[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.call(method, params, session_id=self.session_id)

    async def _until_loaded(self, loads_before: int) -> None:
        async with asyncio.timeout(CALL_SECONDS):
            while self.loads <= loads_before:
                self._loaded.clear()
                await self._loaded.wait()

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        before = self.loads
        answer = await self.call("Page.navigate", url=url)
        assert "errorText" not in answer, answer
        await self._until_loaded(before)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    async def act(self, expression: str) -> None:
        """Evaluate something that loads a new page (a form submitted, a link clicked); wait for it."""
        before = self.loads
        await self.evaluate(expression)
        await self._until_loaded(before)

    async def url(self) -> str:
        return str(await self.evaluate("location.href"))

    async def text(self) -> str:
        return str(await self.evaluate("document.body.innerText"))

    async def frame_html(self, url_end: str, wanted: str) -> str:
        """The HTML of the (out-of-process) frame whose URL ends in `url_end`, once it has `wanted`."""
        async with asyncio.timeout(CALL_SECONDS):
            while True:
                for frame in self.frames:
                    root = (await frame.call("DOM.getDocument", depth=-1))["root"]
                    if root.get("documentURL", "").endswith(url_end):
                        html = str((await frame.call("DOM.getOuterHTML", nodeId=root["nodeId"]))["outerHTML"])
                        if wanted in html:
                            return html
                await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


class Chromium:
    def __init__(self, process: asyncio.subprocess.Process, http: aiohttp.ClientSession) -> None:
        self.process = process
        self._http = http
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._pages: dict[str, Page] = {}
        self._reader: asyncio.Task[None] | None = None
        self._setups: set[asyncio.Task[None]] = set()

    async def connect(self, url: str) -> None:
        self._ws = await self._http.ws_connect(
            url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=2)
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._calls.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page.on_event(data["method"], data.get("params", {}))
        for future in self._calls.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser closed its DevTools connection"))

    async def call(
        self, method: str, params: dict[str, Any], *, session_id: str | None = None
    ) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[self._next_id] = future
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        await self._ws.send_str(json.dumps(message))
        async with asyncio.timeout(CALL_SECONDS):
            answer = await future
        assert "error" not in answer, f"{method}: {answer['error']}"
        return dict(answer["result"])

    async def new_page(self) -> Page:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        await _listen(page)
        return page

    def adopt(self, frame: Page) -> None:
        """A frame that attached itself (paused until its listeners are on)."""
        self._pages[frame.session_id] = frame
        task = asyncio.create_task(_listen(frame, resume=True))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    async def close(self) -> None:
        for task in list(self._setups):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.call("Browser.close", {})
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self._reader


async def _listen(page: Page, *, resume: bool = False) -> None:
    """Turn on the events a page reports (and attach to its out-of-process frames, paused)."""
    for domain in ("Page", "Runtime", "Log", "DOM"):
        await page.call(f"{domain}.enable")
    await page.call("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=True, flatten=True)
    if resume:
        await page.call("Runtime.runIfWaitingForDebugger")


def executable() -> str:
    """The chromium binary; the test fails (never skips) when it is not installed."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            f"headless Chromium is not installed: install the Debian package {PACKAGE!r} "
            "(apt-get install -y --no-install-recommends chromium; scripts/test does this)"
        )
    return found


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process) -> str:
    """Chromium writes its port and browser path to DevToolsActivePort once it listens."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(STARTUP_SECONDS):
        while not marker.exists() or len(marker.read_text().splitlines()) < 2:
            assert process.returncode is None, f"chromium exited with {process.returncode}"
            await asyncio.sleep(0.05)
    port, path = marker.read_text().splitlines()[:2]
    return f"ws://127.0.0.1:{int(port)}{path}"


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Chromium]:
    """A headless Chromium on a fresh profile; its whole process group is killed afterwards."""
    binary = executable()
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        binary,
        *_ARGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its own process group: renderers and helpers go with it
    )
    http = aiohttp.ClientSession()
    browser = Chromium(process, http)
    try:
        await browser.connect(await _devtools_url(profile, process))
        yield browser
    finally:
        await browser.close()
        await http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        async with asyncio.timeout(5):
            await process.wait()
