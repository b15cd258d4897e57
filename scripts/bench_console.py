#!/usr/bin/env python3
"""Benchmark the web console's pages on a database with 100,000 events.

A fresh SQLite database is filled directly (SQLAlchemy Core, mailnode's own tables) with what a
busy week leaves behind: --events events (accepted, delivered, deferred, bounced, opens, clicks)
of about a quarter as many deliveries, each with its attempts, over 3 domains and 7 days, the
hourly counts the outbox would have made of them, suppressions, two webhooks with their
deliveries, and captured messages. Then `mailnode serve` runs on it as a separate process (the
way users run it), the script logs in to the console as a browser does, and requests each page
--requests times, one at a time, after a few warm-up requests.

For each page: the median and 90th percentile of the time to the whole answer, against the goal
(< 100 ms per page, issue 6) and against GET /healthz measured in the same run (the cost of
aiohttp and the loopback round trip alone). Nothing leaves 127.0.0.1.

    .venv/bin/python scripts/bench_console.py [--events 100000] [--requests 21] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib.venv import reexec_under_project_venv

try:
    import aiohttp
    from benchlib.mailnode import base_config, running_mailnode
    from benchlib.report import environment, write_report
    from sqlalchemy import Connection, select

    from mailnode.core.dkim_keys import generate_dkim_key
    from mailnode.core.events import hour_of
    from mailnode.storage import tables as t
    from mailnode.storage.domains import DomainStore
    from mailnode.storage.store import Store
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

HOST = "127.0.0.1"
ADMIN_TOKEN = "bench-console-admin-token-0123456789"
DOMAINS = ("shop.bench", "news.bench", "app.bench")
DAY = 86400
GOAL_MS = 100.0
EVENTS_PER_DELIVERY = 4  # about: accepted, the outcome, and opens and clicks of some
CAPTURES = 2000
SUPPRESSIONS = 5000
WEBHOOK_DELIVERIES = 20_000
BATCH_SIZE = 1000
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass(frozen=True)
class Fixture:
    """Ids the timed pages need."""

    rest_id: str  # a delivery with attempts, events and a stored body
    batch: str
    recipient: str
    capture_id: int
    webhook: str
    deliveries: int
    events: int


@dataclass(frozen=True)
class Timing:
    page: str
    path: str
    median_ms: float
    p90_ms: float
    bytes: int
    ratio_to_reference: float
    meets_goal: bool


def _message(number: int, rcpt: str) -> bytes:
    html = "".join(
        f"<p>Paragraph {i} of message {number}, with a <a href='https://shop.bench/{i}'>link</a>.</p>"
        for i in range(20)
    )
    return (
        f"Received: from app.bench by mailnode.bench; Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"From: Shop <news@shop.bench>\r\nTo: <{rcpt}>\r\nSubject: Your order {number} has shipped\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour order {number} has shipped.\r\n"
        f"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>{html}</body></html>\r\n--b--\r\n"
    ).encode()


def _fill(conn: Connection, events_wanted: int, now: float, rng: random.Random) -> Fixture:
    """Deliveries with attempts, events and their hourly counts, suppressions, webhooks, captures."""
    deliveries = events_wanted // EVENTS_PER_DELIVERY
    start = now - 7 * DAY
    batch_rows = []
    for number in range(deliveries // BATCH_SIZE + 1):
        blob = conn.execute(
            t.blobs.insert(), {"stored_length": 0, "total_length": 0, "created_at": start}
        ).inserted_primary_key
        batch_rows.append(
            {
                "public_id": f"bat_bench{number:05d}",
                "domain": DOMAINS[number % len(DOMAINS)],
                "content_blob_id": blob[0],
                "recipients": BATCH_SIZE,
                "rejected": [],
                "tags": [],
                "metadata": {},
                "created_at": start + number * (7 * DAY / (deliveries / BATCH_SIZE + 1)),
            }
        )
    conn.execute(t.batches.insert(), batch_rows)
    batch_ids = {row.public_id: row.id for row in conn.execute(select(t.batches.c.public_id, t.batches.c.id))}

    transactions, attempts, events = [], [], []
    outcomes = ["delivered"] * 88 + ["deferred"] * 5 + ["failed"] * 5 + ["cancelled", "awaiting_body"]
    for number in range(deliveries):
        batch = batch_rows[number // BATCH_SIZE]
        created = batch["created_at"] + rng.uniform(0, 60)
        rcpt = f"user{number:06d}@example.org"
        outcome = rng.choice(outcomes)
        tries = {"delivered": 1, "deferred": rng.randint(1, 3), "failed": rng.randint(1, 5)}.get(outcome, 0)
        status = "queued" if outcome == "deferred" else outcome
        finished = created + 5 * tries if status in ("delivered", "failed", "cancelled") else None
        transactions.append(
            {
                "id": number + 1,
                "rest_id": f"bench{number:07d}",
                "sender": "api",
                "mail_from": f"b-{number}-k-sig@bounces.mailnode.bench",
                "rcpt_to": rcpt,
                "status": status,
                "version": 1 + tries,
                "created_at": created,
                "updated_at": finished or created,
                "next_attempt_at": now + rng.uniform(60, 3600) if status == "queued" else None,
                "attempt_count": tries,
                "final_attempt_reason": {
                    "delivered": "upstream response success",
                    "failed": "upstream response permfail",
                }.get(outcome),
                "finished_at": finished,
                "retry": True,
                "bounce": False,
                "cancelled": outcome == "cancelled",
                "protocol": "http",
                "batch_id": batch_ids[batch["public_id"]],
                "recipient": {"name": f"User {number}", "fields": {}},
                "domain": batch["domain"],
            }
        )
        for attempt in range(1, tries + 1):
            last = attempt == tries
            rcpt_answer = (
                (250, "2.1.5 ok")
                if outcome == "delivered" or not last
                else ((451, "4.2.0 mailbox busy") if outcome == "deferred" else (550, "5.1.1 no such user"))
            )
            if outcome in ("deferred", "failed") and not last:
                rcpt_answer = (451, "4.2.0 mailbox busy")
            attempts.append(
                {
                    "transaction_id": number + 1,
                    "number": attempt,
                    "started_at": created + 5 * (attempt - 1),
                    "finished_at": created + 5 * attempt - 4,
                    "mail_code": 250,
                    "mail_message": "2.1.0 ok",
                    "rcpt_code": rcpt_answer[0],
                    "rcpt_message": rcpt_answer[1],
                    "data_code": 250 if rcpt_answer[0] == 250 else None,
                    "data_message": "2.0.0 queued as ABC123" if rcpt_answer[0] == 250 else None,
                    "remote_host": "mx.example.org",
                }
            )
        common = {
            "domain": batch["domain"],
            "batch": batch["public_id"],
            "delivery": f"bench{number:07d}",
            "recipient": rcpt,
            "processed": True,
        }
        events.append({**common, "type": "accepted", "occurred_at": created, "data": {}})
        kind = {"delivered": "delivered", "deferred": "deferred", "failed": "bounced"}.get(outcome)
        if kind is not None:
            events.append(
                {
                    **common,
                    "type": kind,
                    "occurred_at": created + 1,
                    "data": {"code": attempts[-1]["rcpt_code"]},
                }
            )
    # Opens and clicks of delivered mail make up the rest of the events.
    delivered = [row for row in transactions if row["status"] == "delivered"]
    while len(events) < events_wanted:
        row = rng.choice(delivered)
        kind = "opened" if rng.random() < 0.75 else "clicked"
        when = min(row["created_at"] + rng.uniform(60, 2 * DAY), now)
        events.append(
            {
                "domain": row["domain"],
                "batch": None,
                "delivery": row["rest_id"],
                "recipient": row["rcpt_to"],
                "processed": True,
                "type": kind,
                "occurred_at": when,
                "data": {"unique": rng.random() < 0.5},
            }
        )
    events.sort(key=lambda event: event["occurred_at"])
    conn.execute(t.transactions.insert(), transactions)
    conn.execute(t.attempts.insert(), attempts)
    conn.execute(t.events.insert(), events)
    counts: dict[tuple[str, int, str], int] = {}
    for event in events:
        key = (event["domain"], hour_of(event["occurred_at"]), event["type"])
        counts[key] = counts.get(key, 0) + 1
    conn.execute(
        t.stats_hourly.insert(),
        [
            {"domain": d, "hour": h, "type": k, "count": n, "unique_count": 0, "machine_count": 0}
            for (d, h, k), n in counts.items()
        ],
    )

    # One delivery with its body stored (its page shows the headers), the others rendered when sent.
    detail = transactions[len(transactions) // 2]
    body = _message(0, detail["rcpt_to"])
    blob = conn.execute(
        t.blobs.insert(), {"stored_length": len(body), "total_length": len(body), "created_at": start}
    ).inserted_primary_key[0]
    conn.execute(t.blob_chunks.insert(), {"blob_id": blob, "offset": 0, "data": body})
    conn.execute(
        t.transaction_blobs.insert(), {"transaction_id": detail["id"], "name": "body", "blob_id": blob}
    )

    conn.execute(
        t.suppressions.insert(),
        [
            {
                "domain": DOMAINS[0],
                "address": f"gone{n:05d}@example.org",
                "reason": "bounced",
                "details": {"code": 550},
                "created_at": start + n,
            }
            for n in range(SUPPRESSIONS)
        ],
    )
    hooks = [
        {
            "public_id": f"wh_bench{n}",
            "domain": DOMAINS[0],
            "url": f"https://hooks.example.org/{n}",
            "secret": "s" * 32,
            "event_types": ["delivered", "bounced", "opened"],
            "created_at": start,
        }
        for n in range(2)
    ]
    conn.execute(t.webhooks.insert(), hooks)
    hook_ids = list(conn.execute(select(t.webhooks.c.id)).scalars())
    conn.execute(
        t.webhook_deliveries.insert(),
        [
            {
                "webhook_id": hook_ids[n % 2],
                "event_id": n + 1,
                "payload": f'{{"type":"delivered","id":{n + 1}}}',
                "status": "delivered" if n % 50 else "pending",
                "attempts": 1,
                "created_at": start + n * 10,
                "next_attempt_at": now if n % 50 == 0 else None,
                "last_attempt_at": start + n * 10,
                "last_status": 200,
            }
            for n in range(WEBHOOK_DELIVERIES)
        ],
    )
    conn.execute(
        t.captures.insert(),
        [
            {
                "transaction_rest_id": f"bench{n:07d}",
                "mail_from": "news@shop.bench",
                "rcpt_to": f"user{n:06d}@example.org",
                "created_at": start + n * 60,
                "message": _message(n, f"user{n:06d}@example.org"),
            }
            for n in range(CAPTURES)
        ],
    )
    return Fixture(
        rest_id=detail["rest_id"],
        batch=batch_rows[len(batch_rows) // 2]["public_id"],
        recipient=transactions[deliveries // 3]["rcpt_to"],
        capture_id=CAPTURES // 2,
        webhook=hooks[0]["public_id"],
        deliveries=deliveries,
        events=len(events),
    )


async def populate(data_dir: Path, events_wanted: int) -> Fixture:
    store = await Store.open(f"sqlite:///{data_dir}/mailnode.db", sqlite_synchronous="normal")
    try:
        domains = DomainStore(store)
        for name in DOMAINS:
            await domains.create_domain(name, generate_dkim_key("ed25519"), "mailnode")
        now = time.time()
        rng = random.Random(6)
        return await store.write(lambda conn: _fill(conn, events_wanted, now, rng))
    finally:
        await store.close()


async def login(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/ui/login") as response:
        found = _CSRF.search(await response.text())
        assert found is not None, "no CSRF token on the login form"
    form = {"csrf": found.group(1), "token": ADMIN_TOKEN}
    async with http.post(f"{url}/ui/login", data=form, allow_redirects=False) as response:
        if response.status != 303:
            raise RuntimeError(f"login answered {response.status}: {await response.text()}")


async def time_page(
    http: aiohttp.ClientSession, url: str, requests: int, warmup: int
) -> tuple[list[float], int]:
    seconds, size = [], 0
    for number in range(warmup + requests):
        started = time.perf_counter()
        async with http.get(url, allow_redirects=False) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}: {body[:300]!r}")
        if number >= warmup:
            seconds.append(time.perf_counter() - started)
            size = len(body)
    return seconds, size


def pages(fixture: Fixture) -> list[tuple[str, str]]:
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 3 * DAY))
    return [
        ("reference: GET /healthz", "/healthz"),
        ("overview", "/ui/"),
        ("messages, newest", "/ui/messages"),
        ("messages, next page", "/ui/messages?before=12000"),
        ("messages by recipient", f"/ui/messages?recipient={fixture.recipient}"),
        ("messages: deferred", "/ui/messages?status=deferred"),
        ("messages: delivered", "/ui/messages?status=delivered"),
        ("messages of a batch", f"/ui/messages?batch={fixture.batch}"),
        ("messages of a day", f"/ui/messages?from={day}&to={day}"),
        ("message detail", f"/ui/messages/{fixture.rest_id}"),
        ("queue: deferred", "/ui/queue"),
        ("queue: failed", "/ui/queue?view=failed"),
        ("captured list", "/ui/captures"),
        ("captured message", f"/ui/captures/{fixture.capture_id}"),
        ("captured HTML (frame)", f"/ui/captures/{fixture.capture_id}/html"),
        ("domains", "/ui/domains"),
        ("domain", f"/ui/domains/{DOMAINS[0]}"),
        ("suppressions", f"/ui/suppressions?domain={DOMAINS[0]}"),
        ("suppressions search", f"/ui/suppressions?domain={DOMAINS[0]}&q=gone02"),
        ("webhooks", "/ui/webhooks"),
        ("webhook deliveries", f"/ui/webhooks/{fixture.webhook}"),
    ]


async def run(options: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as scratch:
        data_dir = Path(scratch)
        started = time.perf_counter()
        fixture = await populate(data_dir, options.events)
        took = time.perf_counter() - started
        filled = f"{fixture.events:,} events, {fixture.deliveries:,} deliveries"
        print(f"filled the database: {filled} in {took:.1f} s")
        config = data_dir / "mailnode.toml"
        config.write_text(
            base_config(data_dir, HOST, "warning", "normal")
            + f"""[smtp.submission]
