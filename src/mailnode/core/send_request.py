"""POST /v1/send: the request JSON, checked field by field, and the batch content it becomes.

A request either fails as a whole (a 400 naming the field) or is split into the recipients
that can be sent and those rejected with a reason; the rejected ones never stop the others.
The content (sender, subject, bodies, attachments, headers) is stored once per batch as JSON
(`content_to_json`) and rendered per recipient when each delivery is attempted.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailnode.core.address import AddressError, parse_address
from mailnode.core.message_builder import Mailbox
from mailnode.core.platform_message import Attachment, Sender, VisibleHeaders, check_unsubscribe_template
from mailnode.core.tracking import (
    StatedPolicy,
    TrackingMode,
    TrackingPolicy,
    TrackingPolicyError,
    parse_stated,
)

FIELDS = frozenset(
    {
        "sender", "subject", "html", "text", "template_id", "recipients", "global_fields",
        "attachments", "headers", "scheduled_at", "tags", "metadata", "unsubscribe", "tracking",
    }
)  # fmt: skip
_HEADER_FIELDS = frozenset({"to", "cc", "reply_to", "custom"})
_CUSTOM_HEADER = re.compile(r"X-[A-Za-z0-9-]{1,70}", re.IGNORECASE)
# CR and LF end a header line; other controls have no place in one either (RFC 5322 §2.2).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_TAGS = 20
MAX_TAG_LENGTH = 100
MAX_METADATA_ITEMS = 50
MAX_METADATA_TEXT = 1000
CONTENT_VERSION = 1
NO_TRACKING = TrackingPolicy(TrackingMode.OFF, TrackingMode.OFF)


class SendError(ValueError):
    """A request that cannot be sent at all; `path` names the JSON field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient as asked for: its address (as given), name and fields."""

    email: str
    name: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    tracking: StatedPolicy | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    email: str
    reason: str


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A checked send request; content comes from html/text or from the template named."""

    sender: Sender
    subject: str | None
    html: str | None
    text: str | None
    template_id: str | None
    recipients: tuple[Recipient, ...]
    global_fields: Mapping[str, Any]
    attachments: tuple[Attachment, ...]
    headers: VisibleHeaders
    scheduled_at: float | None
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    unsubscribe_url: str | None
    tracking: StatedPolicy | None = None
    # mailnode hosts the one-click unsubscribe (/u/{token}) instead of the sender's URL.
    managed_unsubscribe: bool = False


@dataclass(frozen=True, slots=True)
class BatchContent:
    """What every message of a batch shares: stored once, rendered per recipient."""

    domain: str
    sender: Sender
    subject: str
    html: str | None
    text: str | None
    unsubscribe_url: str | None
    global_fields: Mapping[str, Any]
    headers: VisibleHeaders
    attachments: tuple[Attachment, ...]
    # The batch's public id and its tracking: the policy every delivery starts from (the
    # domain's ceiling narrowed by the batch's own), the tokens' expiry (one for the whole batch,
    # so anonymous tokens are alike for all its recipients), and whether /u/ unsubscribes.
    batch: str = ""
    tracking: TrackingPolicy = NO_TRACKING
    token_expires_at: int = 0
    managed_unsubscribe: bool = False


def parse_send_request(value: object) -> SendRequest:
    """Check the JSON of a send; raise SendError naming the first field that is wrong."""
    body = _object(value, "(body)", FIELDS)
    template_id = _optional_text(body, "template_id")
    html, text = _optional_text(body, "html"), _optional_text(body, "text")
    if template_id is None and html is None and text is None:
        raise SendError("html", "give html or text (or both), or a template_id")
    if template_id is not None and (html is not None or text is not None):
        raise SendError("template_id", "give either a template_id or html/text, not both")
    subject = _optional_text(body, "subject")
    if subject is None and template_id is None:
        raise SendError("subject", "required (a template brings its own)")
    if subject is not None:
        _header_text(subject, "subject")
    return SendRequest(
        sender=_sender(body.get("sender")),
        subject=subject,
        html=html,
        text=text,
        template_id=template_id,
        recipients=_recipients(body.get("recipients")),
        global_fields=_fields(body.get("global_fields", {}), "global_fields"),
        attachments=_attachments(body.get("attachments", [])),
        headers=_headers(body.get("headers", {})),
        scheduled_at=_time(body.get("scheduled_at"), "scheduled_at"),
        tags=_tags(body.get("tags", [])),
        metadata=_metadata(body.get("metadata", {})),
        **_unsubscribe(body.get("unsubscribe")),
        tracking=_stated_tracking(body.get("tracking"), "tracking"),
    )


