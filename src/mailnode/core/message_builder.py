"""The Koukan message-builder JSON spec: validate it, then build RFC 5322 bytes from it."""

from __future__ import annotations

import datetime
import email.errors
import email.policy
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address as HeaderAddress
from email.message import MIMEPart
from email.utils import format_datetime

from mailnode.core.address import AddressError, parse_address

# 7bit: bodies come out quoted-printable or base64 when needed, so any next hop can take them
# without 8BITMIME (RFC 6152).
POLICY = email.policy.SMTP.clone(cte_type="7bit")
# RFC 5322 §2.1.1: a line is at most 998 characters, excluding the CRLF.
MAX_LINE_OCTETS = 998
MAX_ITEMS = 1000

_ROOT = "message_builder"
_SECTIONS = ("text_body", "related_attachments", "file_attachments")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to"})
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})
# Year 9999 minus a day, so that any time zone offset still gives a valid datetime.
_MAX_UNIX_SECS = 253402214399

# RFC 5322 §3.6.8 field name.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# RFC 6838 §4.2 restricted-name, for both type and subtype.
_NAME = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(f"({_NAME})/({_NAME})")
# RFC 5322 §3.6.4 msg-id without its angle brackets: id-left "@" id-right.
_MSG_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+")
# RFC 2392 Content-ID: a msg-id, though "cid:logo" without "@" is common and accepted.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_CONTENT_ID = re.compile(f"{_ATEXT}(?:@{_ATEXT})?")
# RFC 3986 §2.3 unreserved characters; no leading "." so "." and ".." cannot be ids.
_BLOB_ID = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}"
_BLOB_ID_RE = re.compile(_BLOB_ID)
_REUSE_URI = re.compile(f"/transactions/{_BLOB_ID}/blob/({_BLOB_ID})")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_WIRE_LINES = re.compile(r"\r\n|\r|\n")


