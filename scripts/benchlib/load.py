"""Driving load: C concurrent workers, and the CPU time each process spent on it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from benchlib.processes import process_cpu_seconds, process_tree_cpu_seconds


async def run_workers(n: int, concurrency: int, send: Callable[[int], Awaitable[None]]) -> None:
    """Call send(0..n-1) with at most `concurrency` calls in progress."""
    indices = iter(range(n))

    async def worker() -> None:
        for index in indices:
            await send(index)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, n)):
            group.create_task(worker())


class CpuMeter:
    """CPU seconds used by this process and the children named, between start() and per_message_ms().

    `trees` are processes measured with the workers they fork (see process_tree_cpu_seconds).
    """

    def __init__(self, pids: dict[str, int], trees: dict[str, int] | None = None) -> None:
        self._pids = pids
        self._trees = trees or {}
        self._start: dict[str, float | None] = {}

    def _now(self) -> dict[str, float | None]:
        own = os.times()
        readings: dict[str, float | None] = {"bench client": own.user + own.system}
        readings.update({name: process_cpu_seconds(pid) for name, pid in self._pids.items()})
        readings.update({name: process_tree_cpu_seconds(pid) for name, pid in self._trees.items()})
        return readings

    def start(self) -> None:
        self._start = self._now()

    def per_message_ms(self, n: int) -> dict[str, float | None]:
        """Milliseconds of CPU per message for each process since start()."""
        end = self._now()
        result: dict[str, float | None] = {}
        for name, before in self._start.items():
            after = end.get(name)
            result[name] = None if before is None or after is None or n == 0 else (after - before) * 1000 / n
        return result
