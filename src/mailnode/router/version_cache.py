"""In-process map from transaction id to its last known version, plus whoever waits on it.

It only wakes waiters early; correctness never depends on it. A waiter re-reads the row
after every wake-up and at least every `poll_interval`, so a change made by another process
(which this cache never hears about) is still seen, only later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Entry:
    version: int = 0
    waiters: set[asyncio.Event] = field(default_factory=set)


class VersionCache:
    """Wakes waiters when a transaction's version moves past the one they know."""

    def __init__(self, *, poll_interval: float = 1.0) -> None:
        self._entries: dict[str, _Entry] = {}
        self._poll_interval = poll_interval

    def changed(self, rest_id: str, version: int) -> None:
        """Called after a commit that wrote `rest_id` at `version`."""
        entry = self._entries.get(rest_id)
        if entry is None or version <= entry.version:
            return
        entry.version = version
        for event in entry.waiters:
            event.set()

    def queued(self) -> None:
        """Part of the Store listener interface; the output handler cares, not the cache."""

    def waiting(self, rest_id: str) -> int:
        entry = self._entries.get(rest_id)
        return len(entry.waiters) if entry else 0

    async def wait_for_change(
        self,
        rest_id: str,
        known_version: int,
        read: Callable[[], Awaitable[T | None]],
        version_of: Callable[[T], int],
        timeout: float,
    ) -> T | None:
        """Re-read until the version differs from `known_version` or `timeout` passes.

        Returns the last value `read` produced (None when the row disappeared).
        """
        entry = self._entries.setdefault(rest_id, _Entry())
        entry.version = max(entry.version, known_version)
        event = asyncio.Event()
        entry.waiters.add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                # Registered before reading: a commit between the read and the wait still wakes us.
                event.clear()
                value = await read()
                remaining = deadline - loop.time()
                if value is None or version_of(value) != known_version or remaining <= 0:
                    return value
                # asyncio.timeout: wait_for on Python 3.11 can swallow a cancellation (gh-86296).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._poll_interval)):
                        await event.wait()
        finally:
            entry.waiters.discard(event)
            if not entry.waiters:
                del self._entries[rest_id]
