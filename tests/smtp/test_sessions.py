"""Staged upstream sessions (envelope now, data later, close always) against real sinks."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time

import pytest
from tests.support.dns_server import DnsServer
from tests.support.sink import HANG, Reply, Sink, start_sink

from mailnode.core.outcome import Stage
from mailnode.smtp.client import EnvelopeInfo, MxSession, SmtpOptions, SmtpSession
from mailnode.smtp.mx import MxResolver

MESSAGE = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: staged\r\n\r\nhello\r\n"
INFO = EnvelopeInfo("a@src.test", "b@dst.test", size=len(MESSAGE))


def _session(sink: Sink, options: SmtpOptions, info: EnvelopeInfo = INFO) -> SmtpSession:
    return SmtpSession(sink.host, sink.port, info, options)


async def test_envelope_then_data_delivers_exactly_once(sink: Sink, options: SmtpOptions) -> None:
    session = _session(sink, options)

    envelope = await session.envelope()
    assert (envelope.mail and envelope.mail.code, envelope.rcpt and envelope.rcpt.code) == (250, 250)
    assert envelope.data is None
    assert (sink.transactions, sink.messages) == (1, [])  # MAIL and RCPT went, the message not yet

    result = await session.data(MESSAGE)
    again = await session.data(MESSAGE)
    await session.close()

    [received] = await sink.wait_for_messages(1)
    assert (received.rcpt_tos, received.data, received.mail_options) == (
        ["b@dst.test"],
        MESSAGE,
        [f"SIZE={len(MESSAGE)}"],
    )
    assert result.data is not None
    assert result.data.ok
    assert result.remote_host == session.remote_host == f"[127.0.0.1]:{sink.port}"
    assert again == result
    await sink.wait_disconnected(timeout=1.0)
    assert len(sink.messages) == 1


@pytest.mark.parametrize("rcpt_reply", ["451 4.2.1 greylisted", "550 5.1.1 no such user"])
async def test_refused_rcpt_lets_data_send_nothing(sink: Sink, options: SmtpOptions, rcpt_reply: str) -> None:
    sink.queue(Reply(rcpt=rcpt_reply))
    session = _session(sink, options)

    envelope = await session.envelope()
    await sink.wait_disconnected(timeout=1.0)  # a refused envelope releases its connection at once
    after_data = await session.data(MESSAGE)
    await session.close()

    assert envelope.decisive[0] is Stage.RCPT
    assert str(envelope.rcpt) == rcpt_reply
    assert after_data == envelope
    assert (sink.transactions, sink.messages) == (1, [])


async def test_rcpt_hang_times_out_within_command_timeout(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(rcpt=HANG))
    session = _session(sink, dataclasses.replace(options, command_timeout=0.3))

    started = time.monotonic()
    envelope = await session.envelope()
    elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 0.6
    assert envelope.decisive[0] is Stage.RCPT
    assert envelope.rcpt is not None
    assert envelope.rcpt.message == f"4.4.2 timeout waiting for RCPT reply from [127.0.0.1]:{sink.port}"
    await sink.wait_disconnected(timeout=1.0)
    await session.close()


async def test_close_without_data_delivers_nothing(sink: Sink, options: SmtpOptions) -> None:
    session = _session(sink, options)
    envelope = await session.envelope()
    assert sink.open_connections == 1

    await session.close()
    await session.close()  # idempotent

    assert envelope.rcpt is not None
    assert envelope.rcpt.ok
    await sink.wait_disconnected(timeout=1.0)
    assert sink.messages == []
    with pytest.raises(RuntimeError, match="after close"):
        await session.data(MESSAGE)


async def test_upstream_drop_before_data_is_temporary_at_data(options: SmtpOptions) -> None:
    sink = await start_sink()
    session = _session(sink, options)
    try:
        envelope = await session.envelope()
        await sink.close()  # the server gives up on an idle connection (and stops listening)

        started = time.monotonic()
        result = await session.data(MESSAGE)
        elapsed = time.monotonic() - started
    finally:
        await session.close()
        await sink.close()

    assert envelope.rcpt is not None
    assert envelope.rcpt.ok
    stage, response = result.decisive
    assert (stage, response.code) == (Stage.DATA, 451)
    assert response.message.startswith(f"4.4.2 connection to [127.0.0.1]:{sink.port} lost")
    assert elapsed < 0.5  # noticed the lost connection, did not wait for command_timeout
    assert sink.messages == []


async def test_cancelled_envelope_releases_the_connection(sink: Sink, options: SmtpOptions) -> None:
    """The gateway's short wait for RCPT cancels envelope(); the socket must not outlive it."""
    sink.queue(Reply(rcpt=HANG))
    session = _session(sink, options)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await session.envelope()

    await sink.wait_disconnected(timeout=1.0)
    await session.close()
    assert sink.messages == []


