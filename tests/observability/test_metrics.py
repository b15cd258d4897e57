"""GET /metrics: a real service, real SMTP and HTTP traffic, read back with prometheus-client's parser."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.observability.scrape import Scrape, get_metrics, scrape, scrape_until
from tests.smtp_server.conftest import RawClient
from tests.support.clock import OffsetClock
from tests.support.mailnode import Mailnode, deep_merge, make_config, start_mailnode, stop_mailnode
from tests.support.platform import Domain, create_domain, send
from tests.support.sink import HANG, Reply, Sink

BODY_MARKER = "the quarterly figures are attached"
ENVELOPE = {"mail_from": {"m": "app@other.test"}, "rcpt_to": [{"m": "body@dest.test"}]}
QUEUE_STATUSES = ("awaiting_body", "queued", "deferred", "in_flight")


def config(tmp_path: Path, sink: Sink, **overrides: Any) -> dict[str, Any]:
    """Smarthost → the sink; AUTH on plaintext loopback submission; the admin token set."""
    base = {
        "admin": {"token": ADMIN_TOKEN},
        "smtp": {"submission": {"listen": "127.0.0.1:0", "allow_plaintext_auth_on_loopback": True}},
    }
    return make_config(tmp_path, sink.port, **deep_merge(base, overrides))


@pytest.fixture
async def node(tmp_path: Path, sink: Sink) -> AsyncIterator[Mailnode]:
    started = await start_mailnode(config(tmp_path, sink))
    yield started
    await stop_mailnode(started)


def message(number: int) -> bytes:
    return (
        f"From: alice@example.com\r\nTo: bob@dest.test\r\nSubject: report {number}\r\n"
        f"Message-ID: <report-{number}@example.com>\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
        f"\r\n{BODY_MARKER}\r\n.\r\n"
    ).encode()


async def submit_two_messages(node: Mailnode, domain: Domain) -> None:
    """One submission session, every reply checked: ten 2xx, two 3xx (354), one 5xx."""
    assert node.service.smtp is not None
    _host, port = node.service.smtp.addresses["submission"]
    client = await RawClient.connect(port)
    assert (await client.reply()).startswith("220 ")
    assert (await client.command("EHLO client.test")).startswith("250-")  # multi-line: one reply
    credentials = base64.b64encode(f"\0{domain.name}\0{domain.key}".encode()).decode()
    assert (await client.command(f"AUTH PLAIN {credentials}")).startswith("235 ")
    assert (await client.command("RCPT TO:<bob@dest.test>")).startswith("503 ")  # before MAIL
    for number in (1, 2):
        assert (await client.command("MAIL FROM:<alice@example.com>")).startswith("250 ")
        assert (await client.command("RCPT TO:<bob@dest.test>")).startswith("250 ")
        assert (await client.command("DATA")).startswith("354 ")
        assert (await client.command(message(number))).startswith("250 ")
    assert (await client.command("QUIT")).startswith("221 ")
    await client.close()


def moved(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_counters_move_by_exactly_what_was_sent_over_smtp_and_rest(node: Mailnode, sink: Sink) -> None:
    domain = await create_domain(node, "example.com")
    before = await scrape(node)

    await submit_two_messages(node, domain)
    status, answer = await send(
        node,
        domain,
        {
            "sender": {"email": "news@example.com"},
            "subject": "Hi",
            "text": BODY_MARKER,
            "recipients": [{"email": "carol@dest.test"}, {"email": "dave@dest.test"}],
        },
    )
    assert status == 202, answer
    # The transactions API: no sending domain (its events count as the server's), a sender
    # domain without a DKIM key.
    status, created, headers = await node.create(
        {
            "mail_from": {"m": "app@other.test"},
            "rcpt_to": [{"m": "erin@dest.test"}],
            "body": {"inline": "From: app@other.test\r\nSubject: s\r\n\r\nhi\r\n"},
        }
    )
    assert status == 201, created
    tx_id = headers["Location"].rpartition("/")[2]
    assert (await node.get(headers["Location"]))[0] == 200
    async with node.http.get(f"{node.url}/no/such/thing/{tx_id}", headers=node.headers()) as response:
        assert response.status == 404
    await sink.wait_for_messages(5)

    after = await scrape_until(
        node,
        lambda s: (
            moved(s, before, "mailnode_events_total", type="delivered") >= 5
            and moved(s, before, "mailnode_deliveries_total", outcome="delivered", endpoint="smarthost") >= 5
        ),
    )

    # SMTP: one session; a multi-line EHLO answer counts once.
    assert moved(after, before, "mailnode_smtp_sessions_total", listener="submission") == 1
    replies = {
        code_class: moved(
            after, before, "mailnode_smtp_replies_total", listener="submission", **{"class": code_class}
        )
        for code_class in ("2xx", "3xx", "4xx", "5xx")
    }
    assert replies == {"2xx": 10, "3xx": 2, "4xx": 0, "5xx": 1}
    # Deliveries: 2 submitted + 2 sent with /v1/send + 1 REST transaction, all to the smarthost.
    assert moved(after, before, "mailnode_deliveries_total", outcome="delivered", endpoint="smarthost") == 5
    assert after.total("mailnode_deliveries_total", outcome="deferred") == 0
    assert moved(after, before, "mailnode_delivery_attempt_seconds_count", endpoint="smarthost") == 5
    assert (
        moved(after, before, "mailnode_delivery_attempt_seconds_bucket", endpoint="smarthost", le="+Inf") == 5
    )
    # DKIM: the domain's key signs its 2 submitted and 2 /v1 messages; other.test has no key.
    assert moved(after, before, "mailnode_dkim_signing_seconds_count", algorithm="rsa") == 4
    assert moved(after, before, "mailnode_dkim_signing_seconds_sum", algorithm="rsa") > 0
    # Events: all five messages, each accepted and delivered (processed by the outbox); the
    # REST transaction's count as the server's own mail.
    assert moved(after, before, "mailnode_events_total", type="accepted") == 5
    assert moved(after, before, "mailnode_events_total", type="delivered") == 5
    assert moved(after, before, "mailnode_events_total", type="bounced") == 0
    # HTTP: the route's pattern, never the path that was asked for.
    requests = {
        ("POST", "/v1/send", "202"): 1,
        ("POST", "/senders/{sender}/transactions", "201"): 1,
        ("GET", "/transactions/{id}", "200"): 1,
        ("GET", "unmatched", "404"): 1,
    }
    for (method, route, code), count in requests.items():
        got = moved(after, before, "mailnode_http_requests_total", method=method, route=route, status=code)
        assert got == count, (method, route, code)
    assert after.value("mailnode_http_requests_total", method="POST", route="/v1/domains", status="201") == 1
    key_route = "/v1/domains/{domain}/keys"
    assert after.value("mailnode_http_requests_total", method="POST", route=key_route, status="201") == 1
    # Nothing left in the queue.
    for queue_status in QUEUE_STATUSES:
        assert after.value("mailnode_queue_deliveries", status=queue_status) == 0
    assert after.value("mailnode_queue_oldest_due_age_seconds") == 0
    assert after.value("mailnode_webhook_backlog") == 0

    # No label holds an address, a domain, a secret or an id.
    secrets = [ADMIN_TOKEN, node.key, domain.key, domain.name, "dest.test", tx_id, answer["batch_id"]]
    for value in after.label_values():
        assert "@" not in value
        assert not any(secret in value for secret in secrets), value
    routes = {
        dict(labels)["route"] for (name, labels) in after.samples if name == "mailnode_http_requests_total"
    }
    assert all(route == "unmatched" or re.fullmatch(r"(/[a-z0-9_.{}]+)+", route) for route in routes), routes


async def test_queue_depth_by_status_and_the_oldest_due_deliverys_age(tmp_path: Path, sink: Sink) -> None:
    clock = OffsetClock()
    settings = config(
        tmp_path,
        sink,
        # One delivery at a time, long leases, retries an hour apart: nothing moves on its own.
        delivery={"concurrency": 1, "lease_seconds": 600, "poll_interval_seconds": 0.05},
        retry={"initial_delay_seconds": 3600, "max_delay_seconds": 3600},
    )
    node = await start_mailnode(settings, clock=clock)
    try:
        sink.reply_for("later@dest.test", Reply(rcpt="451 4.2.0 try again later"))
        sink.reply_for("slow@dest.test", Reply(data=HANG))
        await node.create(transaction("later@dest.test"))
        await node.wait_rows(
            "SELECT attempt_count FROM transactions WHERE rcpt_to = 'later@dest.test'", [(1,)]
        )
        await node.create(transaction("slow@dest.test"))  # takes the only slot and hangs
        await node.wait_rows(
            "SELECT rcpt_to FROM transactions WHERE lease_owner IS NOT NULL", [("slow@dest.test",)]
        )
        await node.create(transaction("next@dest.test"))  # due, but nothing can take it
        status, created, _ = await node.create(ENVELOPE)  # the body is never uploaded
        assert (status, created["status"]) == (201, "awaiting_body"), created

        clock.offset = 400
        state = await scrape(node)

        queue = {s: state.value("mailnode_queue_deliveries", status=s) for s in QUEUE_STATUSES}
        assert queue == {"awaiting_body": 1, "queued": 1, "deferred": 1, "in_flight": 1}
        assert 400 <= state.value("mailnode_queue_oldest_due_age_seconds") < 460
        assert state.value("mailnode_deliveries_total", outcome="deferred", endpoint="smarthost") == 1
    finally:
        await stop_mailnode(node)


def transaction(rcpt: str) -> dict[str, Any]:
    body = "From: app@other.test\r\nSubject: s\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\n\r\nhi\r\n"
    return {"mail_from": {"m": "app@other.test"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": body}}


async def test_only_the_admin_token_may_scrape_unless_metrics_are_public(
    node: Mailnode, tmp_path: Path, sink: Sink
) -> None:
    domain = await create_domain(node, "example.com")
    for token in (None, node.key, domain.key, "not-the-admin-token"):
        status, _, body = await get_metrics(node, token)
        assert status == 401, token
        assert "mailnode_" not in body
    refused = await scrape(node)
    assert refused.value("mailnode_http_requests_total", method="GET", route="/metrics", status="401") == 4

    public = await start_mailnode(config(tmp_path / "public", sink, metrics={"public": True}))
    try:
        status, content_type, body = await get_metrics(public, token=None)
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        assert "# TYPE mailnode_queue_deliveries gauge" in body
    finally:
        await stop_mailnode(public)


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(node: Mailnode) -> None:
    headers = {
        "Authorization": f"Bearer {ADMIN_TOKEN}",
        "Accept": "application/openmetrics-text; version=1.0.0",
    }
    async with node.http.get(f"{node.url}/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).endswith("# EOF\n")
