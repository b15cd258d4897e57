"""Every console page against the real app and real SQLite, with mail that went every way."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.console.conftest import THROTTLE
from tests.console.support import Browser
from tests.support.mailnode import Mailnode
from tests.support.platform import Domain, admin_headers, create_domain, send
from tests.support.sink import Reply, Sink
from tests.support.webhook_receiver import WebhookReceiver

TODAY = datetime.datetime.now(datetime.UTC).date().isoformat()
DAY = 86400


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = WebhookReceiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    """Mail to the sink; a deferred delivery waits an hour for its next attempt."""
    return await mailnode_factory(
        admin={"token": ADMIN_TOKEN},
        smtp={"auth_throttle": THROTTLE},
        retry={"initial_delay_seconds": 3600, "max_delay_seconds": 3600},
        webhooks={"allow_private": True},
    )


@pytest.fixture
async def sent(node: Mailnode, sink: Sink, receiver: WebhookReceiver) -> dict[str, Any]:
    """example.com with a webhook sent to three recipients: delivered, bounced, deferred."""
    domain = await create_domain(node, "example.com")
    async with node.http.post(
        f"{node.url}/v1/domains/example.com/webhooks",
        json={"url": receiver.url(), "event_types": ["delivered", "bounced"]},
        headers=admin_headers(),
    ) as response:
        assert response.status == 201, await response.text()
        webhook = await response.json()
    sink.reply_for("gone@example.org", Reply(rcpt="550 5.1.1 no such user"))
    sink.reply_for("later@example.org", Reply(rcpt="451 4.2.0 mailbox busy"))
    recipients = ["ann@example.org", "gone@example.org", "later@example.org"]
    body = {"sender": {"email": "news@example.com"}, "subject": "Hi", "text": "Hello", "recipients": []}
    body["recipients"] = [{"email": r} for r in recipients]
    status, answer = await send(node, domain, body)
    assert status == 202, answer
    await receiver.wait_for_posts(2)
    await wait_counted(node, 3 + 3)  # accepted (3), delivered, bounced, deferred
    return {"domain": domain, "batch": answer["batch_id"], "webhook": webhook["id"]}


async def wait_counted(node: Mailnode, count: int, timeout: float = 10.0) -> None:
    """Until `count` events exist and the outbox has counted them all."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ((total, pending),) = node.rows("SELECT count(*), count(*) - coalesce(sum(processed), 0) FROM events")
        if total >= count and pending == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{total} events, {pending} unprocessed"
        await asyncio.sleep(0.02)


def rest_id(node: Mailnode, rcpt: str) -> str:
    ((found,),) = node.rows("SELECT rest_id FROM transactions WHERE rcpt_to = ?", rcpt)
    return str(found)


def table_rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [row for row in body.split("<tr>")[1:] if 'class="empty"' not in row]


async def test_the_overview_counts_today_and_the_week_with_a_chart_and_queue_health(
    logged_in: Browser, sent: dict[str, Any]
) -> None:
    page = await logged_in.get("/ui/")
    assert page.status == 200
    today_row = re.search(r"<th>today \(" + TODAY + r", UTC\)</th>(.*?)</tr>", page.text, re.S)
    assert today_row is not None
    cells = re.findall(r"<td>([\d,]+)</td>", today_row.group(1))
    assert cells == ["3", "1", "1", "1", "0", "0"]  # accepted, delivered, deferred, bounced, opens, clicks
    assert "<svg" in page.text and f"<title>delivered on {TODAY}: 1</title>" in page.text
    assert re.search(
        r'<dt><a href="/ui/queue\?view=deferred">waiting for a later attempt</a></dt><dd>1</dd>', page.text
    )
    assert re.search(r"failed, last 24 h</a></dt><dd class=\"bad\">1</dd>", page.text)