def content_bytes(request: SendRequest) -> int:
    """The size of what a send stores: bodies, subject and decoded attachments."""
    texts = (request.subject, request.html, request.text)
    return sum(len(t.encode()) for t in texts if t) + sum(len(a.content) for a in request.attachments)


def split_recipients(
    recipients: Sequence[Recipient],
    required_fields: frozenset[str],
    unsubscribe_fields: frozenset[str],
    global_fields: Collection[str] = (),
) -> tuple[list[Recipient], list[Rejection]]:
    """The recipients to send to (first of each mailbox) and those rejected, with the reason.

    An accepted recipient's email is its envelope address: the domain in A-labels. A field
    the batch gives to everyone (`global_fields`) is never missing.
    """
    required_fields = required_fields.difference(global_fields)
    unsubscribe_fields = unsubscribe_fields.difference(global_fields)
    accepted: list[Recipient] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for recipient in recipients:
        outcome = _check_recipient(recipient, required_fields, unsubscribe_fields)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        elif outcome not in seen:  # a duplicate is sent once, silently (it is not a failure)
            seen.add(outcome)
            accepted.append(Recipient(outcome, recipient.name, recipient.fields, recipient.tracking))
    return accepted, rejected


def _check_recipient(
    recipient: Recipient, required_fields: frozenset[str], unsubscribe_fields: frozenset[str]
) -> str | Rejection:
    """The recipient's envelope address, or why it cannot be sent to."""
    try:
        address = parse_address(recipient.email)
        envelope = f"{address.local}@{address.domain_ascii}"
    except (AddressError, UnicodeError) as exc:
        return Rejection(recipient.email, f"invalid_address: {exc}")
    if not address.local.isascii():
        return Rejection(recipient.email, "invalid_address: non-ASCII local parts are not supported")
    available = {"email", "name", *recipient.fields}
    if unsubscribe_fields - available:
        return Rejection(recipient.email, "unsubscribe_url_unresolved")
    missing = sorted(required_fields - available)
    if missing:
        return Rejection(recipient.email, f"missing_field: {missing[0]}")
    return envelope


# -- the stored content ------------------------------------------------------------------------


def content_to_json(content: BatchContent) -> bytes:
    """The batch content as the JSON blob stored once per batch."""
    headers = content.headers
    value = {
        "v": CONTENT_VERSION,
        "domain": content.domain,
        "sender": {"email": content.sender.email, "name": content.sender.name},
        "subject": content.subject,
        "html": content.html,
        "text": content.text,
        "unsubscribe_url": content.unsubscribe_url,
        "managed_unsubscribe": content.managed_unsubscribe,
        "batch": content.batch,
        "tracking": content.tracking.to_json(),
        "token_expires_at": content.token_expires_at,
        "global_fields": dict(content.global_fields),
        "headers": {
            "to": [_mailbox_json(m) for m in headers.to],
            "cc": [_mailbox_json(m) for m in headers.cc],
            "reply_to": [_mailbox_json(m) for m in headers.reply_to],
            "custom": [list(pair) for pair in headers.custom],
        },
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "content": base64.b64encode(a.content).decode("ascii"),
            }
            for a in content.attachments
        ],
    }
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def content_from_json(data: bytes) -> BatchContent:
    """Read back what content_to_json stored."""
    value = json.loads(data)
    if value.get("v") != CONTENT_VERSION:
        raise ValueError(f"batch content version {value.get('v')!r} is not {CONTENT_VERSION}")
    headers = value["headers"]
    return BatchContent(
        domain=value["domain"],
        sender=Sender(value["sender"]["email"], value["sender"]["name"]),
        subject=value["subject"],
        html=value["html"],
        text=value["text"],
        unsubscribe_url=value["unsubscribe_url"],
        global_fields=value["global_fields"],
        headers=VisibleHeaders(
            to=tuple(Mailbox(m["address"], m["name"]) for m in headers["to"]),
            cc=tuple(Mailbox(m["address"], m["name"]) for m in headers["cc"]),
            reply_to=tuple(Mailbox(m["address"], m["name"]) for m in headers["reply_to"]),
            custom=tuple((name, text) for name, text in headers["custom"]),
        ),
        attachments=tuple(
            Attachment(a["filename"], a["content_type"], base64.b64decode(a["content"]))
            for a in value["attachments"]
        ),
        # Content stored before tracking existed has none of these: no tracking, no /u/.
        batch=value.get("batch", ""),
        tracking=TrackingPolicy.parse(value.get("tracking", {}), "tracking"),
        token_expires_at=value.get("token_expires_at", 0),
        managed_unsubscribe=value.get("managed_unsubscribe", False),
    )


