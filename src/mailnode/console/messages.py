"""Messages: search deliveries; one delivery's attempts, upstream answers, events and headers."""

from __future__ import annotations

from aiohttp import web

from mailnode.console.page import BadInput, console, date_input, int_input, render, text_input
from mailnode.core.outcome import Status
from mailnode.errors import NotFoundError
from mailnode.storage.console import DAY, DeliveryQuery

PAGE = 50
STATUSES = ("queued", "deferred", "delivered", "failed", "cancelled", "awaiting_body")
_FILTERS = ("recipient", "sender", "batch", "status", "from", "to")


async def search(request: web.Request) -> web.Response:
    values = request.query
    status = text_input(values, "status")
    if status and status not in STATUSES:
        raise BadInput(f"status: one of {', '.join(STATUSES)}")
    until = date_input(values, "to")
    query = DeliveryQuery(
        recipient=text_input(values, "recipient") or None,
        sender=text_input(values, "sender") or None,
        batch=text_input(values, "batch") or None,
        status=status or None,
        since=date_input(values, "from"),
        until=None if until is None else until + DAY,  # the whole of the last day
        before_id=int_input(values, "before"),
        limit=PAGE,
    )
    rows = await console(request).store.deliveries(query)
    filters = {name: text_input(values, name) for name in _FILTERS}
    older = rows[-1].id if len(rows) == PAGE else None
    return render(
        request,
        "messages.html",
        nav="messages",
        rows=rows,
        filters=filters,
        statuses=STATUSES,
        older=older,
        paged=query.before_id is not None,
    )


async def detail(request: web.Request) -> web.Response:
    rest_id = request.match_info["rest_id"]
    found = await console(request).store.delivery(rest_id)
    if found is None:
        raise NotFoundError(
            f"no delivery {rest_id!r} (finished deliveries are kept for [storage] gc_ttl_seconds)"
        )
    actionable = found.row.status is Status.QUEUED or found.row.status is Status.FAILED
    return render(request, "message.html", nav="messages", d=found, actionable=actionable)