async def test_cancelled_data_releases_the_connection(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(data=HANG))
    session = _session(sink, options)
    await session.envelope()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await session.data(MESSAGE)

    await sink.wait_disconnected(timeout=1.0)
    again = await session.data(MESSAGE)  # answers, sends nothing
    await session.close()
    assert again.decisive[0] is Stage.DATA
    assert again.decisive[1].temporary
    assert sink.messages == []


async def test_close_during_envelope_ends_it(options: SmtpOptions) -> None:
    """close() from another task (the downstream client went away) ends a pending RCPT at once."""
    rcpt_sent, peer_done = asyncio.Event(), asyncio.Event()

    async def silent_at_rcpt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for reply in (b"220 peer.test", b"250 peer.test", b"250 2.1.0 ok"):
                writer.write(reply + b"\r\n")
                await reader.readline()  # EHLO, MAIL, RCPT
            rcpt_sent.set()
            await reader.read()  # never answer RCPT; wait for the client to hang up
        except ConnectionError:
            pass
        finally:
            writer.close()
            peer_done.set()

    server = await asyncio.start_server(silent_at_rcpt, "127.0.0.1", 0)
    session = SmtpSession("127.0.0.1", server.sockets[0].getsockname()[1], INFO, options)
    try:
        async with asyncio.TaskGroup() as group:
            envelope = group.create_task(session.envelope())
            await asyncio.wait_for(rcpt_sent.wait(), 1.0)
            started = time.monotonic()
            await session.close()
        await asyncio.wait_for(peer_done.wait(), 1.0)
    finally:
        server.close()
        await server.wait_closed()

    result = envelope.result()
    assert time.monotonic() - started < 0.5  # command_timeout is 2 s: the close ended it
    assert result.decisive[0] is Stage.RCPT
    assert result.decisive[1].temporary


async def test_size_hint_over_the_server_limit_is_refused_before_mail(options: SmtpOptions) -> None:
    sink = await start_sink(data_size_limit=100)
    session = _session(sink, options, dataclasses.replace(INFO, size=101))
    try:
        envelope = await session.envelope()
        after_data = await session.data(b"x" * 101)
        await session.close()
        await sink.wait_disconnected(timeout=1.0)
    finally:
        await sink.close()

    assert envelope.decisive[0] is Stage.MAIL
    assert envelope.mail is not None
    assert (envelope.mail.code, envelope.mail.enhanced_status) == (552, "5.3.4")
    assert "101 > 100 bytes" in envelope.mail.message
    assert after_data == envelope
    assert (sink.transactions, sink.messages) == (0, [])


@pytest.mark.parametrize(
    ("info", "mail_options"),
    [
        (EnvelopeInfo("a@src.test", "b@dst.test"), []),  # no size known yet: no SIZE, no check
        (EnvelopeInfo("a@src.test", "b@dst.test", size=70, body_8bit=True), ["SIZE=70", "BODY=8BITMIME"]),
        (EnvelopeInfo("a@src.test", "b@dst.test", smtputf8=True), ["SMTPUTF8"]),
    ],
)
async def test_mail_parameters_follow_the_envelope_info(
    sink: Sink, options: SmtpOptions, info: EnvelopeInfo, mail_options: list[str]
) -> None:
    session = _session(sink, options, info)
    await session.envelope()
    result = await session.data(MESSAGE)
    await session.close()

    [received] = await sink.wait_for_messages(1)
    assert received.mail_options == mail_options
    assert result.data is not None
    assert result.data.ok


