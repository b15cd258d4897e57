"""The REST transaction API in the Koukan dialect: create, read (hanging GET), upload, cancel."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from mailnode.api.auth import require_key
from mailnode.api.context import context
from mailnode.api.errors import ApiError, bad_request, content_range
from mailnode.core.address import AddressError, parse_address, parse_reverse_path
from mailnode.core.message_builder import SpecError, parse_spec
from mailnode.core.transaction import (
    BODY,
    BlobSource,
    InlineBlob,
    NewTransaction,
    ReusedBlob,
    TransactionRecord,
    UploadBlob,
)
from mailnode.errors import ConflictError, NotFoundError

MAX_WAIT_SECONDS = 30  # the longest a hanging GET waits (Koukan caps request-timeout at 30 s)
_CREATE_FIELDS = frozenset({"mail_from", "rcpt_to", "body"})
_REUSE_BODY = re.compile(r"^(?:https?://[^/]+)?/transactions/([A-Za-z0-9_-]+)/body$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/senders/{sender}/transactions", create_transaction)
    router.add_get("/transactions/{id}", get_transaction)
    router.add_put("/transactions/{id}/body", put_body)
    router.add_put("/transactions/{id}/blob/{blob}", put_blob)
    router.add_post("/transactions/{id}/cancel", cancel_transaction)


# -- create ----------------------------------------------------------------------------------


async def create_transaction(request: web.Request) -> web.Response:
    ctx = context(request)
    sender = request.match_info["sender"]
    profile = ctx.config.sender(sender)
    if profile is None:
        raise ApiError(404, "unknown_sender", f"no sender profile {sender!r}; see [senders] in the config")
    key = require_key(request)
    body = await _json_object(request)
    mail_from, rcpt_to = _envelope(body)
    blobs, spec = _body_sources(body.get("body"), ctx.config.delivery.max_message_bytes)
    new = NewTransaction(
        sender=sender,
        mail_from=mail_from,
        rcpt_to=rcpt_to,
        retry=profile.retry,
        bounce=profile.bounce,
        protocol="HTTP",
        blobs=blobs,
        message_builder=spec,
        client_address=request.remote,
        api_key_id=key.id,
        domain=key.domain,
    )
    try:
        record = await ctx.store.create_transaction(new)
    except (NotFoundError, ConflictError) as exc:
        raise bad_request("body", str(exc)) from None
    location = f"/transactions/{record.rest_id}"
    return _transaction_response(record, status=201, headers={"Location": location})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        value = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    unknown = sorted(set(value) - _CREATE_FIELDS)
    if unknown:
        raise bad_request(unknown[0], f"unknown field; allowed: {', '.join(sorted(_CREATE_FIELDS))}")
    for key, item in value.items():
        if item is None:
            raise bad_request(key, "null is not allowed; leave the field out instead")
    return value


def _mailbox(value: Any, field: str) -> str:
    """A Koukan mailbox `{"m": "addr"}` (or, for convenience, a plain string)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or not isinstance(value.get("m"), str):
        raise bad_request(field, 'expected {"m": "<address>"}')
    extra = sorted(set(value) - {"m"})
    if extra:
        raise bad_request(f"{field}.{extra[0]}", "unknown field")
    return str(value["m"])


def _envelope(body: dict[str, Any]) -> tuple[str, str]:
    if "mail_from" not in body:
        raise bad_request("mail_from", "required")
    if "rcpt_to" not in body:
        raise bad_request("rcpt_to", "required: a list with exactly one recipient")
    rcpts = body["rcpt_to"]
    if not isinstance(rcpts, list) or len(rcpts) != 1:
        raise bad_request("rcpt_to", "must be a list with exactly one recipient")
    mail_from = _mailbox(body["mail_from"], "mail_from")
    rcpt_to = _mailbox(rcpts[0], "rcpt_to[0]")
    try:
        sender = parse_reverse_path(mail_from)
    except AddressError as exc:
        raise bad_request("mail_from", str(exc)) from None
    try:
        recipient = parse_address(rcpt_to)
    except AddressError as exc:
        raise bad_request("rcpt_to[0]", str(exc)) from None
    return ("" if sender is None else str(sender)), str(recipient)


def _body_sources(body: Any, max_bytes: int) -> tuple[tuple[BlobSource, ...], dict[str, Any] | None]:
    if body is None:
        return (UploadBlob(BODY),), None
    if not isinstance(body, dict) or len(body) != 1:
        raise bad_request("body", 'expected one of {"inline"}, {"reuse_uri"}, {"message_builder"}')
    ((kind, value),) = body.items()
    if kind == "inline":
        if not isinstance(value, str):
            raise bad_request("body.inline", "expected the message as a string")
        data = value.encode("utf-8", "surrogateescape")
        if len(data) > max_bytes:
            raise ApiError(
                413, "too_large", f"body.inline: {len(data)} bytes is over the limit of {max_bytes}"
            )
        return (InlineBlob(BODY, data),), None
    if kind == "reuse_uri":
        match = _REUSE_BODY.match(value) if isinstance(value, str) else None
        if match is None:
            raise bad_request("body.reuse_uri", "expected /transactions/<id>/body")
        return (ReusedBlob(BODY, match.group(1), BODY),), None
    if kind == "message_builder":
        return _builder_sources(value)
    raise bad_request(f"body.{kind}", "unknown body kind; use inline, reuse_uri or message_builder")


