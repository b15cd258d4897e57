"""Batches of the sending platform: one send, its content blob and one delivery per recipient."""

from __future__ import annotations

from mailnode.storage.store import Store


class BatchStore:
    """Reads and writes of batches, their deliveries and idempotency records."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.clock = store.clock
