"""Webhooks: every endpoint with its state, and one endpoint's recent deliveries."""

from __future__ import annotations

from aiohttp import web

from mailnode.console.page import console, int_input, render
from mailnode.errors import NotFoundError

PAGE = 50


async def webhooks(request: web.Request) -> web.Response:
    hooks = await console(request).store.webhooks()
    return render(request, "webhooks.html", nav="webhooks", hooks=hooks)


async def webhook(request: web.Request) -> web.Response:
    state = console(request)
    webhook_id = request.match_info["id"]
    hook = await state.store.webhook(webhook_id)
    if hook is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    before = int_input(request.query, "before")
    rows = await state.store.webhook_deliveries(webhook_id, before_id=before, limit=PAGE)
    older = rows[-1].id if len(rows) == PAGE else None
    return render(
        request,
        "webhook.html",
        nav="webhooks",
        hook=hook,
        rows=rows,
        older=older,
        paged=before is not None,
    )
