"""One recipient's RFC 5322 message of a /v1 batch send, built from its rendered content.

A batch's messages differ only in a few header fields and their bodies. prepare_batch() checks
and serialises what they share once (From, Cc, Reply-To and custom fields, each attachment as
a whole MIME part, by the stdlib); PreparedBatch.build() then writes each recipient's message
around it as bytes, in the form email.policy.SMTP gives (the golden tests compare the bytes).
Building each message as an EmailMessage took 2 ms of a 4 KiB newsletter's 3 ms: the policy
parses every field it is given and folds it again, and set_boundaries() serialises every part
twice.
"""

from __future__ import annotations

import binascii
import datetime
import email.errors
import email.policy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.message import MIMEPart
from email.utils import format_datetime
from urllib.parse import urlsplit

from mailnode.core.address import parse_address
from mailnode.core.message_builder import MAX_LINE_OCTETS, POLICY, Mailbox
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
_CRLF = POLICY.linesep
# Where email.policy.SMTP folds header fields and wraps quoted-printable and base64 lines.
_MAX_LINE = 78
assert POLICY.max_line_length == _MAX_LINE
_MIME_VERSION = f"MIME-Version: 1.0{_CRLF}"
# RFC 5322 §3.2.3: words of atext need no quoting in a display name, nor a dot-atom local part.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ATOMS = re.compile(f"(?:{_ATEXT}+(?: {_ATEXT}+)*)?")
_DOT_ATOM_ADDRESS = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# Printable ASCII, single spaces between words, no "=?" that a reader could take for an RFC 2047
# encoded word: a value the policy writes as it is when it fits on a line.
_VERBATIM = re.compile(r"(?!.*=\?)[\x21-\x7e]+(?: [\x21-\x7e]+)*")
# Octets quoted-printable writes as "=XX": all but printable ASCII other than "=", tab, CR and LF.
_QP_UNSAFE = re.compile(rb"[^\t\n\r\x20-\x3c\x3e-\x7e]+")
# hashlib lets go of the GIL for inputs of this size and more (CPython's HASHLIB_GIL_MINSIZE).
_HASH_WITH_GIL = 2047
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


@dataclass(frozen=True, slots=True, eq=False)
class PreparedBatch:
    """What every message of a batch shares, checked and serialised once; build() makes each message."""

    from_field: str
    to_field: str | None  # the batch's own To; None: each recipient is the To of its message
    cc_reply_to_fields: str
    custom_fields: str  # the X- fields, then MIME-Version
    attachments: tuple[bytes, ...]  # each a whole MIME part
    attachments_digest: bytes  # SHA-256 of the parts, for the boundary of multipart/mixed

    def build(
        self,
        *,
        recipient_email: str,
        recipient_name: str,
        rendered: RenderedContent,
        message_id: str,
        date: datetime.datetime,
    ) -> bytes:
        """One recipient's message as RFC 5322 bytes with CRLF line endings (no Bcc, ever)."""
        fields = [
            self.from_field,
            self.to_field or _address_field("To", [Mailbox(recipient_email, recipient_name)]),
            self.cc_reply_to_fields,
            _subject_field(rendered.subject),
            f"Date: {_date(date)}{_CRLF}",
            f"Message-ID: {_message_id(message_id)}{_CRLF}",
        ]
        if rendered.unsubscribe_url is not None:
            fields.append(_unsubscribe_fields(rendered.unsubscribe_url))
        fields.append(self.custom_fields)
        content_fields, body = self._content(rendered)
        return "".join(fields).encode("ascii") + content_fields.encode("ascii") + b"\r\n" + body

    def _content(self, rendered: RenderedContent) -> tuple[str, bytes]:
        """The top part's content fields and body: the text alone, or with its alternative and files."""
        if rendered.html is None:
            if rendered.text is None:
                raise ValueError("rendered content has neither html nor text")
            content = _text_part("plain", rendered.text)
        else:
            # RFC 2046 §5.1.4: the plainest alternative first.
            text = html_to_text(rendered.html) if rendered.text is None else rendered.text
            plain, html = _part(*_text_part("plain", text)), _part(*_text_part("html", rendered.html))
            content = _multipart("alternative", [plain, html], _boundary(plain + html))
        if not self.attachments:
            return content
        first = _part(*content)
        return _multipart("mixed", [first, *self.attachments], _boundary(first + self.attachments_digest))


