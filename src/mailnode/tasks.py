"""Owned background tasks: every long-lived task belongs to a TaskSet that outlives it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    """Tasks one component owns: tracked until they end, failures logged, stopped together."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task %s failed", self._owner, task.get_name(), exc_info=task.exception())

    async def stop(self, grace: float = 0.0) -> None:
        """Let the tasks finish within `grace` seconds, cancel the rest, and wait for them."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace) if grace > 0 else ((), set(self._tasks))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
