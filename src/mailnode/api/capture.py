"""Messages kept by the capture endpoint: list them, read one (JSON or raw RFC 5322)."""

from __future__ import annotations

from email import message_from_bytes, policy
from typing import Any

from aiohttp import web

from mailnode.api.context import context
from mailnode.api.errors import bad_request
from mailnode.errors import NotFoundError
from mailnode.storage.store import CaptureRecord


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/capture/messages", list_messages)
    router.add_get("/capture/messages/{id}", get_message)
    router.add_get("/capture/messages/{id}/raw", get_raw)


def _summary(record: CaptureRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "transaction": f"/transactions/{record.transaction_rest_id}",
        "mail_from": record.mail_from,
        "rcpt_to": record.rcpt_to,
        "created_at": record.created_at,
        "size": record.size,
    }


def _int_param(request: web.Request, name: str, default: int | None, maximum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= maximum:
        raise bad_request(name, f"must be a whole number from 1 to {maximum}")
    return int(raw)


async def list_messages(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 50, 500) or 50
    before = _int_param(request, "before", None, 2**62)
    records = await context(request).store.list_captures(limit=limit, before_id=before)
    return web.json_response({"messages": [_summary(r) for r in records]})


async def _capture(request: web.Request) -> CaptureRecord:
    raw_id = request.match_info["id"]
    record = await context(request).store.get_capture(int(raw_id)) if raw_id.isdigit() else None
    if record is None or record.message is None:
        raise NotFoundError(f"no captured message {raw_id!r}")
    return record


async def get_message(request: web.Request) -> web.Response:
    record = await _capture(request)
    assert record.message is not None
    parsed = message_from_bytes(record.message, policy=policy.default)
    headers = [[name, str(value)] for name, value in parsed.items()]
    return web.json_response(
        {**_summary(record), "subject": str(parsed.get("Subject", "")), "headers": headers}
    )


async def get_raw(request: web.Request) -> web.Response:
    record = await _capture(request)
    return web.Response(body=record.message, content_type="message/rfc822")
