"""What the web console reads, on the Store's reader threads (its actions are the Store's own).

Every list is a keyset page (a cursor from the last row shown, never OFFSET) of at most
MAX_PAGE rows, and walks an index where the schema has one: the queue by (status,
next_attempt_at), captures and deliveries by id, suppressions by (domain, address), events by
delivery, webhook deliveries by (webhook_id, id), the overview by stats_hourly's key.
Searches by recipient, sender or date have no index of their own: they scan the deliveries
newest first until a page is full (the table holds [storage] gc_ttl_seconds of finished mail).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.policy import default as default_policy
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from mailnode.core.events import Event, EventType
from mailnode.core.outcome import AttemptResult, Status
from mailnode.core.response import Response
from mailnode.core.transaction import AttemptRecord
from mailnode.errors import NotFoundError
from mailnode.storage.events import SERVER_DOMAIN
from mailnode.storage.store import Store
from mailnode.storage.tables import (
    attempts,
    batches,
    blob_chunks,
    captures,
    domains,
    events,
    stats_hourly,
    suppressions,
    transaction_blobs,
    transactions,
    webhook_deliveries,
    webhooks,
)

MAX_PAGE = 200
# How much of a message is read to show its header section (and a capture's subject).
HEADER_BYTES = 64 * 1024
SUBJECT_BYTES = 8 * 1024
# Events shown with one delivery: a message gets a handful; a much-opened one is cut here.
MAX_DELIVERY_EVENTS = 200
DAY = 86400


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A delivery as the console lists it, with the latest attempt's deciding answer."""

    id: int
    rest_id: str
    sender: str
    mail_from: str
    rcpt_to: str
    status: Status
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    attempt_count: int
    final_attempt_reason: str | None
    domain: str | None
    batch: str | None  # the batch's public id
    leased: bool
    last_answer: Response | None

    @property
    def state(self) -> str:
        """The status, with the queue's finer states: in flight, deferred."""
        if self.status is Status.QUEUED and self.leased:
            return "in flight"
        if self.status is Status.QUEUED and self.attempt_count > 0:
            return "deferred"
        return self.status.value


@dataclass(frozen=True, slots=True)
class DeliveryQuery:
    """A search of deliveries, newest first; each field narrows it."""

    recipient: str | None = None  # part of the envelope recipient, any case
    sender: str | None = None  # the envelope sender, or a sending domain (no @)
    batch: str | None = None  # a batch's public id
    status: str | None = None  # a Status value, or "deferred"
    since: float | None = None
    until: float | None = None
    before_id: int | None = None  # the cursor
    limit: int = 50


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    row: DeliveryRow
    protocol: str
    client_address: str | None
    client_helo: str | None
    attempts: tuple[AttemptRecord, ...]
    events: tuple[Event, ...]
    capture_id: int | None
    headers: tuple[tuple[str, str], ...] | None
    headers_from: str | None  # "the stored body", "the captured copy", or None


@dataclass(frozen=True, slots=True)
class QueueHealth:
    due: int  # queued, due now, nobody holds them
    later: int  # queued for a later attempt: deferred after a failed one, or scheduled
    in_flight: int
    awaiting_body: int
    oldest_due_at: float | None
    failed_last_day: int
    webhook_backlog: int
    events_unprocessed: int


@dataclass(frozen=True, slots=True)
class QueueCursor:
    """Where a queue page continues: after this (next_attempt_at, id), or below this id."""

    at: float | None
    id: int


QUEUE_VIEWS = ("deferred", "due", "awaiting_body", "failed")


@dataclass(frozen=True, slots=True)
class CaptureSummary:
    id: int
    transaction_rest_id: str
    mail_from: str
    rcpt_to: str
    created_at: float
    size: int
    subject: str


@dataclass(frozen=True, slots=True)
class SuppressionRow:
    domain: str
    address: str
    reason: str
    details: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class WebhookSummary:
    id: str
    domain: str
    url: str
    event_types: tuple[str, ...]
    created_at: float
    failing_since: float | None
    disabled_at: float | None
    disabled_reason: str | None
    pending: int


@dataclass(frozen=True, slots=True)
class WebhookDeliveryRow:
    id: int
    event_id: int
    event_type: str
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None


