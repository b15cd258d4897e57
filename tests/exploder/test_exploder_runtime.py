"""Each row of DESIGN.md's exploder table through a real SMTP client and a real sink, and what follows."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from mailnode.core.exploder import Mode
from mailnode.core.response import Response
from mailnode.router.exploder import SmtpClient
from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import HANG, Reply, Sink

MESSAGE = b"From: a@example.com\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"
CLIENT = SmtpClient(address="127.0.0.1", helo="client.test", tls=True, api_key_id=None)
WAITS = {"rcpt_timeout_seconds": 0.3, "data_timeout_seconds": 0.5}
# The client and the listener are both on loopback: AUTH without TLS keeps these tests short.
SUBMISSION = {**WAITS, "allow_plaintext_auth_on_loopback": True}


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    return await mailnode_factory(
        smtp={"submission": SUBMISSION, "ingress": WAITS},
        delivery={"command_timeout_seconds": 1.0},
        ingress={"routes": [{"domain": "example.net", "endpoint": "capture"}]},
    )


async def send(node: Mailnode, mode: Mode, *rcpts: str, mail_from: str = "a@example.com"):
    """One SMTP transaction over a real client to the listener: (RCPT replies, DATA reply)."""
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses[mode.value]
    client = aiosmtplib.SMTP(
        hostname=host, port=port, start_tls=False, local_hostname="client.test", timeout=10
    )
    async with client:
        await client.ehlo()
        if mode is Mode.SUBMISSION:
            await client.login(str(node.key_id), node.key)
        await client.mail(mail_from)
        replies = [await _command(client, f"RCPT TO:<{rcpt}>") for rcpt in rcpts]
        if not any(r.ok for r in replies):
            return replies, None
        try:
            reply = await client.data(MESSAGE)
        except aiosmtplib.SMTPDataError as exc:
            return replies, Response(exc.code, exc.message)
        return replies, Response(reply.code, reply.message)


async def _command(client: aiosmtplib.SMTP, line: str) -> Response:
    reply = await client.execute_command(line.encode())
    return Response(reply.code, reply.message)


async def wait_status(node: Mailnode, rcpt: str, status: str, timeout: float = 10.0) -> tuple:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = node.rows(
            "SELECT status, final_attempt_reason, attempt_count FROM transactions WHERE rcpt_to = ?", rcpt
        )
        if rows and rows[0][0] == status:
            return rows[0]
        assert asyncio.get_running_loop().time() < deadline, f"{rcpt}: {rows}, wanted {status}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("mode", [Mode.SUBMISSION, Mode.INGRESS])
async def test_upstream_accepts_while_the_client_waits(node: Mailnode, sink: Sink, mode: Mode) -> None:
    rcpt = "bob@example.org" if mode is Mode.SUBMISSION else "bob@example.net"
    if mode is Mode.INGRESS:  # ingress routes example.net to the capture endpoint
        (rcpt_reply,), data = await send(node, mode, rcpt)
        assert rcpt_reply.code == 250 and data.code == 250 and "captured" in data.message
        return
    sink.reply_for(rcpt, Reply(data="250 2.0.0 queued as ABC"))
    (rcpt_reply,), data = await send(node, mode, rcpt)
    assert rcpt_reply.code == 250
    assert str(data) == "250 2.0.0 queued as ABC"  # the receiving server's real answer
    (received,) = await sink.wait_for_messages(1)
    assert received.data.endswith(MESSAGE) and received.data.startswith(b"Received: from client.test")
    assert await wait_status(node, rcpt, "delivered") == ("delivered", "upstream response success", 1)


async def test_submission_rcpt_timeout_is_accepted_and_delivered_later(node: Mailnode, sink: Sink) -> None:
    sink.reply_for("slow@example.org", Reply(rcpt=HANG))
    (rcpt_reply,), data = await send(node, Mode.SUBMISSION, "slow@example.org")
    assert rcpt_reply.code == 250 and "store & forward" in rcpt_reply.message
    assert data.code == 250
    sink.reply_for("slow@example.org", Reply())  # the receiving server recovers
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["slow@example.org"]
    _, reason, attempts = await wait_status(node, "slow@example.org", "delivered")
    assert reason == "upstream response success"
    assert attempts >= 2  # the first attempt timed out at RCPT


async def test_ingress_rcpt_timeout_is_450_and_nothing_is_kept(
    mailnode_factory: MailnodeFactory, sink: Sink
) -> None:
    node = await mailnode_factory(
        smtp={"ingress": WAITS},
        delivery={"command_timeout_seconds": 1.0},
        ingress={"routes": [{"domain": "example.org", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
    )
    sink.reply_for("slow@example.org", Reply(rcpt=HANG))
    (rcpt_reply,), data = await send(node, Mode.INGRESS, "slow@example.org")
    assert rcpt_reply.code == 450 and data is None
    status = await wait_status(node, "slow@example.org", "failed")
    assert status[1] == "failure returned to the SMTP client"
    assert sink.messages == []


@pytest.mark.parametrize(("mode", "rcpt_code"), [(Mode.SUBMISSION, 250), (Mode.INGRESS, 451)])
async def test_rcpt_4xx(mailnode_factory: MailnodeFactory, sink: Sink, mode: Mode, rcpt_code: int) -> None:
    node = await mailnode_factory(
        smtp={"submission": SUBMISSION, "ingress": WAITS},
        ingress={"routes": [{"domain": "example.org", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
    )
    sink.reply_for("busy@example.org", Reply(rcpt="451 4.2.1 mailbox busy"))
    (rcpt_reply,), data = await send(node, mode, "busy@example.org")
    assert rcpt_reply.code == rcpt_code
    if mode is Mode.INGRESS:
        assert str(rcpt_reply) == "451 4.2.1 mailbox busy" and data is None
        assert (await wait_status(node, "busy@example.org", "failed"))[
            1
        ] == "failure returned to the SMTP client"
        return
    assert data.code == 250
    sink.reply_for("busy@example.org", Reply())
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["busy@example.org"]


@pytest.mark.parametrize("mode", [Mode.SUBMISSION, Mode.INGRESS])
async def test_rcpt_5xx_passes_through_and_nothing_follows(
    mailnode_factory: MailnodeFactory, sink: Sink, mode: Mode
) -> None:
    node = await mailnode_factory(
        smtp={"submission": SUBMISSION, "ingress": WAITS},
        ingress={"routes": [{"domain": "example.org", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
    )
    sink.reply_for("gone@example.org", Reply(rcpt="550 5.1.1 no such user"))
    (rcpt_reply,), data = await send(node, mode, "gone@example.org")
    assert str(rcpt_reply) == "550 5.1.1 no such user" and data is None
    await wait_status(node, "gone@example.org", "failed")
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(1,)]  # no DSN: the client knows
    assert sink.messages == []


@pytest.mark.parametrize(
    ("mode", "upstream", "client_code"),
    [
        (Mode.SUBMISSION, "451 4.3.0 later", 250),
        (Mode.INGRESS, "451 4.3.0 later", 451),
        (Mode.SUBMISSION, HANG, 250),
        (Mode.INGRESS, HANG, 450),
        (Mode.SUBMISSION, "554 5.7.1 spam", 554),
        (Mode.INGRESS, "554 5.7.1 spam", 554),
    ],
)
async def test_data_answers(
    mailnode_factory: MailnodeFactory, sink: Sink, mode: Mode, upstream: str, client_code: int
) -> None:
    node = await mailnode_factory(
        smtp={"submission": SUBMISSION, "ingress": WAITS},
        delivery={"command_timeout_seconds": 1.0},
        ingress={"routes": [{"domain": "example.org", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
    )
    sink.reply_for("x@example.org", Reply(data=upstream))
    (rcpt_reply,), data = await send(node, mode, "x@example.org")
    assert rcpt_reply.code == 250
    assert data.code == client_code
    if upstream != HANG:
        assert data.code != 250 or mode is Mode.SUBMISSION
    if client_code == 250:  # stored and forwarded: retried until the upstream takes it
        sink.reply_for("x@example.org", Reply())
        await sink.wait_for_messages(1)
        await wait_status(node, "x@example.org", "delivered")
    else:  # the client was told; mailnode keeps nothing and sends no DSN
        assert (await wait_status(node, "x@example.org", "failed"))[
            1
        ] == "failure returned to the SMTP client"
        assert node.rows("SELECT COUNT(*) FROM transactions") == [(1,)]


@pytest.mark.parametrize("mode", [Mode.SUBMISSION, Mode.INGRESS])
async def test_mixed_data_answers_get_250_and_a_dsn_for_the_failure(
    mailnode_factory: MailnodeFactory, sink: Sink, mode: Mode
) -> None:
    node = await mailnode_factory(
        smtp={"submission": SUBMISSION, "ingress": WAITS},
        ingress={"routes": [{"domain": "example.org", "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
    )
    sink.reply_for("nope@example.org", Reply(data="550 5.7.1 rejected"))
    replies, data = await send(node, mode, "ok@example.org", "nope@example.org")
    assert [r.code for r in replies] == [250, 250]
    assert data.code == 250
    await wait_status(node, "ok@example.org", "delivered")
    await wait_status(node, "nope@example.org", "failed")
    messages = await sink.wait_for_messages(2)
    dsn = next(m for m in messages if m.mail_from == "")
    assert dsn.rcpt_tos == ["a@example.com"] and b"nope@example.org" in dsn.data
    assert [m.rcpt_tos for m in messages if m.mail_from] == [["ok@example.org"]]


async def test_abort_before_data_end_cancels_and_sends_nothing(node: Mailnode, sink: Sink) -> None:
    assert node.service.exploder is not None
    tx = node.service.exploder.begin(mode=Mode.SUBMISSION, mail_from="a@example.com", client=CLIENT)
    assert (await tx.add_recipient("bob@example.org")).code == 250
    await tx.abort()
    status = await wait_status(node, "bob@example.org", "cancelled")
    assert status[1] == "downstream cancelled"
    # The cancelled status is written after the upstream session closed without DATA.
    assert sink.messages == []


async def test_null_sender_is_relayed_as_null(node: Mailnode, sink: Sink) -> None:
    _, data = await send(node, Mode.SUBMISSION, "bob@example.org", mail_from="")
    assert data.code == 250
    (received,) = await sink.wait_for_messages(1)
    assert received.mail_from == ""


async def test_a_client_gone_after_the_commit_still_gets_its_message_delivered(
    node: Mailnode, sink: Sink
) -> None:
    """No 250 reached the client, but the message was committed: deliver it (at least once)."""
    assert node.service.exploder is not None
    sink.reply_for("late@example.org", Reply(data=HANG))
    tx = node.service.exploder.begin(mode=Mode.SUBMISSION, mail_from="a@example.com", client=CLIENT)
    assert (await tx.add_recipient("late@example.org")).code == 250
    finishing = asyncio.create_task(tx.finish(MESSAGE))
    await wait_status(node, "late@example.org", "queued")  # the body is committed
    finishing.cancel()  # the client disconnects while waiting for the answer
    await asyncio.gather(finishing, return_exceptions=True)
    await tx.abort()
    sink.reply_for("late@example.org", Reply())
    (received,) = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["late@example.org"]
    await wait_status(node, "late@example.org", "delivered")


async def test_a_client_gone_during_rcpt_leaves_no_delivery_behind(node: Mailnode, sink: Sink) -> None:
    assert node.service.exploder is not None
    tx = node.service.exploder.begin(mode=Mode.SUBMISSION, mail_from="a@example.com", client=CLIENT)
    adding = asyncio.create_task(tx.add_recipient("bob@example.org"))
    await asyncio.sleep(0)  # the RCPT is under way
    adding.cancel()
    await asyncio.gather(adding, return_exceptions=True)
    await tx.abort()
    status = await wait_status(node, "bob@example.org", "cancelled")
    assert status[1] == "downstream cancelled"
    assert sink.messages == []
