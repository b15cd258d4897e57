"""Whole transactions through the listeners and the real exploder to a sink: delivered, limited,
cancelled, refused for size, and answered 451 (never 500) when something inside breaks."""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import Awaitable, Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Any

import aiosmtplib
import pytest

from mailnode.errors import StorageError
from tests.smtp_server.conftest import RawClient, Smtp, SmtpFactory
from tests.support.sink import Reply, Sink

Connect = Callable[..., Awaitable[RawClient]]
INTERNAL_ERROR = "451 4.3.0 internal error, try again later\r\n"


def message(
    sender: str = "alice@example.com", to: str = "bob@dest.test", body: str = "hello\n"
) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, to, "test"
    m.set_content(body)
    return m


async def submission_client(smtp: Smtp, key: str, user: str = "example.com") -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=smtp.port("submission"),
        start_tls=True,
        tls_context=smtp.client_tls,
        username=user,
        password=key,
        timeout=5,
    )
    await client.connect()
    return client


async def authenticated_raw(smtp: Smtp, connect: Connect, key: str) -> RawClient:
    client = await connect(smtp.port("submission_tls"), tls=smtp.client_tls)
    await client.command("EHLO client.test")
    reply = await client.command(f"AUTH PLAIN {_plain('example.com', key)}")
    assert reply.startswith("235 ")
    return client


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_a_submitted_message_reaches_the_receiving_server(smtp: Smtp, sink: Sink) -> None:
    key, record = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)

    errors, reply = await client.send_message(message())
    await client.quit()

    assert (errors, reply) == ({}, "2.0.0 OK")  # cut-through: the receiving server's own answer
    [received] = await sink.wait_for_messages(1)
    assert (received.mail_from, received.rcpt_tos) == ("alice@example.com", ["bob@dest.test"])
    headers = BytesHeaderParser(policy=policy.default).parsebytes(received.data)
    assert received.data.startswith(b"Received: ")
    assert " with ESMTPSA " in " ".join(str(headers["Received"]).split())  # TLS and AUTH (RFC 3848)
    assert headers["Message-ID"] and headers["Date"]  # added by the submission profile
    await smtp.wait_statuses(["delivered"])
    assert smtp.node.rows("SELECT api_key_id, sender FROM transactions") == [(record.id, "submission")]


async def test_smtplib_over_implicit_tls(smtp: Smtp, sink: Sink) -> None:
    key, _ = await smtp.add_key("example.com")

    def send() -> dict[str, Any]:
        port = smtp.port("submission_tls")
        with smtplib.SMTP_SSL("127.0.0.1", port, context=smtp.client_tls, timeout=5) as client:
            client.login("example.com", key)
            return client.send_message(message())

    assert await asyncio.to_thread(send) == {}
    [received] = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["bob@dest.test"]


async def test_one_recipient_over_the_limit_is_told_452(smtp_factory: SmtpFactory, sink: Sink) -> None:
    smtp = await smtp_factory(smtp={"max_recipients": 2})
    key, _ = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)

    await client.mail("alice@example.com")
    replies = [await _rcpt(client, f"r{i}@dest.test") for i in range(3)]
    data = await client.data(message().as_bytes())
    await client.quit()

    assert replies[:2] == [(250, "2.1.5 OK")] * 2  # the receiving server's RCPT answers
    assert replies[2] == (452, "4.5.3 too many recipients")
    assert data.code == 250
    received = await sink.wait_for_messages(2)
    assert sorted(r for m in received for r in m.rcpt_tos) == ["r0@dest.test", "r1@dest.test"]


async def _rcpt(client: aiosmtplib.SMTP, recipient: str) -> tuple[int, str]:
    try:
        response = await client.rcpt(recipient)
    except aiosmtplib.SMTPRecipientRefused as exc:
        return exc.code, exc.message
    return response.code, response.message


async def test_rset_before_the_end_of_data_cancels_and_sends_nothing(smtp: Smtp, sink: Sink) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)
    await client.mail("alice@example.com")
    assert (await client.rcpt("bob@dest.test")).code == 250
    assert sink.transactions == 1  # the delivery already started upstream

    await client.rset()

    await smtp.wait_statuses(["cancelled"])
    await sink.wait_no_transaction()  # reset or closed upstream; the connection may be kept for reuse
    assert sink.messages == []
    errors, _ = await client.send_message(message(to="carol@dest.test"))  # the session goes on
    await client.quit()
    assert errors == {}
    [received] = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["carol@dest.test"]


async def test_ehlo_in_the_middle_of_a_transaction_cancels_it(smtp: Smtp, sink: Sink) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)
    await client.mail("alice@example.com")
    assert (await client.rcpt("bob@dest.test")).code == 250

    await client.ehlo()  # RFC 5321 §4.1.4: like RSET

    await smtp.wait_statuses(["cancelled"])
    await client.quit()
    assert sink.messages == []