def prepare_batch(
    *, sender: Sender, attachments: Sequence[Attachment], headers: VisibleHeaders
) -> PreparedBatch:
    """Check and serialise what every message of a batch shares; raise ValueError naming what is wrong."""
    parts = tuple(_attachment_part(attachment) for attachment in attachments)
    return PreparedBatch(
        from_field=_address_field("From", [Mailbox(sender.email, sender.name)]),
        to_field=_address_field("To", headers.to) if headers.to else None,
        cc_reply_to_fields="".join(
            _address_field(name, mailboxes)
            for name, mailboxes in (("Cc", headers.cc), ("Reply-To", headers.reply_to))
            if mailboxes
        ),
        custom_fields="".join(_custom_field(name, value) for name, value in headers.custom) + _MIME_VERSION,
        attachments=parts,
        attachments_digest=hashlib.sha256(b"".join(parts)).digest(),
    )


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
    batch = prepare_batch(sender=sender, attachments=attachments, headers=headers)
    return batch.build(
        recipient_email=recipient_email,
        recipient_name=recipient_name,
        rendered=rendered,
        message_id=message_id,
        date=date,
    )


def header_text(text: str) -> str:
    """text as a header field writes it: each run of spaces, line breaks and controls becomes one space."""
    # White space of any kind at the edges goes: readers drop it (the stdlib's get_filename()
    # strips a no-break space too), so keeping it would only make a name differ on arrival.
    return _HEADER_SPACE.sub(" ", text).strip()


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
    if not template.isprintable():
        return "must not contain CR, LF or other control characters (header injection)"
    return None


def _address_field(name: str, mailboxes: Sequence[Mailbox]) -> str:
    """An address field with one mailbox a line (RFC 5322 §3.4)."""
    return f"{name}: " + f",{_CRLF} ".join(_mailbox(name, item) for item in mailboxes) + _CRLF


def _mailbox(name: str, mailbox: Mailbox) -> str:
    """A mailbox with the domain in IDNA A-labels; a UTF-8 local part is refused."""
    parsed = parse_address(mailbox.address)
    if not parsed.local.isascii():
        # RFC 6532 would need the whole message in UTF-8 and an SMTPUTF8 path to every reader.
        raise ValueError(f"{mailbox.address!r}: non-ASCII local parts are not supported")
    display_name = header_text(mailbox.display_name)
    addr_spec = f"{parsed.local}@{parsed.domain_ascii}"
    if _ATOMS.fullmatch(display_name) and _DOT_ATOM_ADDRESS.fullmatch(addr_spec):
        # Nothing to quote: what HeaderAddress writes, without the cost of its parser.
        text = f"{display_name} <{addr_spec}>" if display_name else addr_spec
    else:
        try:
            # Quotes and escapes an ASCII display name as RFC 5322 §3.2.4 needs.
            address = HeaderAddress(display_name, addr_spec=addr_spec)
        except (email.errors.HeaderParseError, IndexError) as exc:
            raise ValueError(f"{mailbox.address!r} is not a valid header address ({exc})") from None
        if not display_name.isascii():
            return f"{_encoded_words(name, display_name)} <{address.addr_spec}>"
        text = str(address)
    if len(f"{name}: {text},") > MAX_LINE_OCTETS:
        raise ValueError(f"the display name of {mailbox.address!r} is too long for one header line")
    return text


def _subject_field(subject: str) -> str:
    text = header_text(subject)
    if text.isascii():
        return _folded("Subject", text)
    return f"Subject: {_encoded_words('Subject', text)}{_CRLF}"


def _folded(name: str, value: str) -> str:
    """An ASCII field as email.policy.SMTP writes it: folded at 78 characters (RFC 5322 §2.1.1)."""
    # A short value of printable ASCII without an encoded word comes out as it is; skipping the
    # policy's parse-and-refold there is what makes the common case fast.
    if len(name) + len(value) + 2 <= _MAX_LINE and _VERBATIM.fullmatch(value):
        return f"{name}: {value}{_CRLF}"
    return str(POLICY.header_factory(name, value).fold(policy=POLICY))


