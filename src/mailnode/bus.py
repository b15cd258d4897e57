"""The in-process bus: topics published to, prefixes subscribed to, bounded queues.

Durable state lives in the database; the bus only wakes workers and fans events out to those
listening now (DESIGN.md). So a subscriber that falls behind loses the oldest messages, counted
in `dropped`, rather than holding memory without bound or slowing the publisher. One interface,
so NATS JetStream can replace it for several processes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 1024


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: Any


@dataclass(eq=False)
class Subscription:
    """Messages on topics starting with `prefix`, in order, from a bounded queue."""

    prefix: str
    queue: asyncio.Queue[Message] = field(default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE))
    dropped: int = 0

    async def get(self) -> Message:
        return await self.queue.get()

    def get_nowait(self) -> Message | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None


class Bus:
    """Publish/subscribe within one event loop."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def subscribe(self, prefix: str, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        """Receive what is published to topics starting with `prefix` from now on."""
        subscription = Subscription(prefix, asyncio.Queue(maxsize))
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.remove(subscription)

    def publish(self, topic: str, payload: Any) -> None:
        """Hand `payload` to every matching subscriber; never waits."""
        message = Message(topic, payload)
        for subscription in self._subscriptions:
            if not topic.startswith(subscription.prefix):
                continue
            if subscription.queue.full():
                subscription.queue.get_nowait()
                subscription.dropped += 1
            subscription.queue.put_nowait(message)
