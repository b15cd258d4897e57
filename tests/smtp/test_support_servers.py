"""The loopback test servers behave as documented (everyone's tests rely on them)."""

from __future__ import annotations

import asyncio

import aiosmtplib
import dns.asyncresolver
import dns.nameserver
import dns.resolver
import pytest
from tests.support.dns_server import DnsServer
from tests.support.sink import DROP, Reply, Sink, start_sink


async def _send(sink: Sink, message: bytes, sender: str = "a@src.test", rcpt: str = "b@dst.test") -> None:
    async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=2) as client:
        await client.sendmail(sender, [rcpt], message)


def _resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    resolver.lifetime = 2.0
    return resolver


async def test_sink_records_exact_bytes_and_null_sender(sink: Sink) -> None:
    message = b"Subject: hi\r\n\r\n.leading dot\r\n..two dots\r\nlast\r\n"

    await _send(sink, message, sender="")

    [received] = await sink.wait_for_messages(1)
    assert received.mail_from == ""
    assert received.rcpt_tos == ["b@dst.test"]
    assert received.data == message
    assert sink.transactions == 1


async def test_sink_queue_is_consumed_per_transaction_then_accepts(sink: Sink) -> None:
    sink.queue(Reply(mail="451 4.3.0 try later"), Reply(data="554 5.6.0 no"))

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as first:
        await _send(sink, b"x\r\n")
    with pytest.raises(aiosmtplib.SMTPDataError) as second:
        await _send(sink, b"x\r\n")
    await _send(sink, b"third\r\n")

    assert (first.value.code, second.value.code) == (451, 554)
    assert [m.data for m in await sink.wait_for_messages(1)] == [b"third\r\n"]
    assert sink.transactions == 3


async def test_sink_reply_for_recipient_is_sticky_and_wins(sink: Sink) -> None:
    sink.reply_for("Nobody@dst.test", Reply(rcpt="550 5.1.1 no such user"))
    sink.queue(Reply(rcpt="451 4.3.0 queued answer"))

    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await _send(sink, b"x\r\n", rcpt="nobody@dst.test")
        assert refused.value.recipients[0].code == 550
    await _send(sink, b"x\r\n", rcpt="other@dst.test")  # the queued Reply was used up above

    assert len(await sink.wait_for_messages(1)) == 1


async def test_sink_drop_closes_the_connection(sink: Sink) -> None:
    sink.queue(Reply(rcpt=DROP))

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await _send(sink, b"x\r\n")

    assert sink.messages == []


async def test_wait_for_messages_fails_with_what_arrived(sink: Sink) -> None:
    await _send(sink, b"only one\r\n")

    with pytest.raises(AssertionError, match="got 1 of 2"):
        await sink.wait_for_messages(2, timeout=0.05)


async def test_sink_close_cuts_idle_connections() -> None:
    sink = await start_sink()
    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=2)
    await client.connect()
    await client.ehlo()
    assert sink.open_connections == 1
    with pytest.raises(AssertionError, match="1 connections still open"):
        await sink.wait_disconnected(timeout=0.05)

    await sink.close()

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()


async def test_sink_advertises_the_extensions_the_client_needs(sink: Sink) -> None:
    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=2)
    await client.connect()
    try:
        await client.ehlo()
        assert {"size", "8bitmime", "smtputf8"} <= set(client.esmtp_extensions)
        assert client.esmtp_extensions["size"] == "33554432"
    finally:
        await client.quit()


async def test_dns_server_answers_by_type(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test.", "MX", "10 mx1.example.test.")
    dns_server.add("MX1.example.test", "A", "127.0.0.2")
    dns_server.add("mx1.example.test", "AAAA", "::1")
    resolver = _resolver(dns_server)

    mx = await resolver.resolve("example.test", "MX")
    a = await resolver.resolve("mx1.example.test", "A")
    aaaa = await resolver.resolve("mx1.example.test", "AAAA")

    assert sorted((r.preference, r.exchange.to_text()) for r in mx) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    assert [r.to_text() for r in a] == ["127.0.0.2"]
    assert [r.to_text() for r in aaaa] == ["::1"]
    assert dns_server.queries == [
        ("example.test", "MX"),
        ("mx1.example.test", "A"),
        ("mx1.example.test", "AAAA"),
    ]


async def test_dns_server_nxdomain_noanswer_servfail(dns_server: DnsServer) -> None:
    dns_server.add("exists.test", "A", "127.0.0.1")
    dns_server.add("broken.test", "A", "127.0.0.1")
    dns_server.servfail("broken.test")
    resolver = _resolver(dns_server)

    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("missing.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("exists.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers):
        await resolver.resolve("broken.test", "A")


async def test_dns_server_long_txt_goes_over_tcp(dns_server: DnsServer) -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 700  # more than one UDP packet and one 255-byte string
    dns_server.add("sel._domainkey.example.test", "TXT", value)

    answer = await _resolver(dns_server).resolve("sel._domainkey.example.test", "TXT")

    [record] = list(answer)
    assert b"".join(record.strings).decode() == value
    assert dns_server.queries.count(("sel._domainkey.example.test", "TXT")) == 2  # UDP, then TCP


async def test_dns_server_close_ends_open_tcp_connections(dns_server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(dns_server.host, dns_server.port)

    await dns_server.close()

    assert await asyncio.wait_for(reader.read(), 1.0) == b""
    writer.close()
