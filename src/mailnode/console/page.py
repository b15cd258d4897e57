"""What every console page shares: its state, the session/CSRF/headers middleware, rendering."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib.resources
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from yarl import URL

from mailnode.api.context import AppContext
from mailnode.api.errors import Handler
from mailnode.console.sessions import Session, Sessions, same_token
from mailnode.core.response import Response
from mailnode.errors import ConflictError, NotFoundError, StorageError
from mailnode.smtp.auth import AuthThrottle
from mailnode.storage.console import ConsoleStore

log = logging.getLogger(__name__)

PREFIX = "/ui"
SESSION_COOKIE = "mailnode_session"
LOGIN_COOKIE = "mailnode_login"  # the login form's CSRF token (double submit: no session yet)

# Pages: nothing but our own stylesheet, our own forms, and the capture frame.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# A captured message's HTML: its own inline styles and embedded images, no script, no
# remote content (a remote image would tell its sender the message was looked at, and a
# tracking pixel of our own would record an open), framed only by the console.
MESSAGE_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
    "frame-ancestors 'self'; form-action 'none'; base-uri 'none'"
)
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

SESSION = web.RequestKey("console_session", Session)


@dataclass(slots=True)
class Console:
    ctx: AppContext
    store: ConsoleStore
    sessions: Sessions
    throttle: AuthThrottle
    templates: jinja2.Environment
    css: bytes
    css_version: str
    sleep: Callable[[float], Awaitable[None]]


CONSOLE = web.AppKey("console", Console)


def console(request: web.Request) -> Console:
    return request.config_dict[CONSOLE]


def new_console(ctx: AppContext, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Console:
    css = importlib.resources.files("mailnode.console").joinpath("static/console.css").read_bytes()
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("mailnode.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters.update(when=when, ago=ago, answer=answer, number=number)
    templates.globals.update(link=link)
    store = ctx.store
    return Console(
        ctx=ctx,
        store=ConsoleStore(store),
        sessions=Sessions(store.clock, ctx.random_bytes),
        throttle=AuthThrottle(ctx.config.smtp.auth_throttle, store.clock),
        templates=templates,
        css=css,
        css_version=hashlib.sha256(css).hexdigest()[:12],
        sleep=sleep,
    )


# -- the middleware ----------------------------------------------------------------------------

# Routes open without a session: the login form and the stylesheet it uses.
PUBLIC_ROUTES = frozenset({"login", "login_post", "css"})


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A session (and on a POST, its CSRF token) for every page but login; the headers on all."""
    response = await _checked(request, handler)
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.route.name not in PUBLIC_ROUTES:
        session = current_session(request)
        if session is None:
            if request.method in ("GET", "HEAD"):
                return see_other(str(URL(f"{PREFIX}/login").with_query(next=request.path_qs)))
            return error_page(request, 403, "Your session has ended. Log in again.")
        request[SESSION] = session
        if request.method == "POST":
            form = await request.post()
            if not same_token(str(form.get("csrf", "")), session.csrf):
                log.warning("console: a form without a valid CSRF token to %s", request.path)
                return error_page(
                    request, 403, "The form was out of date or came from another site. Reload the page."
                )
    try:
        return await handler(request)
    except BadInput as exc:
        return error_page(request, 400, str(exc))
    except NotFoundError as exc:
        return error_page(request, 404, str(exc))
    except ConflictError as exc:
        return error_page(request, 409, str(exc))
    except StorageError:
        log.exception("console: storage failure on %s %s", request.method, request.path)
        return error_page(request, 503, "The database is unavailable; try again shortly.")


def current_session(request: web.Request) -> Session | None:
    session_id = request.cookies.get(SESSION_COOKIE)
    return None if not session_id else console(request).sessions.find(session_id)


# -- input -------------------------------------------------------------------------------------


class BadInput(Exception):
    """A query or form value the console cannot use; the message names it (a 400 page)."""


MAX_TEXT = 512


def text_input(values: Mapping[str, Any], name: str) -> str:
    """A search or form field, stripped; at most MAX_TEXT characters."""
    value = str(values.get(name, "")).strip()
    if len(value) > MAX_TEXT:
        raise BadInput(f"{name}: at most {MAX_TEXT} characters")
    return value


def int_input(values: Mapping[str, Any], name: str) -> int | None:
    """A cursor or id: a whole number, or None when absent."""
    value = text_input(values, name)
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise BadInput(f"{name}: expected a whole number, got {value[:40]!r}")
    return int(value)


def date_input(values: Mapping[str, Any], name: str) -> float | None:
    """A UTC day (YYYY-MM-DD) as the Unix time of its start, or None when absent."""
    value = text_input(values, name)
    if not value:
        return None
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{name}: expected a date like 2026-11-23, got {value[:40]!r}") from None
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC).timestamp()


# -- answers -----------------------------------------------------------------------------------


# What a form did, shown on the page it returns to (?done=...): fixed texts, nothing reflected.
DONE = {
    "retried": "The delivery is due now; the output handler picks it up at once.",
    "cancelled": "The delivery is cancelled (a finished one keeps its outcome).",
    "suppressed": "The address is suppressed.",
    "unsuppressed": "The address is no longer suppressed.",
}


def render(request: web.Request, template: str, *, status: int = 200, **values: Any) -> web.Response:
    """A page from a template; every page knows its session's CSRF token and the nav."""
    state = console(request)
    session = request.get(SESSION)
    page = state.templates.get_template(template).render(
        csrf=session.csrf if session else "",
        logged_in=session is not None,
        css_url=f"{PREFIX}/static/console.css?v={state.css_version}",
        path=request.path,
        prefix=PREFIX,
        done=DONE.get(request.query.get("done", "")),
        **values,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status=status, status_code=status, message=message)


def see_other(location: str) -> web.Response:
    """A redirect after a form (POST, then GET: a reload does not repeat the action)."""
    return web.Response(status=303, headers={"Location": location})


def local_path(value: str | None, default: str) -> str:
    """`value` if it is a console path on this server (never another site), else `default`."""
    if not value or not value.startswith(f"{PREFIX}/") or "\\" in value:
        return default
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else default


def link(path: str, query: Mapping[str, Any] | None = None, **changes: Any) -> str:
    """`path` with the query's non-empty values, some of them changed (pagination, filters)."""
    merged = {**(query or {}), **changes}
    kept = {key: str(value) for key, value in merged.items() if value not in (None, "")}
    return str(URL(path).with_query(kept))


# -- template filters --------------------------------------------------------------------------


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """A duration for people: 45 s, 12 min, 3 h, 2 d."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def answer(response: Response | None) -> str:
    return "" if response is None else f"{response.code} {response.message}"


def number(value: int) -> str:
    return f"{value:,}"
