"""POST /v1/send and the batches it creates: status, deliveries, cancel."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import re
from typing import Any

from aiohttp import web

from mailnode.api.auth import principal, require_domain_key, unauthorized
from mailnode.api.context import AppContext, context
from mailnode.api.errors import ApiError, bad_request
from mailnode.core.address import sender_domain_allowed
from mailnode.core.outcome import AttemptResult
from mailnode.core.send_request import (
    BatchContent,
    Recipient,
    Rejection,
    SendError,
    SendRequest,
    content_bytes,
    content_to_json,
    parse_send_request,
    split_recipients,
)
from mailnode.core.templating import CompiledContent, TemplateError, compile_content
from mailnode.core.tracking import (
    StatedPolicy,
    TrackingPolicy,
    TrackingPolicyError,
    check_within_ceiling,
    effective_policy,
)
from mailnode.core.transaction import TransactionRecord
from mailnode.core.verp import verp_address
from mailnode.errors import NotFoundError
from mailnode.storage.batches import (
    BatchRecord,
    IdempotencyConflict,
    IdempotencyRecord,
    NewBatch,
    NewDelivery,
)
from mailnode.storage.store import ApiKeyRecord

# RFC 9110 token-ish: printable ASCII, as the IETF Idempotency-Key draft expects.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
MAX_PAGE = 1000


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/send", send)
    router.add_get("/v1/batches/{batch_id}", get_batch)
    router.add_get("/v1/batches/{batch_id}/deliveries", list_deliveries)
    router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)


# -- send ------------------------------------------------------------------------------------------


async def send(request: web.Request) -> web.Response:
    """Accept a batch: one delivery per recipient that can be sent, 202 with the rejected ones."""
    ctx = context(request)
    key = require_domain_key(request)
    raw = await request.read()
    idempotency_key = _idempotency_key(request)
    request_hash = hashlib.sha256(raw).hexdigest()
    if idempotency_key is not None:
        replay = await _replay(ctx, key, idempotency_key, request_hash)
        if replay is not None:
            return replay
    send_request = _parse(raw)
    batch = await _new_batch(ctx, key, send_request)
    status, answer = 202, _send_answer(batch.public_id, len(batch.deliveries), batch.rejected)
    if idempotency_key is not None:
        fresh_after = ctx.store.clock() - ctx.config.platform.idempotency_ttl_seconds
        record = IdempotencyRecord(request_hash, status, answer, fresh_after=fresh_after)
        batch = dataclasses.replace(batch, idempotency_key=idempotency_key, idempotency=record)
    try:
        await ctx.batches.create_batch(batch)
    except IdempotencyConflict:
        replay = await _replay(ctx, key, idempotency_key or "", request_hash)
        if replay is None:
            raise
        return replay
    return web.json_response(answer, status=status)


def _idempotency_key(request: web.Request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ApiError(
            400,
            "invalid_request",
            "Idempotency-Key: 1 to 255 printable ASCII characters",
            field="Idempotency-Key",
        )
    return value


async def _replay(
    ctx: AppContext, key: ApiKeyRecord, idempotency_key: str, request_hash: str
) -> web.Response | None:
    """The first answer again for a repeat with the same body; 409 for a different body."""
    fresh_after = ctx.store.clock() - ctx.config.platform.idempotency_ttl_seconds
    stored = await ctx.batches.find_idempotent(key.id, idempotency_key, fresh_after)
    if stored is None:
        return None
    if stored.request_hash != request_hash:
        raise ApiError(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; use a new key for a new send",
            field="Idempotency-Key",
        )
    return web.json_response(stored.response, status=stored.status, headers={"Idempotent-Replayed": "true"})


def _parse(raw: bytes) -> SendRequest:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    try:
        return parse_send_request(value)
    except SendError as exc:
        raise ApiError(400, "invalid_request", str(exc), field=exc.path) from None


async def _new_batch(ctx: AppContext, key: ApiKeyRecord, send_request: SendRequest) -> NewBatch:
    """Check the send against the key, the domain and the limits; build what gets stored."""
    assert key.domain is not None
    limits = ctx.config.platform
    sender_domain = send_request.sender.email.rpartition("@")[2]
    if not sender_domain_allowed(key.domain, sender_domain):
        raise ApiError(
            403,
            "sender_not_allowed",
            f"sender domain {sender_domain} is not allowed for the API key of domain {key.domain}; "
            "send from that domain (or a parent of it) or use that domain's key",
            field="sender.email",
        )
    if len(send_request.recipients) > limits.max_recipients_per_send:
        raise ApiError(
            413,
            "too_many_recipients",
            f"recipients: {len(send_request.recipients)} is over the limit of "
            f"{limits.max_recipients_per_send} per send ([platform] max_recipients_per_send); split the send",
            field="recipients",
        )
    if content_bytes(send_request) > limits.max_send_bytes:
        raise ApiError(
            413,
            "content_too_large",
            f"the content is over {limits.max_send_bytes} bytes ([platform] max_send_bytes)",
            field="attachments",
        )
    if send_request.managed_unsubscribe and not ctx.config.tracking_base_url.lower().startswith("https://"):
        raise bad_request(
            "unsubscribe.managed",
            f"needs an https tracking URL (RFC 8058 §3.1), and [tracking] base_url is "
            f"{ctx.config.tracking_base_url!r}; set it to the https address mailnode is reached at",
        )
    public_id = "bat_" + _token(ctx, 15)
    ceiling = await _tracking_ceiling(ctx, key.domain)
    content = await _content(ctx, key.domain, send_request, public_id, ceiling)
    compiled = _compile(content)
    accepted, rejected = split_recipients(
        send_request.recipients,
        compiled.required_fields,
        _unsubscribe_fields(content),
        global_fields=content.global_fields.keys(),
    )
    accepted, refused = await _deliverable(ctx, key.domain, ceiling, accepted)
    return NewBatch(
        public_id=public_id,
        domain=key.domain,
        api_key_id=key.id,
        content=content_to_json(content),
        deliveries=[_delivery(ctx, r) for r in accepted],
        rejected=[{"email": r.email, "reason": r.reason} for r in (*rejected, *refused)],
        tags=list(send_request.tags),
        metadata=dict(send_request.metadata),
        scheduled_at=send_request.scheduled_at,
    )


async def _content(
    ctx: AppContext, domain: str, send_request: SendRequest, public_id: str, ceiling: TrackingPolicy
) -> BatchContent:
    subject, html, text = send_request.subject, send_request.html, send_request.text
    if send_request.template_id is not None:
        template = await ctx.domains.get_template(domain, send_request.template_id)
        if template is None:
            raise ApiError(
                400,
                "invalid_request",
                f"template_id: no template {send_request.template_id!r} in domain {domain}",
                field="template_id",
            )
        subject, html, text = subject or template.subject, template.html, template.text
    assert subject is not None
    return BatchContent(
        domain=domain,
        sender=send_request.sender,
        subject=subject,
        html=html,
        text=text,
        unsubscribe_url=send_request.unsubscribe_url,
        global_fields=send_request.global_fields,
        headers=send_request.headers,
        attachments=send_request.attachments,
        batch=public_id,
        tracking=_batch_tracking(domain, ceiling, send_request.tracking),
        token_expires_at=int(ctx.store.clock() + ctx.config.tracking.token_lifetime_days * 86400),
        managed_unsubscribe=send_request.managed_unsubscribe,
    )


def _batch_tracking(domain: str, ceiling: TrackingPolicy, stated: StatedPolicy | None) -> TrackingPolicy:
    """The batch's policy: the domain's ceiling narrowed by the batch's; above it is a 400."""
    try:
        check_within_ceiling(ceiling, stated, "tracking")
    except TrackingPolicyError as exc:
        raise ApiError(
            400,
            "tracking_above_ceiling",
            f"{exc}; raise the domain's ceiling with PUT /v1/domains/{domain}/tracking or ask for less",
            field=exc.path,
        ) from None
    return effective_policy(ceiling, stated, None)


