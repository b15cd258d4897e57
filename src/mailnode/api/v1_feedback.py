"""What happened to a domain's mail: suppressions, stats, raw events and one delivery's story.

Open to the operator and to the domain's own API keys. Lists are paged with a cursor: the
answer's `next_cursor` is given back as `cursor` for the next page (null: no more).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mailnode.api.auth import principal, unauthorized
from mailnode.api.context import context
from mailnode.api.errors import bad_request
from mailnode.api.v1_domains import scoped_domain
from mailnode.api.validation import int_query, json_object, rfc3339, text_field, timestamp_query
from mailnode.core.address import AddressError, parse_address
from mailnode.core.events import HOUR, EventType, SuppressionReason, event_json, hour_of
from mailnode.core.outcome import AttemptResult
from mailnode.core.transaction import AttemptRecord, TransactionRecord
from mailnode.errors import NotFoundError
from mailnode.storage.events import EventQuery, StatsBucket, SuppressionRecord

DEFAULT_PAGE = 100
MAX_PAGE = 1000
DAY = 24 * HOUR
# Buckets one stats answer may hold: a year of days, or 31 days of hours.
MAX_BUCKETS = {"hour": 31 * 24, "day": 366}
_SUPPRESSION_FIELDS = frozenset({"address", "reason"})
_REASONS = ", ".join(reason.value for reason in SuppressionReason)
_TYPES = ", ".join(kind.value for kind in EventType)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/domains/{domain}/suppressions", list_suppressions)
    router.add_post("/v1/domains/{domain}/suppressions", add_suppression)
    router.add_get("/v1/domains/{domain}/suppressions/{address}", get_suppression)
    router.add_delete("/v1/domains/{domain}/suppressions/{address}", remove_suppression)
    router.add_get("/v1/domains/{domain}/stats", get_stats)
    router.add_get("/v1/domains/{domain}/events", list_events)
    router.add_get("/v1/deliveries/{delivery_id}", get_delivery)


# -- suppressions --------------------------------------------------------------------------------


async def list_suppressions(request: web.Request) -> web.Response:
    """A page of the domain's suppressions, oldest first; `reason` filters."""
    domain = scoped_domain(request)
    reason = request.query.get("reason")
    if reason is not None and reason not in SuppressionReason.__members__.values():
        raise bad_request("reason", f"unknown reason {reason!r}; one of {_REASONS}")
    limit = int_query(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    cursor = int_query(request, "cursor", default=0, low=0, high=2**62)
    items = await context(request).events.suppressions(domain, reason=reason, after_id=cursor, limit=limit)
    return web.json_response(
        {
            "items": [_suppression_json(item) for item in items],
            "next_cursor": str(items[-1].id) if len(items) == limit else None,
        }
    )


async def add_suppression(request: web.Request) -> web.Response:
    """Stop sending to an address (reason `manual` unless given); 201, or 200 if it already was."""
    domain = scoped_domain(request)
    body = await json_object(request, _SUPPRESSION_FIELDS)
    address = _address(text_field(body, "address", max_length=512) or "", "address")
    reason_text = body.get("reason", SuppressionReason.MANUAL.value)
    if reason_text not in SuppressionReason.__members__.values():
        raise bad_request("reason", f"unknown reason {reason_text!r}; one of {_REASONS}")
    events = context(request).events
    existed = await events.suppression(domain, address) is not None
    record = await events.suppress(domain, address, SuppressionReason(reason_text), {"source": "api"})
    return web.json_response(_suppression_json(record), status=200 if existed else 201)


async def get_suppression(request: web.Request) -> web.Response:
    """Whether one address is suppressed: its record, or 404."""
    domain = scoped_domain(request)
    address = _address(request.match_info["address"], "address")
    record = await context(request).events.suppression(domain, address)
    if record is None:
        raise NotFoundError(f"{address} is not suppressed for {domain}")
    return web.json_response(_suppression_json(record))


async def remove_suppression(request: web.Request) -> web.Response:
    """Send to the address again; 204, or 404 if it was not suppressed."""
    domain = scoped_domain(request)
    address = _address(request.match_info["address"], "address")
    if not await context(request).events.unsuppress(domain, address):
        raise NotFoundError(f"{address} is not suppressed for {domain}")
    return web.Response(status=204)


def _address(text: str, field: str) -> str:
    try:
        return str(parse_address(text.strip())).lower()
    except AddressError as exc:
        raise bad_request(field, f"not an email address: {exc}") from None


def _suppression_json(record: SuppressionRecord) -> dict[str, Any]:
    return {
        "address": record.address,
        "reason": record.reason,
        "details": record.details,
        "created_at": rfc3339(record.created_at),
    }


# -- stats and events ----------------------------------------------------------------------------


async def get_stats(request: web.Request) -> web.Response:
    """Counts per event type and hour or day in [from, to): one dense series per type."""
    domain = scoped_domain(request)
    granularity = request.query.get("granularity", "hour")
    if granularity not in MAX_BUCKETS:
        raise bad_request("granularity", "must be hour or day")
    now = context(request).store.clock()
    step = HOUR if granularity == "hour" else DAY
    until = timestamp_query(request, "to", default=now)
    # By default the last 24 buckets, the current one included.
    since = timestamp_query(request, "from", default=(until // step - 23) * step)
    start = int(since // step) * step
    buckets = -(-int(until - start) // step)
    if until <= since:
        raise bad_request("to", "must be after from")
    if buckets > MAX_BUCKETS[granularity]:
        raise bad_request(
            "from", f"{buckets} {granularity}s is over the limit of {MAX_BUCKETS[granularity]} per request"
        )
    found = await context(request).events.stats(domain, start, until)
    return web.json_response(
        {
            "domain": domain,
            "granularity": granularity,
            "from": rfc3339(start),
            "to": rfc3339(until),
            "series": {
                kind.value: _series(found.get(kind.value, []), start, step, buckets) for kind in EventType
            },
        }
    )


def _series(hours: list[StatsBucket], start: int, step: int, buckets: int) -> list[dict[str, Any]]:
    """Hourly rows summed into `buckets` buckets of `step` seconds from `start`, zeros included."""
    sums = [[0, 0, 0] for _ in range(buckets)]
    for hour in hours:
        index = (hour_of(hour.start) - start) // step
        if 0 <= index < buckets:
            sums[index][0] += hour.count
            sums[index][1] += hour.unique
            sums[index][2] += hour.machine
    return [
        {"t": rfc3339(start + i * step), "count": count, "unique": unique, "machine": machine}
        for i, (count, unique, machine) in enumerate(sums)
    ]


async def list_events(request: web.Request) -> web.Response:
    """A page of raw events, oldest first, filtered by type, recipient, batch and time."""
    domain = scoped_domain(request)
    types = tuple(_event_type(text) for text in request.query.getall("type", []) for text in text.split(","))
    limit = int_query(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    query = EventQuery(
        domain,
        types=types,
        recipient=request.query.get("recipient"),
        batch=request.query.get("batch"),
        delivery=request.query.get("delivery"),
        since=timestamp_query(request, "from", default=None),
        until=timestamp_query(request, "to", default=None),
        after_id=int_query(request, "cursor", default=0, low=0, high=2**62),
        limit=limit,
    )
    found = await context(request).events.events(query)
    return web.json_response(
        {
            "items": [event_json(event) for event in found],
            "next_cursor": str(found[-1].id) if len(found) == limit else None,
        }
    )


def _event_type(text: str) -> EventType:
    try:
        return EventType(text.strip())
    except ValueError:
        raise bad_request("type", f"unknown event type {text!r}; one of {_TYPES}") from None


# -- one delivery --------------------------------------------------------------------------------


async def get_delivery(request: web.Request) -> web.Response:
    """A delivery with every attempt's answers and its events."""
    ctx = context(request)
    rest_id = request.match_info["delivery_id"]
    record = await ctx.store.get_transaction(rest_id)
    who = principal(request)
    if not who.admin:
        if who.key is None or who.key.domain is None:
            raise unauthorized()
        if record is None or record.domain != who.key.domain:
            record = None  # another domain's delivery is not there for this key
    if record is None:
        raise NotFoundError(f"no delivery {rest_id!r}")
    attempts = await ctx.store.attempts(record.id)
    events = []
    if record.domain is not None:
        events = await ctx.events.events(EventQuery(record.domain, delivery=rest_id, limit=MAX_PAGE))
    return web.json_response(
        {
            **_delivery_json(record),
            "attempts": [_attempt_json(a) for a in attempts],
            "events": [event_json(e) for e in events],
        }
    )


def _delivery_json(record: TransactionRecord) -> dict[str, Any]:
    return {
        "id": record.rest_id,
        "domain": record.domain,
        "mail_from": record.mail_from,
        "rcpt_to": record.rcpt_to,
        "status": record.status.value,
        "final_reason": record.final_attempt_reason,
        "created_at": rfc3339(record.created_at),
        "updated_at": rfc3339(record.updated_at),
        "next_attempt_at": rfc3339(record.next_attempt_at),
    }


def _attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    answers = {
        stage: None if response is None else {"code": response.code, "message": response.message}
        for stage, response in (("mail", attempt.mail), ("rcpt", attempt.rcpt), ("data", attempt.data))
    }
    outcome = None
    if attempt.finished_at is not None:
        stage, response = AttemptResult(attempt.mail, attempt.rcpt, attempt.data).decisive
        outcome = {"stage": stage.value, "code": response.code, "message": response.message}
    return {
        "number": attempt.number,
        "started_at": rfc3339(attempt.started_at),
        "finished_at": rfc3339(attempt.finished_at),
        "remote_host": attempt.remote_host,
        "answers": answers,
        "outcome": outcome,
    }
