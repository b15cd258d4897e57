"""The engagement recorder: opens and clicks reach the database in batches, off the request path.

A tracking hit must be answered at once (a mail client waits for the pixel, a person for the
redirect), and one database commit per hit would cap the tracker at the writer's commit rate.
The handlers put events into a bounded queue instead; one task writes what has queued up, up to
`WRITE_BATCH` at a time, in one write (EventStore.record_engagements). When the queue is full a
hit is still answered but its event is dropped and counted: tracking is best effort, the
process's memory is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mailnode.core.events import NewEvent
from mailnode.errors import MailnodeError
from mailnode.storage.events import EventStore

log = logging.getLogger(__name__)

# Events waiting for the database: a few MB, under 20 MB even with full mode's user agents
# (cut to 1,000 characters each).
QUEUE_SIZE = 10_000
WRITE_BATCH = 500  # events per write: bounds how long one write holds the writer
DROP_LOG_INTERVAL = 60.0  # seconds between two warnings about dropped events
RETRY_AFTER = 1.0  # seconds to wait after a failed write, so a broken database is not hammered


class EngagementRecorder:
    """Queues opens and clicks and writes them in batches; `recorded` and `dropped` count them."""

    def __init__(
        self,
        events: EventStore,
        *,
        queue_size: int = QUEUE_SIZE,
        write_batch: int = WRITE_BATCH,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._events = events
        self._queue: asyncio.Queue[NewEvent] = asyncio.Queue(queue_size)
        self._write_batch = write_batch
        self._monotonic = monotonic
        self._last_drop_warning: float | None = None
        self._writing: asyncio.Future[None] | None = None
        self.recorded = 0  # events written to the database
        self.dropped = 0  # events lost: the queue was full, or their write failed

    def record(self, event: NewEvent) -> bool:
        """Queue an event without waiting; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._lost(1, "the queue is full")
            return False
        return True

    async def run(self) -> None:
        """Write queued events as they come, a batch at a time, until cancelled."""
        while True:
            first = await self._queue.get()
            # Shielded: cancelling run() must not abandon a batch already taken from the queue;
            # stop() waits for it.
            self._writing = asyncio.ensure_future(self._write([first, *self._take(self._write_batch - 1)]))
            await asyncio.shield(self._writing)

    async def stop(self) -> None:
        """Finish the write in progress and write everything still queued (after run has ended)."""
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing])  # how it ended is run's to report, not stop's
        while not self._queue.empty():
            await self._write(self._take(self._write_batch), retry_after=0.0)

    def _take(self, limit: int) -> list[NewEvent]:
        taken: list[NewEvent] = []
        while len(taken) < limit and not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    async def _write(self, batch: list[NewEvent], retry_after: float = RETRY_AFTER) -> None:
        try:
            self.recorded += await self._events.record_engagements(batch)
        except MailnodeError as exc:
            self._lost(len(batch), f"their database write failed: {exc}")
            await asyncio.sleep(retry_after)

    def _lost(self, count: int, why: str) -> None:
        self.dropped += count
        now = self._monotonic()
        if self._last_drop_warning is None or now - self._last_drop_warning >= DROP_LOG_INTERVAL:
            self._last_drop_warning = now
            log.warning("engagement events dropped: %s (dropped so far: %d)", why, self.dropped)
