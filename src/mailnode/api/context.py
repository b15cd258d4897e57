"""What request handlers share: the config, the stores and the version cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from mailnode.bus import Bus
from mailnode.config import Config
from mailnode.router.version_cache import VersionCache
from mailnode.storage.batches import BatchStore, SigningKeyring
from mailnode.storage.domains import DomainStore
from mailnode.storage.events import EventStore
from mailnode.storage.store import Store


@dataclass(frozen=True, slots=True)
class AppContext:
    config: Config
    store: Store
    versions: VersionCache
    domains: DomainStore
    batches: BatchStore
    admin_token: str  # "" when admin routes are closed
    # The secrets VERP return paths are signed with (the newest signs).
    verp_keys: SigningKeyring
    # Randomness is injected (tests pass a seeded source); os.urandom in production.
    random_bytes: Callable[[int], bytes]
    events: EventStore
    bus: Bus


CONTEXT = web.AppKey("context", AppContext)


def context(request: web.Request) -> AppContext:
    return request.app[CONTEXT]
