"""MX mode: the resolver points at a DNS server the test runs on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import MailnodeFactory
from tests.support.dns_server import DnsServer, start_dns_server
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

MESSAGE = "From: a@example.com\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()


@pytest.fixture
async def mx_node(mailnode_factory: MailnodeFactory, dns: DnsServer, sink: Sink) -> Mailnode:
    return await mailnode_factory(
        delivery={"mode": "mx", "port": sink.port},
        dns={"nameservers": [f"{dns.host}:{dns.port}"], "timeout_seconds": 1},
    )


def tx(rcpt: str) -> dict:
    return {"mail_from": {"m": ""}, "rcpt_to": [{"m": rcpt}], "body": {"inline": MESSAGE}}


async def test_first_mx_refuses_second_receives(mx_node: Mailnode, dns: DnsServer, sink: Sink) -> None:
    dns.add("example.test", "MX", "10 mx1.example.test.")
    dns.add("example.test", "MX", "20 mx2.example.test.")
    dns.add("mx1.example.test", "A", "127.0.0.2")  # nothing listens there: connection refused
    dns.add("mx2.example.test", "A", "127.0.0.1")
    _, _, headers = await mx_node.create(tx("bob@example.test"))

    final = await mx_node.wait_final(headers["Location"])

    assert final["final_attempt_reason"] == "upstream response success"
    assert final["attempt_count"] == 1  # the fallback happened inside one attempt
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["bob@example.test"]
    (remote,) = mx_node.rows("SELECT remote_host FROM attempts")
    assert "127.0.0.1" in remote[0]


async def test_null_mx_fails_permanently(mx_node: Mailnode, dns: DnsServer, sink: Sink) -> None:
    dns.add("nullmx.test", "MX", "0 .")
    _, _, headers = await mx_node.create(tx("bob@nullmx.test"))

    final = await mx_node.wait_final(headers["Location"])

    assert final["final_attempt_reason"] == "upstream mail_response permfail"
    assert final["mail_response"]["code"] == 556
    assert final["attempt_count"] == 1
    assert sink.transactions == 0


async def test_servfail_is_retried(mx_node: Mailnode, dns: DnsServer, sink: Sink) -> None:
    dns.servfail("broken.test")
    _, _, headers = await mx_node.create(tx("bob@broken.test"))

    final = await mx_node.wait_final(headers["Location"])

    assert final["final_attempt_reason"] == "retry policy max attempts"
    assert final["attempt_count"] == 5
    assert final["mail_response"]["code"] // 100 == 4
    assert sink.transactions == 0
