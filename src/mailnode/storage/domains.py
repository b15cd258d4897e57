"""Domains of the sending platform, their DKIM keys, API keys and templates."""

from __future__ import annotations

from mailnode.storage.store import Store


class DomainStore:
    """Reads and writes of domains and what belongs to them; each write is one transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.clock = store.clock
