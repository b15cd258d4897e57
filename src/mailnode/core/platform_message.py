"""One recipient's RFC 5322 message of a /v1 batch send, built from its rendered content."""

from __future__ import annotations

import datetime
import email.errors
import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.message import MIMEPart
from email.utils import format_datetime
from urllib.parse import urlsplit

from mailnode.core.address import parse_address
from mailnode.core.message_builder import MAX_LINE_OCTETS, POLICY, Mailbox, set_boundaries, transfer_encoding
from mailnode.core.templating import RenderedContent, html_to_text

# RFC 6648 deprecates "X-" for new standard fields, but it is what keeps a sender's own fields
# apart from every field mailnode writes.
_CUSTOM_HEADER_NAME = re.compile(r"X-[A-Za-z0-9-]+", re.IGNORECASE)
# RFC 5322 §3.6.4 msg-id without its angle brackets: id-left "@" id-right.
_MESSAGE_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+")
# RFC 6838 §4.2 restricted-name, for both type and subtype.
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(f"({_NAME})/({_NAME})")
# Control characters and the separators Python's str.splitlines() breaks at; none may stay in a
# header field (RFC 5322 §2.2), so each run of them and of spaces becomes one space.
_HEADER_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_LIST_UNSUBSCRIBE = "List-Unsubscribe"
# The URL stays on one line in its angle brackets: readers do not agree on folding inside them.
MAX_UNSUBSCRIBE_URL = MAX_LINE_OCTETS - len(f"{_LIST_UNSUBSCRIBE}: <>")
_MAX_FILENAME = 255


@dataclass(frozen=True, slots=True)
class Sender:
    """The From of a batch: its address and display name."""

    email: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to every message of a batch."""

    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class VisibleHeaders:
    """Header fields a batch sets for its readers; To defaults to the recipient."""

    to: tuple[Mailbox, ...] = ()
    cc: tuple[Mailbox, ...] = ()
    reply_to: tuple[Mailbox, ...] = ()
    custom: tuple[tuple[str, str], ...] = ()


class _UnfoldedHeader(str):
    """A header field written exactly as given (folded already where it needs to be)."""

    name: str

    def __new__(cls, name: str, value: str) -> _UnfoldedHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: email.policy.Policy) -> str:
        """The field as given: the policy calls this for any header value that has a name."""
        return f"{self.name}: {self}{policy.linesep}"


def build_platform_message(
    *,
    sender: Sender,
    recipient_email: str,
    recipient_name: str,
    rendered: RenderedContent,
    attachments: Sequence[Attachment],
    headers: VisibleHeaders,
    message_id: str,
    date: datetime.datetime,
) -> bytes:
    """Build one recipient's message as RFC 5322 bytes with CRLF line endings (no Bcc, ever)."""
    # MIMEPart rather than EmailMessage: its sub-parts then get no MIME-Version of their own.
    message = MIMEPart(policy=POLICY)
    message["From"] = _address_field("From", [Mailbox(sender.email, sender.name)])
    message["To"] = _address_field("To", headers.to or [Mailbox(recipient_email, recipient_name)])
    for name, mailboxes in (("Cc", headers.cc), ("Reply-To", headers.reply_to)):
        if mailboxes:
            message[name] = _address_field(name, mailboxes)
    message["Subject"] = _unstructured("Subject", header_text(rendered.subject))
    message["Date"] = _date(date)
    message["Message-ID"] = _message_id(message_id)
    if rendered.unsubscribe_url is not None:
        _set_unsubscribe(message, rendered.unsubscribe_url)
    for name, value in headers.custom:
        message[_custom_name(name)] = _custom_value(name, value)
    message["MIME-Version"] = "1.0"
    _set_body(message, rendered)
    for attachment in attachments:
        _attach(message, attachment)
    set_boundaries(message)
    return message.as_bytes()


def header_text(text: str) -> str:
    """text as a header field writes it: each run of spaces, line breaks and controls becomes one space."""
    return _HEADER_SPACE.sub(" ", text).strip(" ")


def validate_unsubscribe_url(url: str) -> str | None:
    """Why a rendered unsubscribe URL cannot go into List-Unsubscribe, or None when it can."""
    if not url.isascii() or re.search(r'[\x00-\x20\x7f<>"]', url):
        return 'must be ASCII without spaces, control characters, <, > or " (percent-encode them)'
    if len(url) > MAX_UNSUBSCRIBE_URL:
        return f"must be at most {MAX_UNSUBSCRIBE_URL} characters"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    # RFC 8058 §3.1: the one-click POST goes to an HTTPS URI.
    if parts.scheme.lower() != "https" or not host:
        return "must be an absolute https:// URL with a host (RFC 8058 one-click unsubscribe)"
    return None


def check_unsubscribe_template(template: str) -> str | None:
    """Why an unsubscribe URL template cannot give an https:// URL, or None when it may."""
    if not template.lower().startswith("https://"):
        return "must start with https:// (RFC 8058 one-click unsubscribe)"
    return None


def _address_field(name: str, mailboxes: Sequence[Mailbox]) -> _UnfoldedHeader:
    """An address field with one mailbox a line (RFC 5322 §3.4)."""
    return _UnfoldedHeader(name, f",{POLICY.linesep} ".join(_mailbox(name, item) for item in mailboxes))


