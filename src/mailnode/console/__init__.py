"""The web console under /ui/: server-rendered pages (jinja2), no JavaScript, its own login.

The HTTP API's authentication lets /ui/ through; every console page but the login form then
needs a console session (console/sessions.py) and every form its CSRF token (console/page.py).
"""

from __future__ import annotations

from aiohttp import web

from mailnode.api.context import CONTEXT
from mailnode.console import captures, domains, login, messages, overview, queue, suppressions, webhooks
from mailnode.console.page import CONSOLE, PREFIX, console, console_middleware, new_console, see_other

__all__ = ["PREFIX", "add_routes"]


async def stylesheet(request: web.Request) -> web.Response:
    """The one stylesheet; its URL carries its hash, so browsers may keep it."""
    response = web.Response(body=console(request).css, content_type="text/css", charset="utf-8")
    response.headers["Cache-Control"] = "public, max-age=86400, immutable"
    return response


async def _to_console(_request: web.Request) -> web.Response:
    return see_other(f"{PREFIX}/")


def add_routes(app: web.Application) -> None:
    """Mount the console at /ui/ on the API's application (after its context is set)."""
    ui = web.Application(middlewares=[console_middleware])
    ui[CONSOLE] = new_console(app[CONTEXT])
    add = ui.router
    add.add_get("/login", login.login_form, name="login")
    add.add_post("/login", login.login, name="login_post")
    add.add_post("/logout", login.logout, name="logout")
    add.add_get("/static/console.css", stylesheet, name="css")
    add.add_get("/", overview.overview, name="overview")
    add.add_get("/messages", messages.search, name="messages")
    add.add_get("/messages/{rest_id}", messages.detail, name="message")
    add.add_get("/queue", queue.queue, name="queue")
    add.add_post("/queue/{rest_id}/retry", queue.retry, name="retry")
    add.add_post("/queue/{rest_id}/cancel", queue.cancel, name="cancel")
    add.add_get("/captures", captures.captures, name="captures")
    add.add_get("/captures/{id}", captures.capture, name="capture")
    add.add_get("/captures/{id}/html", captures.capture_html, name="capture_html")
    add.add_get("/captures/{id}/raw", captures.capture_raw, name="capture_raw")
    add.add_get("/domains", domains.domains, name="domains")
    add.add_get("/domains/{name}", domains.domain, name="domain")
    add.add_get("/suppressions", suppressions.suppressions, name="suppressions")
    add.add_post("/suppressions", suppressions.add, name="suppress")
    add.add_post("/suppressions/remove", suppressions.remove, name="unsuppress")
    add.add_get("/webhooks", webhooks.webhooks, name="webhooks")
    add.add_get("/webhooks/{id}", webhooks.webhook, name="webhook")
    app.router.add_get(PREFIX, _to_console)
    app.add_subapp(f"{PREFIX}/", ui)
