"""The aiohttp application: routes, authentication and the shared state handlers use."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from mailnode.api import capture, transactions
from mailnode.api.context import API_KEY, CONTEXT, AppContext, context
from mailnode.api.errors import Handler, error_middleware, error_response
from mailnode.errors import StorageError
from mailnode.platform.keys import verify_api_key
from mailnode.storage.store import ApiKeyRecord, Store

log = logging.getLogger(__name__)


# Every kind of authentication failure gets exactly this answer (no hint which part failed).
_UNAUTHORIZED = ("unauthorized", "missing or invalid API key; send Authorization: Bearer <key>")
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# A due delivery nobody has claimed for this long means the output handler is stuck (or far
# behind): not ready.
STUCK_AFTER_SECONDS = 300.0


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
    """Alive: the process answers."""
    return web.json_response({"status": "ok", "time": time.time()})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers and due deliveries are being picked up; else 503 and why.

    The listeners are bound by the time this answers: HTTP starts after SMTP.
    """
    store = context(request).store
    try:
        oldest = await store.oldest_unclaimed_due()
    except StorageError as exc:
        return web.json_response({"status": "not ready", "reason": f"database: {exc}"}, status=503)
    waiting = 0.0 if oldest is None else store.clock() - oldest
    if waiting > STUCK_AFTER_SECONDS:
        reason = f"queue: a due delivery has waited {waiting:.0f} s without being picked up"
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    return web.json_response({"status": "ready", "oldest_due_waiting_seconds": round(waiting, 3)})


def create_app(ctx: AppContext) -> web.Application:
    """Build the application around already-started services."""
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        client_max_size=ctx.config.http.max_body_bytes,
    )
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    transactions.add_routes(app.router)
    capture.add_routes(app.router)
    return app
