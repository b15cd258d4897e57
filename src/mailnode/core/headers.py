"""The header section of a message: find it, check it, and add trace and missing fields."""

from __future__ import annotations

import datetime
import email.errors
import email.policy
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import BaseHeader
from email.message import Message
from email.parser import HeaderParser
from email.utils import format_datetime, parsedate_to_datetime

DEFAULT_HEADER_LIMIT = 65536
# RFC 5322 §2.1.1: a line is at most 998 characters, excluding the CRLF.
MAX_LINE_OCTETS = 998

# A blank line: at the very start of the message or right after a line ending.
_BLANK_LINE = re.compile(rb"^\r?\n", re.MULTILINE)
# RFC 5322 §3.6.8: a field name is printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# RFC 5322 §2.2.3: CR and LF may appear in a value only as a fold, CRLF then whitespace.
_FOLDED_VALUE = re.compile(r"[^\r\n]*(?:\r\n[ \t][^\r\n]*)*")
_MSG_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+")
# Parentheses and ";" would end the clause or the field early; whitespace would split it.
_HELO_UNSAFE = re.compile(r"[^\x21-\x27\x2a-\x3a\x3c-\x7e]")

_PARSE_POLICY = email.policy.SMTP
# The section is split into fields with compat32, whose splitting (and defects) are those of
# email.policy.SMTP but which builds no header objects: the few fields checked are parsed one
# by one below. Splitting this way takes a fifth of the time (check_message runs per delivery).
_SPLIT_POLICY = email.policy.compat32
# RFC 5322 §3.4: the From field of nearly every message is a plain mailbox, `addr-spec` or
# `phrase <addr-spec>` with dot-atoms and a hostname. Such a value is checked with one regular
# expression; any other (quoted local parts, comments, groups, lists, encoded words, folds,
# 8-bit text) goes to the stdlib's full parser. tests/core/test_headers.py holds both to the
# same results.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDR_SPEC = rf"{_DOT_ATOM}@({_LABEL}(?:\.{_LABEL})+)"
_PHRASE = rf"{_ATEXT}+(?: +{_ATEXT}+)*|\"[\x20\x21\x23-\x5b\x5d-\x7e]*\""
_PLAIN_MAILBOX = re.compile(rf" *(?:{_ADDR_SPEC}|(?:(?:{_PHRASE}) *)?<{_ADDR_SPEC}>) *")
_SECTION_PROBLEMS: dict[type[email.errors.MessageDefect], str] = {
    email.errors.MissingHeaderBodySeparatorDefect: "a header line is not Name: value",
    email.errors.FirstHeaderLineIsContinuationDefect: "the first header line is a continuation",
    email.errors.MisplacedEnvelopeHeaderDefect: 'a "From " envelope line is among the headers',
    email.errors.InvalidHeaderDefect: "a header line has no field name",
}


@dataclass(frozen=True, slots=True)
class MessageCheck:
    """What check_message found: the problems (empty when fine) and facts filters need."""

    problems: tuple[str, ...]
    has_message_id: bool
    has_date: bool
    from_domain: str | None


def header_block(message: bytes, limit: int = DEFAULT_HEADER_LIMIT) -> bytes:
    """The header section without its terminating blank line; b"" if none ends within limit."""
    blank = _BLANK_LINE.search(message, 0, limit + 2)
    if blank is None or blank.start() > limit:
        return b""
    return message[: blank.start()]


def check_message(message: bytes, *, require_date: bool = True) -> MessageCheck:
    """Check the header section of a message for the problems a receiver would reject."""
    block = header_block(message)
    problems: list[str] = []
    if not block and _BLANK_LINE.match(message) is None:
        if _BLANK_LINE.search(message) is None:
            problems.append("header section not terminated by a blank line")
        else:
            problems.append(f"header section longer than {DEFAULT_HEADER_LIMIT} bytes")
        block = message[:DEFAULT_HEADER_LIMIT]
    # A receiver may refuse such a line or rewrap it (breaking a DKIM signature). splitlines()
    # runs at C speed (about 3 ms per MB); a regular expression for it backtracks quadratically.
    if max(map(len, message.splitlines()), default=0) > MAX_LINE_OCTETS:
        number = next(n for n, line in enumerate(message.splitlines(), 1) if len(line) > MAX_LINE_OCTETS)
        problems.append(f"line {number} is longer than {MAX_LINE_OCTETS} octets (RFC 5322 §2.1.1)")
    if b"\0" in block:
        problems.append("header section contains a NUL byte")
    # RFC 6532 allows UTF-8 in header fields; other bytes survive as surrogate escapes.
    parsed = HeaderParser(policy=_SPLIT_POLICY).parsestr(block.decode("utf-8", "surrogateescape"))
    problems.extend(_section_problems(parsed))
    from_domain = _check_from(parsed, problems)
    has_date = _check_date(parsed, problems, require_date=require_date)
    has_message_id = _check_unique(parsed, "Message-ID", problems)
    return MessageCheck(tuple(problems), has_message_id, has_date, from_domain)


