"""Upstream faults end to end: what the client was told, the attempts stored, what follows.

Each test runs the real service against a misbehaving receiver (tests/faults/upstream.py, or
the aiosmtpd sink) or a loopback DNS server, and checks the documented end state: the SMTP
client's answer (README, "The exploder's answer"), each attempt's stored answers, the retry
that was scheduled and the delivery when the fault clears, or the bounce sent at once.
tests/faults/test_index.py lists every fault and where it is tested.
"""

from __future__ import annotations

import asyncio
import email
import socket
from collections.abc import AsyncIterator
from email import policy
from typing import Any

import pytest

from tests.conftest import MailnodeFactory
from tests.faults.submission import SUBMISSION, submit
from tests.faults.upstream import Fault, Upstream, start_upstream
from tests.support.dns_server import DnsServer, start_dns_server
from tests.support.mailnode import Mailnode
from tests.support.sink import Reply, Sink

DELIVERY = {"connect_timeout_seconds": 0.5, "command_timeout_seconds": 1}
RETRY_DELAY = 0.5  # seconds: long enough to see the retry scheduled, short enough for the suite
RETRY = {"initial_delay_seconds": RETRY_DELAY, "max_delay_seconds": RETRY_DELAY, "max_attempts": 10}
MESSAGE = (
    "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: fault\r\n"
    "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\nMessage-ID: <fault@example.com>\r\n\r\n"
    + "A line of the message body, long enough to be cut in the middle.\r\n"
    * 4
)


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    started: list[Upstream] = []
    yield started
    for upstream in started:
        await upstream.close()


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()


async def smarthost_node(factory: MailnodeFactory, port: int, **overrides: Any) -> Mailnode:
    delivery = {**DELIVERY, "mode": "smarthost", "smarthost": f"127.0.0.1:{port}", **overrides}
    return await factory(smtp={"submission": SUBMISSION}, delivery=delivery, retry=RETRY)