def _compile(content: BatchContent) -> CompiledContent:
    try:
        return compile_content(content.subject, content.html, content.text, content.unsubscribe_url)
    except TemplateError as exc:
        raise ApiError(400, "invalid_template", str(exc), field=exc.part) from None


def _unsubscribe_fields(content: BatchContent) -> frozenset[str]:
    if content.unsubscribe_url is None:
        return frozenset()
    # Compiled alone, so the fields it reports are the URL's own.
    return compile_content("", None, "", content.unsubscribe_url).required_fields


async def _deliverable(
    ctx: AppContext, domain: str, ceiling: TrackingPolicy, recipients: list[Recipient]
) -> tuple[list[Recipient], list[Rejection]]:
    """The recipients to send to, and those refused: suppressed, or tracking above the ceiling."""
    suppressed = await ctx.events.suppressed(domain, [r.email for r in recipients])
    accepted: list[Recipient] = []
    refused: list[Rejection] = []
    for recipient in recipients:
        if recipient.email.lower() in suppressed:
            refused.append(Rejection(recipient.email, "suppressed"))
        elif not _within(ceiling, recipient.tracking):
            refused.append(Rejection(recipient.email, "tracking_above_ceiling"))
        else:
            accepted.append(recipient)
    return accepted, refused


def _delivery(ctx: AppContext, recipient: Recipient) -> NewDelivery:
    rest_id = ctx.batches.new_id()
    key_id, key = ctx.verp_keys.signer()
    stored: dict[str, Any] = {"name": recipient.name, "fields": dict(recipient.fields)}
    if recipient.tracking is not None:
        stored["tracking"] = recipient.tracking.to_json()
    return NewDelivery(
        rest_id=rest_id,
        rcpt_to=recipient.email,
        mail_from=verp_address(rest_id, ctx.config.bounce_domain, key, key_id),
        recipient=stored,
    )


