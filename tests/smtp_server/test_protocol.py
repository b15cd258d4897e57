"""Protocol hygiene on every listener: EHLO keywords, enhanced status codes, limits, timeouts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import aiosmtplib
import pytest

from tests.smtp_server.conftest import HOSTNAME, RawClient, Smtp, SmtpFactory

Connect = Callable[..., Awaitable[RawClient]]
COMMON = ["SIZE 52428800", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"]


def keywords(reply: str) -> list[str]:
    """The EHLO keywords, without the greeting line."""
    lines = [line[4:] for line in reply.splitlines()]
    assert lines[0] == HOSTNAME
    return lines[1:]


async def test_submission_offers_starttls_then_auth(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("submission"))

    before = keywords(await client.command("EHLO client.test"))
    await client.starttls(smtp.client_tls)
    after = keywords(await client.command("EHLO client.test"))

    assert before == [*COMMON, "STARTTLS"]
    assert after == [*COMMON, "AUTH PLAIN LOGIN"]


async def test_implicit_tls_submission_offers_auth_at_once(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("submission_tls"), tls=smtp.client_tls)

    assert keywords(await client.command("EHLO client.test")) == [*COMMON, "AUTH PLAIN LOGIN"]
    assert await client.command("STARTTLS") == "503 5.5.1 TLS is already active\r\n"


async def test_ingress_never_offers_auth(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("ingress"))

    before = keywords(await client.command("EHLO mta.test"))
    await client.starttls(smtp.client_tls)
    after = keywords(await client.command("EHLO mta.test"))
    auth = await client.command("AUTH PLAIN AGZvbwBiYXI=")

    assert before == [*COMMON, "STARTTLS"]
    assert after == COMMON
    assert auth == "503 5.5.1 AUTH is not available on this port\r\n"


async def test_size_keyword_follows_the_configured_limit(
    smtp_factory: SmtpFactory, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(smtp={"max_message_bytes": 12345})
    client = await raw_clients(smtp.port("ingress"))

    assert "SIZE 12345" in keywords(await client.command("EHLO mta.test"))


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("NOOP", "250 2.0.0 OK"),
        ("RSET", "250 2.0.0 OK"),
        ("RCPT TO:<bob@mailnode.test>", "503 5.5.1 need MAIL command"),
        ("DATA", "503 5.5.1 need RCPT command"),
        ("BOGUS", '500 5.5.2 command "BOGUS" not recognized'),
        (
            "MAIL FROM:<a@src.test> FOO=BAR",
            "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
        ),
        ("MAIL FROM:<a@src.test", "553 5.1.3 Error: malformed address"),
        (
            "MAIL FROM:<a@src.test> SIZE=52428801",
            "552 5.3.4 message exceeds the size limit of 52428800 bytes",
        ),
        ("VRFY bob", "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"),
    ],
)
async def test_every_reply_carries_an_enhanced_status_code(
    smtp: Smtp, raw_clients: Connect, command: str, expected: str
) -> None:
    client = await raw_clients(smtp.port("ingress"))
    await client.command("EHLO mta.test")

    assert await client.command(command) == expected + "\r\n"


async def test_a_helo_client_is_served_too(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("ingress"))

    assert await client.command("HELO old.mta.test") == f"250 {HOSTNAME}\r\n"
    assert await client.command("MAIL FROM:<a@old.mta.test>") == "250 2.1.0 sender ok\r\n"


async def test_quit_says_goodbye_and_closes(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("ingress"))

    assert await client.command("QUIT") == f"221 2.0.0 {HOSTNAME} closing connection\r\n"
    assert await client.closed() == b""


async def test_one_connection_over_the_limit_is_told_421(
    smtp_factory: SmtpFactory, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(smtp={"max_connections": 2})
    port = smtp.port("submission")
    first = await raw_clients(port)
    await raw_clients(port)

    refused = await raw_clients(port, greeting=False)

    assert await refused.closed() == b"421 4.7.0 too many connections, try again later\r\n"
    assert (await first.command("NOOP")).startswith("250 ")  # the admitted ones carry on
    assert await first.command("QUIT")
    await first.closed()
    again = await raw_clients(port)  # a slot is free again
    assert (await again.command("NOOP")).startswith("250 ")


async def test_the_connection_limit_is_per_listener(smtp_factory: SmtpFactory, raw_clients: Connect) -> None:
    smtp = await smtp_factory(smtp={"max_connections": 1})
    await raw_clients(smtp.port("ingress"))

    client = await raw_clients(smtp.port("submission"))

    assert (await client.command("NOOP")).startswith("250 ")


async def test_an_idle_client_is_dropped_after_the_command_timeout(
    smtp_factory: SmtpFactory, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(smtp={"command_timeout_seconds": 0.3})
    client = await raw_clients(smtp.port("ingress"))
    await client.command("EHLO mta.test")
    started = asyncio.get_running_loop().time()

    assert await client.closed() == b"421 4.4.2 idle for too long, closing connection\r\n"
    assert asyncio.get_running_loop().time() - started >= 0.25


async def test_pipelined_commands_are_answered_in_order(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("ingress"))
    await client.send(b"EHLO mta.test\r\nNOOP\r\nRCPT TO:<a@b.test>\r\nRSET\r\n")

    replies = [await client.reply() for _ in range(4)]

    assert replies[0].startswith(f"250-{HOSTNAME}")
    assert replies[1:] == ["250 2.0.0 OK\r\n", "503 5.5.1 need MAIL command\r\n", "250 2.0.0 OK\r\n"]


async def test_closing_the_listeners_tells_clients_421(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("ingress"))
    await client.command("EHLO mta.test")

    await smtp.listeners.close()

    assert await client.closed() == b"421 4.3.2 service shutting down, try again later\r\n"
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect(smtp.port("ingress"))


async def test_aiosmtplib_speaks_to_implicit_tls(smtp: Smtp, client_tls: ssl.SSLContext) -> None:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=smtp.port("submission_tls"),
        use_tls=True,
        tls_context=client_tls,
        timeout=5,
    ) as client:
        code, _ = await client.ehlo(hostname="client.test")
        assert code == 250
        assert client.supports_extension("auth")


async def test_a_failed_tls_handshake_closes_only_that_connection(smtp: Smtp, raw_clients: Connect) -> None:
    client = await raw_clients(smtp.port("submission"))
    assert (await client.command("STARTTLS")).startswith("220 ")

    await client.send(b"this is not a TLS ClientHello\r\n\r\n")

    assert await client.closed() == b""
    other = await raw_clients(smtp.port("submission"))
    assert (await other.command("NOOP")).startswith("250 ")
    assert smtp.listeners.connections == {"submission": 1, "submission_tls": 0, "ingress": 0}