class ConsoleStore:
    """The console's queries; each is one unit on a reader thread."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.clock = store.clock

    async def daily_counts(self, since_day: int, days: int) -> dict[str, list[int]]:
        """Events per type and UTC day of the known domains and the server's own mail, `days` days
        from `since_day`."""
        return await self._store.read(lambda conn: _daily_counts(conn, since_day, days))

    async def queue_health(self) -> QueueHealth:
        now = self.clock()
        return await self._store.read(lambda conn: _queue_health(conn, now))

    async def deliveries(self, query: DeliveryQuery) -> list[DeliveryRow]:
        now = self.clock()
        return await self._store.read(lambda conn: _deliveries(conn, query, now))

    async def delivery(self, rest_id: str) -> DeliveryDetail | None:
        now = self.clock()
        return await self._store.read(lambda conn: _delivery(conn, rest_id, now))

    async def queue(self, view: str, cursor: QueueCursor | None, limit: int) -> list[DeliveryRow]:
        """A page of one queue view (QUEUE_VIEWS); failed: those finished in the last 7 days."""
        now = self.clock()
        return await self._store.read(lambda conn: _queue(conn, view, cursor, limit, now))

    async def captures(
        self, *, before_id: int | None, recipient: str | None, limit: int
    ) -> list[CaptureSummary]:
        return await self._store.read(lambda conn: _captures(conn, before_id, recipient, limit))

    async def capture_for(self, rest_id: str) -> int | None:
        """The capture a delivery made, if any."""
        return await self._store.read(lambda conn: _capture_id(conn, rest_id))

    async def suppressions(
        self, domain: str, *, prefix: str, reason: str | None, after: str | None, limit: int
    ) -> list[SuppressionRow]:
        """A domain's suppressions by address, starting with `prefix`, after the cursor."""
        return await self._store.read(lambda conn: _suppressions(conn, domain, prefix, reason, after, limit))

    async def webhooks(self, limit: int = MAX_PAGE) -> list[WebhookSummary]:
        """Every webhook, by domain, with its pending deliveries."""
        return await self._store.read(lambda conn: _webhooks(conn, limit))

    async def webhook(self, webhook_id: str) -> WebhookSummary | None:
        found = await self._store.read(lambda conn: _webhooks(conn, 1, webhook_id))
        return found[0] if found else None

    async def webhook_deliveries(
        self, webhook_id: str, *, before_id: int | None, limit: int
    ) -> list[WebhookDeliveryRow]:
        return await self._store.read(lambda conn: _webhook_deliveries(conn, webhook_id, before_id, limit))


# -- the overview ----------------------------------------------------------------------------


