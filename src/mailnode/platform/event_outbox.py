"""The stats worker: drains the events outbox into hourly counts and webhook deliveries.

Woken when events are written (Store.events_written) and every `poll_interval` anyway, so
events left unprocessed by a crash are taken up at start. Once woken it lets `gather` seconds
pass first: events come in bursts (every SMTP message and attempt writes some), and one pass
over a burst costs about what a pass over one event does. Each processed event is then
published on the bus as `mailnode.stats.<type>` for whoever listens in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mailnode.bus import Bus
from mailnode.core.events import Event
from mailnode.errors import MailnodeError
from mailnode.metrics import Metrics
from mailnode.storage.events import OUTBOX_BATCH, EventStore

log = logging.getLogger(__name__)

STATS_TOPIC = "mailnode.stats."


class OutboxWorker:
    """Processes the outbox until it is empty whenever woken."""

    def __init__(
        self,
        events: EventStore,
        bus: Bus,
        *,
        poll_interval: float = 5.0,
        gather: float = 0.05,
        metrics: Metrics | None = None,
    ) -> None:
        self._events = events
        self._metrics = metrics or Metrics()
        self._bus = bus
        self._poll_interval = poll_interval
        self._gather = gather
        self._wake = asyncio.Event()
        self.processed = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Drain, then wait to be woken (or the poll interval), until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except MailnodeError:
                log.exception("processing the events outbox failed; retrying in %.0f s", self._poll_interval)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the wait ends (gh-86296), and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            await asyncio.sleep(self._gather)

    async def drain(self) -> int:
        """Process every unprocessed event; the number processed."""
        total = 0
        while True:
            batch = await self._events.process_outbox(OUTBOX_BATCH)
            for event in batch:
                self._publish(event)
            total += len(batch)
            if len(batch) < OUTBOX_BATCH:
                self.processed += total
                return total

    def _publish(self, event: Event) -> None:
        self._metrics.event(event.type)
        self._bus.publish(STATS_TOPIC + event.type.value, event)
