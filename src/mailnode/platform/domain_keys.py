"""The DKIM keys of the platform's domains, as the DKIM filter needs them: cached, cheap."""

from __future__ import annotations

from collections.abc import Callable

from mailnode.router.filters import DkimKey
from mailnode.storage.domains import DomainStore

# A rotated or removed key signs on for at most this long in a process that did not make
# the change itself (the API invalidates its own process's entry at once).
CACHE_SECONDS = 30.0
MAX_ENTRIES = 10_000


class DomainKeys:
    """The newest DKIM key of each domain in the database, looked up at most every 30 s."""

    def __init__(self, domains: DomainStore, clock: Callable[[], float]) -> None:
        self._domains = domains
        self._clock = clock
        self._cache: dict[str, tuple[float, DkimKey | None]] = {}

    async def key_for(self, domain: str) -> DkimKey | None:
        """The key that signs for `domain`, or None when the domain has none."""
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self._domains.signing_key(domain)
        key = (
            None
            if record is None
            else DkimKey(domain, record.selector, record.private_key_pem, record.algorithm)
        )
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        self._cache[domain] = (now + CACHE_SECONDS, key)
        return key

    def invalidate(self, domain: str) -> None:
        """Forget a domain's key (after a rotation or removal in this process)."""
        self._cache.pop(domain, None)
