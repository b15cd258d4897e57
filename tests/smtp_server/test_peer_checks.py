"""Optional ingress policies: forward-confirmed reverse DNS and a HELO name matching the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import MailnodeFactory
from tests.support.dns_server import DnsServer, start_dns_server
from tests.support.mailnode import Mailnode

PTR = "1.0.0.127.in-addr.arpa"  # the test client's address, 127.0.0.1


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()


async def node_with(factory: MailnodeFactory, dns: DnsServer, **policy: bool) -> Mailnode:
    return await factory(
        smtp={"ingress": {"listen": "127.0.0.1:0", **policy}},
        dns={"nameservers": [f"{dns.host}:{dns.port}"], "timeout_seconds": 1},
        ingress={"routes": [{"domain": "local.test", "endpoint": "capture"}]},
    )


async def mail_reply(node: Mailnode, helo: str) -> bytes:
    """Connect to ingress, greet with `helo`, and return the answer to MAIL."""
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["ingress"]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reader.readline()
        writer.write(f"HELO {helo}\r\n".encode())
        await reader.readline()
        writer.write(b"MAIL FROM:<a@other.test>\r\n")
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_fcrdns_off_by_default_lets_anyone_in(
    mailnode_factory: MailnodeFactory, dns: DnsServer
) -> None:
    node = await node_with(mailnode_factory, dns)
    assert (await mail_reply(node, "whatever.test")).startswith(b"250 ")
    assert dns.queries == []  # no lookups at all


async def test_a_forward_confirmed_name_passes(mailnode_factory: MailnodeFactory, dns: DnsServer) -> None:
    dns.add(PTR, "PTR", "mta.other.test.")
    dns.add("mta.other.test", "A", "127.0.0.1")
    node = await node_with(mailnode_factory, dns, require_fcrdns=True)
    assert (await mail_reply(node, "mta.other.test")).startswith(b"250 ")


@pytest.mark.parametrize(
    "records",
    [
        [],  # no PTR at all
        [(PTR, "PTR", "mta.other.test.")],  # a PTR whose name has no address
        [(PTR, "PTR", "mta.other.test."), ("mta.other.test", "A", "127.0.0.9")],  # not confirmed
    ],
)
async def test_no_forward_confirmed_name_is_refused(
    mailnode_factory: MailnodeFactory, dns: DnsServer, records: list[tuple[str, str, str]]
) -> None:
    for record in records:
        dns.add(*record)
    node = await node_with(mailnode_factory, dns, require_fcrdns=True)
    assert (await mail_reply(node, "mta.other.test")).startswith(b"550 5.7.25 ")


async def test_a_dns_failure_is_temporary(mailnode_factory: MailnodeFactory, dns: DnsServer) -> None:
    dns.servfail(PTR)
    node = await node_with(mailnode_factory, dns, require_fcrdns=True)
    assert (await mail_reply(node, "mta.other.test")).startswith(b"451 4.7.25 ")


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        ("mta.other.test", b"250 "),
        ("liar.other.test", b"550 5.7.1 "),
        ("[127.0.0.1]", b"250 "),
        ("[10.1.1.1]", b"550 "),
    ],
)
async def test_helo_must_name_the_client(
    mailnode_factory: MailnodeFactory, dns: DnsServer, helo: str, expected: bytes
) -> None:
    dns.add("mta.other.test", "A", "127.0.0.1")
    dns.add("liar.other.test", "A", "127.0.0.9")
    node = await node_with(mailnode_factory, dns, require_helo_match=True)
    assert (await mail_reply(node, helo)).startswith(expected)
