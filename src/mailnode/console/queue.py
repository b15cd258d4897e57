"""The queue: deferred, due, waiting-for-body and recently failed deliveries; retry and cancel."""

from __future__ import annotations

import logging

from aiohttp import web
from yarl import URL

from mailnode.console.page import (
    PREFIX,
    BadInput,
    console,
    int_input,
    local_path,
    render,
    see_other,
    text_input,
)
from mailnode.storage.console import QUEUE_VIEWS, QueueCursor

log = logging.getLogger(__name__)

PAGE = 50
TITLES = {
    "deferred": "Deferred (to be retried)",
    "due": "Due (not yet attempted)",
    "awaiting_body": "Waiting for their body",
    "failed": "Failed in the last 7 days",
}


def _cursor(values: web.Request) -> QueueCursor | None:
    after = int_input(values.query, "after")
    if after is None:
        return None
    at = text_input(values.query, "at")
    try:
        return QueueCursor(float(at) if at else None, after)
    except ValueError:
        raise BadInput(f"at: expected a time in seconds, got {at[:40]!r}") from None


async def queue(request: web.Request) -> web.Response:
    view = text_input(request.query, "view") or "deferred"
    if view not in QUEUE_VIEWS:
        raise BadInput(f"view: one of {', '.join(QUEUE_VIEWS)}")
    state = console(request)
    rows = await state.store.queue(view, _cursor(request), PAGE)
    health = await state.store.queue_health()
    more = None
    if len(rows) == PAGE:
        last = rows[-1]
        more = {"view": view, "after": last.id, "at": "" if view == "failed" else repr(last.next_attempt_at)}
    return render(
        request,
        "queue.html",
        nav="queue",
        view=view,
        views=TITLES,
        rows=rows,
        more=more,
        health=health,
        back=request.path_qs,
    )


async def retry(request: web.Request) -> web.Response:
    rest_id = request.match_info["rest_id"]
    await console(request).ctx.store.retry(rest_id)
    log.info("console: retry delivery=%s", rest_id)
    return await _back(request, "retried")


async def cancel(request: web.Request) -> web.Response:
    rest_id = request.match_info["rest_id"]
    await console(request).ctx.store.cancel(rest_id)
    log.info("console: cancel delivery=%s", rest_id)
    return await _back(request, "cancelled")


async def _back(request: web.Request, done: str) -> web.Response:
    form = await request.post()
    back = URL(local_path(str(form.get("back", "")), f"{PREFIX}/queue"))
    return see_other(str(back.update_query(done=done)))
