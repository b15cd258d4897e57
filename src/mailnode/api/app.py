"""The aiohttp application: routes, authentication and the shared state handlers use."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Middleware

from mailnode import console
from mailnode.api import (
    capture,
    openapi,
    tracking,
    transactions,
    v1_domains,
    v1_feedback,
    v1_send,
    v1_webhooks,
)
from mailnode.api.auth import PRINCIPAL, authenticate, require_admin, require_key, unauthorized
from mailnode.api.context import CONTEXT, AppContext, context
from mailnode.api.errors import Handler, error_middleware
from mailnode.api.proxies import forwarded_middleware, parse_networks
from mailnode.errors import StorageError
from mailnode.metrics import Metrics

log = logging.getLogger(__name__)


_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v1/openapi.json"})
# The operator's (admin token), or anyone's with [metrics] public = true.
METRICS_PATH = "/metrics"
# Tracking and unsubscribe URLs: their signed token is the credential.
_PUBLIC_PREFIXES = tracking.PUBLIC_PREFIXES
# A due delivery nobody has claimed for this long means the output handler is stuck (or far
# behind): not ready.
STUCK_AFTER_SECONDS = 300.0


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every non-public request; routes then check what the principal may do."""
    if request.path in _PUBLIC_PATHS or request.path.startswith(_PUBLIC_PREFIXES):
        return await handler(request)
    if request.path == console.PREFIX or request.path.startswith(f"{console.PREFIX}/"):
        return await handler(request)  # the web console logs its users in itself (a session cookie)
    ctx = context(request)
    if request.path == METRICS_PATH and ctx.config.metrics.public:
        return await handler(request)
    store = ctx.store
    who = await authenticate(store, ctx.admin_token, request.headers.get("Authorization"), store.clock())
    if not who.authenticated:
        raise unauthorized()
    request[PRINCIPAL] = who
    if request.path == METRICS_PATH:
        require_admin(request)  # a domain's key must not see the whole server's traffic
    elif not request.path.startswith("/v1/"):
        require_key(request)  # the transactions API takes API keys only
    return await handler(request)


def counting_middleware(metrics: Metrics) -> Middleware:
    """Count each answered request by method, route pattern (never the raw path) and status."""

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # aiohttp's own answers: 404/405 for no route, redirects
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 0  # the connection went away (or the server stops): nothing was answered
            raise
        finally:
            if status:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else None
                metrics.http_request(request.method, route, status)

    return count_requests


async def metrics(request: web.Request) -> web.Response:
    """The service's metrics in the Prometheus text format (OpenMetrics when asked for)."""
    body, content_type = await context(request).metrics.exposition(request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


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
        middlewares=[
            forwarded_middleware(parse_networks(ctx.config.http.trusted_proxies)),
            counting_middleware(ctx.metrics),
            error_middleware,
            auth_middleware,
        ],
        client_max_size=ctx.config.http.max_body_bytes,
    )
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(METRICS_PATH, metrics)
    transactions.add_routes(app.router)
    capture.add_routes(app.router)
    v1_send.add_routes(app.router)
    v1_domains.add_routes(app.router)
    v1_feedback.add_routes(app.router)
    v1_webhooks.add_routes(app.router)
    tracking.add_routes(app.router)
    openapi.add_routes(app.router)
    console.add_routes(app)
    return app
