"""Ingress: mail only for routed domains; every open-relay trick is refused and creates nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.smtp_server.conftest import RawClient, Smtp, SmtpFactory
from tests.support.sink import Sink, start_sink

Connect = Callable[..., Awaitable[RawClient]]
DENIED = "550 5.7.1 relaying denied\r\n"


@pytest.fixture
async def ingress(smtp_factory: SmtpFactory, sink: Sink) -> Smtp:
    return await smtp_factory(
        ingress={
            "routes": [
                {"domain": "local.test", "endpoint": f"smtp:127.0.0.1:{sink.port}"},
                {"domain": "*.hosted.test", "endpoint": "capture"},
            ]
        }
    )


async def transaction(smtp: Smtp, connect: Connect) -> RawClient:
    client = await connect(smtp.port("ingress"))
    await client.command("EHLO mta.other.test")
    assert await client.command("MAIL FROM:<someone@other.test>") == "250 2.1.0 sender ok\r\n"
    return client


@pytest.mark.parametrize(
    "recipient",
    [
        "user@elsewhere.test",
        "user@local.test.elsewhere.test",
        "user@hosted.test",  # "*.hosted.test" covers subdomains only
        "user%elsewhere.test@local.test",  # the percent hack
        '"user%elsewhere.test"@local.test',
        "elsewhere.test!user@local.test",  # a bang path
        "elsewhere.test!user",
        "@local.test:user@elsewhere.test",  # a source route through us
        "@local.test,@b.test:user@elsewhere.test",
        '"user@elsewhere.test"@local.test',  # a quoted local part with @
        "user@elsewhere.test@local.test",
    ],
)
async def test_relaying_is_denied_and_nothing_is_created(
    ingress: Smtp, raw_clients: Connect, sink: Sink, recipient: str
) -> None:
    client = await transaction(ingress, raw_clients)

    assert await client.command(f"RCPT TO:<{recipient}>") == DENIED
    assert await client.command("DATA") == "503 5.5.1 need RCPT command\r\n"
    assert ingress.statuses() == []
    assert sink.transactions == 0


@pytest.mark.parametrize("recipient", ["<no-at-sign>", "<user@>", "<user@[127.0.0.1]>", "<>", "bare@"])
async def test_a_malformed_recipient_is_a_syntax_error(
    ingress: Smtp, raw_clients: Connect, recipient: str
) -> None:
    client = await transaction(ingress, raw_clients)

    reply = await client.command(f"RCPT TO:{recipient}")

    assert reply.startswith("501 5.1.3 bad recipient address: ")
    assert ingress.statuses() == []


async def test_a_routed_recipient_is_delivered_to_its_route(ingress: Smtp, sink: Sink) -> None:
    port = ingress.port("ingress")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "someone@other.test", "bob@local.test", "hello"
    message.set_content("over port 25\n")

    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, tls_context=ingress.client_tls, timeout=5
    ) as client:
        errors, reply = await client.send_message(message, recipients=["bob@local.test", "x@elsewhere.test"])

    [received] = await sink.wait_for_messages(1)
    assert reply == "2.0.0 OK"  # the upstream's answer, passed through
    assert errors["x@elsewhere.test"] == (550, "5.7.1 relaying denied")
    assert "bob@local.test" not in errors
    assert (received.mail_from, received.rcpt_tos) == ("someone@other.test", ["bob@local.test"])
    assert b"over port 25" in received.data
    assert received.data.startswith(b"Received: ")


async def test_a_wildcard_route_takes_subdomains(ingress: Smtp, raw_clients: Connect) -> None:
    client = await transaction(ingress, raw_clients)

    reply = await client.command("RCPT TO:<bob@mx.hosted.test>")

    assert reply.startswith("250 ")
    assert ingress.statuses() != []


async def test_ingress_takes_mail_without_auth_and_the_null_sender(
    ingress: Smtp, raw_clients: Connect
) -> None:
    client = await raw_clients(ingress.port("ingress"))
    await client.command("EHLO mta.other.test")

    assert await client.command("MAIL FROM:<>") == "250 2.1.0 sender ok\r\n"
    assert (await client.command("RCPT TO:<bob@mx.hosted.test>")).startswith("250 ")


async def test_a_route_to_an_lmtp_server_delivers_there(smtp_factory: SmtpFactory, sink: Sink) -> None:
    mailstore = await start_sink(lmtp=True)  # a mailbox server such as Dovecot's LMTP
    try:
        smtp = await smtp_factory(
            ingress={"routes": [{"domain": "mbox.test", "endpoint": f"lmtp:127.0.0.1:{mailstore.port}"}]}
        )
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "someone@other.test", "bob@mbox.test", "lmtp"
        message.set_content("into the mailbox\n")
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=smtp.port("ingress"), tls_context=smtp.client_tls, timeout=5
        ) as client:
            errors, reply = await client.send_message(message)

        [received] = await mailstore.wait_for_messages(1)
        assert errors == {} and reply.startswith("2.")  # the LMTP server's own answer
        assert received.rcpt_tos == ["bob@mbox.test"]
        assert received.data.startswith(b"Received: ") and b"into the mailbox" in received.data
        assert sink.transactions == 0  # not the smarthost
    finally:
        await mailstore.close()
