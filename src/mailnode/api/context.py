"""What request handlers share: the config, the stores and the version cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from mailnode.bus import Bus
from mailnode.config import Config
from mailnode.metrics import Metrics
from mailnode.platform.engagement import EngagementRecorder
from mailnode.router.version_cache import VersionCache
from mailnode.storage.batches import BatchStore, SigningKeyring
from mailnode.storage.domains import DomainStore
from mailnode.storage.events import EventStore
from mailnode.storage.store import Store
from mailnode.storage.webhooks import WebhookStore


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
    # ... and tracking (/t/o, /t/c) and managed-unsubscribe (/u) tokens.
    tracking_keys: SigningKeyring
    # Randomness is injected (tests pass a seeded source); os.urandom in production.
    random_bytes: Callable[[int], bytes]
    events: EventStore
    bus: Bus
    webhooks: WebhookStore
    # Where /t/o and /t/c hits queue their events for the database.
    engagement: EngagementRecorder
    # The service's instruments: the HTTP middleware counts here, GET /metrics reads them.
    metrics: Metrics


CONTEXT = web.AppKey("context", AppContext)


def context(request: web.Request) -> AppContext:
    return request.app[CONTEXT]
