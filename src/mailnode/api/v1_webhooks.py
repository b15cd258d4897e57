"""/v1/domains/{domain}/webhooks: where a domain's events are POSTed, and how those POSTs went.

Open to the operator and to the domain's own API keys. A webhook's signing secret is in the
answer to its creation only. Receivers on loopback, private or link-local addresses are refused
unless [webhooks] allow_private is on.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailnode.api.auth import require_admin, require_admin_or_domain
from mailnode.api.context import AppContext, context
from mailnode.api.errors import bad_request
from mailnode.api.validation import int_query, json_object, rfc3339
from mailnode.core.dkim_keys import DomainNameError, canonical_domain
from mailnode.core.events import EventType
from mailnode.core.webhook_policy import WebhookUrlError, parse_event_types, parse_webhook_url
from mailnode.errors import NotFoundError
from mailnode.platform.webhooks import WebhookAddressError, check_receiver
from mailnode.storage.webhooks import WebhookChange, WebhookDeliveryRecord, WebhookRecord

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_CREATE_FIELDS = frozenset({"url", "event_types"})
_PATCH_FIELDS = frozenset({"url", "event_types", "enabled"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/domains/{domain}/webhooks", create_webhook)
    router.add_get("/v1/domains/{domain}/webhooks", list_webhooks)
    router.add_get("/v1/domains/{domain}/webhooks/{webhook_id}", get_webhook)
    router.add_patch("/v1/domains/{domain}/webhooks/{webhook_id}", update_webhook)
    router.add_delete("/v1/domains/{domain}/webhooks/{webhook_id}", delete_webhook)
    router.add_get("/v1/domains/{domain}/webhooks/{webhook_id}/deliveries", list_deliveries)


async def create_webhook(request: web.Request) -> web.Response:
    """A new webhook; the answer carries its signing secret, this once."""
    ctx = context(request)
    domain = _domain(request)
    body = await json_object(request, _CREATE_FIELDS)
    for name in ("url", "event_types"):
        if name not in body:
            raise bad_request(name, "required")
    url = await _receiver_url(ctx, body["url"])
    record = await ctx.webhooks.create(domain, url, _event_types(body["event_types"]))
    location = f"/v1/domains/{domain}/webhooks/{record.id}"
    answer = {**webhook_json(record), "secret": record.secret}
    return web.json_response(answer, status=201, headers={"Location": location})


async def list_webhooks(request: web.Request) -> web.Response:
    records = await context(request).webhooks.list_webhooks(_domain(request))
    return web.json_response({"items": [webhook_json(r) for r in records]})


async def get_webhook(request: web.Request) -> web.Response:
    record = await context(request).webhooks.get(_domain(request), request.match_info["webhook_id"])
    return web.json_response(webhook_json(record))


async def update_webhook(request: web.Request) -> web.Response:
    """Change the URL or event types; `enabled` turns the webhook back on (true) or off (false)."""
    ctx = context(request)
    domain = _domain(request)
    body = await json_object(request, _PATCH_FIELDS)
    if not body:
        raise bad_request("body", f"nothing to change; give any of {', '.join(sorted(_PATCH_FIELDS))}")
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad_request("enabled", "must be true or false")
    change = WebhookChange(
        url=await _receiver_url(ctx, body["url"]) if "url" in body else None,
        event_types=_event_types(body["event_types"]) if "event_types" in body else None,
        enabled=enabled,
    )
    record = await ctx.webhooks.update(domain, request.match_info["webhook_id"], change)
    return web.json_response(webhook_json(record))


async def delete_webhook(request: web.Request) -> web.Response:
    """Delete the webhook; what it had not been sent yet is dropped."""
    await context(request).webhooks.delete(_domain(request), request.match_info["webhook_id"])
    return web.Response(status=204)


async def list_deliveries(request: web.Request) -> web.Response:
    """A page of the webhook's deliveries, newest first: attempts, status and the last answer."""
    domain = _domain(request)
    limit = int_query(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    cursor = int_query(request, "cursor", default=0, low=0, high=2**62)
    webhook_id = request.match_info["webhook_id"]
    items = await context(request).webhooks.deliveries(domain, webhook_id, before_id=cursor, limit=limit)
    next_cursor = items[-1].id if len(items) == limit else None
    answer = {
        "webhook_id": webhook_id,
        "items": [delivery_json(d) for d in items],
        "next_cursor": next_cursor,
    }
    return web.json_response(answer)


# -- request fields ---------------------------------------------------------------------------


def _domain(request: web.Request) -> str:
    """The canonical `{domain}` of the path, for the operator or a key of that domain."""
    raw = request.match_info["domain"]
    try:
        name = canonical_domain(raw)
    except DomainNameError as exc:
        require_admin(request)  # a key's own domain is always a valid name: others get the 401
        raise NotFoundError(f"no domain {raw!r}: {exc}") from None
    require_admin_or_domain(request, name)
    return name


async def _receiver_url(ctx: AppContext, value: Any) -> str:
    """A checked receiver URL, or a 400 on `url` saying what is wrong and what to do."""
    if not isinstance(value, str):
        raise bad_request("url", "must be a string")
    config = ctx.config
    try:
        target = parse_webhook_url(value.strip())
        await check_receiver(
            target, allow_private=config.webhooks.allow_private, timeout=config.dns.timeout_seconds
        )
    except (WebhookUrlError, WebhookAddressError) as exc:
        raise bad_request("url", str(exc)) from None
    return target.url


def _event_types(value: Any) -> tuple[EventType, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        known = ", ".join(kind.value for kind in EventType)
        raise bad_request("event_types", f"must be a non-empty list of event types; known types: {known}")
    try:
        return parse_event_types(value)
    except ValueError as exc:
        raise bad_request("event_types", str(exc)) from None


# -- answers ---------------------------------------------------------------------------------


def webhook_json(record: WebhookRecord) -> dict[str, Any]:
    """A webhook as /v1 answers it: never its secret (the creation answer adds that)."""
    return {
        "id": record.id,
        "domain": record.domain,
        "url": record.url,
        "event_types": [kind.value for kind in record.event_types],
        "enabled": record.enabled,
        "created_at": rfc3339(record.created_at),
        "failing_since": rfc3339(record.failing_since),
        "disabled_at": rfc3339(record.disabled_at),
        "disabled_reason": record.disabled_reason,
    }


def delivery_json(record: WebhookDeliveryRecord) -> dict[str, Any]:
    """One event's delivery to a webhook, as /v1 answers it."""
    return {
        "id": record.id,
        "event_id": record.event_id,
        "status": record.status,
        "attempts": record.attempts,
        "created_at": rfc3339(record.created_at),
        "next_attempt_at": rfc3339(record.next_attempt_at),
        "last_attempt_at": rfc3339(record.last_attempt_at),
        "last_status": record.last_status,
        "last_error": record.last_error,
    }