def test_envelope_info_for_message() -> None:
    message = "Subject: café\r\n\r\n".encode()

    assert EnvelopeInfo.for_message("", "b@dst.test", message) == EnvelopeInfo(
        "", "b@dst.test", size=len(message), body_8bit=True
    )
    with pytest.raises(ValueError, match="size"):
        EnvelopeInfo("", "b@dst.test", size=-1)


async def test_opportunistic_starttls_fallback_is_inside_envelope(
    options: SmtpOptions, server_tls: ssl.SSLContext
) -> None:
    sink = await start_sink(tls_context=server_tls)
    session = _session(sink, dataclasses.replace(options, verify_tls=True))  # self-signed: TLS fails
    try:
        envelope = await session.envelope()
        result = await session.data(MESSAGE)
        await session.close()
        [received] = await sink.wait_for_messages(1)
        await sink.wait_disconnected(timeout=1.0)
    finally:
        await sink.close()

    assert envelope.rcpt is not None
    assert envelope.rcpt.ok
    assert result.data is not None
    assert result.data.ok
    assert not received.tls
    assert sink.transactions == 1


async def test_lmtp_staged(options: SmtpOptions) -> None:
    sink = await start_sink(lmtp=True)
    sink.reply_for("full@dst.test", Reply(data="452 4.2.2 mailbox full"))
    lmtp = dataclasses.replace(options, lmtp=True)
    results = []
    try:
        for rcpt in ("b@dst.test", "full@dst.test"):
            async with _session(sink, lmtp, dataclasses.replace(INFO, rcpt_to=rcpt)) as session:
                envelope = await session.envelope()
                assert envelope.rcpt is not None
                assert envelope.rcpt.ok
                results.append(await session.data(MESSAGE))
        [received] = await sink.wait_for_messages(1)
        await sink.wait_disconnected(timeout=1.0)
    finally:
        await sink.close()

    assert [str(r.data) for r in results] == ["250 2.0.0 OK", "452 4.2.2 mailbox full"]
    assert received.rcpt_tos == ["b@dst.test"]


async def test_session_calls_out_of_order_are_bugs(sink: Sink, options: SmtpOptions) -> None:
    session = _session(sink, options)
    with pytest.raises(RuntimeError, match="data"):
        await session.data(MESSAGE)
    await session.envelope()
    with pytest.raises(RuntimeError, match="envelope"):
        await session.envelope()
    await session.close()
    await sink.wait_disconnected(timeout=1.0)
    assert sink.messages == []


async def test_mx_session_falls_back_inside_envelope(
    dns_server: DnsServer, sink_pair: tuple[Sink, Sink], options: SmtpOptions
) -> None:
    first, second = sink_pair
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", first.host)
    dns_server.add("mx2.example.test", "A", second.host)
    first.queue(Reply(mail="421 4.3.2 shutting down"))
    resolver = MxResolver([(dns_server.host, dns_server.port)], timeout=1.0)
    session = MxSession(resolver, "example.test", first.port, INFO, options)
    assert session.remote_host is None

    envelope = await session.envelope()
    await first.wait_disconnected(timeout=1.0)  # the first MX's connection is already released
    assert (first.transactions, second.transactions, second.messages) == (1, 1, [])
    result = await session.data(MESSAGE)
    await session.close()

    mx2 = f"mx2.example.test[127.0.0.2]:{second.port}"
    assert envelope.remote_host == result.remote_host == session.remote_host == mx2
    assert result.data is not None
    assert result.data.ok
    [received] = await second.wait_for_messages(1)
    assert received.data == MESSAGE
    assert first.messages == []
    await second.wait_disconnected(timeout=1.0)


async def test_mx_session_resolver_failure_sends_nothing(dns_server: DnsServer, options: SmtpOptions) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    resolver = MxResolver([(dns_server.host, dns_server.port)], timeout=1.0)
    session = MxSession(resolver, "nomail.test", 25, INFO, options)

    envelope = await session.envelope()
    after_data = await session.data(MESSAGE)
    await session.close()

    assert envelope.mail is not None
    assert envelope.mail.code == 556
    assert after_data == envelope
    assert session.remote_host is None
