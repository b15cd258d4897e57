"""Events (an outbox), their hourly counts, and suppressions.

Events are written inside the write that changes what they report on: `EventHook` does it for
delivery state changes (a Store transition hook), `insert_events` for the writes of batches,
tracking and bounces. `EventStore.process_outbox` then counts each event into stats_hourly and
queues its webhook deliveries in one transaction that also marks it processed: a crash before
that leaves it unprocessed for the next run, and it is never counted twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, select, update

from mailnode.core.events import (
    Event,
    EventType,
    NewEvent,
    SuppressionReason,
    attempt_event,
    hour_of,
    suppresses,
    webhook_body,
)
from mailnode.core.outcome import AttemptResult, Decision
from mailnode.core.transaction import TransactionRecord
from mailnode.storage.store import Store, inserted_id
from mailnode.storage.tables import (
    batches,
    events,
    stats_hourly,
    suppressions,
    webhook_deliveries,
    webhooks,
)

log = logging.getLogger(__name__)

# Events one outbox pass takes: bounds the write's duration (and the memory it needs).
OUTBOX_BATCH = 500
WEBHOOK_PENDING = "pending"

_BATCH_PUBLIC_ID = select(batches.c.public_id).where(batches.c.id == bindparam("id_"))
_STATS_INCREMENT = (
    update(stats_hourly)
    .where(
        stats_hourly.c.domain == bindparam("d"),
        stats_hourly.c.hour == bindparam("h"),
        stats_hourly.c.type == bindparam("t"),
    )
    .values(
        count=stats_hourly.c.count + bindparam("n"),
        unique_count=stats_hourly.c.unique_count + bindparam("u"),
        machine_count=stats_hourly.c.machine_count + bindparam("m"),
    )
)


# Built once: SQLAlchemy then finds its compiled form without building a cache key per call.
_INSERT_EVENT = events.insert()


def insert_events(conn: Connection, new: Sequence[NewEvent]) -> None:
    """Store events (inside the caller's write); they are processed after it commits."""
    if not new:
        return
    conn.execute(_INSERT_EVENT, [_event_values(event) for event in new])


def _event_values(event: NewEvent) -> dict[str, Any]:
    return {
        "type": event.type.value,
        "occurred_at": event.occurred_at,
        "domain": event.domain,
        "batch": event.batch,
        "delivery": event.delivery,
        "recipient": event.recipient,
        "data": dict(event.data),
        "processed": False,
    }


def add_suppression(
    conn: Connection,
    domain: str,
    address: str,
    reason: SuppressionReason,
    details: dict[str, Any],
    now: float,
) -> bool:
    """Suppress `address` for `domain` unless it already is; True if this added it."""
    address = address.lower()
    exists = conn.execute(
        select(suppressions.c.id).where(suppressions.c.domain == domain, suppressions.c.address == address)
    ).first()
    if exists is not None:
        return False
    conn.execute(
        suppressions.insert(),
        {"domain": domain, "address": address, "reason": reason.value, "details": details, "created_at": now},
    )
    return True


def suppressed_among(conn: Connection, domain: str, addresses: Iterable[str]) -> set[str]:
    """Which of `addresses` (compared lower-cased) `domain` must not send to."""
    wanted = sorted({address.lower() for address in addresses})
    found: set[str] = set()
    # Chunked: SQLite allows 32,766 parameters per statement, other databases fewer.
    for start in range(0, len(wanted), 900):
        chunk = wanted[start : start + 900]
        found.update(conn.execute(_SUPPRESSED_AMONG, {"domain": domain, "addresses": chunk}).scalars())
    return found


# Built once, with an expanding IN: one compiled form for every number of addresses (an SMTP
# RCPT asks about one).
_SUPPRESSED_AMONG = select(suppressions.c.address).where(
    suppressions.c.domain == bindparam("domain"),
    suppressions.c.address.in_(bindparam("addresses", expanding=True)),
)


def record_and_suppress(conn: Connection, new: Sequence[NewEvent], now: float) -> None:
    """Store events, and suppress the recipients of those that call for it (for a sending
    domain: mail without one has nobody whose list it would be)."""
    insert_events(conn, new)
    for event in new:
        reason = suppresses(event.type, event.data)
        if reason is not None and event.recipient and event.domain != SERVER_DOMAIN:
            details = {"event": event.type.value}
            details.update({k: event.data[k] for k in ("code", "text") if k in event.data})
            add_suppression(conn, event.domain, event.recipient, reason, details, now)


# The events of mail without a sending domain (a key without one, port 25, the developer
# default) count under this name: the console's overview and `mailnode stats` include them;
# no /v1 route, webhook or suppression list belongs to it.
SERVER_DOMAIN = ""
# Deliveries whose events would count a message twice or report on mailnode's own mail: DSNs
# and the archive copies of ingress routes.
_UNCOUNTED_SENDERS = frozenset({"bounce", "copy"})


class EventHook:
    """The Store transition hook that writes a delivery's events (and hard-bounce suppressions)."""

    def __init__(self, store: Store) -> None:
        self._clock = store.clock
        self._wake = store.events_written  # thread-safe: called on the writer thread

    def created(self, conn: Connection, record: TransactionRecord) -> None:
        if record.sender in _UNCOUNTED_SENDERS:
            return
        event = NewEvent(
            EventType.ACCEPTED,
            self._clock(),
            record.domain or SERVER_DOMAIN,
            batch=_batch_public_id(conn, record),
            delivery=record.rest_id,
            recipient=record.rcpt_to,
        )
        insert_events(conn, [event])
        self._wake()

    def attempted(
        self, conn: Connection, record: TransactionRecord, result: AttemptResult, decision: Decision
    ) -> None:
        if record.sender in _UNCOUNTED_SENDERS:
            return
        made = attempt_event(result, decision)
        if made is None:
            return
        kind, data = made
        now = self._clock()
        event = NewEvent(
            kind,
            now,
            record.domain or SERVER_DOMAIN,
            batch=_batch_public_id(conn, record),
            delivery=record.rest_id,
            recipient=record.rcpt_to,
            data=data,
        )
        record_and_suppress(conn, [event], now)
        self._wake()


def _batch_public_id(conn: Connection, record: TransactionRecord) -> str | None:
    if record.batch_id is None:
        return None
    value = conn.execute(_BATCH_PUBLIC_ID, {"id_": record.batch_id}).scalar()
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class StatsBucket:
    start: int  # unix time
    count: int
    unique: int
    machine: int


@dataclass(frozen=True, slots=True)
class SuppressionRecord:
    id: int
    domain: str
    address: str
    reason: str
    details: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class EventQuery:
    domain: str
    types: tuple[EventType, ...] = ()
    recipient: str | None = None
    batch: str | None = None
    delivery: str | None = None
    since: float | None = None
    until: float | None = None
    after_id: int = 0  # the cursor: events with a greater id, oldest first
    limit: int = 100


class EventStore:
    """Reads and writes of events, stats and suppressions."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.clock = store.clock

    async def record(self, new: Sequence[NewEvent]) -> None:
        """Store events that no delivery change causes (opens, clicks, bounces, complaints)."""
        now = self.clock()
        await self._store.write(
            lambda conn: record_and_suppress(conn, new, now), on_commit=lambda _: self._store.events_written()
        )

    async def record_for(self, record: TransactionRecord, event: NewEvent) -> None:
        """Store an event about a delivery (a bounce, a complaint), with its batch filled in."""
        now = self.clock()

        def work(conn: Connection) -> None:
            found = dataclasses.replace(event, batch=_batch_public_id(conn, record))
            record_and_suppress(conn, [found], now)

        await self._store.write(work, on_commit=lambda _: self._store.events_written())

    async def record_engagement(self, event: NewEvent) -> Event:
        """Store an open or click, marked unique if it is its recipient's first in the batch."""

        def work(conn: Connection) -> Event:
            data = dict(event.data)
            if event.recipient is not None and not data.get("machine"):
                data["unique"] = not _seen_before(conn, event)
            stored = dataclasses.replace(event, data=data)
            event_id = inserted_id(conn.execute(events.insert(), _event_values(stored)))
            return _event(stored, event_id)

        return await self._store.write(work, on_commit=lambda _: self._store.events_written())

    async def record_engagements(self, new: Sequence[NewEvent]) -> int:
        """Store opens and clicks in one write, each marked unique as record_engagement marks it."""

        def work(conn: Connection) -> int:
            seen = _seen_among(conn, new)  # one query per batch, not one per event
            rows = []
            for event in new:
                data = dict(event.data)
                if event.recipient is not None and not data.get("machine"):
                    key = _seen_key(event)
                    data["unique"] = key not in seen
                    seen.add(key)  # so a later event of this write is not unique either
                rows.append({**_event_values(event), "data": data})
            if rows:
                conn.execute(events.insert(), rows)
            return len(rows)

        return await self._store.write(work, on_commit=lambda _: self._store.events_written())

    async def record_unsubscribe(self, event: NewEvent) -> bool:
        """Store an unsubscribed event and suppress its recipient; False if already unsubscribed."""
        assert event.type is EventType.UNSUBSCRIBED and event.recipient is not None
        recipient, now = event.recipient, self.clock()

        def work(conn: Connection) -> bool:
            found = _suppression(conn, event.domain, recipient)
            if found is not None and found.reason == SuppressionReason.UNSUBSCRIBED.value:
                return False  # a repeated one-click POST: one event, one suppression
            record_and_suppress(conn, [event], now)
            return True

        return await self._store.write(work, on_commit=lambda _: self._store.events_written())

    async def process_outbox(self, limit: int = OUTBOX_BATCH) -> list[Event]:
        """Count unprocessed events into stats_hourly, queue their webhooks, mark them processed."""
        now = self.clock()
        return await self._store.write(lambda conn: _process_outbox(conn, limit, now))

    async def unprocessed(self) -> int:
        """How many events wait in the outbox."""
        query = select(func.count()).select_from(events).where(events.c.processed.is_(False))
        return int(await self._store.read(lambda conn: conn.execute(query).scalar() or 0))

    async def events(self, query: EventQuery) -> list[Event]:
        """Raw events that match `query`, oldest first after its cursor."""
        return await self._store.read(lambda conn: _query_events(conn, query))

    async def stats(self, domain: str | None, since: float, until: float) -> dict[str, list[StatsBucket]]:
        """Hourly counts per event type in [since, until); domain None: every domain's, summed."""
        where = [stats_hourly.c.hour >= hour_of(since), stats_hourly.c.hour < until]
        if domain is not None:
            where.append(stats_hourly.c.domain == domain)

        def work(conn: Connection) -> dict[str, list[StatsBucket]]:
            rows = conn.execute(
                select(
                    stats_hourly.c.type,
                    stats_hourly.c.hour,
                    func.sum(stats_hourly.c.count).label("total"),
                    func.sum(stats_hourly.c.unique_count).label("unique_total"),
                    func.sum(stats_hourly.c.machine_count).label("machine_total"),
                )
                .where(*where)
                .group_by(stats_hourly.c.type, stats_hourly.c.hour)
                .order_by(stats_hourly.c.hour)
            )
            found: dict[str, list[StatsBucket]] = {}
            for row in rows:
                bucket = StatsBucket(row.hour, int(row.total), int(row.unique_total), int(row.machine_total))
                found.setdefault(row.type, []).append(bucket)
            return found

        return await self._store.read(work)

    async def prune(self, older_than: float, *, batch: int = 5000) -> int:
        """Delete processed raw events older than `older_than` (the aggregates stay)."""

        def work(conn: Connection) -> int:
            ids = list(
                conn.execute(
                    select(events.c.id)
                    .where(events.c.occurred_at < older_than, events.c.processed.is_(True))
                    .limit(batch)
                ).scalars()
            )
            if ids:
                conn.execute(delete(events).where(events.c.id.in_(ids)))
            return len(ids)

        return await self._store.write(work)

    # -- suppressions ------------------------------------------------------------------------

    async def suppressed(self, domain: str, addresses: Iterable[str]) -> set[str]:
        """Which of `addresses` are suppressed for `domain` (lower-cased)."""
        wanted = list(addresses)
        return await self._store.read(lambda conn: suppressed_among(conn, domain, wanted))

    async def suppress(
        self, domain: str, address: str, reason: SuppressionReason, details: dict[str, Any]
    ) -> SuppressionRecord:
        """Suppress `address` (if it is not already) and return its record."""
        now = self.clock()

        def work(conn: Connection) -> SuppressionRecord:
            add_suppression(conn, domain, address, reason, details, now)
            found = _suppression(conn, domain, address)
            assert found is not None
            return found

        return await self._store.write(work)

    async def unsuppress(self, domain: str, address: str) -> bool:
        """Remove a suppression; False if there was none."""
        statement = delete(suppressions).where(
            suppressions.c.domain == domain, suppressions.c.address == address.lower()
        )
        return await self._store.write(lambda conn: conn.execute(statement).rowcount > 0)

    async def suppression(self, domain: str, address: str) -> SuppressionRecord | None:
        return await self._store.read(lambda conn: _suppression(conn, domain, address))

    async def suppressions(
        self, domain: str, *, reason: str | None = None, after_id: int = 0, limit: int = 100
    ) -> list[SuppressionRecord]:
        """A page of a domain's suppressions, oldest first after the cursor."""
        query = (
            select(suppressions)
            .where(suppressions.c.domain == domain, suppressions.c.id > after_id)
            .order_by(suppressions.c.id)
            .limit(limit)
        )
        if reason is not None:
            query = query.where(suppressions.c.reason == reason)
        return await self._store.read(lambda conn: [_suppression_record(row) for row in conn.execute(query)])


def _seen_before(conn: Connection, event: NewEvent) -> bool:
    """Whether the recipient already had an event of this type in this batch (or delivery)."""
    match = [events.c.type == event.type.value, events.c.recipient == event.recipient]
    if event.batch is not None:
        match.append(events.c.batch == event.batch)
    else:
        match.append(events.c.delivery == event.delivery)
    return conn.execute(select(events.c.id).where(*match, _BY_A_PERSON).limit(1)).first() is not None


_SeenKey = tuple[str, str, str | None, str | None]
# Only a person's open or click makes a later one not unique: a link scanner or an image proxy
# that fetched first must not take the "unique" from the recipient's own first open. A person's
# events are the ones marked unique or not (machine events carry no such mark).
_BY_A_PERSON = events.c.data["unique"].as_boolean().is_not(None)


def _seen_key(event: NewEvent) -> _SeenKey:
    """What _seen_before matches on: type, recipient, and the batch, else the delivery."""
    assert event.recipient is not None
    delivery = event.delivery if event.batch is None else None
    return (event.type.value, event.recipient, event.batch, delivery)


def _seen_among(conn: Connection, new: Sequence[NewEvent]) -> set[_SeenKey]:
    """The keys of `new` that _seen_before would find stored, in a query per type and batch."""
    wanted: dict[tuple[str, str | None, str | None], set[str]] = {}
    for event in new:
        if event.recipient is not None:
            kind, recipient, batch, delivery = _seen_key(event)
            wanted.setdefault((kind, batch, delivery), set()).add(recipient)
    seen: set[_SeenKey] = set()
    for (kind, batch, delivery), recipients in wanted.items():
        scope = events.c.batch == batch if batch is not None else events.c.delivery == delivery
        ordered = sorted(recipients)
        for start in range(0, len(ordered), 900):  # SQLite's parameter limit, as suppressed_among
            query = (
                select(events.c.recipient)
                .distinct()
                .where(
                    events.c.type == kind,
                    scope,
                    events.c.recipient.in_(ordered[start : start + 900]),
                    _BY_A_PERSON,
                )
            )
            seen.update((kind, recipient, batch, delivery) for recipient in conn.execute(query).scalars())
    return seen


def _process_outbox(conn: Connection, limit: int, now: float) -> list[Event]:
    rows = conn.execute(
        select(events).where(events.c.processed.is_(False)).order_by(events.c.id).limit(limit)
    ).all()
    if not rows:
        return []
    batch = [_event_row(row) for row in rows]
    _count(conn, batch)
    _queue_webhooks(conn, batch, now)
    conn.execute(update(events).where(events.c.id.in_([event.id for event in batch])).values(processed=True))
    return batch


def _count(conn: Connection, batch: Sequence[Event]) -> None:
    """Add the events to stats_hourly: an UPDATE, and an INSERT for a bucket not there yet."""
    totals: dict[tuple[str, int, str], list[int]] = {}
    for event in batch:
        key = (event.domain, hour_of(event.occurred_at), event.type.value)
        counts = totals.setdefault(key, [0, 0, 0])
        counts[0] += 1
        counts[1] += 1 if event.data.get("unique") else 0
        counts[2] += 1 if event.data.get("machine") else 0
    for (domain, hour, kind), (count, unique, machine) in totals.items():
        params = {"d": domain, "h": hour, "t": kind, "n": count, "u": unique, "m": machine}
        if conn.execute(_STATS_INCREMENT, params).rowcount == 0:
            # Writes are serialized on one writer, so nobody inserts this bucket meanwhile.
            conn.execute(
                stats_hourly.insert(),
                {
                    "domain": domain,
                    "hour": hour,
                    "type": kind,
                    "count": count,
                    "unique_count": unique,
                    "machine_count": machine,
                },
            )


def _queue_webhooks(conn: Connection, batch: Sequence[Event], now: float) -> None:
    """One webhook delivery per event and active webhook of its domain that wants its type."""
    domains = sorted({event.domain for event in batch})
    hooks = conn.execute(
        select(webhooks.c.id, webhooks.c.domain, webhooks.c.event_types).where(
            webhooks.c.domain.in_(domains), webhooks.c.disabled_at.is_(None)
        )
    ).all()
    if not hooks:
        return
    rows = [
        {
            "webhook_id": hook.id,
            "event_id": event.id,
            "payload": webhook_body(event).decode(),
            "status": WEBHOOK_PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for event in batch
        for hook in hooks
        if hook.domain == event.domain and event.type.value in hook.event_types
    ]
    if rows:
        conn.execute(webhook_deliveries.insert(), rows)


def _query_events(conn: Connection, query: EventQuery) -> list[Event]:
    where = [events.c.domain == query.domain, events.c.id > query.after_id]
    if query.types:
        where.append(events.c.type.in_([kind.value for kind in query.types]))
    if query.recipient is not None:
        where.append(func.lower(events.c.recipient) == query.recipient.lower())
    if query.batch is not None:
        where.append(events.c.batch == query.batch)
    if query.delivery is not None:
        where.append(events.c.delivery == query.delivery)
    if query.since is not None:
        where.append(events.c.occurred_at >= query.since)
    if query.until is not None:
        where.append(events.c.occurred_at < query.until)
    rows = conn.execute(select(events).where(and_(*where)).order_by(events.c.id).limit(query.limit))
    return [_event_row(row) for row in rows]


def _event_row(row: Any) -> Event:
    data = row.data if isinstance(row.data, dict) else json.loads(row.data or "{}")
    kind = EventType(row.type)
    return Event(kind, row.occurred_at, row.domain, row.batch, row.delivery, row.recipient, data, id=row.id)


def _event(new: NewEvent, event_id: int) -> Event:
    return Event(
        new.type, new.occurred_at, new.domain, new.batch, new.delivery, new.recipient, new.data, id=event_id
    )


def _suppression(conn: Connection, domain: str, address: str) -> SuppressionRecord | None:
    row = conn.execute(
        select(suppressions).where(suppressions.c.domain == domain, suppressions.c.address == address.lower())
    ).first()
    return None if row is None else _suppression_record(row)


def _suppression_record(row: Any) -> SuppressionRecord:
    return SuppressionRecord(row.id, row.domain, row.address, row.reason, row.details, row.created_at)