def _mailbox(name: str, mailbox: Mailbox) -> str:
    """A mailbox with the domain in IDNA A-labels; a UTF-8 local part is refused."""
    parsed = parse_address(mailbox.address)
    if not parsed.local.isascii():
        # RFC 6532 would need the whole message in UTF-8 and an SMTPUTF8 path to every reader.
        raise ValueError(f"{mailbox.address!r}: non-ASCII local parts are not supported")
    display_name = header_text(mailbox.display_name)
    try:
        # Quotes and escapes an ASCII display name as RFC 5322 §3.2.4 needs.
        address = HeaderAddress(display_name, addr_spec=f"{parsed.local}@{parsed.domain_ascii}")
    except (email.errors.HeaderParseError, IndexError) as exc:
        raise ValueError(f"{mailbox.address!r} is not a valid header address ({exc})") from None
    if not display_name.isascii():
        return f"{_encoded_words(name, display_name)} <{address.addr_spec}>"
    if len(f"{name}: {address},") > MAX_LINE_OCTETS:
        raise ValueError(f"the display name of {mailbox.address!r} is too long for one header line")
    return str(address)


def _unstructured(name: str, text: str) -> str:
    return text if text.isascii() else _UnfoldedHeader(name, _encoded_words(name, text))


def _encoded_words(name: str, text: str) -> str:
    """text as RFC 2047 encoded words, folded between words."""
    # Not the policy's own folder: in the Pythons we run it can drop a space that falls between
    # two encoded words (CPython gh-144156; RFC 2047 §6.2 has readers ignore white space
    # there). The legacy encoder keeps every space inside a word.
    return Header(text, "utf-8", header_name=name).encode(linesep=POLICY.linesep)


def _date(date: datetime.datetime) -> str:
    if date.tzinfo is None:
        raise ValueError("the Date of a message needs a time zone")
    return format_datetime(date)


def _message_id(message_id: str) -> str:
    # RFC 5322 §3.6.4: the id goes in angle brackets.
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message id {message_id!r} must be left@right, without <> or spaces")
    return f"<{message_id}>"


def _set_unsubscribe(message: MIMEPart, url: str) -> None:
    reason = validate_unsubscribe_url(url)
    if reason is not None:
        raise ValueError(f"unsubscribe URL {reason}")
    # RFC 2369 §3.2 and RFC 8058 §3.1. RFC 8058 §4: the DKIM signature must cover both fields.
    message[_LIST_UNSUBSCRIBE] = _UnfoldedHeader(_LIST_UNSUBSCRIBE, f"<{url}>")
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"


def _custom_name(name: str) -> str:
    if not _CUSTOM_HEADER_NAME.fullmatch(name):
        raise ValueError(f"header name {name!r} must be X- followed by letters, digits and -")
    return name


def _custom_value(name: str, value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"header {name} must not contain CR, LF or other control characters")
    if not value.isascii():
        return _unstructured(name, value)
    # Written unfolded: a long token (an id, a signature) would otherwise come out RFC 2047
    # encoded, unreadable to the programs that look for it.
    if len(name) + len(": ") + len(value) > MAX_LINE_OCTETS:
        raise ValueError(f"header {name} must fit on one line of {MAX_LINE_OCTETS} octets")
    return _UnfoldedHeader(name, value)


def _set_body(message: MIMEPart, rendered: RenderedContent) -> None:
    """text/plain alone, or multipart/alternative of text/plain then text/html (RFC 2046 §5.1.4)."""
    if rendered.html is None:
        if rendered.text is None:
            raise ValueError("rendered content has neither html nor text")
        message.set_content(rendered.text, "plain", cte=_cte(rendered.text))
        return
    text = html_to_text(rendered.html) if rendered.text is None else rendered.text
    message.set_content(text, "plain", cte=_cte(text))
    message.add_alternative(rendered.html, "html", cte=_cte(rendered.html))


def _cte(text: str) -> str | None:
    # transfer_encoding() measures lines with str.splitlines(), which also breaks at \f, \v,
    # \x1c-\x1e and U+0085/2028/2029; on the wire only CR and LF end a line (RFC 5322 §2.1.1).
    if any(len(line) > MAX_LINE_OCTETS for line in re.split(r"\r\n|\r|\n", text)):
        return None
    return transfer_encoding(text)


def _attach(message: MIMEPart, attachment: Attachment) -> None:
    match = _CONTENT_TYPE.fullmatch(attachment.content_type)
    if match is None or match.group(1).lower() in ("multipart", "message"):
        raise ValueError(f"attachment content type {attachment.content_type!r} must be type/subtype")
    filename = attachment.filename
    if not 0 < len(filename) <= _MAX_FILENAME or _CONTROL.search(filename):
        raise ValueError(
            f"attachment filename must be 1 to {_MAX_FILENAME} characters, no control characters"
        )
    # The stdlib base64-encodes bytes and writes a non-ASCII filename per RFC 2231 §4.
    message.add_attachment(
        attachment.content, match.group(1).lower(), match.group(2).lower(), filename=filename
    )
