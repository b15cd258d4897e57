"""Captured messages, as Mailpit shows them: a list, and each one's HTML, text, source and headers.

A message's HTML is shown in an iframe with an empty `sandbox` attribute (no scripts, no
forms, no navigation of the console) from a route of its own whose Content-Security-Policy
also sandboxes it and loads nothing remote.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiohttp import web

from mailnode.console.page import MESSAGE_CSP, BadInput, console, int_input, render, text_input
from mailnode.errors import NotFoundError
from mailnode.storage.store import CaptureRecord

PAGE = 50
TABS = ("html", "text", "source", "headers")
# The source shown on the page; the raw route serves all of it.
SHOWN_SOURCE = 512 * 1024


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Parsed:
    subject: str
    headers: tuple[tuple[str, str], ...]
    html: str | None
    text: str | None
    attachments: tuple[Attachment, ...]
    problem: str | None  # why a part could not be decoded


def parse(raw: bytes) -> Parsed:
    """What the capture view shows of a message (CPU-bound: run it in a thread)."""
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    headers = tuple((name, str(value)) for name, value in message.items())
    problems = []
    parts: dict[str, str | None] = {}
    for kind in ("html", "plain"):
        part = message.get_body(preferencelist=(kind,))
        try:
            parts[kind] = None if part is None else str(part.get_content())
        except (LookupError, ValueError, AssertionError) as exc:  # unknown charset, bad encoding
            parts[kind] = None
            problems.append(f"the {kind} part cannot be decoded: {exc}")
    attachments = tuple(
        Attachment(
            part.get_filename() or "(no name)",
            part.get_content_type(),
            len(part.get_payload(decode=True) or b""),
        )
        for part in message.iter_attachments()
    )
    return Parsed(
        str(message.get("Subject", "")),
        headers,
        parts["html"],
        parts["plain"],
        attachments,
        "; ".join(problems) or None,
    )


async def _capture(request: web.Request) -> CaptureRecord:
    raw_id = request.match_info["id"]
    record = await console(request).ctx.store.get_capture(int(raw_id)) if raw_id.isdigit() else None
    if record is None or record.message is None:
        raise NotFoundError(f"no captured message {raw_id!r}")
    return record


async def captures(request: web.Request) -> web.Response:
    recipient = text_input(request.query, "recipient")
    before = int_input(request.query, "before")
    rows = await console(request).store.captures(before_id=before, recipient=recipient or None, limit=PAGE)
    older = rows[-1].id if len(rows) == PAGE else None
    return render(
        request,
        "captures.html",
        nav="captures",
        rows=rows,
        recipient=recipient,
        older=older,
        paged=before is not None,
    )


async def capture(request: web.Request) -> web.Response:
    tab = text_input(request.query, "tab") or "html"
    if tab not in TABS:
        raise BadInput(f"tab: one of {', '.join(TABS)}")
    record = await _capture(request)
    assert record.message is not None
    parsed = await asyncio.to_thread(parse, record.message)
    source = record.message[:SHOWN_SOURCE].decode("utf-8", "replace")
    if tab == "html" and parsed.html is None:
        tab = "text"
    return render(
        request,
        "capture.html",
        nav="captures",
        record=record,
        m=parsed,
        tab=tab,
        tabs=TABS,
        source=source,
        source_cut=len(record.message) > SHOWN_SOURCE,
    )


async def capture_html(request: web.Request) -> web.Response:
    """The HTML part alone, for the sandboxed iframe."""
    record = await _capture(request)
    assert record.message is not None
    parsed = await asyncio.to_thread(parse, record.message)
    html = parsed.html if parsed.html is not None else "<p>This message has no HTML part.</p>"
    response = web.Response(text=html, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = MESSAGE_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


async def capture_raw(request: web.Request) -> web.Response:
    """The message as delivered, as text (never rendered by the browser)."""
    record = await _capture(request)
    response = web.Response(body=record.message, content_type="text/plain", charset="utf-8")
    response.headers["Content-Disposition"] = f'inline; filename="capture-{record.id}.eml"'
    return response
