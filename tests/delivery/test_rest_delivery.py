"""End to end: REST transaction in → filter chain → SMTP sink, with retries and DSNs."""

from __future__ import annotations

import email
from email import policy

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import Reply, Sink

MESSAGE = (
    "From: Alice <alice@example.com>\r\n"
    "To: bob@example.net\r\n"
    "Subject: hello\r\n"
    "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
    "Message-ID: <m1@example.com>\r\n"
    "\r\n"
    "Hi Bob.\r\n"
)


def tx(mail_from: str = "alice@example.com", rcpt: str = "bob@example.net", body: str = MESSAGE) -> dict:
    return {"mail_from": {"m": mail_from}, "rcpt_to": [{"m": rcpt}], "body": {"inline": body}}


async def test_posted_transaction_reaches_the_sink_byte_for_byte(mailnode: Mailnode, sink: Sink) -> None:
    status, created, headers = await mailnode.create(tx())
    assert status == 201
    location = headers["Location"]
    assert location.startswith("/transactions/")
    assert headers["ETag"]
    assert created["mail_from"] == {} and created["rcpt_to"] == [{}]
    assert created["body"]["blob_status"]["finalized"] is True

    (received,) = await sink.wait_for_messages(1)
    assert received.mail_from == "alice@example.com"
    assert received.rcpt_tos == ["bob@example.net"]
    assert received.data.startswith(b"Received: ")
    # Everything after our Received header is exactly what the client posted.
    assert received.data.endswith(MESSAGE.encode())
    trace = received.data[: len(received.data) - len(MESSAGE)]
    assert b"by mailnode.test" in trace and b"with HTTP" in trace and b"<bob@example.net>" in trace

    final = await mailnode.wait_final(location)
    assert final["data_response"]["code"] == 250
    assert final["final_attempt_reason"] == "upstream response success"
    assert final["attempt_count"] == 1
    assert final["status"] == "delivered"


async def test_temporary_failures_are_retried_until_delivered(mailnode: Mailnode, sink: Sink) -> None:
    sink.queue(Reply(data="451 4.3.0 try again later"), Reply(data="451 4.3.0 still busy"))
    _, _, headers = await mailnode.create(tx())

    final = await mailnode.wait_final(headers["Location"])

    assert final["final_attempt_reason"] == "upstream response success"
    assert final["attempt_count"] == 3
    assert len(sink.messages) == 1  # the two refused attempts delivered nothing
    rows = mailnode.rows("SELECT number, data_code FROM attempts ORDER BY number")
    assert rows == [(1, 451), (2, 451), (3, 250)]


async def test_permanent_failure_bounces_to_the_sender(mailnode: Mailnode, sink: Sink) -> None:
    sink.reply_for("nobody@example.net", Reply(rcpt="550 5.1.1 no such user"))
    _, _, headers = await mailnode.create(tx(rcpt="nobody@example.net"))

    final = await mailnode.wait_final(headers["Location"])
    assert final["final_attempt_reason"] == "upstream rcpt_response permfail"
    assert final["rcpt_response"] == [{"code": 550, "message": "5.1.1 no such user"}]

    (dsn,) = await sink.wait_for_messages(1)
    assert dsn.mail_from == ""  # RFC 3464: DSNs come from the null reverse path
    assert dsn.rcpt_tos == ["alice@example.com"]
    report = email.message_from_bytes(dsn.data, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status_part = report.get_payload()[1]
    assert status_part.get_content_type() == "message/delivery-status"
    fields = status_part.as_string()
    assert "Final-Recipient: rfc822; nobody@example.net" in fields
    assert "Status: 5.1.1" in fields
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in fields
    assert "Message-ID: <m1@example.com>" in report.get_payload()[2].as_string()


async def test_a_message_from_the_null_sender_is_never_bounced(mailnode: Mailnode, sink: Sink) -> None:
    sink.reply_for("nobody@example.net", Reply(data="550 5.7.1 rejected"))
    _, _, headers = await mailnode.create(tx(mail_from="", rcpt="nobody@example.net"))

    final = await mailnode.wait_final(headers["Location"])

    assert final["final_attempt_reason"] == "upstream response permfail"
    assert mailnode.rows("SELECT COUNT(*) FROM transactions") == [(1,)]  # no DSN transaction
    assert sink.messages == []


async def test_exhausted_retries_end_the_delivery_and_bounce(
    mailnode_factory: MailnodeFactory, sink: Sink
) -> None:
    node = await mailnode_factory(retry={"max_attempts": 2})
    sink.reply_for("busy@example.net", Reply(rcpt="452 4.2.2 mailbox full"))
    _, _, headers = await node.create(tx(rcpt="busy@example.net"))

    final = await node.wait_final(headers["Location"])

    assert final["final_attempt_reason"] == "retry policy max attempts"
    assert final["attempt_count"] == 2
    (dsn,) = await sink.wait_for_messages(1)
    assert dsn.rcpt_tos == ["alice@example.com"]
    assert b"Status: 4.2.2" in dsn.data