def prepend_headers(message: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """Put "Name: value" lines (already folded and encoded) in front of the message."""
    lines = []
    for name, value in headers:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header field name {name!r}")
        if not _FOLDED_VALUE.fullmatch(value):
            raise ValueError(f"{name} header value has a CR or LF that is not part of a fold")
        line = f"{name}: {value}\r\n".encode()
        if any(len(part) > MAX_LINE_OCTETS for part in line.split(b"\r\n")):
            raise ValueError(f"{name} header has a line longer than {MAX_LINE_OCTETS} octets")
        lines.append(line)
    return b"".join(lines) + message


def received_header(
    *,
    from_host: str | None,
    from_ip: str | None,
    by_host: str,
    protocol: str,
    id: str,
    recipient: str | None,
    when: datetime.datetime,
) -> tuple[str, str]:
    """A trace field in the RFC 5321 §4.4 Received syntax, folded with CRLF and a tab."""
    clauses = []
    from_clause = _from_clause(from_host, from_ip)
    if from_clause is not None:
        clauses.append(from_clause)
    clauses += [f"by {by_host} (mailnode)", f"with {protocol}", f"id {id}"]
    if recipient is not None:
        clauses.append(f"for <{recipient}>")
    return "Received", "\r\n\t".join(clauses) + ";\r\n\t" + format_datetime(when)


def missing_headers(
    check: MessageCheck, *, when: datetime.datetime, message_id: str
) -> list[tuple[str, str]]:
    """The Date and Message-ID fields to add to a message that lacks them (RFC 5322 §3.6)."""
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError(f"message id {message_id!r} is not id-left@id-right without brackets")
    added = []
    if not check.has_date:
        added.append(("Date", format_datetime(when)))
    if not check.has_message_id:
        added.append(("Message-ID", f"<{message_id}>"))
    return added


def _section_problems(parsed: Message) -> list[str]:
    problems = []
    for defect in parsed.defects:
        name = type(defect).__name__
        problem = _SECTION_PROBLEMS.get(type(defect), f"malformed header section ({name})")
        if problem not in problems:
            problems.append(problem)
    return problems


def _values(parsed: Message, name: str) -> list[str]:
    """The value of every field called name, unfolded, as email.policy hands it to a parser."""
    wanted = name.lower()
    return [_unfold(value) for key, value in parsed.raw_items() if key.lower() == wanted]


def _unfold(value: str) -> str:
    # What email.policy.EmailPolicy.header_fetch_parse does before parsing: drop CR and LF.
    return value.replace("\r", "").replace("\n", "")


def _parse_field(name: str, value: str) -> BaseHeader | None:
    try:
        field = _PARSE_POLICY.header_fetch_parse(name, value)
    # CPython's header parser raises instead of recording a defect on some inputs
    # (IndexError for "From: bob@", AttributeError for "From: ," on 3.11), so any of these
    # means "unparseable".
    except (email.errors.HeaderParseError, IndexError, ValueError, TypeError, AttributeError):
        return None
    assert isinstance(field, BaseHeader)
    return field


def _check_from(parsed: Message, problems: list[str]) -> str | None:
    values = _values(parsed, "From")
    if not values:
        problems.append("missing From header")
        return None
    if len(values) > 1:
        problems.append("more than one From header")
    return from_domain(values[0], problems)


def from_domain(value: str, problems: list[str]) -> str | None:
    """The domain of the (first) From address, lowercased; adds what is wrong to problems."""
    plain = _PLAIN_MAILBOX.fullmatch(value) if "=?" not in value else None
    if plain is not None:
        return (plain.group(1) or plain.group(2)).lower()
    return parsed_from_domain(value, problems)


def parsed_from_domain(value: str, problems: list[str]) -> str | None:
    """from_domain by the stdlib's RFC 5322 address parser alone (slow: ~0.2 ms a field)."""
    field = _parse_field("From", value)
    addresses = getattr(field, "addresses", ())
    if field is None or not addresses or not addresses[0].username or not addresses[0].domain:
        problems.append("From header has no address")
        return None
    domain: str = addresses[0].domain.lower()
    if not _is_utf8(domain):
        problems.append("From address is not valid UTF-8")
        return None
    if any(isinstance(defect, email.errors.InvalidHeaderDefect) for defect in field.defects):
        problems.append("From header is malformed")
    return domain


def _check_date(parsed: Message, problems: list[str], *, require_date: bool) -> bool:
    values = _values(parsed, "Date")
    if not values:
        if require_date:
            problems.append("missing Date header")
        return False
    if len(values) > 1:
        problems.append("more than one Date header")
    if not is_date(values[0]):
        problems.append("Date header is not a valid date")
    return True


def is_date(value: str) -> bool:
    """Whether a Date value is an RFC 5322 §3.3 date-time (or an obsolete form of one).

    The stdlib's Date header class decides with the same call, parsedate_to_datetime.
    """
    try:
        parsedate_to_datetime(value)
    # Python 3.11 raises TypeError or IndexError for some malformed values, not ValueError.
    except (ValueError, TypeError, IndexError, OverflowError):
        return False
    return True


def _check_unique(parsed: Message, name: str, problems: list[str]) -> bool:
    count = len([key for key in parsed if key.lower() == name.lower()])
    if count > 1:
        problems.append(f"more than one {name} header")
    return count > 0


def _from_clause(helo: str | None, ip: str | None) -> str | None:
    # The HELO name is whatever the client sent; keep it one printable token.
    name = None if helo is None else _HELO_UNSAFE.sub("?", helo) or "?"
    literal = None if ip is None else _address_literal(ip)
    if name is None:
        return None if literal is None else f"from {literal}"
    return f"from {name}" if literal is None else f"from {name} ({literal})"


def _address_literal(ip: str) -> str:
    # RFC 5321 §4.1.3: IPv6 literals carry an "IPv6:" tag.
    parsed = ipaddress.ip_address(ip)
    return f"[IPv6:{parsed}]" if parsed.version == 6 else f"[{parsed}]"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
