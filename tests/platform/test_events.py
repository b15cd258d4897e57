"""Events, hourly stats and suppressions of a domain's sends: the real app, SQLite and a sink."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiosmtplib
import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.support.mailnode import Mailnode, stop_mailnode
from tests.support.platform import Domain, admin_headers, create_domain, send
from tests.support.sink import Reply, Sink

SENDER = {"email": "news@example.com"}


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, sink: Sink) -> Mailnode:
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})


@pytest.fixture
async def domain(node: Mailnode) -> Domain:
    return await create_domain(node, "example.com")


async def _get(node: Mailnode, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with node.http.get(f"{node.url}{path}", headers=headers) as response:
        return response.status, await response.json()


async def _wait_processed(node: Mailnode, count: int, timeout: float = 10.0) -> None:
    """Until `count` events exist and the outbox has counted every one of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ((total, pending),) = node.rows("SELECT count(*), count(*) - coalesce(sum(processed), 0) FROM events")
        if total >= count and pending == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{total} events, {pending} unprocessed"
        await asyncio.sleep(0.02)


def _totals(stats: dict[str, Any]) -> dict[str, int]:
    return {
        kind: sum(b["count"] for b in series)
        for kind, series in stats["series"].items()
        if any(b["count"] for b in series)
    }


async def test_a_batch_of_five_shows_in_the_hourly_stats_as_it_happened(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    sink.reply_for("gone@example.org", Reply(rcpt="550 5.1.1 no such user"))
    sink.reply_for("later@example.org", Reply(rcpt="451 4.2.0 try again"))
    recipients = ["a@example.org", "b@example.org", "c@example.org", "gone@example.org", "later@example.org"]
    status, answer = await send(
        node,
        domain,
        {
            "sender": SENDER,
            "subject": "Hi",
            "text": "Hello",
            "recipients": [{"email": r} for r in recipients],
        },
    )
    assert status == 202, answer
    await sink.wait_for_messages(3)
    await node.wait_rows("SELECT count(*) FROM events WHERE type = 'deferred'", [(1,)])
    sink.reply_for("later@example.org", Reply())  # the receiver takes it on the next attempt
    await sink.wait_for_messages(4)
    await _wait_processed(node, 5 + 3 + 1 + 1 + 1)

    status, stats = await _get(node, "/v1/domains/example.com/stats?granularity=hour", domain.headers())
    assert status == 200, stats
    assert _totals(stats) == {"accepted": 5, "delivered": 4, "bounced": 1, "deferred": 1}
    assert len(stats["series"]["delivered"]) == 24  # dense: one bucket per hour of the last day

    status, page = await _get(node, "/v1/domains/example.com/events?type=bounced", domain.headers())
    assert status == 200
    (bounced,) = page["items"]
    assert bounced["recipient"] == "gone@example.org"
    assert bounced["batch_id"] == answer["batch_id"]
    assert bounced["data"]["code"] == 550 and "no such user" in bounced["data"]["text"]


async def test_a_hard_bounce_suppresses_the_recipient_for_the_next_send(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    sink.reply_for("gone@example.org", Reply(rcpt="550 5.1.1 no such user"))
    body = {"sender": SENDER, "subject": "Hi", "text": "Hello", "recipients": [{"email": "Gone@example.org"}]}
    assert (await send(node, domain, body))[0] == 202
    await node.wait_rows("SELECT address, reason FROM suppressions", [("gone@example.org", "bounced")])

    status, again = await send(node, domain, body)
    assert status == 202
    assert again["accepted"] == 0
    assert again["rejected"] == [{"email": "Gone@example.org", "reason": "suppressed"}]
    status, record = await _get(
        node, "/v1/domains/example.com/suppressions/gone@example.org", domain.headers()
    )
    assert status == 200 and record["reason"] == "bounced" and record["details"]["code"] == 550


async def test_a_soft_failure_does_not_suppress(node: Mailnode, domain: Domain, sink: Sink) -> None:
    sink.reply_for("full@example.org", Reply(rcpt="452 4.2.2 mailbox full"))
    body = {"sender": SENDER, "subject": "Hi", "text": "Hello", "recipients": [{"email": "full@example.org"}]}
    assert (await send(node, domain, body))[0] == 202
    await node.wait_rows("SELECT count(*) > 1 FROM events WHERE type = 'deferred'", [(1,)])
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]


async def test_a_refusal_of_the_message_bounces_without_suppressing_the_address(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    """A 5.7.1 "spam" refusal is about the message or its sender, not the address: the next
    message to the same person may go."""
    sink.reply_for("picky@example.org", Reply(data="550 5.7.1 rejected as spam"))
    body = {
        "sender": SENDER,
        "subject": "Hi",
        "text": "Hello",
        "recipients": [{"email": "picky@example.org"}],
    }
    assert (await send(node, domain, body))[0] == 202
    await node.wait_rows("SELECT type FROM events WHERE type = 'bounced'", [("bounced",)])
    assert node.rows("SELECT count(*) FROM suppressions") == [(0,)]
    assert (await send(node, domain, body))[1]["accepted"] == 1


async def test_suppressions_can_be_listed_added_checked_and_removed(node: Mailnode, domain: Domain) -> None:
    url = f"{node.url}/v1/domains/example.com/suppressions"
    async with node.http.post(url, json={"address": "X@Example.org"}, headers=domain.headers()) as response:
        assert response.status == 201
        assert (await response.json())["reason"] == "manual"
    async with node.http.post(url, json={"address": "x@example.org"}, headers=domain.headers()) as response:
        assert response.status == 200  # already there
    async with node.http.post(url, json={"address": "nope"}, headers=domain.headers()) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "address"
    async with node.http.post(
        url, json={"address": "y@example.org", "reason": "bored"}, headers=domain.headers()
    ) as response:
        assert response.status == 400
        assert "unsubscribed" in (await response.json())["error"]["message"]

    status, page = await _get(node, "/v1/domains/example.com/suppressions?reason=manual", domain.headers())
    assert status == 200 and [item["address"] for item in page["items"]] == ["x@example.org"]
    async with node.http.delete(f"{url}/x@example.org", headers=domain.headers()) as response:
        assert response.status == 204
    async with node.http.delete(f"{url}/x@example.org", headers=domain.headers()) as response:
        assert response.status == 404
    other = await create_domain(node, "other.example")
    status, _ = await _get(node, "/v1/domains/example.com/suppressions", other.headers())
    assert status == 401


async def test_smtp_submission_to_a_suppressed_address_is_refused(
    node: Mailnode, domain: Domain, sink: Sink
) -> None:
    async with node.http.post(
        f"{node.url}/v1/domains/example.com/suppressions",
        json={"address": "gone@example.org"},
        headers=admin_headers(),
    ) as response:
        assert response.status == 201
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["submission"]
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, validate_certs=False)
    await client.connect()
    try:
        await client.login("example.com", domain.key)
        await client.mail("news@example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await client.rcpt("gone@example.org")
        assert refused.value.code == 550
        assert "5.1.1" in refused.value.message and "suppression list" in refused.value.message
        ok = await client.rcpt("fine@example.org")
        assert ok[0] == 250
    finally:
        client.close()


async def test_one_delivery_shows_its_attempts_and_events(node: Mailnode, domain: Domain, sink: Sink) -> None:
    sink.reply_for("later@example.org", Reply(rcpt="451 4.2.0 try again"))
    body = {
        "sender": SENDER,
        "subject": "Hi",
        "text": "Hello",
        "recipients": [{"email": "later@example.org"}],
    }
    assert (await send(node, domain, body))[0] == 202
    await node.wait_rows("SELECT count(*) >= 1 FROM events WHERE type = 'deferred'", [(1,)])
    sink.reply_for("later@example.org", Reply())
    await sink.wait_for_messages(1)
    (delivery_id,) = node.rows("SELECT rest_id FROM transactions WHERE rcpt_to = 'later@example.org'")[0]
    await node.wait_rows(
        f"SELECT count(*) FROM events WHERE delivery = '{delivery_id}' AND type = 'delivered'", [(1,)]
    )

    status, delivery = await _get(node, f"/v1/deliveries/{delivery_id}", domain.headers())
    assert status == 200, delivery
    assert delivery["status"] == "delivered"
    assert delivery["attempts"][0]["outcome"]["code"] == 451
    assert delivery["attempts"][-1]["outcome"]["code"] == 250
    types = [event["type"] for event in delivery["events"]]
    assert types[0] == "accepted" and types[-1] == "delivered" and "deferred" in types

    other = await create_domain(node, "other.example")
    assert (await _get(node, f"/v1/deliveries/{delivery_id}", other.headers()))[0] == 404
    assert (await _get(node, f"/v1/deliveries/{delivery_id}", admin_headers()))[0] == 200


async def test_stats_and_events_refuse_bad_queries_naming_the_parameter(
    node: Mailnode, domain: Domain
) -> None:
    for query, field in (
        ("stats?granularity=week", "granularity"),
        ("stats?from=yesterday", "from"),
        ("stats?granularity=hour&from=0", "from"),
        ("events?type=opened,sent", "type"),
        ("events?cursor=-1", "cursor"),
    ):
        status, answer = await _get(node, f"/v1/domains/example.com/{query}", domain.headers())
        assert status == 400, (query, answer)
        assert answer["error"]["field"] == field, query


async def test_events_left_in_the_outbox_by_a_crash_are_counted_once_after_restart(
    mailnode_factory: MailnodeFactory, node: Mailnode, domain: Domain
) -> None:
    await stop_mailnode(node)
    # What a crash right after a state change's commit leaves: events stored, not yet counted.
    with sqlite3.connect(node.db_path) as connection:
        connection.executemany(
            "INSERT INTO events (type, occurred_at, domain, data, processed) VALUES (?, ?, ?, '{}', 0)",
            [("opened", time.time(), "example.com")] * 3,
        )
    restarted = await mailnode_factory(admin={"token": ADMIN_TOKEN})
    await _wait_processed(restarted, 3)
    await restarted.service.outbox.drain()  # another pass finds nothing left to count
    assert restarted.rows("SELECT sum(count) FROM stats_hourly WHERE type = 'opened'") == [(3,)]


async def test_old_raw_events_are_pruned_and_the_hourly_counts_stay(node: Mailnode, domain: Domain) -> None:
    old = time.time() - 100 * 86400  # beyond the default retention of 90 days
    with sqlite3.connect(node.db_path) as connection:
        connection.executemany(
            "INSERT INTO events (type, occurred_at, domain, data, processed)"
            " VALUES ('opened', ?, ?, '{}', 0)",
            [(old, "example.com"), (time.time(), "example.com")],
        )
    await node.service.outbox.drain()
    pruned = await node.service.events.prune(time.time() - node.service.config.events.retention_days * 86400)
    assert pruned == 1
    assert node.rows("SELECT count(*) FROM events WHERE type = 'opened'") == [(1,)]
    assert node.rows("SELECT sum(count) FROM stats_hourly WHERE type = 'opened'") == [(2,)]


async def test_stats_by_day_and_events_page_by_cursor(node: Mailnode, domain: Domain) -> None:
    now = time.time()
    with sqlite3.connect(node.db_path) as connection:
        connection.executemany(
            "INSERT INTO events (type, occurred_at, domain, recipient, data, processed)"
            " VALUES ('clicked', ?, 'example.com', ?, '{}', 0)",
            [(now - 86400 * days, f"r{days}@example.org") for days in (0, 0, 1, 3)],
        )
    await node.service.outbox.drain()
    status, stats = await _get(node, "/v1/domains/example.com/stats?granularity=day", domain.headers())
    assert status == 200
    counts = [bucket["count"] for bucket in stats["series"]["clicked"]]
    assert len(counts) == 24 and counts[-1] == 2 and counts[-2] == 1 and counts[-4] == 1 and sum(counts) == 4

    seen: list[str] = []
    path = "/v1/domains/example.com/events?type=clicked&limit=3"
    status, page = await _get(node, path, domain.headers())
    seen += [event["recipient"] for event in page["items"]]
    assert page["next_cursor"] is not None
    status, page = await _get(node, f"{path}&cursor={page['next_cursor']}", domain.headers())
    seen += [event["recipient"] for event in page["items"]]
    assert page["next_cursor"] is None
    assert sorted(seen) == ["r0@example.org", "r0@example.org", "r1@example.org", "r3@example.org"]
    status, page = await _get(
        node, "/v1/domains/example.com/events?recipient=R3@example.org", domain.headers()
    )
    assert [event["recipient"] for event in page["items"]] == ["r3@example.org"]
