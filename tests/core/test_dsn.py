"""Delivery status notifications: what a sender receives when mailnode gives up."""

from __future__ import annotations

import dataclasses
import datetime
import email
import email.policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from mailnode.core.dsn import FailedDelivery, build_dsn
from mailnode.core.response import Response

GOLDEN = Path(__file__).parent / "golden" / "dsn.eml"
UTC = datetime.UTC
ORIGINAL_HEADERS = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Quarterly report\r\n"
    b"Message-ID: <orig-1@example.org>\r\n"
)
FAILURE = FailedDelivery(
    original_mail_from="alice@example.org",
    recipient="bob@example.net",
    response=Response(550, "5.1.1 no such user"),
    remote_host="mx.example.net",
    arrival_date=datetime.datetime(2024, 3, 5, 9, 0, 0, tzinfo=UTC),
    last_attempt_date=datetime.datetime(2024, 3, 5, 9, 0, 2, tzinfo=UTC),
    original_headers=ORIGINAL_HEADERS,
    original_message_id="orig-1@example.org",
    reason="upstream rcpt_response permfail",
)


def _build(failure: FailedDelivery = FAILURE) -> bytes:
    return build_dsn(
        failure,
        reporting_mta="mail.example.com",
        postmaster="postmaster@example.com",
        message_id="dsn-1@mail.example.com",
        date=datetime.datetime(2024, 3, 5, 9, 0, 3, tzinfo=UTC),
    )


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _status_blocks(raw: bytes) -> list[Message]:
    status = list(_parse(raw).iter_parts())[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    assert all(isinstance(block, Message) for block in blocks)
    return [block for block in blocks if isinstance(block, Message)]


def test_dsn_is_a_delivery_status_report_in_three_parts() -> None:
    message = _parse(_build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [part.get_content_type() for part in message.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert not message.defects


def test_dsn_headers() -> None:
    message = _parse(_build())
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["From"].addresses[0].addr_spec == "postmaster@example.com"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Date"].datetime == datetime.datetime(2024, 3, 5, 9, 0, 3, tzinfo=UTC)
    assert message["Message-ID"] == "<dsn-1@mail.example.com>"
    assert message["In-Reply-To"] == "<orig-1@example.org>"
    assert message["References"] == "<orig-1@example.org>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"


def test_dsn_status_fields() -> None:
    per_message, per_recipient = _status_blocks(_build())
    assert dict(per_message.items()) == {
        "Reporting-MTA": "dns; mail.example.com",
        "Arrival-Date": "Tue, 05 Mar 2024 09:00:00 +0000",
    }
    assert dict(per_recipient.items()) == {
        "Final-Recipient": "rfc822; bob@example.net",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date": "Tue, 05 Mar 2024 09:00:02 +0000",
    }


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (Response(550, "5.1.1 no such user"), "5.1.1"),
        (Response(552, "5.3.4 message too big"), "5.3.4"),
        (Response(554, "transaction failed"), "5.0.0"),
        (Response(451, "try again later"), "4.0.0"),
        (Response(421, "4.4.2 connection dropped"), "4.4.2"),
        (Response(550, "4.1.1 class does not match the code"), "5.0.0"),
    ],
)
def test_dsn_status_comes_from_the_response(response: Response, status: str) -> None:
    _, per_recipient = _status_blocks(_build(dataclasses.replace(FAILURE, response=response)))
    assert per_recipient["Status"] == status
    assert per_recipient["Diagnostic-Code"] == f"smtp; {response}"


def test_dsn_without_remote_host_or_message_id() -> None:
    failure = dataclasses.replace(FAILURE, remote_host=None, original_message_id=None)
    raw = _build(failure)
    message = _parse(raw)
    assert message["In-Reply-To"] is None
    assert message["References"] is None
    _, per_recipient = _status_blocks(raw)
    assert per_recipient["Remote-MTA"] is None
    explanation = next(message.iter_parts())
    assert "The last attempt answered" in explanation.get_content()


def test_dsn_explains_the_failure_to_a_person() -> None:
    text = next(_parse(_build()).iter_parts()).get_content()
    assert "could not be delivered to bob@example.net" in text
    assert "mx.example.net answered" in text
    assert "550 5.1.1 no such user" in text
    assert "upstream rcpt_response permfail" in text


def test_dsn_carries_the_original_headers() -> None:
    headers = list(_parse(_build()).iter_parts())[2].get_content()
    assert headers.replace("\r\n", "\n") == ORIGINAL_HEADERS.decode().replace("\r\n", "\n")


def test_dsn_lines_are_crlf_and_short() -> None:
    raw = _build(dataclasses.replace(FAILURE, response=Response(550, "5.7.1 " + "blocked " * 300)))
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.isascii()


def test_dsn_survives_non_ascii_and_broken_original_headers() -> None:
    original = (
        b"From: Zo\xc3\xab <zoe@example.org>\r\nSubject: Gr\xc3\xbc\xc3\x9fe \xff\xfe\r\n"
        b"X-Long: " + b"a" * 2000 + b"\r\n"
    )
    raw = _build(dataclasses.replace(FAILURE, original_headers=original))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.isascii()
    headers = list(_parse(raw).iter_parts())[2].get_content()
    assert "From: Zoë <zoe@example.org>" in headers
    assert "Subject: Grüße \ufffd\ufffd" in headers


def test_dsn_to_an_smtputf8_sender_and_recipient() -> None:
    failure = dataclasses.replace(
        FAILURE, original_mail_from="zoë@exämple.org", recipient="jörg+x@bücher.example"
    )
    raw = _build(failure)
    message = _parse(raw)
    assert message["To"] == "zoë@exämple.org"
    _, per_recipient = _status_blocks(raw)
    # RFC 6533 §3: utf-8-addr-xtext, with "+" escaped as well.
    assert per_recipient["Final-Recipient"] == "utf-8; j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.example"


def test_dsn_for_an_idn_sender_uses_a_labels() -> None:
    raw = _build(dataclasses.replace(FAILURE, original_mail_from="alice@exämple.org"))
    assert b"To: alice@xn--exmple-cua.org\r\n" in raw
    assert raw.isascii()


@pytest.mark.parametrize("mail_from", ["", "not an address"])
def test_dsn_needs_a_sender(mail_from: str) -> None:
    with pytest.raises(ValueError, match="address"):
        _build(dataclasses.replace(FAILURE, original_mail_from=mail_from))


def test_dsn_refuses_a_success_response() -> None:
    with pytest.raises(ValueError, match="2xx"):
        _build(dataclasses.replace(FAILURE, response=Response(250, "2.0.0 ok")))


def test_dsn_is_deterministic() -> None:
    assert _build() == _build()


def test_dsn_matches_the_golden_file() -> None:
    """Exact bytes; after an intended change, rewrite golden/dsn.eml from _build() and review it."""
    assert _build() == GOLDEN.read_bytes()