class SpecError(ValueError):
    """A message-builder spec that cannot be built; names the JSON path of the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Part content held in a blob: uploaded under blob_id, or reused from another transaction."""

    blob_id: str
    reuse_uri: str | None


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A typed address header entry; address is ASCII (the domain in IDNA A-labels)."""

    address: str
    display_name: str = ""


# Literal text, a Date, or the mailboxes of an address header. Message-ID, In-Reply-To and
# References are kept as their rendered "<id> <id>" text.
HeaderValue = str | datetime.datetime | tuple[Mailbox, ...]


@dataclass(frozen=True, slots=True)
class Header:
    """One header of the spec, its value already typed by its name."""

    name: str
    value: HeaderValue


@dataclass(frozen=True, slots=True)
class Part:
    """One body part; content is inline text or a blob reference."""

    path: str
    content_type: str
    content: str | BlobRef
    filename: str | None = None
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """A validated message-builder spec; raw is the JSON it came from."""

    headers: tuple[Header, ...]
    text_body: tuple[Part, ...]
    related_attachments: tuple[Part, ...] = ()
    file_attachments: tuple[Part, ...] = ()
    raw: object = field(default=None, compare=False, repr=False)

    def parts(self) -> tuple[Part, ...]:
        """Every part: text body, then related, then file attachments."""
        return self.text_body + self.related_attachments + self.file_attachments

    def blob_refs(self) -> tuple[BlobRef, ...]:
        """The blobs the message needs, in part order."""
        return tuple(part.content for part in self.parts() if isinstance(part.content, BlobRef))


def parse_spec(value: object) -> MessageSpec:
    """Validate message-builder JSON strictly; raise SpecError naming the offending path."""
    spec = _object(value, _ROOT, required={"text_body"}, optional={"headers", *_SECTIONS})
    headers = _headers(spec.get("headers", []), f"{_ROOT}.headers")
    text_body, related, files = (_parts(spec.get(name, []), name) for name in _SECTIONS)
    if not text_body:
        raise SpecError(f"{_ROOT}.text_body", "must have at least one part")
    result = MessageSpec(headers, text_body, related, files, raw=value)
    _check_blob_ids(result)
    return result


def build_message(spec: MessageSpec, blobs: Mapping[str, bytes]) -> bytes:
    """Build the message as RFC 5322 bytes with CRLF line endings; blobs maps blob id to bytes."""
    # MIMEPart rather than EmailMessage: its sub-parts then get no MIME-Version of their own.
    message = MIMEPart(policy=POLICY)
    for header in spec.headers:
        # RFC 5322 §3.6.3: Bcc stays out of the message, or every recipient would see it.
        if header.name.lower() != "bcc":
            message[header.name] = _render(header.value)
    message["MIME-Version"] = "1.0"
    first, *alternatives = spec.text_body
    _add(message.set_content, first, blobs, text=True)
    for part in alternatives:
        _add(message.add_alternative, part, blobs, text=True)
    # The stdlib nests related parts under the last alternative (usually the HTML).
    root: MIMEPart = list(message.iter_parts())[-1] if alternatives else message
    for part in spec.related_attachments:
        is_text = isinstance(part.content, str)
        _add(root.add_related, part, blobs, text=is_text, disposition="inline")
    for part in spec.file_attachments:
        _add(message.add_attachment, part, blobs, text=isinstance(part.content, str))
    set_boundaries(message)
    return message.as_bytes()


def set_boundaries(part: MIMEPart) -> None:
    """Give every multipart a boundary hashed from its content, so equal input gives equal bytes."""
    # message/delivery-status also holds a list of parts, but takes no boundary.
    if part.get_content_maintype() != "multipart":
        return
    digest = hashlib.sha256()
    for child in part.iter_parts():
        set_boundaries(child)
        digest.update(child.as_bytes())
    # "=_" cannot occur in base64 or quoted-printable text (RFC 2045 §6.7).
    part.set_boundary("=_" + digest.hexdigest()[:40])


def transfer_encoding(text: str) -> str | None:
    """Pick "7bit" for ASCII text with short lines, else None (the stdlib picks qp or base64)."""
    # Only CR and LF end a line on the wire (RFC 5322 §2.1.1); str.splitlines() would also
    # break at \f, \v and \x1c-\x1e and so pass a line that is too long.
    if text.isascii() and all(len(line) <= MAX_LINE_OCTETS for line in _WIRE_LINES.split(text)):
        return "7bit"
    return None


def _add(
    method: Callable[..., None],
    part: Part,
    blobs: Mapping[str, bytes],
    *,
    text: bool,
    disposition: str | None = None,
) -> None:
    """Add part with an EmailMessage method; text/* given as text gets charset utf-8."""
    maintype, subtype = part.content_type.split("/")
    content = _content_bytes(part, blobs)
    extra = {
        "filename": part.filename,
        "cid": None if part.content_id is None else f"<{part.content_id}>",
        # Without it the stdlib makes any part with a filename an attachment.
        "disposition": disposition,
    }
    if maintype == "text" and text:
        decoded = _decode_text(content, part)
        method(decoded, subtype, cte=transfer_encoding(decoded), **extra)
    else:
        method(content, maintype, subtype, **extra)


def _content_bytes(part: Part, blobs: Mapping[str, bytes]) -> bytes:
    if isinstance(part.content, str):
        return part.content.encode("utf-8")
    data = blobs.get(part.content.blob_id)
    if data is None:
        raise SpecError(f"{part.path}.content", f"blob {part.content.blob_id!r} is not available")
    return data


def _decode_text(content: bytes, part: Part) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{part.path}.content", "text content is not valid UTF-8") from None


def _render(value: HeaderValue) -> object:
    if isinstance(value, datetime.datetime):
        return format_datetime(value)
    if isinstance(value, str):
        return value
    return [HeaderAddress(mailbox.display_name, addr_spec=mailbox.address) for mailbox in value]


def _headers(value: object, path: str) -> tuple[Header, ...]:
    headers: list[Header] = []
    counts: Counter[str] = Counter()
    for index, item in enumerate(_list(value, path)):
        item_path = f"{path}[{index}]"
        pair = _list(item, item_path)
        if len(pair) != 2:
            raise SpecError(item_path, "must be [name, value]")
        name = _header_name(pair[0], f"{item_path}[0]")
        counts[name.lower()] += 1
        limit = POLICY.header_max_count(name)
        if limit is not None and counts[name.lower()] > limit:
            raise SpecError(f"{item_path}[0]", f"{name} may appear at most {limit} time(s)")
        headers.append(Header(name, _header_value(name, pair[1], f"{item_path}[1]")))
    return tuple(headers)


def _header_name(value: object, path: str) -> str:
    name = _string(value, path)
    if not _FIELD_NAME.fullmatch(name):
        raise SpecError(path, "must be a header field name (printable ASCII, no ':' or space)")
    lower = name.lower()
    if lower.startswith("content-") or lower == "mime-version":
        raise SpecError(path, f"{name} is set by the message builder")
    return name


def _header_value(name: str, value: object, path: str) -> HeaderValue:
    lower = name.lower()
    if lower in _ADDRESS_HEADERS:
        return _mailboxes(value, path)
    if lower == "date":
        return _date(value, path)
    if lower in _ID_HEADERS:
        return _message_ids(value, path, single=lower == "message-id")
    text = _text(value, path)
    try:
        POLICY.header_factory(name, text)
    # The stdlib parser of structured fields (Sender, Resent-*) raises on some garbage.
    except (email.errors.HeaderParseError, IndexError, ValueError, TypeError):
        raise SpecError(path, f"is not a valid {name} value") from None
    return text


def _mailboxes(value: object, path: str) -> tuple[Mailbox, ...]:
    items = _list(value, path)
    if not items:
        raise SpecError(path, "must list at least one address")
    return tuple(_mailbox(item, f"{path}[{index}]") for index, item in enumerate(items))


def _mailbox(value: object, path: str) -> Mailbox:
    entry = _object(value, path, required={"address"}, optional={"display_name"})
    display_name = _text(entry.get("display_name", ""), f"{path}.display_name")
    try:
        address = parse_address(_string(entry["address"], f"{path}.address"))
    except AddressError as exc:
        raise SpecError(f"{path}.address", str(exc)) from None
    if not address.local.isascii():
        # RFC 6532 would need the whole message in UTF-8 and an SMTPUTF8 path to every reader.
        raise SpecError(f"{path}.address", "non-ASCII local parts are not supported here")
    mailbox = Mailbox(f"{address.local}@{address.domain_ascii}", display_name)
    try:
        HeaderAddress(display_name, addr_spec=mailbox.address)
    except (email.errors.HeaderParseError, IndexError, ValueError) as exc:
        raise SpecError(f"{path}.address", f"is not a valid header address ({exc})") from None
    return mailbox


def _date(value: object, path: str) -> datetime.datetime:
    entry = _object(value, path, required={"unix_secs"}, optional={"tz_offset"})
    secs = _int(entry["unix_secs"], f"{path}.unix_secs")
    if not 0 <= secs <= _MAX_UNIX_SECS:
        raise SpecError(f"{path}.unix_secs", f"must be between 0 and {_MAX_UNIX_SECS}")
    offset = _int(entry.get("tz_offset", 0), f"{path}.tz_offset")
    # RFC 5322 §3.3 zones are whole minutes, less than a day from UTC.
    if abs(offset) >= 86400 or offset % 60:
        raise SpecError(f"{path}.tz_offset", "must be whole minutes, less than a day from UTC")
    zone = datetime.timezone(datetime.timedelta(seconds=offset))
    return datetime.datetime.fromtimestamp(secs, zone)


def _message_ids(value: object, path: str, *, single: bool) -> str:
    items = _list(value, path)
    if not items or (single and len(items) != 1):
        raise SpecError(path, "must hold exactly one id" if single else "must hold at least one id")
    ids = []
    for index, item in enumerate(items):
        text = _string(item, f"{path}[{index}]")
        if not _MSG_ID.fullmatch(text):
            raise SpecError(f"{path}[{index}]", "must be left@right, without <> or spaces")
        ids.append(f"<{text}>")
    return " ".join(ids)


def _parts(value: object, section: str) -> tuple[Part, ...]:
    path = f"{_ROOT}.{section}"
    return tuple(_part(item, f"{path}[{i}]", section) for i, item in enumerate(_list(value, path)))


def _part(value: object, path: str, section: str) -> Part:
    required = {"content_type", "content"}
    optional: set[str] = set()
    if section == "related_attachments":
        required.add("content_id")
        optional.add("filename")
    elif section == "file_attachments":
        optional.add("filename")
    entry = _object(value, path, required=required, optional=optional)
    content_type = _content_type(entry["content_type"], f"{path}.content_type", section)
    content = _content(entry["content"], f"{path}.content")
    filename = _filename(entry["filename"], f"{path}.filename") if "filename" in entry else None
    content_id = _content_id(entry["content_id"], f"{path}.content_id") if "content_id" in entry else None
    return Part(path, content_type, content, filename, content_id)


def _content_type(value: object, path: str, section: str) -> str:
    content_type = _string(value, path).lower()
    match = _CONTENT_TYPE.fullmatch(content_type)
    if match is None:
        raise SpecError(path, "must be type/subtype")
    if section == "text_body" and match.group(1) != "text":
        raise SpecError(path, "must be a text/ type")
    if match.group(1) in ("multipart", "message"):
        raise SpecError(path, "multipart/ and message/ types cannot be attached; use application/")
    return content_type


def _content(value: object, path: str) -> str | BlobRef:
    entry = _object(value, path, required=set(), optional={"inline", "create_id", "reuse_uri"})
    if len(entry) != 1:
        raise SpecError(path, "must have exactly one of inline, create_id, reuse_uri")
    key, item = next(iter(entry.items()))
    text = _string(item, f"{path}.{key}")
    if key == "inline":
        return text
    if key == "create_id":
        if not _BLOB_ID_RE.fullmatch(text):
            raise SpecError(f"{path}.{key}", "must be 1-128 of A-Z a-z 0-9 . _ ~ - (not leading .)")
        return BlobRef(text, None)
    match = _REUSE_URI.fullmatch(text)
    if match is None:
        raise SpecError(f"{path}.{key}", "must look like /transactions/<id>/blob/<blob_id>")
    return BlobRef(match.group(1), text)


def _filename(value: object, path: str) -> str:
    name = _text(value, path)
    if not name or len(name) > 255:
        raise SpecError(path, "must be 1 to 255 characters")
    return name


def _content_id(value: object, path: str) -> str:
    text = _string(value, path)
    if not _CONTENT_ID.fullmatch(text):
        raise SpecError(path, "must be an id such as logo@example.com, without <>")
    return text


def _check_blob_ids(spec: MessageSpec) -> None:
    seen: dict[str, str] = {}
    for part in spec.parts():
        if isinstance(part.content, BlobRef):
            blob_id = part.content.blob_id
            if blob_id in seen:
                raise SpecError(
                    f"{part.path}.content",
                    f"blob id {blob_id!r} is already used by {seen[blob_id]}",
                )
            seen[blob_id] = part.path


def _object(value: object, path: str, *, required: set[str], optional: set[str]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise SpecError(path, f"must be an object, not {_json_type(value)}")
    for key, item in value.items():
        if key not in required and key not in optional:
            raise SpecError(f"{path}.{key}", "unknown key")
        if item is None:
            raise SpecError(f"{path}.{key}", "must not be null")
    missing = sorted(required - value.keys())
    if missing:
        raise SpecError(f"{path}.{missing[0]}", "is required")
    return value


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise SpecError(path, f"must be an array, not {_json_type(value)}")
    if len(value) > MAX_ITEMS:
        raise SpecError(path, f"must have at most {MAX_ITEMS} items")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, not {_json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(path, "must be valid Unicode (it has a lone surrogate)") from None
    return value


def _text(value: object, path: str) -> str:
    """A string that goes into a header: no CR, LF or other control characters."""
    text = _string(value, path)
    if _CONTROL.search(text):
        raise SpecError(path, "must not contain CR, LF or other control characters")
    if len(text) > MAX_LINE_OCTETS:
        raise SpecError(path, f"must be at most {MAX_LINE_OCTETS} characters")
    return text


def _int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string"}
    return names.get(type(value), "array" if isinstance(value, list) else "object")