async def test_the_overview_counts_mail_without_a_sending_domain_too(
    node: Mailnode, logged_in: Browser, sink: Sink
) -> None:
    """The developer's case: a key with no domain (the REST transactions API) sends; the
    overview counts it as the server's own mail, and nobody's suppression list grows."""
    sink.reply_for("gone@example.org", Reply(rcpt="550 5.1.1 no such user"))
    for recipient in ("ann@example.org", "gone@example.org"):
        status, created, _ = await node.create(
            {
                "mail_from": {"m": "app@example.com"},
                "rcpt_to": [{"m": recipient}],
                "body": {"inline": "From: app@example.com\r\nSubject: s\r\n\r\nhi\r\n"},
            }
        )
        assert status == 201, created
    await wait_counted(node, 4)  # accepted (2), delivered, bounced
    page = await logged_in.get("/ui/")
    today_row = re.search(r"<th>today \(" + TODAY + r", UTC\)</th>(.*?)</tr>", page.text, re.S)
    assert today_row is not None
    assert re.findall(r"<td>([\d,]+)</td>", today_row.group(1)) == ["2", "1", "0", "1", "0", "0"]
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_the_week_adds_up_whole_utc_days(
    node: Mailnode, logged_in: Browser, sent: dict[str, Any]
) -> None:
    today = int(time.time() // DAY) * DAY
    yesterday = datetime.datetime.fromtimestamp(today - DAY, datetime.UTC).date().isoformat()
    for start, count in ((today - DAY + 23 * 3600, 5), (today - 6 * DAY, 7), (today - 7 * DAY + 3600, 100)):
        node.rows("INSERT INTO stats_hourly VALUES ('example.com', ?, 'delivered', ?, 0, 0)", start, count)
    page = await logged_in.get("/ui/")
    week = re.search(r"<th>last 7 days</th>(.*?)</tr>", page.text, re.S)
    assert week is not None
    assert re.findall(r"<td>([\d,]+)</td>", week.group(1))[1] == "13"  # 1 today + 5 + 7; not the 100
    assert f"<title>delivered on {yesterday}: 5</title>" in page.text


async def test_messages_are_found_by_recipient_sender_batch_status_and_date(
    node: Mailnode, logged_in: Browser, sent: dict[str, Any]
) -> None:
    async def found(query: str) -> list[str]:
        page = await logged_in.get(f"/ui/messages?{query}")
        assert page.status == 200, page.text
        return sorted(re.findall(r'<td class="addr">([^<]*@example\.org)</td>', page.text))

    everyone = ["ann@example.org", "gone@example.org", "later@example.org"]
    assert await found("") == everyone
    assert await found("recipient=GONE") == ["gone@example.org"]
    assert await found("sender=example.com") == everyone
    assert await found("sender=other.example") == []
    assert await found(f"batch={sent['batch']}") == everyone
    assert await found("batch=bat_nope") == []
    assert await found("status=deferred") == ["later@example.org"]
    assert await found("status=failed") == ["gone@example.org"]
    assert await found(f"from={TODAY}&to={TODAY}") == everyone
    assert await found("to=2020-01-01") == []
    bad = await logged_in.get("/ui/messages?from=yesterday")
    assert bad.status == 400 and "expected a date like 2026-11-23" in bad.text


async def test_a_message_shows_its_attempts_with_the_upstream_answers_and_its_events(
    node: Mailnode, logged_in: Browser, sent: dict[str, Any]
) -> None:
    page = await logged_in.get(f"/ui/messages/{rest_id(node, 'gone@example.org')}")
    assert page.status == 200
    assert "550 5.1.1 no such user" in page.text
    events = page.text.split("<h2>Events</h2>", 1)[1].split("</table>", 1)[0]
    assert "accepted" in events and "bounced" in events
    assert "Not stored: this message is built when it is sent" in page.text
    assert (await logged_in.get("/ui/messages/nope")).status == 404


async def test_the_queue_lists_deferred_and_failed_deliveries(
    node: Mailnode, logged_in: Browser, sent: dict[str, Any]
) -> None:
    deferred = await logged_in.get("/ui/queue")
    assert [row for row in table_rows(deferred.text) if "later@example.org" in row]
    assert "451 4.2.0 mailbox busy" in deferred.text and "ann@example.org" not in deferred.text
    failed = await logged_in.get("/ui/queue?view=failed")
    assert "gone@example.org" in failed.text and "later@example.org" not in failed.text
    assert (await logged_in.get("/ui/queue?view=everything")).status == 400


async def test_domains_show_keys_tracking_and_the_dns_records(
    logged_in: Browser, sent: dict[str, Any]
) -> None:
    listing = await logged_in.get("/ui/domains")
    assert 'href="/ui/domains/example.com"' in listing.text
    page = await logged_in.get("/ui/domains/example.com")
    assert page.status == 200
    domain: Domain = sent["domain"]
    dkim = next(r for r in domain.dns if r["name"].endswith("._domainkey.example.com"))
    assert f"<code>{dkim['name']}</code>" in page.text
    assert "v=DMARC1; p=none" in page.text
    assert "opens: off, links: off" in page.text
    assert "tests" in page.text and "active" in page.text  # the API key, by name
    assert (await logged_in.get("/ui/domains/nope.example")).status == 404


async def test_suppressions_are_searched_added_and_removed(
    node: Mailnode, logged_in: Browser, sent: dict[str, Any]
) -> None:
    page = await logged_in.get("/ui/suppressions?domain=example.com")
    assert "gone@example.org" in page.text and "bounced" in page.text

    answer = await logged_in.submit(
        "/ui/suppressions", "/ui/suppressions", domain="example.com", address="Zed@Example.org"
    )
    assert answer.status == 303
    assert node.rows("SELECT address, reason FROM suppressions ORDER BY address") == [
        ("gone@example.org", "bounced"),
        ("zed@example.org", "manual"),
    ]
    found = await logged_in.get("/ui/suppressions?domain=example.com&q=ze")
    assert "zed@example.org" in found.text and "gone@example.org" not in found.text
    manual = await logged_in.get("/ui/suppressions?domain=example.com&reason=manual")
    assert "zed@example.org" in manual.text and "gone@example.org" not in manual.text

    answer = await logged_in.submit(
        "/ui/suppressions", "/ui/suppressions/remove", domain="example.com", address="gone@example.org"
    )
    assert answer.status == 303
    assert node.rows("SELECT address FROM suppressions") == [("zed@example.org",)]
    bad = await logged_in.submit(
        "/ui/suppressions", "/ui/suppressions", domain="example.com", address="not an address"
    )
    assert bad.status == 400 and "address:" in bad.text


async def test_webhooks_show_their_endpoints_and_recent_deliveries(
    logged_in: Browser, sent: dict[str, Any], receiver: WebhookReceiver
) -> None:
    listing = await logged_in.get("/ui/webhooks")
    assert receiver.url() in listing.text and "delivered, bounced" in listing.text
    page = await logged_in.get(f"/ui/webhooks/{sent['webhook']}")
    assert page.status == 200
    rows = table_rows(page.text)
    assert len(rows) == 2
    assert sorted(re.search(r"<td>(\w+) <span", row).group(1) for row in rows) == ["bounced", "delivered"]
    assert all("HTTP 200" in row for row in rows)
    assert (await logged_in.get("/ui/webhooks/wh_nope")).status == 404


async def test_every_page_has_the_security_headers(logged_in: Browser, sent: dict[str, Any]) -> None:
    for path in (
        "/ui/",
        "/ui/messages",
        "/ui/queue",
        "/ui/captures",
        "/ui/domains",
        "/ui/suppressions",
        "/ui/webhooks",
        "/ui/login",
    ):
        page = await logged_in.get(path, follow=False)
        assert page.status in (200, 303), path
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Cache-Control"] == "no-store"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    css = await logged_in.get("/ui/static/console.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert "immutable" in css.headers["Cache-Control"]