def _encoded_words(name: str, text: str) -> str:
    """text as RFC 2047 encoded words, folded between words."""
    # Not the policy's own folder: in the Pythons we run it can drop a space that falls between
    # two encoded words (CPython gh-144156; RFC 2047 §6.2 has readers ignore white space
    # there). The legacy encoder keeps every space inside a word.
    return Header(text, "utf-8", header_name=name).encode(linesep=_CRLF)


def _date(date: datetime.datetime) -> str:
    if date.tzinfo is None:
        raise ValueError("the Date of a message needs a time zone")
    return format_datetime(date)


def _message_id(message_id: str) -> str:
    # RFC 5322 §3.6.4: the id goes in angle brackets, written as it is: it has no white space
    # to fold at, and the policy's parser would drop what it takes for a comment.
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message id {message_id!r} must be left@right, without <> or spaces")
    if len(f"Message-ID: <{message_id}>") > MAX_LINE_OCTETS:
        raise ValueError(f"message id must fit on one line of {MAX_LINE_OCTETS} octets")
    return f"<{message_id}>"


def _unsubscribe_fields(url: str) -> str:
    reason = validate_unsubscribe_url(url)
    if reason is not None:
        raise ValueError(f"unsubscribe URL {reason}")
    # RFC 2369 §3.2 and RFC 8058 §3.1. RFC 8058 §4: the DKIM signature must cover both fields.
    # The URL stays whole on one line, in its angle brackets.
    return f"{_LIST_UNSUBSCRIBE}: <{url}>{_CRLF}List-Unsubscribe-Post: List-Unsubscribe=One-Click{_CRLF}"


def _custom_field(name: str, value: str) -> str:
    if not _CUSTOM_HEADER_NAME.fullmatch(name):
        raise ValueError(f"header name {name!r} must be X- followed by letters, digits and -")
    if _CONTROL.search(value):
        raise ValueError(f"header {name} must not contain CR, LF or other control characters")
    if not value.isascii():
        return f"{name}: {_encoded_words(name, value)}{_CRLF}"
    # Written unfolded: a long token (an id, a signature) would otherwise come out RFC 2047
    # encoded, unreadable to the programs that look for it.
    if len(name) + len(": ") + len(value) > MAX_LINE_OCTETS:
        raise ValueError(f"header {name} must fit on one line of {MAX_LINE_OCTETS} octets")
    return f"{name}: {value}{_CRLF}"


def _part(content_fields: str, body: bytes) -> bytes:
    return content_fields.encode("ascii") + b"\r\n" + body


def _text_part(subtype: str, text: str) -> tuple[str, bytes]:
    """A text/* part in UTF-8: its content fields and its body."""
    cte, body = _encode_text(text)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}',
        body,
    )


def _encode_text(text: str) -> tuple[str, bytes]:
    """The transfer encoding and body of text, chosen as email.contentmanager chooses them."""
    data = text.encode("utf-8")
    # Only CR and LF end a line on the wire (RFC 5322 §2.1.1), not the \f, \v or U+2028 that
    # str.splitlines() also breaks at; bytes.splitlines() breaks at CR and LF alone.
    lines = data.splitlines()
    if data.isascii() and all(len(line) <= MAX_LINE_OCTETS for line in lines):
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    # Quoted-printable, unless base64 is shorter for the first ten lines (each line ended).
    encoded = _quoted_printable(lines[:10])
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    if sum(map(len, encoded)) + len(encoded) > len(binascii.b2a_base64(sniff)):
        data = b"\r\n".join(lines) + b"\r\n"
        # RFC 2045 §6.8: at most 76 characters a line, 57 octets.
        chunk = _MAX_LINE // 4 * 3
        base64 = b"".join(binascii.b2a_base64(data[i : i + chunk]) for i in range(0, len(data), chunk))
        return "base64", base64.replace(b"\n", b"\r\n")
    encoded += _quoted_printable(lines[10:])
    return "quoted-printable", ("\n".join(encoded) + "\n").replace("\n", "\r\n").encode("ascii")