def _daily_counts(conn: Connection, since_day: int, days: int) -> dict[str, list[int]]:
    # Through stats_hourly's primary key (domain, hour, type): one range per known domain, and
    # the server's own (mail without a sending domain).
    names = [SERVER_DOMAIN, *conn.execute(select(domains.c.name)).scalars()]
    totals: dict[str, list[int]] = {kind.value: [0] * days for kind in EventType}
    s = stats_hourly.c
    day = ((s.hour - since_day) // DAY).label("day")
    query = (
        select(day, s.type, func.sum(s["count"]))
        .where(s.domain.in_(names), s.hour >= since_day, s.hour < since_day + days * DAY)
        .group_by(day, s.type)
    )
    for index, kind, count in conn.execute(query):
        if kind in totals:
            totals[kind][int(index)] += int(count)
    return totals


def _queue_health(conn: Connection, now: float) -> QueueHealth:
    # Counted within ix_transactions_due (status, next_attempt_at): what waits for later is
    # counted from the index alone, only the due range (short, unless mail is stuck) is read.
    t = transactions.c
    queued = t.status == Status.QUEUED.value
    held = and_(t.lease_owner.is_not(None), t.lease_expires_at >= now)
    later = select(func.count()).where(queued, t.next_attempt_at > now)
    due = conn.execute(
        select(func.count(), func.count().filter(held), func.min(t.next_attempt_at).filter(~held)).where(
            queued, t.next_attempt_at <= now
        )
    ).one()
    awaiting = select(func.count()).where(t.status == Status.AWAITING_BODY.value)
    failed = select(func.count()).where(t.status == Status.FAILED.value, t.finished_at >= now - DAY)
    backlog = select(func.count()).where(webhook_deliveries.c.status == "pending")
    unprocessed = select(func.count()).where(events.c.processed.is_(False))
    return QueueHealth(
        due=due[0] - due[1],
        later=conn.execute(later).scalar_one(),
        in_flight=due[1],
        awaiting_body=conn.execute(awaiting).scalar_one(),
        oldest_due_at=due[2],
        failed_last_day=conn.execute(failed).scalar_one(),
        webhook_backlog=conn.execute(backlog).scalar_one(),
        events_unprocessed=conn.execute(unprocessed).scalar_one(),
    )


# -- deliveries ------------------------------------------------------------------------------

_STAGES = ("mail", "rcpt", "data")
# Finished deliveries and those waiting for a body have no next attempt: with this condition
# ix_transactions_due (status, next_attempt_at, id) yields them in id order, without a sort.
_NOT_SCHEDULED = transactions.c.next_attempt_at.is_(None)
_ROW = select(
    transactions.c.id,
    transactions.c.rest_id,
    transactions.c.sender,
    transactions.c.mail_from,
    transactions.c.rcpt_to,
    transactions.c.status,
    transactions.c.created_at,
    transactions.c.updated_at,
    transactions.c.next_attempt_at,
    transactions.c.attempt_count,
    transactions.c.final_attempt_reason,
    transactions.c.domain,
    transactions.c.lease_owner,
    transactions.c.lease_expires_at,
    batches.c.public_id.label("batch"),
    *(attempts.c[f"{stage}_{part}"] for stage in _STAGES for part in ("code", "message")),
).select_from(
    transactions.outerjoin(batches, batches.c.id == transactions.c.batch_id).outerjoin(
        attempts,
        and_(
            attempts.c.transaction_id == transactions.c.id,
            attempts.c.number == transactions.c.attempt_count,
        ),
    )
)


def _row(row: Any, now: float) -> DeliveryRow:
    mail, rcpt, data = (_answer(row, stage) for stage in _STAGES)
    last = None if mail is None else AttemptResult(mail, rcpt, data).decisive[1]
    leased = row["lease_owner"] is not None and (row["lease_expires_at"] or 0) >= now
    return DeliveryRow(
        id=row["id"],
        rest_id=row["rest_id"],
        sender=row["sender"],
        mail_from=row["mail_from"],
        rcpt_to=row["rcpt_to"],
        status=Status(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_attempt_at=row["next_attempt_at"],
        attempt_count=row["attempt_count"],
        final_attempt_reason=row["final_attempt_reason"],
        domain=row["domain"],
        batch=row["batch"],
        leased=leased,
        last_answer=last,
    )


def _rows(conn: Connection, query: Any, now: float) -> list[DeliveryRow]:
    return [_row(row._mapping, now) for row in conn.execute(query)]


def _deliveries(conn: Connection, query: DeliveryQuery, now: float) -> list[DeliveryRow]:
    where: list[Any] = []
    if query.batch:
        batch_id = conn.execute(select(batches.c.id).where(batches.c.public_id == query.batch)).scalar()
        if batch_id is None:
            return []
        where.append(transactions.c.batch_id == batch_id)
    if query.recipient:
        where.append(func.lower(transactions.c.rcpt_to).contains(query.recipient.lower(), autoescape=True))
    if query.sender:
        if "@" in query.sender:
            where.append(func.lower(transactions.c.mail_from) == query.sender.lower())
        else:
            where.append(transactions.c.domain == query.sender.lower())
    if query.status == "deferred":
        where += [transactions.c.status == Status.QUEUED.value, transactions.c.attempt_count > 0]
    elif query.status:
        where.append(transactions.c.status == query.status)
        if query.status != Status.QUEUED.value:
            where.append(_NOT_SCHEDULED)
    if query.since is not None:
        where.append(transactions.c.created_at >= query.since)
    if query.until is not None:
        where.append(transactions.c.created_at < query.until)
    if query.before_id is not None:
        where.append(transactions.c.id < query.before_id)
    statement = _ROW.where(*where).order_by(transactions.c.id.desc()).limit(min(query.limit, MAX_PAGE))
    return _rows(conn, statement, now)


def _delivery(conn: Connection, rest_id: str, now: float) -> DeliveryDetail | None:
    found = conn.execute(
        _ROW.add_columns(
            transactions.c.protocol, transactions.c.client_address, transactions.c.client_helo
        ).where(transactions.c.rest_id == rest_id)
    ).first()
    if found is None:
        return None
    row = found._mapping
    tried = conn.execute(
        select(attempts).where(attempts.c.transaction_id == row["id"]).order_by(attempts.c.number)
    )
    story = conn.execute(
        select(events).where(events.c.delivery == rest_id).order_by(events.c.id).limit(MAX_DELIVERY_EVENTS)
    )
    capture_id = _capture_id(conn, rest_id)
    head, source = _stored_head(conn, row["id"]), "the stored body"
    if head is None and capture_id is not None:
        head, source = _capture_head(conn, capture_id, HEADER_BYTES), "the captured copy"
    return DeliveryDetail(
        row=_row(row, now),
        protocol=row["protocol"],
        client_address=row["client_address"],
        client_helo=row["client_helo"],
        attempts=tuple(_attempt(item._mapping) for item in tried),
        events=tuple(_event(item._mapping) for item in story),
        capture_id=capture_id,
        headers=None if head is None else header_fields(head),
        headers_from=None if head is None else source,
    )


def _answer(row: Any, stage: str) -> Response | None:
    code = row[f"{stage}_code"]
    return None if code is None else Response(code, row[f"{stage}_message"] or "")


def _attempt(row: Any) -> AttemptRecord:
    mail, rcpt, data = (_answer(row, stage) for stage in _STAGES)
    return AttemptRecord(
        row["number"], row["started_at"], row["finished_at"], mail, rcpt, data, row["remote_host"]
    )


def _event(row: Any) -> Event:
    data = row["data"] if isinstance(row["data"], dict) else json.loads(row["data"] or "{}")
    return Event(
        EventType(row["type"]),
        row["occurred_at"],
        row["domain"],
        row["batch"],
        row["delivery"],
        row["recipient"],
        data,
        id=row["id"],
    )


def _stored_head(conn: Connection, tx_id: int) -> bytes | None:
    """The start of a delivery's stored body (None when it is built or rendered when sent)."""
    chunks = conn.execute(
        select(blob_chunks.c.data)
        .join(transaction_blobs, transaction_blobs.c.blob_id == blob_chunks.c.blob_id)
        .where(transaction_blobs.c.transaction_id == tx_id, transaction_blobs.c.name == "body")
        .order_by(blob_chunks.c.offset)
    )
    head = b""
    for (data,) in chunks:
        head += data[: HEADER_BYTES - len(head)]
        if len(head) >= HEADER_BYTES or b"\r\n\r\n" in head or b"\n\n" in head:
            break
    chunks.close()
    return head or None


def header_fields(head: bytes) -> tuple[tuple[str, str], ...]:
    """The header fields at the start of a message, decoded (RFC 2047) for reading."""
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(head)
    return tuple((name, str(value)) for name, value in parsed.items())


def _capture_id(conn: Connection, rest_id: str) -> int | None:
    query = select(func.min(captures.c.id)).where(captures.c.transaction_rest_id == rest_id)
    value = conn.execute(query).scalar()
    return None if value is None else int(value)


def _capture_head(conn: Connection, capture_id: int, size: int) -> bytes:
    query = select(func.substr(captures.c.message, 1, size)).where(captures.c.id == capture_id)
    return bytes(conn.execute(query).scalar() or b"")


# -- the queue -------------------------------------------------------------------------------


def _queue(
    conn: Connection, view: str, cursor: QueueCursor | None, limit: int, now: float
) -> list[DeliveryRow]:
    limit = min(limit, MAX_PAGE)
    t = transactions.c
    if view == "failed":
        recent = t.finished_at >= now - 7 * DAY
        where: list[Any] = [t.status == Status.FAILED.value, _NOT_SCHEDULED, recent]
        if cursor is not None:
            where.append(t.id < cursor.id)
        return _rows(conn, _ROW.where(*where).order_by(t.id.desc()).limit(limit), now)
    if view == "awaiting_body":
        where = [t.status == Status.AWAITING_BODY.value, _NOT_SCHEDULED]
        if cursor is not None:
            where.append(t.id > cursor.id)
        return _rows(conn, _ROW.where(*where).order_by(t.id).limit(limit), now)
    tried = t.attempt_count > 0 if view == "deferred" else t.attempt_count == 0
    where = [t.status == Status.QUEUED.value, tried]
    if cursor is not None and cursor.at is not None:
        where.append(
            or_(t.next_attempt_at > cursor.at, and_(t.next_attempt_at == cursor.at, t.id > cursor.id))
        )
    statement = _ROW.where(*where).order_by(t.next_attempt_at, t.id).limit(limit)
    return _rows(conn, statement, now)


# -- captures, suppressions, webhooks ----------------------------------------------------------


def _captures(
    conn: Connection, before_id: int | None, recipient: str | None, limit: int
) -> list[CaptureSummary]:
    c = captures.c
    query = select(
        c.id,
        c.transaction_rest_id,
        c.mail_from,
        c.rcpt_to,
        c.created_at,
        func.length(c.message),
        func.substr(c.message, 1, SUBJECT_BYTES),
    )
    if before_id is not None:
        query = query.where(c.id < before_id)
    if recipient:
        query = query.where(func.lower(c.rcpt_to).contains(recipient.lower(), autoescape=True))
    rows = conn.execute(query.order_by(c.id.desc()).limit(min(limit, MAX_PAGE)))
    return [CaptureSummary(*row[:6], subject=subject_of(bytes(row[6] or b""))) for row in rows]


def subject_of(head: bytes) -> str:
    """The decoded Subject of a message whose first bytes are `head` ("" if none)."""
    # compat32 splits the header section without building every field's structured value
    # (policy.default parses each one: 20x slower, and the list shows 50 of these).
    raw = BytesHeaderParser(policy=compat32).parsebytes(head).get("Subject")
    if raw is None:
        return ""
    try:
        return str(make_header(decode_header(str(raw))))
    except (HeaderParseError, LookupError, UnicodeDecodeError):
        return str(raw)


def _suppressions(
    conn: Connection, domain: str, prefix: str, reason: str | None, after: str | None, limit: int
) -> list[SuppressionRow]:
    # The unique (domain, address) index gives both the prefix range and the order.
    s = suppressions.c
    where = [s.domain == domain]
    prefix = prefix.lower()
    if prefix:
        where += [s.address >= prefix, s.address < prefix + "\U0010ffff"]
    if reason:
        where.append(s.reason == reason)
    if after is not None:
        where.append(s.address > after)
    query = select(s.domain, s.address, s.reason, s.details, s.created_at).where(*where)
    rows = conn.execute(query.order_by(s.address).limit(min(limit, MAX_PAGE)))
    return [SuppressionRow(*row) for row in rows]


def _webhooks(conn: Connection, limit: int, public_id: str | None = None) -> list[WebhookSummary]:
    w = webhooks.c
    query = select(webhooks).order_by(w.domain, w.id).limit(limit)
    if public_id is not None:
        query = query.where(w.public_id == public_id)
    rows = conn.execute(query).all()
    # Pending deliveries through ix_webhook_deliveries_due (status, next_attempt_at): naming
    # the webhooks too would make SQLite walk each one's whole history by the other index.
    pending: dict[int, int] = dict(
        conn.execute(
            select(webhook_deliveries.c.webhook_id, func.count())
            .where(webhook_deliveries.c.status == "pending")
            .group_by(webhook_deliveries.c.webhook_id)
        ).all()
    )
    return [
        WebhookSummary(
            id=row.public_id,
            domain=row.domain,
            url=row.url,
            event_types=tuple(row.event_types),
            created_at=row.created_at,
            failing_since=row.failing_since,
            disabled_at=row.disabled_at,
            disabled_reason=row.disabled_reason,
            pending=int(pending.get(row.id, 0)),
        )
        for row in rows
    ]


def _webhook_deliveries(
    conn: Connection, webhook_id: str, before_id: int | None, limit: int
) -> list[WebhookDeliveryRow]:
    hook = conn.execute(select(webhooks.c.id).where(webhooks.c.public_id == webhook_id)).scalar()
    if hook is None:
        raise NotFoundError(f"no webhook {webhook_id!r}")
    d = webhook_deliveries.c
    query = select(webhook_deliveries).where(d.webhook_id == hook)
    if before_id is not None:
        query = query.where(d.id < before_id)
    rows = conn.execute(query.order_by(d.id.desc()).limit(min(limit, MAX_PAGE)))
    return [
        WebhookDeliveryRow(
            id=row.id,
            event_id=row.event_id,
            event_type=_payload_type(row.payload),
            status=row.status,
            attempts=row.attempts,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at,
            last_attempt_at=row.last_attempt_at,
            last_status=row.last_status,
            last_error=row.last_error,
        )
        for row in rows
    ]


def _payload_type(payload: str) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return "?"
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else "?"