def _mailbox_json(mailbox: Mailbox) -> dict[str, str]:
    return {"address": mailbox.address, "name": mailbox.display_name}


# -- fields ------------------------------------------------------------------------------------


def _object(value: object, path: str, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SendError(path, "must be a JSON object")
    unknown = sorted(set(value) - known)
    if unknown:
        where = unknown[0] if path == "(body)" else f"{path}.{unknown[0]}"
        raise SendError(where, f"unknown field (known: {', '.join(sorted(known))})")
    return value


def _optional_text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SendError(name, "must be a non-empty string")
    return value


def _header_text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise SendError(path, "must be a string")
    if _CONTROL.search(value):
        raise SendError(path, "must not contain CR, LF or other control characters (header injection)")
    return value


def _sender(value: object) -> Sender:
    sender = _object(value, "sender", frozenset({"email", "name"}))
    email = _email(sender.get("email"), "sender.email")
    return Sender(email, _header_text(sender.get("name", ""), "sender.name"))


def _email(value: object, path: str) -> str:
    text = _header_text(value, path)
    try:
        address = parse_address(text)
        domain = address.domain_ascii
    except (AddressError, UnicodeError) as exc:
        raise SendError(path, f"not a valid address: {exc}") from None
    if not address.local.isascii():
        raise SendError(path, "non-ASCII local parts are not supported")
    return f"{address.local}@{domain}"


def _recipients(value: object) -> tuple[Recipient, ...]:
    if not isinstance(value, list) or not value:
        raise SendError("recipients", "must be a non-empty list of {email, name?, fields?}")
    return tuple(_recipient(item, f"recipients[{i}]") for i, item in enumerate(value))


def _recipient(value: object, path: str) -> Recipient:
    item = _object(value, path, frozenset({"email", "name", "fields", "tracking"}))
    email = item.get("email")
    if not isinstance(email, str):
        raise SendError(f"{path}.email", "must be a string")
    name = _header_text(item.get("name", ""), f"{path}.name")
    fields = _fields(item.get("fields", {}), f"{path}.fields")
    return Recipient(email.strip(), name, fields, _stated_tracking(item.get("tracking"), f"{path}.tracking"))


def _fields(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SendError(path, "must be a JSON object of field names to values")
    for name in value:
        if not name.isidentifier():
            raise SendError(
                f"{path}.{name}", "a field name must be letters, digits and _ (not first a digit)"
            )
    return value


def _attachments(value: object) -> tuple[Attachment, ...]:
    if not isinstance(value, list):
        raise SendError("attachments", "must be a list of {filename, content_type, content}")
    return tuple(_attachment(item, f"attachments[{i}]") for i, item in enumerate(value))


def _attachment(value: object, path: str) -> Attachment:
    item = _object(value, path, frozenset({"filename", "content_type", "content"}))
    filename = _header_text(item.get("filename"), f"{path}.filename")
    if not filename.strip():
        raise SendError(f"{path}.filename", "must not be empty")
    content_type = item.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or not re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type):
        raise SendError(f"{path}.content_type", "must be type/subtype, like application/pdf")
    if content_type.lower().startswith(("multipart/", "message/")):
        raise SendError(f"{path}.content_type", "multipart and message types cannot be attached")
    content = item.get("content")
    if not isinstance(content, str):
        raise SendError(f"{path}.content", "must be the file's bytes in base64")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise SendError(f"{path}.content", "is not valid base64") from None
    return Attachment(filename, content_type.lower(), data)


def _headers(value: object) -> VisibleHeaders:
    headers = _object(value, "headers", _HEADER_FIELDS)
    return VisibleHeaders(
        to=_mailboxes(headers.get("to"), "headers.to"),
        cc=_mailboxes(headers.get("cc"), "headers.cc"),
        reply_to=_mailboxes(headers.get("reply_to"), "headers.reply_to"),
        custom=_custom(headers.get("custom", {})),
    )


def _mailboxes(value: object, path: str) -> tuple[Mailbox, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(_mailbox(item, f"{path}[{i}]") for i, item in enumerate(items))


def _mailbox(value: object, path: str) -> Mailbox:
    if isinstance(value, str):
        return Mailbox(_email(value, path))
    item = _object(value, path, frozenset({"email", "name"}))
    return Mailbox(
        _email(item.get("email"), f"{path}.email"), _header_text(item.get("name", ""), f"{path}.name")
    )


def _custom(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise SendError("headers.custom", 'must be an object like {"X-Campaign": "spring"}')
    pairs = []
    for name, text in value.items():
        if not _CUSTOM_HEADER.fullmatch(name):
            raise SendError(
                f"headers.custom.{name}", "custom headers must be X- followed by letters, digits, -"
            )
        pairs.append((name, _header_text(text, f"headers.custom.{name}")))
    return tuple(pairs)


def _time(value: object, path: str) -> float | None:
    """RFC 3339 text (with a zone) or Unix seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise SendError(path, 'must be an RFC 3339 time with a zone ("2026-12-01T09:00:00Z") or Unix seconds')


def _tags(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_TAGS:
        raise SendError("tags", f"must be a list of at most {MAX_TAGS} strings")
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_LENGTH:
            raise SendError(f"tags[{i}]", f"must be a string of 1 to {MAX_TAG_LENGTH} characters")
    return tuple(value)


def _metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_METADATA_ITEMS:
        raise SendError("metadata", f"must be an object of at most {MAX_METADATA_ITEMS} items")
    if len(json.dumps(value)) > MAX_METADATA_ITEMS * MAX_METADATA_TEXT:
        raise SendError("metadata", "is too large")
    return value


def _unsubscribe(value: object) -> dict[str, Any]:
    """The SendRequest fields of `unsubscribe`: {url_template} or {managed: true}."""
    if value is None:
        return {"unsubscribe_url": None}
    item = _object(value, "unsubscribe", frozenset({"url_template", "managed"}))
    managed = item.get("managed", False)
    if not isinstance(managed, bool):
        raise SendError("unsubscribe.managed", "must be true or false")
    template = item.get("url_template")
    if managed:
        if template is not None:
            raise SendError("unsubscribe", "give url_template or managed: true, not both")
        return {"unsubscribe_url": None, "managed_unsubscribe": True}
    if not isinstance(template, str):
        raise SendError("unsubscribe.url_template", "must be a string (or give managed: true)")
    problem = check_unsubscribe_template(template)
    if problem is not None:
        raise SendError("unsubscribe.url_template", problem)
    return {"unsubscribe_url": template}


def _stated_tracking(value: object, path: str) -> StatedPolicy | None:
    if value is None:
        return None
    try:
        return parse_stated(value, path)
    except TrackingPolicyError as exc:
        raise SendError(exc.path, exc.problem) from None
