"""A loopback webhook receiver on the running loop: records each POST, answers as a test tells it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mailnode.core.events import verify_webhook_signature

HANG = "hang"  # answer 200 only once released (or stopped): the sender may time out first


@dataclass(frozen=True)
class ReceivedPost:
    """One request as it arrived, and when (loop time)."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        """Whether Mailnode-Signature verifies with `secret` over its timestamp and the body."""
        timestamp = int(self.headers["Mailnode-Timestamp"])
        return verify_webhook_signature(secret, timestamp, self.body, self.headers["Mailnode-Signature"])


@dataclass
class WebhookReceiver:
    """Answers `status` unless `answer` scripted otherwise; `stop` closes its port, `start` reopens it."""

    host: str = "127.0.0.1"
    port: int = 0
    status: int = 200
    posts: list[ReceivedPost] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0  # requests being answered at once, at most so far
    _script: deque[int | str] = field(default_factory=deque, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _release: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _runner: web.AppRunner | None = field(default=None, repr=False)

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def answer(self, *answers: int | str) -> None:
        """Script the next answers (HTTP statuses, 3xx to /redirected, or HANG); then `status`."""
        self._script.extend(answers)

    def release(self) -> None:
        """Let every hanging answer (and any later HANG) return 200."""
        self._release.set()

    async def start(self) -> None:
        """Listen (again) on the same port, or a free one the first time."""
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._release.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the port (connections are refused) and let hanging answers return."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_posts(self, n: int, timeout: float = 10.0) -> list[ReceivedPost]:
        """Wait until at least `n` requests arrived; AssertionError with what came on timeout."""
        if not await self._wait_until(lambda: len(self.posts) >= n, timeout):
            raise AssertionError(f"received {len(self.posts)} of {n} POSTs in {timeout} s: {self.posts!r}")
        return list(self.posts)

    async def _wait_until(self, condition: Callable[[], bool], seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        return condition()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        self.posts.append(ReceivedPost(request.path, dict(request.headers), body, loop.time()))
        self._changed.set()
        answer = self._script.popleft() if self._script else self.status
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if answer == HANG:
                await self._release.wait()
                answer = 200
        finally:
            self.in_flight -= 1
        assert isinstance(answer, int)
        headers = {"Location": self.url("/redirected")} if 300 <= answer < 400 else None
        return web.Response(status=answer, text="ok" if answer < 300 else "no", headers=headers)


async def start_receiver() -> WebhookReceiver:
    receiver = WebhookReceiver()
    await receiver.start()
    return receiver
