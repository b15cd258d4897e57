"""Inbound bounce and complaint reports: what a message sent back to a VERP address says."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailnode.core.bounce_report import (
    MAX_FIELD_CHARS,
    MAX_RECIPIENTS,
    BounceReport,
    ReportKind,
    classify_reply,
    parse_report,
)
from mailnode.core.dsn import FailedDelivery, build_dsn
from mailnode.core.response import Response

SAMPLES = Path(__file__).parent / "bounce_samples"
SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*.eml"))
VERP = "b-mfrgg4dfmzsgc3a-k1-abcdefghijklmnop@bounces.example.com"
BOUNCE, DELAY, COMPLAINT, UNKNOWN = (
    ReportKind.BOUNCE,
    ReportKind.DELAY,
    ReportKind.COMPLAINT,
    ReportKind.UNKNOWN,
)


class Expected(NamedTuple):
    kind: ReportKind
    permanent: bool
    code: int | None
    status: str | None
    recipients: tuple[str | None, ...]
    feedback_type: str | None
    standard: bool


EXPECTED = {
    "postfix_user_unknown.eml": Expected(BOUNCE, True, 550, "5.1.1", ("x@example.net",), None, True),
    # Exim's Status is always 5.0.0: the diagnostic's 5.1.1 says more.
    "exim_dsn.eml": Expected(BOUNCE, True, 550, "5.1.1", ("someone@example.org",), None, True),
    "gmail_dsn.eml": Expected(BOUNCE, True, 550, "5.1.1", ("nobody@googlemail.example",), None, True),
    "delayed_dsn.eml": Expected(DELAY, False, None, "4.4.7", ("slow@example.net",), None, True),
    "soft_mailbox_full.eml": Expected(BOUNCE, False, 452, "4.2.2", ("full@example.net",), None, True),
    "folded_diagnostic.eml": Expected(BOUNCE, True, 554, "5.7.1", ("folded@example.net",), None, True),
    "multi_recipient.eml": Expected(
        BOUNCE, True, 550, "5.1.1", ("alias-target@example.org", "left@example.org"), None, True
    ),
    "truncated_dsn.eml": Expected(BOUNCE, True, 550, "5.2.1", ("cut@example.net",), None, True),
    "global_dsn.eml": Expected(BOUNCE, True, 550, "5.1.1", ("josé@example.net",), None, True),
    "base64_dsn.eml": Expected(BOUNCE, True, 550, "5.1.1", ("encoded@example.org",), None, True),
    "arf_abuse.eml": Expected(COMPLAINT, False, None, None, ("reader@example.net",), "abuse", True),
    "arf_jmrp.eml": Expected(COMPLAINT, False, None, None, (), "abuse", True),
    "arf_not_spam.eml": Expected(UNKNOWN, False, None, None, ("reader@example.net",), "not-spam", True),
    # Heuristics: the boundary in the header matches no delimiter, so there are no parts.
    "broken_boundary_dsn.eml": Expected(BOUNCE, True, 550, "5.1.1", (), None, False),
    "qmail_plain.eml": Expected(BOUNCE, True, None, "5.1.1", (), None, False),
    "yahoo_plain.eml": Expected(BOUNCE, True, 554, None, (), None, False),
    "exim_plain.eml": Expected(BOUNCE, True, 550, "5.1.1", (), None, False),
    "microsoft_undeliverable.eml": Expected(BOUNCE, True, 550, "5.1.10", (), None, False),
    "postfix_plain.eml": Expected(BOUNCE, True, 550, "5.1.1", (), None, False),
    "auto_reply.eml": Expected(UNKNOWN, False, None, None, (), None, False),
    "newsletter.eml": Expected(UNKNOWN, False, None, None, (), None, False),
}


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _check_invariants(report: BounceReport) -> None:
    """What every report promises, whatever the input."""
    assert isinstance(report.kind, ReportKind)
    assert not report.permanent or report.kind is BOUNCE
    assert report.code is None or 400 <= report.code <= 599
    assert report.status is None or re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", report.status)
    assert len(report.recipients) <= MAX_RECIPIENTS
    assert report.text is None or len(report.text) <= MAX_FIELD_CHARS + 100
    for recipient in report.recipients:
        assert recipient.status is None or re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", recipient.status)
        for value in (recipient.recipient, recipient.diagnostic, recipient.remote_mta, recipient.action):
            assert value is None or len(value) <= MAX_FIELD_CHARS


def test_every_sample_has_an_expectation() -> None:
    assert sorted(EXPECTED) == SAMPLE_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample(name: str) -> None:
    report = parse_report(_sample(name))
    expected = EXPECTED[name]
    got = Expected(
        report.kind,
        report.permanent,
        report.code,
        report.status,
        tuple(r.recipient for r in report.recipients),
        report.feedback_type,
        report.standard,
    )
    assert got == expected
    _check_invariants(report)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("postfix_user_unknown.eml", "550 5.1.1 <x@example.net>: Recipient address rejected: User unknown"),
        (
            "folded_diagnostic.eml",
            "554 5.7.1 Service unavailable; Client host [192.0.2.5] blocked using zen.dnsbl.example; "
            "see https://www.dnsbl.example/query/ip/192.0.2.5",
        ),
        ("delayed_dsn.eml", "connect to mx.example.net[192.0.2.25]:25: Connection timed out"),
        ("multi_recipient.eml", "550 5.1.1 <left@example.org>: no such user"),
        ("qmail_plain.eml", "Sorry, no mailbox here by that name. (#5.1.1)"),
        (
            "postfix_plain.eml",
            "<old@example.net>: host mx.example.net[192.0.2.25] said: 550 5.1.1 <old@example.net>: "
            "Recipient address rejected: User unknown in local recipient table (in reply to RCPT TO command)",
        ),
        (
            "microsoft_undeliverable.eml",
            "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
            "Recipient not found by SMTP address lookup",
        ),
        ("arf_abuse.eml", "feedback report: abuse from ExampleMail-FBL/1.0"),
    ],
)
def test_text_is_the_one_line_summary_to_store(name: str, text: str) -> None:
    assert parse_report(_sample(name)).text == text


def test_recipient_block_fields() -> None:
    report = parse_report(_sample("postfix_user_unknown.eml"))
    (recipient,) = report.recipients
    assert recipient.action == "failed"
    assert recipient.status == "5.1.1"
    assert recipient.remote_mta == "mx.example.net"
    assert recipient.diagnostic == report.text


def test_a_failed_recipient_is_reported_whatever_else_was_delivered() -> None:
    report = parse_report(_sample("multi_recipient.eml"))
    assert [r.action for r in report.recipients] == ["delivered", "failed"]


def test_arf_fields() -> None:
    report = parse_report(_sample("arf_abuse.eml"))
    assert report.user_agent == "ExampleMail-FBL/1.0"
    assert report.source_ip == "192.0.2.5"


@pytest.mark.parametrize(
    "separator",
    [
        "--- Below this line is a copy of the message.",  # qmail
        "------ This is a copy of the message, including all the headers. ------",  # Exim
        "   ----- Original message follows -----",  # sendmail
        "Original message headers:",  # Exchange
    ],
)
def test_replies_quoted_in_the_returned_original_do_not_count(separator: str) -> None:
    body = (
        f"I could not deliver your message.\r\n\r\n{separator}\r\n\r\nSubject: hi\r\n\r\n550 5.7.1 quoted\r\n"
    )
    assert parse_report(_plain("failure notice", body, "MAILER-DAEMON@example.net")).kind is UNKNOWN
    without_separator = body.replace(separator, "")
    assert parse_report(_plain("failure notice", without_separator, "MAILER-DAEMON@example.net")).code == 550


def _dsn(*blocks: str) -> bytes:
    status = "\r\n\r\n".join(block.strip().replace("\n", "\r\n") for block in blocks)
    return (
        "From: MAILER-DAEMON@mx.example.net\r\nSubject: Delivery Status Notification\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nsaid: 550 5.1.1 unknown user\r\n"
        f"--b\r\nContent-Type: message/delivery-status\r\n\r\n{status}\r\n--b--\r\n"
    ).encode()


PER_MESSAGE = "Reporting-MTA: dns; mx.example.net"


def test_a_dsn_of_successful_deliveries_is_nothing_to_record() -> None:
    for action in ("delivered", "relayed", "expanded"):
        report = parse_report(_dsn(PER_MESSAGE, f"Final-Recipient: rfc822; a@example.net\nAction: {action}"))
        assert (report.kind, report.standard) == (UNKNOWN, True)
        assert report.recipients[0].action == action


def test_a_dsn_without_any_action_falls_back_to_its_text() -> None:
    report = parse_report(_dsn(PER_MESSAGE, "Final-Recipient: rfc822; a@example.net\nAction: exploded"))
    assert (report.kind, report.permanent, report.code, report.standard) == (BOUNCE, True, 550, False)


@pytest.mark.parametrize(
    ("fields", "permanent", "code", "status"),
    [
        ("Status: 5.1.1 (bad destination mailbox address)", True, None, "5.1.1"),
        ("Status: 5.1\nDiagnostic-Code: smtp; 550 unknown", True, 550, None),
        ("Status: 4.0.0\nDiagnostic-Code: smtp; 550 5.1.1 unknown", True, 550, "4.0.0"),
        ("Status: 4.4.1\nDiagnostic-Code: smtp; 421 4.4.1 try later", False, 421, "4.4.1"),
        ("Diagnostic-Code: smtp; 551-5.1.6 moved", True, 551, "5.1.6"),
        ("Action: FAILED", False, None, None),  # no evidence of a permanent failure
    ],
)
def test_failed_recipient_classification(fields: str, permanent: bool, code: int | None, status: str) -> None:
    block = "Final-Recipient: rfc822;<a@example.net>\n" + fields
    if "Action" not in fields:
        block += "\nAction: failed"
    report = parse_report(_dsn(PER_MESSAGE, block))
    assert (report.kind, report.permanent, report.code, report.status) == (BOUNCE, permanent, code, status)
    assert report.recipients[0].recipient == "a@example.net"


def test_the_first_hard_failure_is_the_one_reported() -> None:
    soft = "Final-Recipient: rfc822; soft@example.net\nAction: failed\nStatus: 4.2.2"
    hard = "Final-Recipient: rfc822; hard@example.net\nAction: failed\nStatus: 5.1.1"
    report = parse_report(_dsn(PER_MESSAGE, soft, hard))
    assert (report.permanent, report.status, report.text) == (
        True,
        "5.1.1",
        "hard@example.net: failed, status 5.1.1",
    )


def test_recipients_are_capped() -> None:
    blocks = [f"Final-Recipient: rfc822; r{i}@example.net\nAction: failed\nStatus: 5.1.1" for i in range(500)]
    report = parse_report(_dsn(PER_MESSAGE, *blocks))
    assert report.kind is BOUNCE
    assert len(report.recipients) == MAX_RECIPIENTS


def test_a_long_diagnostic_is_bounded() -> None:
    block = (
        "Final-Recipient: rfc822; a@example.net\nAction: failed\nDiagnostic-Code: smtp; 550 " + "x" * 50_000
    )
    report = parse_report(_dsn(PER_MESSAGE, block))
    assert report.text is not None
    assert MAX_FIELD_CHARS - 10 <= len(report.text) <= MAX_FIELD_CHARS
    assert report.code == 550


def _our_dsn(recipient: str) -> bytes:
    when = datetime.datetime(2024, 3, 5, 9, 0, tzinfo=datetime.UTC)
    failure = FailedDelivery(
        original_mail_from="alice@example.org",
        recipient=recipient,
        response=Response(550, "5.1.1 no such user"),
        remote_host="mx.example.net",
        arrival_date=when,
        last_attempt_date=when,
        original_headers=b"Subject: hi\r\n",
        original_message_id=None,
        reason="upstream rcpt_response permfail",
    )
    return build_dsn(
        failure,
        reporting_mta="mail.example.com",
        postmaster="postmaster@example.com",
        message_id="d@x",
        date=when,
    )


@pytest.mark.parametrize("recipient", ["bob@example.net", "björn@example.net"])
def test_mailnodes_own_dsn_reads_back(recipient: str) -> None:
    report = parse_report(_our_dsn(recipient))
    assert (report.kind, report.permanent, report.code, report.status) == (BOUNCE, True, 550, "5.1.1")
    assert [r.recipient for r in report.recipients] == [recipient]  # RFC 6533 xtext decoded
    assert report.recipients[0].remote_mta == "mx.example.net"


def _plain(subject: str, body: str, sender: str = "someone@example.net", extra: str = "") -> bytes:
    return f"From: {sender}\r\nSubject: {subject}\r\n{extra}\r\n{body}".encode()


@pytest.mark.parametrize(
    ("message", "kind", "code", "status"),
    [
        # sendmail's transcript: the remote's reply follows "<<<".
        (
            _plain("Returned mail: see transcript", ">>> RCPT TO:<a@example.net>\r\n<<< 550 5.1.1 unknown"),
            BOUNCE,
            550,
            "5.1.1",
        ),
        (
            _plain("hello", "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##", "postmaster@example.net"),
            BOUNCE,
            550,
            "5.1.1",
        ),
        (_plain("hello", "said: 550 5.1.1 unknown", "someone@example.net"), UNKNOWN, None, None),
        (_plain("Delivery Failure", "nothing that looks like a reply at all"), UNKNOWN, None, None),
        (_plain("Delivery Failure", "Message of 550 bytes, version 5.1.1"), UNKNOWN, None, None),
        (
            _plain("Warning: message delayed 24 hours", "said: 451 4.2.2 mailbox full", "MAILER-DAEMON"),
            DELAY,
            451,
            "4.2.2",
        ),
        (
            _plain("Warning: message delayed", "said: 550 5.2.2 over quota", "MAILER-DAEMON"),
            BOUNCE,
            550,
            "5.2.2",
        ),
        # RFC 2047: Exchange encodes the whole Subject when the original's was not ASCII.
        (
            _plain("=?utf-8?B?VW5kZWxpdmVyYWJsZTogw5xiZXJ3ZWlzdW5n?=", "said: 550 5.1.1 x"),
            BOUNCE,
            550,
            "5.1.1",
        ),
        (_plain("=?utf-8?B?VW5kZ?=", "said: 550 5.1.1 x"), UNKNOWN, None, None),
        (_plain("=?x-unknown?Q?Undeliverable?=", "said: 550 5.1.1 x"), BOUNCE, 550, "5.1.1"),
    ],
)
def test_heuristics(message: bytes, kind: ReportKind, code: int | None, status: str | None) -> None:
    report = parse_report(message)
    assert (report.kind, report.code, report.status) == (kind, code, status)
    assert not report.standard


# Not text encodings, or ones that refuse errors="replace": the text is read as UTF-8.
@pytest.mark.parametrize("charset", ["idna", "rot13", "hex", "base64", "no-such-charset", '"utf-8*en"'])
def test_odd_charsets_in_bounce_text(charset: str) -> None:
    message = _plain(
        "Undeliverable",
        "Remote host said: 550 5.1.1 gone\r\n",
        extra=f"Content-Type: text/plain; charset={charset}\r\n",
    )
    report = parse_report(message)
    assert (report.kind, report.code) == (BOUNCE, 550)


@pytest.mark.parametrize(
    "param", ["charset=utf-16", "charset=punycode", "charset=utf-7", "charset*=utf-8''%FF"]
)
def test_8bit_text_in_a_strange_charset_does_not_raise(param: str) -> None:
    # An RFC 2231 charset with 8-bit text makes the stdlib's get_payload() raise TypeError.
    message = _plain(
        "Undeliverable", "said: 550 5.1.1 ÿ gone\r\n", extra=f"Content-Type: text/plain; {param}\r\n"
    )
    _check_invariants(parse_report(message))


def test_a_multipart_without_its_boundary_in_a_strange_charset_is_read_as_text() -> None:
    content_type = "Content-Type: multipart/mixed; boundary=nowhere; charset*=utf-8''%FF\r\n"
    message = _plain("Undeliverable", "said: 550 5.1.1 ÿ gone\r\n", extra=content_type)
    report = parse_report(message)
    assert (report.kind, report.code) == (BOUNCE, 550)


def test_a_uuencoded_garbage_part_is_read_as_is() -> None:
    message = _plain(
        "Undeliverable",
        "begin 644 x\r\n!!!\r\nsaid: 550 5.1.1 gone\r\n",
        extra="Content-Transfer-Encoding: x-uuencode\r\n",
    )
    _check_invariants(parse_report(message))


def test_deeply_nested_parts_are_unknown() -> None:
    # CPython's parser recurses once per nesting level and raises RecursionError near 1000.
    nested = b"Content-Type: multipart/mixed; boundary=a0\r\n\r\n"
    nested += b"".join(
        b"--a%d\r\nContent-Type: multipart/mixed; boundary=a%d\r\n\r\n" % (i - 1, i) for i in range(1, 3000)
    )
    attached = b"Content-Type: message/rfc822\r\n\r\n" * 3000
    assert parse_report(nested).kind is UNKNOWN
    assert parse_report(attached).kind is UNKNOWN


@pytest.mark.parametrize(
    ("code", "status", "hard"),
    [
        (550, None, True),
        (None, "5.1.1", True),
        (452, "4.2.2", False),
        (None, None, False),
        (421, "5.7.1", True),
        (599, None, True),
        (450, None, False),
    ],
)
def test_classify_reply(code: int | None, status: str | None, hard: bool) -> None:
    assert classify_reply(code, status) is hard


# Size limits: only the first max_bytes are read, the rest is absent.


def test_a_huge_returned_original_does_not_hide_the_report() -> None:
    huge = _sample("exim_dsn.eml").replace(b"Thanks for your order.", (b"y" * 76 + b"\r\n") * 60_000)
    assert len(huge) > 4_000_000
    report = parse_report(huge)
    assert (report.kind, report.code, report.standard) == (BOUNCE, 550, True)


def test_a_report_part_past_the_limit_is_absent() -> None:
    filler = ("Your message could not be delivered.\r\n" * 20_000).encode()
    sample = _sample("postfix_user_unknown.eml").replace(
        b"This is the mail system", filler + b"This is the mail system"
    )
    assert parse_report(sample, max_bytes=len(sample)).kind is BOUNCE
    # Cut inside the filler: no status part and no reply in the text that was read.
    assert parse_report(sample).kind is UNKNOWN


def test_max_bytes_applies_to_headers_too() -> None:
    sample = _sample("postfix_user_unknown.eml")
    assert parse_report(sample, max_bytes=100).kind is UNKNOWN
    assert parse_report(sample, max_bytes=0) == parse_report(b"")
    assert parse_report(sample, max_bytes=-1).kind is UNKNOWN


# Hostile input: parse_report never raises, and its promises hold.


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _check_invariants(parse_report(data))


@given(st.sampled_from(SAMPLE_NAMES), st.data())
def test_single_byte_mutations_of_samples(name: str, data: st.DataObject) -> None:
    sample = bytearray(_sample(name))
    for _ in range(data.draw(st.integers(1, 4))):
        sample[data.draw(st.integers(0, len(sample) - 1))] = data.draw(st.integers(0, 255))
    _check_invariants(parse_report(bytes(sample)))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_samples_truncated_anywhere(name: str) -> None:
    sample = _sample(name)
    for end in range(0, len(sample), 97):
        _check_invariants(parse_report(sample[:end]))


# Lines that steer the parser into its deeper paths, shuffled into messages.
FRAGMENTS = [
    "Content-Type: multipart/report; report-type=delivery-status; boundary=b",
    "Content-Type: multipart/mixed; boundary=b",
    "Content-Type: message/delivery-status",
    "Content-Type: message/global-delivery-status",
    "Content-Type: message/feedback-report",
    "Content-Type: message/rfc822",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Type: text/plain; charset*=utf-8''%FF",
    "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: quoted-printable",
    "Subject: Undeliverable",
    "From: MAILER-DAEMON",
    "--b",
    "--b--",
    "",
    " folded continuation",
    "Final-Recipient: rfc822; a@example.net",
    "Final-Recipient: utf-8; a\\x{110000}\\x{D800}\\x{E9}@example.net",
    "Original-Rcpt-To: <>",
    "Action: failed",
    "Action: delayed",
    "Status: 5.1.1",
    "Status: 9.9.9",
    "Diagnostic-Code: smtp; 550 5.1.1 x",
    "Diagnostic-Code: ;",
    "Feedback-Type: abuse",
    "said: 554 delivery error",
    "(#5.1.1)",
    "UmVwb3J0aW5nLU1UQTogZG5zOyB4DQoNCkZpbmFsLVJlY2lwaWVudDogcmZjODIyOyBhQGINCkFjdGlvbjogZmFpbGVkDQo=",
    "=?utf-8?q?Undeliverable?=",
    "\udcff",
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.sampled_from(["\r\n", "\n"]))
def test_shuffled_report_fragments(lines: list[str], newline: str) -> None:
    message = newline.join(lines).encode("utf-8", "surrogateescape")
    _check_invariants(parse_report(message))
