"""The public tracking routes: the open pixel, click redirects and the managed unsubscribe.

    GET|HEAD /t/o/{token}   a 1x1 transparent GIF; records `opened`
    GET|HEAD /t/c/{token}   302 to the URL the token carries; records `clicked`
    GET      /u/{token}     a confirmation page with a one-click form; changes nothing
    POST     /u/{token}     List-Unsubscribe=One-Click (RFC 8058 §3.1): suppress, record `unsubscribed`

The signed token is the only credential (auth_middleware lets these paths through). A token that
is not ours, not for this route or expired gets 404 and records nothing. Opens and clicks go to
the EngagementRecorder, so a hit is answered without waiting for the database.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mailnode.api.context import context
from mailnode.core.events import EventType, NewEvent, bounded
from mailnode.core.tracking import TrackingMode, is_machine_request
from mailnode.core.tracking_tokens import TokenKind, TrackingClaim, verify

PUBLIC_PREFIXES = ("/t/", "/u/")

# The smallest transparent 1x1 GIF: header, screen of 1x1 with a 2-colour table, a graphic
# control extension marking colour 0 transparent, one 1x1 image, trailer.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# Every open should reach us: no browser, proxy or HTTP/1.0 cache may keep the pixel.
_PIXEL_HEADERS = {
    **_SAFE_HEADERS,
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
_REDIRECT_HEADERS = {**_SAFE_HEADERS, "Cache-Control": "no-store"}
_STYLE = (
    "body{font:1.1rem/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;"
    "color:#1a1a1a;background:#fff}button{font:inherit;padding:.5rem 1.25rem;cursor:pointer}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# The pages load nothing, run nothing, post only to themselves and cannot be framed.
_PAGE_HEADERS = {
    **_SAFE_HEADERS,
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
# What RFC 8058 §3.1 says a one-click POST carries.
ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
# Scanner detection is a regex over the User-Agent (tens of microseconds); a few hundred
# distinct agents make nearly all hits, so the answers for short ones are kept (bounded memory).
_is_machine_cached = functools.lru_cache(maxsize=1024)(is_machine_request)
_CACHED_AGENT_CHARS = 512
# A '%' that does not start a %XX escape: it is escaped itself, the others are kept as they are.
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3986 §2.2 reserved characters and '%': everything else outside unreserved is escaped.
_URI_SAFE = "!#$%&'()*+,/:;=?@[]~"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/t/o/{token}", open_pixel)  # add_get answers HEAD too
    router.add_get("/t/c/{token}", click)
    router.add_get("/u/{token}", unsubscribe_page)
    router.add_post("/u/{token}", unsubscribe)


async def open_pixel(request: web.Request) -> web.Response:
    """The pixel: record an open, answer a GIF nobody may cache."""
    claim = _claim(request, TokenKind.OPEN)
    if claim is None:
        return _not_found()
    _record(request, claim, EventType.OPENED, {})
    return web.Response(body=PIXEL_GIF, content_type="image/gif", headers=_PIXEL_HEADERS)


async def click(request: web.Request) -> web.Response:
    """A tracked link: record a click, redirect to the token's URL (never the query string's)."""
    claim = _claim(request, TokenKind.CLICK)
    if claim is None or claim.url is None:
        return _not_found()
    _record(request, claim, EventType.CLICKED, {"url": claim.url})
    return web.Response(status=302, headers={**_REDIRECT_HEADERS, "Location": location(claim.url)})


async def unsubscribe_page(request: web.Request) -> web.Response:
    """The confirmation page; a GET alone changes nothing, so link scanners unsubscribe nobody."""
    claim = _claim(request, TokenKind.UNSUBSCRIBE)
    if claim is None:
        return _not_found()
    body = (
        "<h1>Unsubscribe</h1>\n"
        f"<p>Stop mail from <strong>{_text(claim.domain)}</strong> to "
        f"<strong>{_text(claim.identity)}</strong>?</p>\n"
        '<form method="post">\n'
        f'<input type="hidden" name="{ONE_CLICK_FIELD}" value="{ONE_CLICK_VALUE}">\n'
        '<button type="submit">Unsubscribe</button>\n'
        "</form>"
    )
    return _page("Unsubscribe", body)


async def unsubscribe(request: web.Request) -> web.Response:
    """RFC 8058 one-click: suppress the recipient for the domain and record `unsubscribed`."""
    claim = _claim(request, TokenKind.UNSUBSCRIBE)
    if claim is None or claim.identity is None:
        return _not_found()
    if not await _is_one_click(request):
        return _text_response(400, f"the POST must carry {ONE_CLICK_FIELD}={ONE_CLICK_VALUE} (RFC 8058)")
    ctx = context(request)
    event = NewEvent(
        EventType.UNSUBSCRIBED,
        ctx.store.clock(),
        claim.domain,
        batch=claim.batch,
        delivery=claim.delivery,
        recipient=claim.identity,
    )
    await ctx.events.record_unsubscribe(event)  # idempotent: a repeat records nothing more
    body = (
        "<h1>You are unsubscribed</h1>\n"
        f"<p><strong>{_text(claim.domain)}</strong> will send no more mail to "
        f"<strong>{_text(claim.identity)}</strong>.</p>"
    )
    return _page("Unsubscribed", body)


def location(url: str) -> str:
    """`url` fit for a Location header: characters a URI may not hold percent-encoded (UTF-8),
    existing %XX escapes kept as they are."""
    return quote(_LONE_PERCENT.sub("%25", url), safe=_URI_SAFE)


def _claim(request: web.Request, kind: TokenKind) -> TrackingClaim | None:
    ctx = context(request)
    return verify(request.match_info["token"], ctx.tracking_keys.keys, kind, ctx.store.clock())


def _record(request: web.Request, claim: TrackingClaim, kind: EventType, data: dict[str, Any]) -> None:
    """Queue an open or click with what its tracking mode lets us keep."""
    ctx = context(request)
    user_agent = request.headers.get("User-Agent")
    data.update(mode=claim.mode.value, machine=_is_machine(request.method, user_agent))
    if claim.mode is TrackingMode.FULL:  # only full tracking keeps who fetched it, and with what
        data.update(ip=request.remote, user_agent=bounded(user_agent))
    event = NewEvent(
        kind,
        ctx.store.clock(),
        claim.domain,
        batch=claim.batch,
        delivery=claim.delivery,
        recipient=claim.identity,
        data=data,
    )
    ctx.engagement.record(event)


def _is_machine(method: str, user_agent: str | None) -> bool:
    if user_agent is not None and len(user_agent) > _CACHED_AGENT_CHARS:
        return is_machine_request(method, user_agent)
    return _is_machine_cached(method, user_agent)


async def _is_one_click(request: web.Request) -> bool:
    try:
        form = await request.post()
    except ValueError:  # a malformed form body
        return False
    return form.get(ONE_CLICK_FIELD) == ONE_CLICK_VALUE


def _text(value: str | None) -> str:
    return html.escape(value or "")


def _page(title: str, body: str) -> web.Response:
    """A small self-contained HTML page: no scripts, no external resources."""
    document = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex">\n'
        f"<title>{_text(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
    return web.Response(text=document, content_type="text/html", headers=_PAGE_HEADERS)


def _not_found() -> web.Response:
    return _text_response(404, "not found")


def _text_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=_SAFE_HEADERS)
