"""Delivery status notifications (RFC 3464): the bounce a sender gets when a delivery fails."""

from __future__ import annotations

import datetime
import email.policy
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import MIMEPart
from email.utils import format_datetime

from mailnode.core.address import Address, parse_address
from mailnode.core.message_builder import POLICY, set_boundaries, transfer_encoding
from mailnode.core.response import Response

SUBJECT = "Undelivered Mail Returned to Sender"
# RFC 6531 senders get an RFC 6532 report: their address cannot be written in ASCII.
_UTF8_POLICY = email.policy.SMTPUTF8.clone(cte_type="7bit")
# RFC 6533 §3 QCHAR leaves these out of utf-8-addr-xtext.
_XTEXT_SPECIALS = "+=\\"


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """What a DSN reports: one recipient that mailnode gave up on, and why."""

    original_mail_from: str
    recipient: str
    response: Response
    remote_host: str | None
    arrival_date: datetime.datetime
    last_attempt_date: datetime.datetime
    original_headers: bytes
    original_message_id: str | None  # with or without the angle brackets
    reason: str


def build_dsn(
    failure: FailedDelivery,
    *,
    reporting_mta: str,
    postmaster: str,
    message_id: str,
    date: datetime.datetime,
) -> bytes:
    """The complete multipart/report DSN message, CRLF line endings, ready to queue."""
    if failure.response.ok:
        raise ValueError("a failed delivery needs a 4xx or 5xx response, not 2xx")
    sender = parse_address(failure.original_mail_from)
    report = MIMEPart(policy=POLICY if sender.local.isascii() else _UTF8_POLICY)
    report["From"] = HeaderAddress("Mail Delivery System", addr_spec=_ascii_mailbox(postmaster))
    report["To"] = _ascii_mailbox(str(sender)) if sender.local.isascii() else str(sender)
    report["Subject"] = SUBJECT
    report["Date"] = format_datetime(date)
    report["Message-ID"] = f"<{message_id}>"
    if failure.original_message_id:
        original = f"<{failure.original_message_id.strip().strip('<>')}>"
        report["In-Reply-To"] = original
        report["References"] = original
    # RFC 3834 §5: marks the report as automatic, so responders do not answer it.
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"
    report.attach(_text_part(_explanation(failure, reporting_mta), "plain"))
    report.attach(_status_part(failure, reporting_mta))
    report.attach(_text_part(_header_text(failure.original_headers), "rfc822-headers"))
    set_boundaries(report)
    return report.as_bytes()


def _ascii_mailbox(text: str) -> str:
    address: Address = parse_address(text)
    return f"{address.local}@{address.domain_ascii}"


def _explanation(failure: FailedDelivery, reporting_mta: str) -> str:
    server = f"The mail server {failure.remote_host}" if failure.remote_host else "The last attempt"
    answer = "\n".join(f"    {line}" for line in str(failure.response).splitlines())
    return (
        f"This is the mail system at {reporting_mta}.\n\n"
        f"Your message could not be delivered to {failure.recipient}.\n"
        f"{server} answered:\n\n{answer}\n\n"
        f"Reason for giving up: {failure.reason}.\n\n"
        "The headers of your message are attached.\n"
    )


def _status_part(failure: FailedDelivery, reporting_mta: str) -> MIMEPart:
    # RFC 3464 §2.2: per-message fields, then one block of per-recipient fields.
    per_message = _fields(
        ("Reporting-MTA", f"dns; {reporting_mta}"),
        ("Arrival-Date", format_datetime(failure.arrival_date)),
    )
    per_recipient = _fields(
        ("Final-Recipient", _recipient_field(failure.recipient)),
        ("Action", "failed"),
        ("Status", _status(failure.response)),
        ("Remote-MTA", f"dns; {failure.remote_host}" if failure.remote_host else None),
        ("Diagnostic-Code", f"smtp; {_diagnostic(failure.response)}"),
        ("Last-Attempt-Date", format_datetime(failure.last_attempt_date)),
    )
    part = MIMEPart(policy=POLICY)
    part["Content-Type"] = "message/delivery-status"
    part.set_payload([per_message, per_recipient])
    return part


def _fields(*fields: tuple[str, str | None]) -> MIMEPart:
    block = MIMEPart(policy=POLICY)
    for name, value in fields:
        if value is not None:
            block[name] = value
    return block


def _status(response: Response) -> str:
    # RFC 3464 §2.3.4: the RFC 3463 code; without one, only the class is known.
    return response.enhanced_status or f"{response.code // 100}.0.0"


def _recipient_field(recipient: str) -> str:
    if recipient.isascii():
        return f"rfc822; {recipient}"
    # RFC 6533 §3: utf-8-addr-xtext, the 7-bit form allowed in message/delivery-status.
    return "utf-8; " + _embed_unicode(recipient, specials=_XTEXT_SPECIALS)


def _diagnostic(response: Response) -> str:
    # Multi-line replies become one line; the field is folded by the email package.
    return _embed_unicode(" ".join(str(response).split()), specials="")


def _embed_unicode(text: str, *, specials: str) -> str:
    """Write non-ASCII, control and special characters as RFC 6533 \\x{HEX} escapes."""
    return "".join(
        f"\\x{{{ord(char):X}}}" if not char.isascii() or not char.isprintable() or char in specials else char
        for char in text
    )


def _header_text(original_headers: bytes) -> str:
    # Non-UTF-8 bytes in a broken original cannot be carried as text; show them as U+FFFD.
    return original_headers.decode("utf-8", "replace")


def _text_part(text: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=POLICY)
    part.set_content(text, subtype, cte=transfer_encoding(text))
    return part
