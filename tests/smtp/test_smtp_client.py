"""send_message against a real aiosmtpd sink (and raw scripted peers) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

import pytest
from tests.support.sink import DROP, HANG, Reply, Sink, start_sink

from mailnode.core.outcome import AttemptResult, Stage
from mailnode.smtp.client import SmtpOptions, send_message

ScriptedPeer = Callable[[list[bytes]], Awaitable[int]]  # the scripted_peer fixture

MESSAGE = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"


async def _send(
    sink: Sink,
    options: SmtpOptions,
    message: bytes = MESSAGE,
    mail_from: str = "a@src.test",
    rcpt_to: str = "b@dst.test",
) -> AttemptResult:
    return await send_message(
        sink.host, sink.port, mail_from=mail_from, rcpt_to=rcpt_to, message=message, options=options
    )


async def test_delivers_exact_bytes(sink: Sink, options: SmtpOptions) -> None:
    result = await _send(sink, options)

    [received] = await sink.wait_for_messages(1)
    assert (received.mail_from, received.rcpt_tos, received.data) == (
        "a@src.test",
        ["b@dst.test"],
        MESSAGE,
    )
    assert result.decisive[1].ok
    assert [r and r.code for r in (result.mail, result.rcpt, result.data)] == [250, 250, 250]
    assert result.remote_host == f"[127.0.0.1]:{sink.port}"
    assert received.mail_options == [f"SIZE={len(MESSAGE)}"]
    await sink.wait_disconnected(timeout=1.0)


async def test_null_reverse_path(sink: Sink, options: SmtpOptions) -> None:
    result = await _send(sink, options, mail_from="")

    [received] = await sink.wait_for_messages(1)
    assert received.mail_from == ""
    assert result.data is not None
    assert result.data.ok


async def test_8bit_body_is_declared(sink: Sink, options: SmtpOptions) -> None:
    message = "Subject: café\r\n\r\nnaïve\r\n".encode()

    await _send(sink, options, message=message)

    [received] = await sink.wait_for_messages(1)
    assert received.data == message
    assert "BODY=8BITMIME" in received.mail_options


async def test_utf8_address_uses_smtputf8(sink: Sink, options: SmtpOptions) -> None:
    result = await _send(sink, options, rcpt_to="jöran@dst.test")

    [received] = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["jöran@dst.test"]
    assert "SMTPUTF8" in received.mail_options
    assert result.data is not None
    assert result.data.ok


async def test_mail_4xx_is_temporary_at_mail(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(mail="451 4.3.0 try later"))

    result = await _send(sink, options)

    assert result.decisive[0] is Stage.MAIL
    assert result.mail is not None
    assert str(result.mail) == "451 4.3.0 try later"
    assert result.rcpt is None


async def test_rcpt_4xx_is_temporary_at_rcpt(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(rcpt="451 4.2.0 mailbox busy"))

    result = await _send(sink, options)

    stage, response = result.decisive
    assert (stage, response.code, response.enhanced_status) == (Stage.RCPT, 451, "4.2.0")
    assert result.mail is not None
    assert result.mail.ok
    assert result.data is None
    assert sink.messages == []


async def test_data_5xx_is_permanent_at_data(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(data="550 5.7.1 content rejected"))

    result = await _send(sink, options)

    stage, response = result.decisive
    assert (stage, response.permanent, response.message) == (
        Stage.DATA,
        True,
        "5.7.1 content rejected",
    )
    assert sink.messages == []


async def test_data_hang_times_out_and_closes(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(data=HANG))
    short = dataclasses.replace(options, command_timeout=0.3)

    started = time.monotonic()
    result = await _send(sink, short)
    elapsed = time.monotonic() - started

    stage, response = result.decisive
    assert stage is Stage.DATA
    assert response.temporary
    assert response.message == f"4.4.2 timeout waiting for DATA reply from [127.0.0.1]:{sink.port}"
    assert 0.3 <= elapsed < 0.8
    await sink.wait_disconnected(timeout=1.0)


async def test_dropped_connection_is_temporary(sink: Sink, options: SmtpOptions) -> None:
    sink.queue(Reply(rcpt=DROP))

    result = await _send(sink, options)

    stage, response = result.decisive
    assert (stage, response.code) == (Stage.RCPT, 451)
    assert "lost during RCPT" in response.message


async def test_connection_refused_is_temporary_at_mail(free_port: int, options: SmtpOptions) -> None:
    result = await send_message(
        "127.0.0.1", free_port, mail_from="a@src.test", rcpt_to="b@dst.test",
        message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.mail is not None
    assert result.mail.temporary
    assert result.mail.message == f"4.4.1 connection refused by [127.0.0.1]:{free_port}"
    assert result.remote_host == f"[127.0.0.1]:{free_port}"


async def test_server_name_shows_in_remote_host(sink: Sink, options: SmtpOptions) -> None:
    result = await send_message(
        sink.host, sink.port, mail_from="a@src.test", rcpt_to="b@dst.test",
        message=MESSAGE, options=options, server_name="mx1.dst.test",
    )  # fmt: skip

    assert result.remote_host == f"mx1.dst.test[127.0.0.1]:{sink.port}"


async def test_size_limit_refused_locally(options: SmtpOptions) -> None:
    sink = await start_sink(data_size_limit=100)
    try:
        result = await _send(sink, options, message=b"x" * 98 + b"\r\n" + b"y" * 10 + b"\r\n")
    finally:
        await sink.close()

    assert result.mail is not None
    assert result.mail.code == 552
    assert result.mail.enhanced_status == "5.3.4"
    assert "larger than the server's limit" in result.mail.message
    assert sink.transactions == 0  # refused before MAIL


async def test_starttls_used_when_offered(options: SmtpOptions, server_tls: ssl.SSLContext) -> None:
    sink = await start_sink(tls_context=server_tls)
    try:
        result = await _send(sink, options)
        [received] = await sink.wait_for_messages(1)
    finally:
        await sink.close()

    assert received.tls
    assert received.data == MESSAGE
    assert result.data is not None
    assert result.data.ok


async def test_starttls_off_sends_plaintext(options: SmtpOptions, server_tls: ssl.SSLContext) -> None:
    sink = await start_sink(tls_context=server_tls)
    try:
        await _send(sink, dataclasses.replace(options, starttls="off"))
        [received] = await sink.wait_for_messages(1)
    finally:
        await sink.close()

    assert not received.tls


async def test_required_tls_not_offered_is_temporary(sink: Sink, options: SmtpOptions) -> None:
    result = await _send(sink, dataclasses.replace(options, starttls="required"))

    assert result.mail is not None
    assert result.mail.temporary
    assert result.mail.enhanced_status == "4.7.4"
    assert sink.transactions == 0


async def test_unverifiable_certificate(options: SmtpOptions, server_tls: ssl.SSLContext) -> None:
    """Required TLS fails on a self-signed certificate; opportunistic TLS retries in plaintext."""
    sink = await start_sink(tls_context=server_tls)
    verify = dataclasses.replace(options, verify_tls=True)
    try:
        required = await _send(sink, dataclasses.replace(verify, starttls="required"))
        opportunistic = await _send(sink, verify)
        [received] = await sink.wait_for_messages(1)
    finally:
        await sink.close()

    assert required.mail is not None
    assert required.mail.enhanced_status == "4.7.5"
    assert "TLS negotiation" in required.mail.message
    assert opportunistic.data is not None
    assert opportunistic.data.ok
    assert not received.tls


async def test_auth_on_loopback(options: SmtpOptions) -> None:
    sink = await start_sink(credentials=("user", "secret"))
    try:
        good = await _send(sink, dataclasses.replace(options, username="user", password="secret"))
        bad = await _send(sink, dataclasses.replace(options, username="user", password="wrong"))
        [received] = await sink.wait_for_messages(1)
    finally:
        await sink.close()

    assert good.data is not None
    assert good.data.ok
    assert received.login == "user"
    assert bad.mail is not None
    assert bad.mail.temporary
    assert bad.mail.enhanced_status == "4.7.8"
    assert "secret" not in repr(dataclasses.replace(options, password="secret"))


async def test_lmtp(options: SmtpOptions) -> None:
    sink = await start_sink(lmtp=True)
    try:
        sink.reply_for("full@dst.test", Reply(data="452 4.2.2 mailbox full"))
        delivered = await _send(sink, dataclasses.replace(options, lmtp=True))
        full = await _send(sink, dataclasses.replace(options, lmtp=True), rcpt_to="full@dst.test")
        [received] = await sink.wait_for_messages(1)
    finally:
        await sink.close()

    assert delivered.data is not None
    assert delivered.data.ok
    assert received.rcpt_tos == ["b@dst.test"]
    assert full.data is not None
    assert str(full.data) == "452 4.2.2 mailbox full"


async def test_greeting_5xx_is_permanent(scripted_peer: ScriptedPeer, options: SmtpOptions) -> None:
    port = await scripted_peer([b"554 5.7.1 go away\r\n"])

    result = await send_message(
        "127.0.0.1", port, mail_from="a@src.test", rcpt_to="b@dst.test",
        message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.mail is not None
    assert str(result.mail) == "554 5.7.1 go away"
    assert result.decisive[1].permanent


async def test_greeting_4xx_is_temporary(scripted_peer: ScriptedPeer, options: SmtpOptions) -> None:
    port = await scripted_peer([b"421 4.3.2 busy\r\n"])

    result = await send_message(
        "127.0.0.1", port, mail_from="a@src.test", rcpt_to="b@dst.test",
        message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.mail is not None
    assert str(result.mail) == "421 4.3.2 busy"


async def test_helo_fallback_and_missing_smtputf8(scripted_peer: ScriptedPeer, options: SmtpOptions) -> None:
    """An old server: EHLO unknown, HELO works, so no SMTPUTF8 for a non-ASCII address."""
    port = await scripted_peer(
        [b"220 old.test\r\n", b"502 5.5.2 what?\r\n", b"250 old.test\r\n", b"221 bye\r\n"]
    )

    result = await send_message(
        "127.0.0.1", port, mail_from="a@src.test", rcpt_to="jöran@dst.test",
        message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.mail is not None
    assert result.mail.code == 553
    assert result.mail.enhanced_status == "5.6.7"


async def test_malformed_reply_is_temporary(scripted_peer: ScriptedPeer, options: SmtpOptions) -> None:
    port = await scripted_peer([b"220 odd.test\r\n", b"250 odd.test\r\n", b"hello there\r\n"])

    result = await send_message(
        "127.0.0.1", port, mail_from="a@src.test", rcpt_to="b@dst.test",
        message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.mail is not None
    assert result.mail.code == 451
    assert "MAIL" in result.mail.message
    assert "hello there" in result.mail.message


async def test_greeting_timeout(scripted_peer: ScriptedPeer, options: SmtpOptions) -> None:
    port = await scripted_peer([b""])  # accepts, never greets

    started = time.monotonic()
    result = await send_message(
        "127.0.0.1", port, mail_from="a@src.test", rcpt_to="b@dst.test",
        message=MESSAGE, options=dataclasses.replace(options, connect_timeout=0.2),
    )  # fmt: skip

    assert time.monotonic() - started < 0.7
    assert result.mail is not None
    assert result.mail.temporary
    assert "timeout waiting for the greeting" in result.mail.message


@pytest.mark.parametrize(
    ("mail_from", "rcpt_to", "stage"),
    [
        ("a@src.test>\r\nRSET", "b@dst.test", Stage.MAIL),
        ("a@src.test", "b@dst.test> X", Stage.RCPT),
    ],
)
async def test_unsafe_addresses_refused_locally(
    sink: Sink, options: SmtpOptions, mail_from: str, rcpt_to: str, stage: Stage
) -> None:
    result = await _send(sink, options, mail_from=mail_from, rcpt_to=rcpt_to)

    assert result.decisive[0] is stage
    assert result.decisive[1].code == 553
    assert sink.transactions == 0


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="helo_hostname"):
        SmtpOptions(helo_hostname="bad name")
    with pytest.raises(ValueError, match="positive"):
        SmtpOptions(helo_hostname="ok.test", command_timeout=0)


async def test_timed_out_connection_drops_unsent_data(options: SmtpOptions) -> None:
    """After a DATA timeout the socket is cut, not kept open to flush megabytes to a stuck peer."""
    stalled, finished = asyncio.Event(), asyncio.Event()
    received = 0

    async def stuck_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        try:
            for reply in (b"220 stuck.test", b"250 stuck.test", b"250 ok", b"250 ok", b"354 go"):
                writer.write(reply + b"\r\n")
                await reader.readline()  # EHLO, MAIL, RCPT, DATA, then the first message line
            await stalled.wait()  # stop reading mid-message until the client has given up
            while chunk := await reader.read(1 << 16):
                received += len(chunk)
        except ConnectionError:
            pass
        finally:
            writer.close()
            finished.set()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited when accepted
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(stuck_peer, sock=listener)
    message = (b"x" * 998 + b"\r\n") * 16 * 1024  # 16 MiB, far more than kernel buffers hold
    size = len(message)
    try:
        result = await send_message(
            "127.0.0.1", listener.getsockname()[1], mail_from="a@src.test", rcpt_to="b@dst.test",
            message=message, options=dataclasses.replace(options, command_timeout=0.3),
        )  # fmt: skip
        stalled.set()
        await asyncio.wait_for(finished.wait(), 2.0)
    finally:
        server.close()
        await server.wait_closed()

    assert result.data is not None
    assert result.data.message.startswith("4.4.2 timeout waiting for DATA reply")
    assert received < size // 2  # the rest was dropped, not flushed after the timeout