def _builder_sources(value: Any) -> tuple[tuple[BlobSource, ...], dict[str, Any]]:
    try:
        spec = parse_spec(value)
    except SpecError as exc:
        raise bad_request("body.message_builder", str(exc)) from None
    sources: list[BlobSource] = []
    for ref in spec.blob_refs():
        if ref.reuse_uri is None:
            sources.append(UploadBlob(ref.blob_id))
            continue
        source_tx = ref.reuse_uri.split("/")[2]
        sources.append(ReusedBlob(ref.blob_id, source_tx, ref.blob_id))
    return tuple(sources), value


# -- read --------------------------------------------------------------------------------------


async def get_transaction(request: web.Request) -> web.Response:
    ctx = context(request)
    rest_id = request.match_info["id"]
    record = await ctx.store.get_transaction(rest_id)
    if record is None:
        raise NotFoundError(f"no transaction {rest_id!r}")
    known = _etag_version(request.headers.get("If-None-Match"))
    if known is None or known != record.version:
        return _transaction_response(record)
    timeout = _request_timeout(request)
    waited = await ctx.versions.wait_for_change(
        rest_id, known, lambda: ctx.store.get_transaction(rest_id), lambda r: r.version, timeout
    )
    if waited is None:
        raise NotFoundError(f"no transaction {rest_id!r}")
    if waited.version == known:
        return web.Response(status=304, headers={"ETag": _etag(waited)})
    return _transaction_response(waited)


def _etag_version(header: str | None) -> int | None:
    if header is None:
        return None
    value = header.strip().removeprefix("W/").strip('"')
    return int(value) if value.isdigit() else None


def _request_timeout(request: web.Request) -> float:
    header = request.headers.get("request-timeout")
    if header is None:
        return MAX_WAIT_SECONDS
    try:
        seconds = float(header)
    except ValueError:
        raise bad_request("request-timeout", "must be a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise bad_request("request-timeout", "must be a number of seconds")
    return min(seconds, MAX_WAIT_SECONDS)


def _etag(record: TransactionRecord) -> str:
    return f'"{record.version}"'


def _transaction_response(
    record: TransactionRecord, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        transaction_json(record), status=status, headers={"ETag": _etag(record), **(headers or {})}
    )


def transaction_json(record: TransactionRecord) -> dict[str, Any]:
    """The GET form: request fields as `{}` placeholders, responses of the latest attempt."""
    base = f"/transactions/{record.rest_id}"
    result: dict[str, Any] = {"mail_from": {}, "rcpt_to": [{}], "status": record.status.value}
    if record.message_builder is not None:
        statuses = {
            blob.name: _blob_json(f"{base}/blob/{blob.name}", blob.finalized) for blob in record.blobs
        }
        result["body"] = {"message_builder": {"blob_status": statuses}}
    else:
        body = record.blob(BODY)
        result["body"] = {"blob_status": _blob_json(f"{base}/body", body is not None and body.finalized)}
    attempt = record.latest_attempt
    if attempt is not None:
        if attempt.mail is not None:
            result["mail_response"] = attempt.mail.to_json()
        if attempt.rcpt is not None:
            result["rcpt_response"] = [attempt.rcpt.to_json()]
        if attempt.data is not None:
            result["data_response"] = attempt.data.to_json()
    result["attempt_count"] = record.attempt_count
    if record.retry:
        result["retry"] = {}
    if record.bounce:
        result["notification"] = {}
    if record.cancelled:
        result["cancelled"] = True
    if record.final_attempt_reason is not None:
        result["final_attempt_reason"] = record.final_attempt_reason
    elif record.next_attempt_at is not None and record.attempt_count:
        result["next_attempt_time"] = record.next_attempt_at
    return result


def _blob_json(uri: str, finalized: bool) -> dict[str, Any]:
    return {"uri": uri, "finalized": True} if finalized else {"uri": uri}


# -- uploads and cancel ------------------------------------------------------------------------


async def put_body(request: web.Request) -> web.Response:
    return await _upload(request, BODY)


async def put_blob(request: web.Request) -> web.Response:
    return await _upload(request, request.match_info["blob"])


async def _upload(request: web.Request, name: str) -> web.Response:
    ctx = context(request)
    data = await request.read()
    start, total = _parse_content_range(request.headers.get("Content-Range"), len(data))
    status = await ctx.store.append_blob(request.match_info["id"], name, start, data, total)
    return web.json_response(
        {}, headers={"Content-Range": content_range(status.stored_length, status.total_length)}
    )


def _parse_content_range(header: str | None, length: int) -> tuple[int, int | None]:
    """(first byte, total length or None) of an upload; no header means the whole blob."""
    if header is None:
        return 0, length
    match = _CONTENT_RANGE.match(header.strip())
    if match is None:
        raise bad_request("Content-Range", "expected bytes <first>-<last>/<total or *>")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first or last - first + 1 != length:
        raise bad_request(
            "Content-Range", f"the range covers {last - first + 1} bytes but {length} were sent"
        )
    total = None if match.group(3) == "*" else int(match.group(3))
    return first, total


async def cancel_transaction(request: web.Request) -> web.Response:
    record = await context(request).store.cancel(request.match_info["id"])
    return _transaction_response(record)
