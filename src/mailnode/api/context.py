"""What request handlers share: the config, the Store and the version cache."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mailnode.config import Config
from mailnode.router.version_cache import VersionCache
from mailnode.storage.store import ApiKeyRecord, Store


@dataclass(frozen=True, slots=True)
class AppContext:
    config: Config
    store: Store
    versions: VersionCache


CONTEXT = web.AppKey("context", AppContext)
API_KEY = web.RequestKey("api_key", ApiKeyRecord)


def context(request: web.Request) -> AppContext:
    return request.app[CONTEXT]
