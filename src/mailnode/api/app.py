"""The aiohttp application: routes, authentication and the shared state handlers use."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from mailnode.api import capture, transactions
from mailnode.api.context import API_KEY, CONTEXT, AppContext, context
from mailnode.api.errors import Handler, error_middleware, error_response
from mailnode.platform.keys import verify_api_key
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
    return await verify_api_key(store, presented.strip(), now)


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