async def _tracking_ceiling(ctx: AppContext, domain: str) -> TrackingPolicy:
    record = await ctx.domains.get_domain(domain)
    if record is None:  # deleted while its key was being checked
        raise NotFoundError(f"no domain {domain!r}")
    return record.tracking


def _within(ceiling: TrackingPolicy, stated: StatedPolicy | None) -> bool:
    try:
        check_within_ceiling(ceiling, stated, "tracking")
    except TrackingPolicyError:
        return False
    return True


def _token(ctx: AppContext, size: int) -> str:
    return base64.urlsafe_b64encode(ctx.random_bytes(size)).decode("ascii").rstrip("=")


def _send_answer(public_id: str, accepted: int, rejected: list[dict[str, str]]) -> dict[str, Any]:
    return {"batch_id": public_id, "accepted": accepted, "rejected": rejected}


# -- batches ---------------------------------------------------------------------------------------


async def _batch(request: web.Request) -> BatchRecord:
    """The batch in the URL, if the caller may see it (the operator, or its domain's key)."""
    who = principal(request)
    domain = None if who.admin else who.key.domain if who.key else None
    if not who.admin and domain is None:
        raise unauthorized()
    batch_id = request.match_info["batch_id"]
    batch = await context(request).batches.get_batch(batch_id, domain)
    if batch is None:
        raise NotFoundError(f"no batch {batch_id!r}")
    return batch


async def get_batch(request: web.Request) -> web.Response:
    """A batch: what was accepted and rejected, and its deliveries counted per status."""
    return web.json_response(_batch_json(await _batch(request)))


async def list_deliveries(request: web.Request) -> web.Response:
    """A page of the batch's deliveries with their status, attempts and last answer."""
    batch = await _batch(request)
    limit = _int_query(request, "limit", default=100, low=1, high=MAX_PAGE)
    cursor = _int_query(request, "cursor", default=0, low=0, high=2**62)
    records = await context(request).batches.deliveries(batch.id, after=cursor, limit=limit)
    next_cursor = records[-1].id if len(records) == limit else None
    return web.json_response(
        {
            "batch_id": batch.public_id,
            "items": [_delivery_json(r) for r in records],
            "next_cursor": next_cursor,
        }
    )


async def cancel_batch(request: web.Request) -> web.Response:
    """Cancel what has not been sent yet; what was delivered stays delivered."""
    batch = await _batch(request)
    cancelled = await context(request).batches.cancel_batch(batch.id)
    refreshed = await context(request).batches.get_batch(batch.public_id, None)
    assert refreshed is not None
    return web.json_response({**_batch_json(refreshed), "cancelled": cancelled})


def _int_query(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(
            400, "invalid_request", f"{name}: must be a whole number from {low} to {high}", field=name
        )
    return int(text)


def _time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat().replace("+00:00", "Z")


def _batch_json(batch: BatchRecord) -> dict[str, Any]:
    return {
        "batch_id": batch.public_id,
        "domain": batch.domain,
        "created_at": _time(batch.created_at),
        "scheduled_at": _time(batch.scheduled_at),
        "cancelled_at": _time(batch.cancelled_at),
        "accepted": batch.recipients,
        "rejected": batch.rejected,
        "tags": batch.tags,
        "metadata": batch.metadata,
        "counts": {status: batch.counts.get(status, 0) for status in _STATUSES},
    }


_STATUSES = ("queued", "delivered", "failed", "cancelled")


def _delivery_json(record: TransactionRecord) -> dict[str, Any]:
    attempt = record.latest_attempt
    last = None
    if attempt is not None and attempt.finished_at is not None:
        stage, response = AttemptResult(attempt.mail, attempt.rcpt, attempt.data).decisive
        last = {"stage": stage.value, "code": response.code, "message": response.message}
    return {
        "id": record.rest_id,
        "email": record.rcpt_to,
        "status": record.status.value,
        "attempts": record.attempt_count,
        "next_attempt_at": _time(record.next_attempt_at),
        "last_response": last,
        "final_reason": record.final_attempt_reason,
        "updated_at": _time(record.updated_at),
    }
