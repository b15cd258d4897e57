"""The aiohttp application: routes, authentication and the shared state handlers use."""

from __future__ import annotations

import hmac
import logging
import time

from aiohttp import web

from mailnode.api import capture, transactions
from mailnode.api.context import API_KEY, CONTEXT, AppContext, context
from mailnode.api.errors import Handler, error_middleware, error_response
from mailnode.core.apikey import key_hash
from mailnode.storage.store import ApiKeyRecord, Store

log = logging.getLogger(__name__)


# Every kind of authentication failure gets exactly this answer (no hint which part failed).
_UNAUTHORIZED = ("unauthorized", "missing or invalid API key; send Authorization: Bearer <key>")
_PUBLIC_PATHS = frozenset({"/healthz"})


async def authenticate(store: Store, authorization: str | None, now: float) -> ApiKeyRecord | None:
    """The active API key named by an `Authorization: Bearer` header, or None."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        presented = ""
    # The lookup runs even for a malformed or empty key so that failures all cost the same.
    digest = key_hash(presented.strip())
    record = await store.find_api_key(digest)
    if record is None or not hmac.compare_digest(record.key_hash, digest) or not presented:
        return None
    if record.deactivated_at is not None or (record.expires_at is not None and record.expires_at <= now):
        return None
    return record


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _PUBLIC_PATHS:
        return await handler(request)
    store = context(request).store
    key = await authenticate(store, request.headers.get("Authorization"), store.clock())
    if key is None:
        return error_response(401, *_UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="mailnode"'})
    request[API_KEY] = key
    return await handler(request)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "time": time.time()})


def create_app(ctx: AppContext) -> web.Application:
    """Build the application around already-started services."""
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=ctx.config.http.max_body_bytes,
    )
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    transactions.add_routes(app.router)
    capture.add_routes(app.router)
    return app