listen = "{HOST}:0"
[smtp.ingress]
listen = "{HOST}:0"
[delivery]
mode = "capture"
[admin]
token = "{ADMIN_TOKEN}"
"""
        )
        timings: list[Timing] = []
        async with (
            running_mailnode(config) as node,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            await login(http, node.url)
            reference = 0.0
            for name, path in pages(fixture):
                seconds, size = await time_page(http, f"{node.url}{path}", options.requests, options.warmup)
                median = statistics.median(seconds) * 1000
                reference = reference or median
                p90 = sorted(seconds)[int(0.9 * (len(seconds) - 1))] * 1000
                timings.append(
                    Timing(
                        name,
                        path,
                        round(median, 2),
                        round(p90, 2),
                        size,
                        round(median / reference, 1),
                        median < GOAL_MS,
                    )
                )
    return {
        "environment": environment(),
        "events": fixture.events,
        "deliveries": fixture.deliveries,
        "requests": options.requests,
        "goal_ms": GOAL_MS,
        "pages": [asdict(t) for t in timings],
    }


def print_table(report: dict[str, Any]) -> None:
    sizes = f"{report['events']:,} events, {report['deliveries']:,} deliveries"
    print(f"\n{sizes}; median and p90 of {report['requests']} requests each\n")
    print(
        f"{'page':<26} {'median ms':>10} {'p90 ms':>8} {'x /healthz':>10} {'KiB':>7}  goal < {GOAL_MS:.0f} ms"
    )
    for row in report["pages"]:
        verdict = "ok" if row["meets_goal"] else "SLOW"
        figures = f"{row['median_ms']:>10.1f} {row['p90_ms']:>8.1f} {row['ratio_to_reference']:>10.1f}"
        print(f"{row['page']:<26} {figures} {row['bytes'] / 1024:>7.1f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=100_000, help="events in the database (default 100,000)"
    )
    parser.add_argument("--requests", type=int, default=21, help="timed requests per page (default 21)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per page first (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    options = parser.parse_args()
    report = asyncio.run(run(options))
    print_table(report)
    if options.json:
        write_report(options.json, report)
    if not all(row["meets_goal"] for row in report["pages"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