async def test_a_client_that_disconnects_before_the_end_of_data_sends_nothing(
    smtp: Smtp, sink: Sink, raw_clients: Connect
) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await authenticated_raw(smtp, raw_clients, key)
    await client.command("MAIL FROM:<alice@example.com>")
    assert (await client.command("RCPT TO:<bob@dest.test>")).startswith("250 ")
    assert (await client.command("DATA")).startswith("354 ")
    await client.send(b"Subject: half a message\r\n\r\nthe client dies before the dot\r\n")

    await client.close()

    await smtp.wait_statuses(["cancelled"])
    await sink.wait_no_transaction()  # reset or closed upstream; the connection may be kept for reuse
    assert sink.messages == []


async def test_closing_the_listeners_cancels_an_open_transaction(smtp: Smtp, sink: Sink) -> None:
    key, _ = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)
    await client.mail("alice@example.com")
    await client.rcpt("bob@dest.test")

    await smtp.listeners.close()

    await smtp.wait_statuses(["cancelled"])
    assert sink.messages == []
    client.close()


async def test_one_byte_over_the_size_limit_is_refused_and_the_session_goes_on(
    smtp_factory: SmtpFactory, sink: Sink, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(smtp={"max_message_bytes": 1000})
    key, _ = await smtp.add_key("example.com")
    client = await authenticated_raw(smtp, raw_clients, key)
    header = b"From: alice@example.com\r\nSubject: size\r\n\r\n"

    async def send(size: int) -> str:
        assert await client.command("MAIL FROM:<alice@example.com>") == "250 2.1.0 sender ok\r\n"
        assert (await client.command("RCPT TO:<bob@dest.test>")).startswith("250 ")
        assert (await client.command("DATA")).startswith("354 ")
        body = b"x" * (size - len(header) - 2) + b"\r\n"
        return await client.command(header + body + b".\r\n")

    too_big = await send(1001)
    await smtp.wait_statuses(["cancelled"])
    just_right = await send(1000)

    assert too_big == "552 5.3.4 message exceeds the size limit of 1000 bytes\r\n"
    assert just_right.startswith("250 ")
    [received] = await sink.wait_for_messages(1)
    assert received.data.endswith(b"x\r\n")


async def test_a_storage_failure_at_the_end_of_data_is_451_and_the_next_message_works(
    smtp: Smtp, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = await smtp.add_key("example.com")
    store = smtp.node.service.store
    assert store is not None
    attach_body = store.attach_body
    calls = 0

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("disk I/O error")
        return await attach_body(*args, **kwargs)

    monkeypatch.setattr(store, "attach_body", failing_once)
    client = await submission_client(smtp, key)

    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
        await client.send_message(message())
    errors, _ = await client.send_message(message(to="carol@dest.test"))
    await client.quit()

    assert (failed.value.code, failed.value.message) == (451, "4.3.0 internal error, try again later")
    assert errors == {}
    [received] = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["carol@dest.test"]


async def test_an_unexpected_exception_is_451_without_its_text(
    smtp: Smtp, raw_clients: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = await smtp.add_key("example.com")
    exploder = smtp.node.service.exploder
    assert exploder is not None
    begin = exploder.begin

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    client = await authenticated_raw(smtp, raw_clients, key)
    monkeypatch.setattr(exploder, "begin", broken)
    failed = await client.command("MAIL FROM:<alice@example.com>")
    monkeypatch.setattr(exploder, "begin", begin)

    assert failed == INTERNAL_ERROR
    assert await client.command("MAIL FROM:<alice@example.com>") == "250 2.1.0 sender ok\r\n"


async def test_an_upstream_refusal_is_relayed_and_the_recipient_left_out(smtp: Smtp, sink: Sink) -> None:
    sink.reply_for("nobody@dest.test", Reply(rcpt="550 5.1.1 no such user here"))
    key, _ = await smtp.add_key("example.com")
    client = await submission_client(smtp, key)
    await client.mail("alice@example.com")

    refused = await _rcpt(client, "nobody@dest.test")
    with pytest.raises(aiosmtplib.SMTPResponseException) as no_recipients:
        await client.data(message().as_bytes())
    await client.quit()

    assert refused == (550, "5.1.1 no such user here")
    assert no_recipients.value.code == 503


async def test_a_multi_line_upstream_answer_is_relayed_line_by_line(
    smtp_factory: SmtpFactory, sink: Sink, raw_clients: Connect
) -> None:
    smtp = await smtp_factory(
        ingress={"routes": [{"domain": "dest.test", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]}
    )
    sink.reply_for("full@dest.test", Reply(rcpt="452-4.2.2 mailbox full\r\n452 4.2.2 try again tomorrow"))
    client = await raw_clients(smtp.port("ingress"))
    await client.command("EHLO mta.test")
    await client.command("MAIL FROM:<a@src.test>")

    reply = await client.command("RCPT TO:<full@dest.test>")

    assert reply == "452-4.2.2 mailbox full\r\n452 4.2.2 try again tomorrow\r\n"
