"""The overview: today and the last 7 days in numbers and a chart, and the queue's health."""

from __future__ import annotations

import datetime

from aiohttp import web

from mailnode.console.chart import bar_chart
from mailnode.console.page import console, render
from mailnode.storage.console import DAY

DAYS = 7
# What the overview counts, as (event type, the name people know it by).
FIGURES = (
    ("accepted", "accepted"),
    ("delivered", "delivered"),
    ("deferred", "deferred"),
    ("bounced", "bounced"),
    ("opened", "opens"),
    ("clicked", "clicks"),
)


async def overview(request: web.Request) -> web.Response:
    state = console(request)
    now = state.store.clock()
    today = int(now // DAY) * DAY
    since = today - (DAYS - 1) * DAY
    counts = await state.store.daily_counts(since, DAYS)
    health = await state.store.queue_health()
    days = [
        datetime.datetime.fromtimestamp(since + i * DAY, tz=datetime.UTC).date().isoformat()
        for i in range(DAYS)
    ]
    figures = [(label, counts[kind][-1], sum(counts[kind])) for kind, label in FIGURES]
    chart = bar_chart(days, [(label, counts[kind]) for kind, label in FIGURES])
    oldest = None if health.oldest_due_at is None else max(now - health.oldest_due_at, 0.0)
    return render(
        request,
        "overview.html",
        nav="overview",
        figures=figures,
        chart=chart,
        series=[label for _, label in FIGURES],
        health=health,
        oldest_due_age=oldest,
        today=days[-1],
    )