async def post(node: Mailnode, rcpt: str) -> None:
    body = {"mail_from": {"m": "alice@example.com"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": MESSAGE}}
    status, _, _ = await node.create(body)
    assert status == 201


def first_attempt(node: Mailnode) -> tuple[Any, ...]:
    """(mail, rcpt, data) codes and the decisive message of the first attempt."""
    (row,) = node.rows(
        "SELECT a.mail_code, a.rcpt_code, a.data_code, "
        "COALESCE(a.data_message, a.rcpt_message, a.mail_message) "
        "FROM attempts a JOIN transactions t ON t.id = a.transaction_id "
        "WHERE a.number = 1 AND t.sender != 'bounce'"
    )
    return row


async def retry_scheduled(node: Mailnode) -> tuple[Any, ...]:
    """Wait until the first attempt is recorded with the delivery queued for RETRY_DELAY later."""
    sql = (
        "SELECT a.finished_at, t.next_attempt_at FROM attempts a JOIN transactions t "
        "ON t.id = a.transaction_id WHERE a.number = 1 AND t.sender != 'bounce' "
        "AND a.finished_at IS NOT NULL AND t.status = 'queued' AND t.attempt_count = 1"
    )
    deadline = asyncio.get_running_loop().time() + 10
    while not (rows := node.rows(sql)):
        assert asyncio.get_running_loop().time() < deadline, node.rows("SELECT * FROM transactions")
        await asyncio.sleep(0.02)
    ((finished, due),) = rows
    assert due - finished == pytest.approx(RETRY_DELAY, abs=0.05)
    return first_attempt(node)


async def delivered_later(node: Mailnode) -> int:
    """Wait for the delivery to succeed on a later attempt; its number of attempts."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        rows = node.rows("SELECT status, final_attempt_reason, attempt_count FROM transactions")
        if rows and rows[0][0] == "delivered":
            assert rows[0][1] == "upstream response success"
            assert rows[0][2] >= 2
            return int(rows[0][2])
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the receiving server --------------------------------------------------------------------


async def test_connection_refused_is_retried_until_the_host_listens(
    mailnode_factory: MailnodeFactory, upstreams: list[Upstream]
) -> None:
    port = free_port()  # nothing listens there yet
    node = await smarthost_node(mailnode_factory, port)

    told = await submit(node, "bob@example.org", MESSAGE)
    mail_code, _, _, text = await retry_scheduled(node)
    upstream = await start_upstream(None, port=port)
    upstreams.append(upstream)

    assert told[0] == 250 and "store & forward" in told[1]
    assert mail_code == 451 and text.startswith("4.4.1 connection refused by [127.0.0.1]")
    await delivered_later(node)
    assert len(upstream.messages) == 1


async def test_greeting_421_is_retried(mailnode_factory: MailnodeFactory, upstreams: list[Upstream]) -> None:
    upstream = await start_upstream(Fault.GREETING_421)
    upstreams.append(upstream)
    node = await smarthost_node(mailnode_factory, upstream.port)

    told = await submit(node, "bob@example.org", MESSAGE)
    mail_code, _, _, text = await retry_scheduled(node)
    upstream.fault = None

    assert told[0] == 250 and "store & forward" in told[1]
    assert (mail_code, text) == (421, "4.3.2 too busy, come back later")
    await delivered_later(node)
    assert len(upstream.messages) == 1


async def test_greeting_that_never_comes_times_out_and_is_retried(
    mailnode_factory: MailnodeFactory, upstreams: list[Upstream]
) -> None:
    upstream = await start_upstream(Fault.SILENT)
    upstreams.append(upstream)
    node = await smarthost_node(mailnode_factory, upstream.port)

    await post(node, "bob@example.org")
    mail_code, _, _, text = await retry_scheduled(node)
    upstream.fault = None

    assert mail_code == 451 and text.startswith("4.4.2 timeout waiting for the greeting")
    await delivered_later(node)


@pytest.mark.parametrize(
    ("upstream_says", "told", "status", "reason"),
    [
        ("451 4.3.0 sender check unavailable", 250, "delivered", "upstream response success"),
        ("550 5.7.1 sender refused", 550, "failed", "failure returned to the SMTP client"),
    ],
)
async def test_mail_refused(
    mailnode_factory: MailnodeFactory, sink: Sink, upstream_says: str, told: int, status: str, reason: str
) -> None:
    """MAIL FROM is sent when the client names its first recipient: its answer is RCPT's."""
    sink.queue(Reply(mail=upstream_says))
    node = await smarthost_node(mailnode_factory, sink.port)

    code, text = await submit(node, "bob@example.org", MESSAGE)

    assert code == told
    if told != 250:
        assert text == upstream_says[4:]  # the receiving server's own words
    await node.wait_rows("SELECT status, final_attempt_reason FROM transactions", [(status, reason)])
    assert first_attempt(node)[0] == int(upstream_says[:3])
    assert len(sink.messages) == (1 if status == "delivered" else 0)


async def test_connection_dropped_mid_data_is_retried(
    mailnode_factory: MailnodeFactory, upstreams: list[Upstream]
) -> None:
    upstream = await start_upstream(Fault.DROP_MID_DATA)
    upstreams.append(upstream)
    node = await smarthost_node(mailnode_factory, upstream.port)

    told = await submit(node, "bob@example.org", MESSAGE)
    mail_code, rcpt_code, data_code, text = await retry_scheduled(node)
    upstream.fault = None

    assert told[0] == 250 and "store & forward" in told[1]
    assert (mail_code, rcpt_code, data_code) == (250, 250, 451)
    assert text.startswith("4.4.2 connection to [127.0.0.1]") and "lost during DATA" in text
    await delivered_later(node)
    assert len(upstream.messages) == 1  # the cut copy was never complete


async def test_tls_handshake_failure_falls_back_to_plaintext_when_opportunistic(
    mailnode_factory: MailnodeFactory, upstreams: list[Upstream]
) -> None:
    upstream = await start_upstream(Fault.BROKEN_TLS)
    upstreams.append(upstream)
    node = await smarthost_node(mailnode_factory, upstream.port, starttls="opportunistic")

    await post(node, "bob@example.org")

    await node.wait_rows(
        "SELECT status, attempt_count FROM transactions", [("delivered", 1)]
    )  # the fallback is inside the first attempt
    assert upstream.connections == 2  # the TLS try, then plaintext
    assert len(upstream.messages) == 1


async def test_tls_handshake_failure_defers_when_tls_is_required(
    mailnode_factory: MailnodeFactory, upstreams: list[Upstream]
) -> None:
    upstream = await start_upstream(Fault.BROKEN_TLS)
    upstreams.append(upstream)
    node = await smarthost_node(mailnode_factory, upstream.port, starttls="required")

    told = await submit(node, "bob@example.org", MESSAGE)
    mail_code, _, _, text = await retry_scheduled(node)

    assert told[0] == 250 and "store & forward" in told[1]
    assert mail_code == 451 and text.startswith("4.7.5 TLS negotiation with [127.0.0.1]")
    assert upstream.messages == []  # never in plaintext


# -- DNS ---------------------------------------------------------------------------------------


async def mx_node(factory: MailnodeFactory, dns: DnsServer, sink: Sink) -> Mailnode:
    """MX mode through the loopback DNS server; the sender's domain has an MX: the sink."""
    dns.add("example.com", "MX", "10 mx.example.com.")
    dns.add("mx.example.com", "A", "127.0.0.1")
    return await factory(
        delivery={**DELIVERY, "mode": "mx", "port": sink.port},
        dns={"nameservers": [f"{dns.host}:{dns.port}"], "timeout_seconds": 1},
        retry=RETRY,
    )


@pytest.mark.parametrize(
    ("domain", "record", "code", "status_code"),
    [
        ("nxdomain.test", None, 550, "5.1.2"),
        ("nullmx.test", "0 .", 556, "5.1.10"),  # RFC 7505 §3.2
    ],
)
async def test_a_domain_that_takes_no_mail_bounces_at_once(
    mailnode_factory: MailnodeFactory,
    dns: DnsServer,
    sink: Sink,
    domain: str,
    record: str | None,
    code: int,
    status_code: str,
) -> None:
    if record is not None:
        dns.add(domain, "MX", record)
    node = await mx_node(mailnode_factory, dns, sink)

    await post(node, f"bob@{domain}")
    (dsn,) = await sink.wait_for_messages(1)

    assert node.rows("SELECT attempt_count, status FROM transactions WHERE sender = 'api'") == [(1, "failed")]
    assert first_attempt(node)[0] == code
    assert dsn.mail_from == "" and dsn.rcpt_tos == ["alice@example.com"]
    report = email.message_from_bytes(dsn.data, policy=policy.default).get_payload()[1].as_string()
    assert f"Final-Recipient: rfc822; bob@{domain}" in report
    assert f"Status: {status_code}" in report


async def test_mx_host_without_an_address_is_retried_until_it_has_one(
    mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink
) -> None:
    dns.add("noaddress.test", "MX", "10 mx.noaddress.test.")  # and mx.noaddress.test has no A
    node = await mx_node(mailnode_factory, dns, sink)

    await post(node, "bob@noaddress.test")
    mail_code, _, _, _ = await retry_scheduled(node)
    dns.add("mx.noaddress.test", "A", "127.0.0.1")

    assert mail_code // 100 == 4
    await delivered_later(node)
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["bob@noaddress.test"]