def _quoted_printable(lines: Sequence[bytes]) -> list[str]:
    """Each line in quoted-printable (RFC 2045 §6.7), split by soft breaks into pieces of 78.

    What email.quoprimime.body_encode(..., 78) writes for them, with "=\\n" soft breaks: its
    str.translate() through a 256-entry list costs more than the rest of a message, where a
    regular expression finds the few runs of octets that need escaping.
    """
    escaped = _QP_UNSAFE.sub(_qp_escape, b"\n".join(lines)).decode("ascii").split("\n")
    return [_qp_soft_breaks(line) for line in escaped] if lines else []


def _qp_soft_breaks(line: str) -> str:
    """An escaped line with soft breaks ("=" at the end) wherever it is too long, never inside "=XX"."""
    pieces = []
    start, last_start = 0, len(line) - 1 - _MAX_LINE
    while start <= last_start:
        stop = start + _MAX_LINE - 1
        if line[stop - 2] == "=":
            pieces.append(line[start : stop - 1])
            start = stop - 2
        elif line[stop - 1] == "=":
            pieces.append(line[start:stop])
            start = stop - 1
        else:
            pieces.append(line[start:stop] + "=")
            start = stop
    # White space at the end of a line is escaped (RFC 2045 §6.7 rule 3).
    if line[-1:] in (" ", "\t"):
        room = start - last_start
        if room >= 3:
            pieces.append(f"{line[start:-1]}={ord(line[-1]):02X}")
        elif room == 2:
            pieces.append(f"{line[start:]}=")
            pieces.append("")
        else:
            pieces.append(f"{line[start:-1]}=")
            pieces.append(f"={ord(line[-1]):02X}")
    else:
        pieces.append(line[start:])
    return "\n".join(pieces)


def _qp_escape(match: re.Match[bytes]) -> bytes:
    return b"=" + binascii.hexlify(match[0], "=").upper()


def _multipart(subtype: str, parts: Sequence[bytes], boundary: str) -> tuple[str, bytes]:
    """A multipart/* part: its content fields and its body (RFC 2046 §5.1.1, no preamble)."""
    delimiter = b"--" + boundary.encode("ascii")
    body = delimiter + b"\r\n" + (b"\r\n" + delimiter + b"\r\n").join(parts) + b"\r\n" + delimiter + b"--\r\n"
    return f'Content-Type: multipart/{subtype};{_CRLF} boundary="{boundary}"{_CRLF}', body


def _boundary(content: bytes) -> str:
    """A boundary hashed from the parts it separates, so equal input gives equal bytes."""
    # A part cannot hold a hash of itself. "=_" cannot occur in base64 or quoted-printable text
    # (RFC 2045 §6.7), and a boundary must fit in 70 characters (RFC 2046 §5.1.1).
    # Fed in pieces that keep the GIL: on the event loop, with signing threads running, getting
    # it back after each release cost more than the hashing (measured: 11 % more messages/s).
    digest = hashlib.sha256()
    for start in range(0, len(content), _HASH_WITH_GIL):
        digest.update(content[start : start + _HASH_WITH_GIL])
    return "=_" + digest.hexdigest()[:40]


def _attachment_part(attachment: Attachment) -> bytes:
    """An attachment as a whole MIME part, base64 (the stdlib's, done once per batch)."""
    match = _CONTENT_TYPE.fullmatch(attachment.content_type)
    if match is None or match.group(1).lower() in ("multipart", "message"):
        raise ValueError(f"attachment content type {attachment.content_type!r} must be type/subtype")
    filename = attachment.filename
    if not 0 < len(filename) <= _MAX_FILENAME or _CONTROL.search(filename):
        raise ValueError(
            f"attachment filename must be 1 to {_MAX_FILENAME} characters, no control characters"
        )
    part = MIMEPart(policy=POLICY)
    # A filename makes it an attachment; a non-ASCII one is written per RFC 2231 §4.
    part.set_content(attachment.content, match.group(1).lower(), match.group(2).lower(), filename=filename)
    return part.as_bytes()
