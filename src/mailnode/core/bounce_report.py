"""Inbound bounce and complaint reports: what a message sent back to a VERP address says.

Platform mail goes out with a VERP envelope sender (core.verp), so bounces and feedback
reports come back to an address that already names the delivery. This module only reads the
message: an RFC 3464 DSN (or RFC 6533 global DSN), an RFC 5965 ARF feedback report, or, by
heuristics, one of the plain-text bounces older MTAs still send. Anything else is UNKNOWN, to be
accepted and ignored.

Hostile input is expected: only the first `max_bytes` are read (the rest is treated as absent),
and the parts, header blocks, recipients and field lengths examined are capped. The stdlib
email package does the MIME parsing, with compat32: header values stay raw strings, so no
structured header parsing can fail on malformed input.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.errors import HeaderParseError, MissingHeaderBodySeparatorDefect
from email.message import Message
from email.parser import HeaderParser

# Report parts come first in a multipart/report (RFC 6522 §3), the returned original last;
# this is far more than any MTA's report parts need.
MAX_REPORT_BYTES = 256 * 1024
MAX_PARTS = 50
MAX_RECIPIENTS = 50
MAX_BLOCKS = 1 + MAX_RECIPIENTS  # RFC 3464 §2.1: one per-message block, then one per recipient
MAX_FIELDS_PER_BLOCK = 100
MAX_FIELD_CHARS = 1000

# RFC 3463 §2: class.subject.detail; a Status field may carry a comment after it.
_ENHANCED_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?![\d.])")
_TYPED_VALUE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9.+_-]{0,40})\s*;\s*(.*)", re.DOTALL)
# RFC 6533 §3: utf-8-addr-xtext writes characters as \x{HEX}.
_XTEXT_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})  # RFC 3464 §2.3.3
_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_FEEDBACK_TYPE = "message/feedback-report"
# RFC 5965 §7.3 and RFC 6430: what a recipient's complaint says. not-spam, and RFC 6591
# auth-failure (a DMARC forensic report), are not complaints.
_COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

# An SMTP reply in a bounce's text (RFC 5321 §4.2): at a line's start, or after "said:",
# "smtp;", a quote, "#" or sendmail's "<<<". "550 5.1.1", "550-5.1.1", "#550 5.1.1",
# "554 delivery error", or qmail's bare "(#5.1.1)".
_SMTP_REPLY = re.compile(
    r"""
    (?:^|(?<=[:;'"(#<]))[ \t]*
    (?:
        (?P<code>[45]\d\d)
        (?:[ -]\#?(?P<status>[245]\.\d{1,3}\.\d{1,3})(?![\d.]) | (?=[ -][^\s\d]))
      | \#(?P<bare>[245]\.\d{1,3}\.\d{1,3})(?![\d.])
    )
    """,
    re.MULTILINE | re.VERBOSE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|mail delivery failed|failure notice|returned mail"
    r"|delivery failure|delivery has failed|non-?delivery|could not be delivered",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(r"delay|warning|not yet been delivered|will retry", re.IGNORECASE)
_BOUNCE_SENDER = re.compile(r"\b(?:mailer-daemon|postmaster)\b", re.IGNORECASE)
# A line of text and the indented lines that continue it (Postfix and Exim wrap replies so).
_CONTINUED_LINE = re.compile(r"[^\n]*(?:\n[ \t]+\S[^\n]*)*")
# Where qmail, Exim, sendmail and Exchange start quoting the returned message: replies quoted
# in it are not the bounce's own.
_ORIGINAL_COPY = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*(?:Below this line is a copy of the message|This is a copy of the message"
    r"|(?:The )?original message)|Original message headers:)",
    re.IGNORECASE | re.MULTILINE,
)


class ReportKind(enum.Enum):
    """What an inbound report says about the delivery it names."""

    BOUNCE = "bounce"
    DELAY = "delay"  # RFC 3464 Action: delayed, informational only
    COMPLAINT = "complaint"
    UNKNOWN = "unknown"  # not a report mailnode understands: accept and ignore


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN (RFC 3464 §2.3), or an ARF Original-Rcpt-To."""

    recipient: str | None
    action: str | None
    status: str | None
    diagnostic: str | None
    remote_mta: str | None


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What an inbound bounce or feedback report says, summarised for the delivery's event."""

    kind: ReportKind
    permanent: bool
    recipients: tuple[RecipientStatus, ...] = ()
    code: int | None = None
    status: str | None = None
    text: str | None = None
    feedback_type: str | None = None
    user_agent: str | None = None
    source_ip: str | None = None
    standard: bool = False


_UNKNOWN = BounceReport(kind=ReportKind.UNKNOWN, permanent=False)


def parse_report(message: bytes, *, max_bytes: int = MAX_REPORT_BYTES) -> BounceReport:
    """What an inbound message reports, from its first `max_bytes` only; never raises."""
    try:
        parsed = email.message_from_bytes(message[: max(max_bytes, 0)], policy=email.policy.compat32)
    except RecursionError:
        return _UNKNOWN  # the stdlib parser recurses once per level of nested parts
    parts = _parts(parsed)
    for part in parts:
        content_type = part.get_content_type()
        if content_type in _STATUS_TYPES:
            report = _from_dsn(_report_blocks(part))
            if report is not None:
                return report
            break  # no recipient block we can read: let the text speak
        if content_type == _FEEDBACK_TYPE:
            return _from_arf(_report_blocks(part))
    return _from_text(parsed, parts)


def classify_reply(code: int | None, status: str | None) -> bool:
    """Whether a reply is a hard (permanent) failure: a 5xx code or a class 5 status (RFC 3463 §3.1)."""
    return (code is not None and 500 <= code <= 599) or (status is not None and status.startswith("5."))


def _parts(message: Message) -> list[Message]:
    """The message and its parts in order, at most MAX_PARTS, not entering attached messages."""
    found: list[Message] = []
    pending = [message]
    while pending and len(found) < MAX_PARTS:
        part = pending.pop()
        found.append(part)
        if part.get_content_maintype() == "multipart":
            pending.extend(reversed(_children(part, MAX_PARTS)))
    return found


def _children(part: Message, limit: int) -> list[Message]:
    """The first parts of a multipart, or the header blocks of a message/* part."""
    # get_payload() without decode is only safe on a list: on text it decodes by the part's
    # charset parameter and raises on a hostile one (an RFC 2231 tuple, a non-text codec).
    payload = part.get_payload() if part.is_multipart() else []
    return (
        [child for child in payload[:limit] if isinstance(child, Message)]
        if isinstance(payload, list)
        else []
    )


def _report_blocks(part: Message) -> list[dict[str, list[str]]]:
    """The header blocks of a report part, each as lower-cased field name → values."""
    blocks = _children(part, MAX_BLOCKS)
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    encoded = encoding in ("base64", "quoted-printable")
    if encoded or any(_leftover_text(block) for block in blocks):
        # The stdlib splits only message/delivery-status into blocks, and never decodes a
        # message/* part: a global DSN (RFC 6533 §6.2, UTF-8, may be encoded) or an encoded
        # part arrives as one block with the rest as its body.
        text = "\n".join(_block_text(block) for block in blocks)
        blocks = _split_blocks(_decoded_text(text, encoding if encoded else ""))
    return [_fields(block) for block in blocks]


def _leftover_text(block: Message) -> bool:
    payload = block.get_payload(decode=True)
    return isinstance(payload, bytes) and bool(payload.strip())


def _block_text(block: Message) -> str:
    """A parsed header block written back as text, with whatever followed its fields."""
    head = "".join(f"{name}: {value}\n" for name, value in block.raw_items())
    # The raw body, 8-bit octets as surrogate escapes like the fields: get_payload() without
    # decode would turn them into U+FFFD before a global DSN's UTF-8 could be read.
    body = block.get_payload(decode=True)
    # Without the defect, a blank line ended the fields: that is the next block's separator.
    separated = not any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in block.defects)
    rest = body.decode("ascii", "surrogateescape") if isinstance(body, bytes) else ""
    return head + ("\n" if separated else "") + rest


def _decoded_text(text: str, transfer_encoding: str) -> str:
    """Text with its transfer encoding undone by the stdlib (which tolerates broken base64)."""
    carrier = Message()
    carrier.set_payload(text)
    if transfer_encoding:
        carrier["Content-Transfer-Encoding"] = transfer_encoding
    data = carrier.get_payload(decode=True)
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""


def _split_blocks(text: str) -> list[Message]:
    """Blocks of fields separated by blank lines (RFC 3464 §2.1), each parsed by the stdlib."""
    chunks = re.split(r"\r?\n[ \t]*\r?\n", text.strip(), maxsplit=MAX_BLOCKS)[:MAX_BLOCKS]
    parser = HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(chunk.strip() + "\n") for chunk in chunks if chunk.strip()]


def _fields(block: Message) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for count, (name, value) in enumerate(block.raw_items()):
        if count >= MAX_FIELDS_PER_BLOCK:
            break
        fields.setdefault(name.strip().lower(), []).append(_clean(str(value)))
    return fields


def _clean(value: str) -> str:
    """A field value as one bounded line of text: unfolded (RFC 5322 §2.2.3), 8-bit as UTF-8."""
    text = value[: 4 * MAX_FIELD_CHARS].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())[:MAX_FIELD_CHARS]


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values and values[0] else None


def _from_dsn(blocks: list[dict[str, list[str]]]) -> BounceReport | None:
    """A DSN's report (RFC 3464), or None when no recipient block says what happened."""
    recipients = tuple(_recipient_status(b) for b in blocks if _is_recipient_block(b))[:MAX_RECIPIENTS]
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    if failed:
        hard = [r for r in failed if classify_reply(*_reply_of(r))]
        return _dsn_report(ReportKind.BOUNCE, (hard or failed)[0], recipients)
    if delayed:
        return _dsn_report(ReportKind.DELAY, delayed[0], recipients)
    if any(r.action is not None for r in recipients):
        # Only delivered, relayed or expanded (RFC 3464 §2.3.3): success needs no event.
        return BounceReport(kind=ReportKind.UNKNOWN, permanent=False, recipients=recipients, standard=True)
    return None


def _is_recipient_block(fields: dict[str, list[str]]) -> bool:
    return any(name in fields for name in ("final-recipient", "original-recipient", "action"))


def _recipient_status(fields: dict[str, list[str]]) -> RecipientStatus:
    action = (_first(fields, "action") or "").split(" ")[0].lower()
    return RecipientStatus(
        # The Final-Recipient is required (RFC 3464 §2.3.2); the original only with ORCPT.
        recipient=_address(_first(fields, "final-recipient") or _first(fields, "original-recipient")),
        action=action if action in _ACTIONS else None,
        status=_status(_first(fields, "status")),
        diagnostic=_untyped(_first(fields, "diagnostic-code")),
        remote_mta=_untyped(_first(fields, "remote-mta")),
    )


def _status(value: str | None) -> str | None:
    match = _ENHANCED_STATUS.match(value or "")
    return match.group(0) if match else None


def _untyped(value: str | None) -> str | None:
    """A typed field's value without its type: "smtp; 550 ..." → "550 ..." (RFC 3464 §2.1.2)."""
    if value is None:
        return None
    match = _TYPED_VALUE.fullmatch(value)
    return (match.group(2) if match else value).strip() or None


def _address(value: str | None) -> str | None:
    """An address field's mailbox: "rfc822; <a@b>" → "a@b", RFC 6533 utf-8 xtext decoded."""
    if value is None:
        return None
    match = _TYPED_VALUE.fullmatch(value)
    address = (match.group(2) if match else value).strip().strip("<>").strip()
    if match and match.group(1).lower() == "utf-8":
        address = _XTEXT_ESCAPE.sub(_unescape, address)
    return address or None


def _unescape(match: re.Match[str]) -> str:
    point = int(match.group(1), 16)
    in_range = point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF
    return chr(point) if in_range else "\N{REPLACEMENT CHARACTER}"


def _reply_of(recipient: RecipientStatus) -> tuple[int | None, str | None]:
    """The SMTP code and enhanced status a recipient block reports, the Status field first."""
    match = _SMTP_REPLY.search(recipient.diagnostic or "")
    code = int(match.group("code")) if match and match.group("code") else None
    reply_status = (match.group("status") or match.group("bare")) if match else None
    status = recipient.status
    # RFC 3463 §3.1: X.0.0 says only the class (Exim always writes 5.0.0); the reply's own
    # status of the same class says more.
    if status is None or (status.endswith(".0.0") and reply_status and reply_status[0] == status[0]):
        status = reply_status or status
    return code, status


def _dsn_report(
    kind: ReportKind, chosen: RecipientStatus, recipients: tuple[RecipientStatus, ...]
) -> BounceReport:
    code, status = _reply_of(chosen)
    summary = f"{chosen.recipient or 'recipient'}: {chosen.action}, status {status or 'unknown'}"
    return BounceReport(
        kind=kind,
        permanent=kind is ReportKind.BOUNCE and classify_reply(code, status),
        recipients=recipients,
        code=code,
        status=status,
        text=chosen.diagnostic or summary,
        standard=True,
    )


def _from_arf(blocks: list[dict[str, list[str]]]) -> BounceReport:
    """An RFC 5965 feedback report: a complaint for abuse, fraud, virus or other."""
    fields = blocks[0] if blocks else {}
    feedback_type = (_first(fields, "feedback-type") or "").lower() or None
    user_agent = _first(fields, "user-agent")
    recipients = tuple(
        RecipientStatus(recipient=address, action=None, status=None, diagnostic=None, remote_mta=None)
        for address in map(_address, fields.get("original-rcpt-to", [])[:MAX_RECIPIENTS])
        if address
    )
    complaint = feedback_type in _COMPLAINT_TYPES
    return BounceReport(
        kind=ReportKind.COMPLAINT if complaint else ReportKind.UNKNOWN,
        permanent=False,
        recipients=recipients,
        text=f"feedback report: {feedback_type or 'no type'}" + (f" from {user_agent}" if user_agent else ""),
        feedback_type=feedback_type,
        user_agent=user_agent,
        source_ip=_first(fields, "source-ip"),
        standard=True,
    )


def _from_text(message: Message, parts: list[Message]) -> BounceReport:
    """A non-standard bounce: a bounce-like Subject or sender and an SMTP reply in the text."""
    subject = _header_text(message, "Subject")
    if not (_BOUNCE_SUBJECT.search(subject) or _BOUNCE_SENDER.search(_header_text(message, "From"))):
        return _UNKNOWN
    for text in _texts(parts):
        copy = _ORIGINAL_COPY.search(text)
        match = _SMTP_REPLY.search(text, 0, copy.start() if copy else len(text))
        if match is not None:
            return _text_report(match, subject)
    return _UNKNOWN


def _text_report(match: re.Match[str], subject: str) -> BounceReport:
    code = int(match.group("code")) if match.group("code") else None
    status = match.group("status") or match.group("bare")
    permanent = classify_reply(code, status)
    delay = not permanent and _DELAY_SUBJECT.search(subject) is not None
    return BounceReport(
        kind=ReportKind.DELAY if delay else ReportKind.BOUNCE,
        permanent=permanent,
        code=code,
        status=status,
        text=_line_around(match),
        standard=False,
    )


def _line_around(match: re.Match[str]) -> str:
    """The line an SMTP reply was found in and its indented continuation lines, bounded."""
    text = match.string
    start = max(text.rfind("\n", 0, match.start()) + 1, match.start() - 200)
    lines = _CONTINUED_LINE.match(text, start, start + 4 * MAX_FIELD_CHARS)
    line = lines.group(0) if lines else ""
    return " ".join(line.split()).strip("'\"")[:MAX_FIELD_CHARS]


def _header_text(message: Message, name: str) -> str:
    """A header's text, RFC 2047 encoded words decoded where they can be."""
    raw = next((str(value) for key, value in message.raw_items() if key.lower() == name.lower()), "")
    raw = _clean(raw)
    try:
        chunks = email.header.decode_header(raw)
    except HeaderParseError:
        return raw
    return "".join(c if isinstance(c, str) else _decode(c, charset) for c, charset in chunks)


def _texts(parts: list[Message]) -> Iterator[str]:
    """The decoded text of each textual leaf part (a multipart without a boundary is one)."""
    for part in parts:
        if part.get_content_maintype() not in ("text", "multipart"):
            continue
        data = part.get_payload(decode=True)
        if isinstance(data, bytes) and part.get_content_type() != "text/rfc822-headers":
            yield _decode(data, part.get_content_charset())


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError):
        # An unknown charset, or a codec that is not a text encoding or refuses "replace".
        return data.decode("utf-8", "replace")
