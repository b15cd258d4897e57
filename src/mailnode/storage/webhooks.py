"""Webhooks of a domain and the deliveries of events to them.

The events outbox (storage/events.py) queues one webhook delivery per event and webhook that
wants it; the webhook worker (platform/webhooks.py) takes the due ones from here and records
each attempt, which moves the delivery along its retry schedule and the webhook towards being
disabled while it keeps failing.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from mailnode.core.events import EventType
from mailnode.core.webhook_policy import (
    WebhookRetryPolicy,
    disabled_reason,
    next_attempt,
    should_disable,
)
from mailnode.errors import ConflictError, NotFoundError
from mailnode.storage.store import Store
from mailnode.storage.tables import domains, webhook_deliveries, webhooks

log = logging.getLogger(__name__)

WEBHOOK_ID_PREFIX = "wh_"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# Bounded like everything else: a domain needs a few receivers, not hundreds.
MAX_WEBHOOKS_PER_DOMAIN = 20
MAX_ERROR_TEXT = 500
NOT_SENT = "not sent: the webhook was disabled"


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """A webhook; `id` is its public id (wh_…); the secret stays out of reprs and logs."""

    id: str
    domain: str
    url: str
    event_types: tuple[EventType, ...]
    created_at: float
    failing_since: float | None
    disabled_at: float | None
    disabled_reason: str | None
    secret: str = field(repr=False)

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True, slots=True)
class WebhookChange:
    """A PATCH: the fields that change (None: unchanged)."""

    url: str | None = None
    event_types: tuple[EventType, ...] | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class WebhookDeliveryRecord:
    """One event for one webhook and where its attempts stand, as the API lists it."""

    id: int
    event_id: int
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery to POST now, with what the POST needs."""

    id: int
    webhook: int  # the webhooks row id
    webhook_id: str
    url: str
    event_id: int
    attempts: int
    created_at: float
    secret: str = field(repr=False)
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """How one POST went: delivered (2xx), or the status (if any) and why it failed."""

    at: float
    delivered: bool
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecorded:
    """Where a delivery stands after an attempt, and whether its webhook was just disabled."""

    status: str
    next_attempt_at: float | None
    webhook_disabled: bool = False


def new_webhook_id(random_bytes: Callable[[int], bytes]) -> str:
    """A public webhook id: `wh_` and 128 random bits, URL-safe."""
    return WEBHOOK_ID_PREFIX + _urlsafe(random_bytes(16))


def new_webhook_secret(random_bytes: Callable[[int], bytes]) -> str:
    """A signing secret: `whsec_` and 256 random bits, URL-safe."""
    return SECRET_PREFIX + _urlsafe(random_bytes(32))


def _urlsafe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class WebhookStore:
    """Reads and writes of webhooks and their deliveries; each write is one transaction."""

    def __init__(self, store: Store, random_bytes: Callable[[int], bytes]) -> None:
        self._store = store
        self._random_bytes = random_bytes
        self.clock = store.clock

    # -- webhooks --------------------------------------------------------------------------

    async def create(self, domain: str, url: str, event_types: Sequence[EventType]) -> WebhookRecord:
        """A new webhook with a fresh secret; NotFoundError for an unknown domain."""
        record = WebhookRecord(
            id=new_webhook_id(self._random_bytes),
            domain=domain,
            url=url,
            event_types=tuple(event_types),
            created_at=self.clock(),
            failing_since=None,
            disabled_at=None,
            disabled_reason=None,
            secret=new_webhook_secret(self._random_bytes),
        )
        return await self._store.write(lambda conn: _create(conn, record))

    async def list_webhooks(self, domain: str) -> list[WebhookRecord]:
        """The domain's webhooks, oldest first; NotFoundError for an unknown domain."""
        return await self._store.read(lambda conn: _list(conn, domain))

    async def get(self, domain: str, webhook_id: str) -> WebhookRecord:
        """One webhook of the domain; NotFoundError if there is none by that id."""
        return await self._store.read(lambda conn: _get(conn, domain, webhook_id))

    async def update(self, domain: str, webhook_id: str, change: WebhookChange) -> WebhookRecord:
        """Apply a change; enabling clears the disabled state and the failing streak."""
        now = self.clock()
        return await self._store.write(lambda conn: _update(conn, domain, webhook_id, change, now))

    async def delete(self, domain: str, webhook_id: str) -> None:
        """Delete a webhook and its deliveries; NotFoundError if there is none by that id."""
        await self._store.write(lambda conn: _delete(conn, domain, webhook_id))

    # -- deliveries --------------------------------------------------------------------------

    async def deliveries(
        self, domain: str, webhook_id: str, *, before_id: int = 0, limit: int = 100
    ) -> list[WebhookDeliveryRecord]:
        """A page of the webhook's deliveries, newest first, older than `before_id` (0: newest)."""
        return await self._store.read(lambda conn: _deliveries(conn, domain, webhook_id, before_id, limit))

    async def due(
        self, now: float, limit: int, *, skip: Collection[int] = (), skip_webhooks: Collection[int] = ()
    ) -> list[DueDelivery]:
        """Pending deliveries of enabled webhooks due by `now`, soonest first, minus those skipped."""
        query = (
            _due_query(skip, skip_webhooks)
            .where(webhook_deliveries.c.next_attempt_at <= now)
            .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
            .limit(limit)
        )
        return await self._store.read(lambda conn: [_due(row) for row in conn.execute(query)])

    async def next_due(
        self, *, skip: Collection[int] = (), skip_webhooks: Collection[int] = ()
    ) -> float | None:
        """When the soonest pending delivery (not skipped) of an enabled webhook is due."""
        query = _due_query(skip, skip_webhooks).with_only_columns(
            func.min(webhook_deliveries.c.next_attempt_at)
        )
        value = await self._store.read(lambda conn: conn.execute(query).scalar())
        return None if value is None else float(value)

    async def record_attempt(
        self, delivery: DueDelivery, attempt: WebhookAttempt, policy: WebhookRetryPolicy
    ) -> AttemptRecorded:
        """Store an attempt's outcome: delivered, retried later, given up; maybe disable the webhook."""
        return await self._store.write(lambda conn: _record_attempt(conn, delivery, attempt, policy))

    async def prune(self, older_than: float, *, batch: int = 5000) -> int:
        """Delete delivered and failed deliveries created before `older_than`; how many."""

        def work(conn: Connection) -> int:
            ids = list(
                conn.execute(
                    select(webhook_deliveries.c.id)
                    .where(
                        webhook_deliveries.c.created_at < older_than,
                        webhook_deliveries.c.status.in_([DELIVERED, FAILED]),
                    )
                    .limit(batch)
                ).scalars()
            )
            if ids:
                conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(ids)))
            return len(ids)

        return await self._store.write(work)


# -- units of work (run in a database thread) -------------------------------------------------


def _require_domain(conn: Connection, domain: str) -> None:
    if conn.execute(select(domains.c.id).where(domains.c.name == domain)).first() is None:
        raise NotFoundError(f"no domain {domain!r}; list them with GET /v1/domains")


def _create(conn: Connection, record: WebhookRecord) -> WebhookRecord:
    _require_domain(conn, record.domain)
    count = conn.execute(
        select(func.count()).select_from(webhooks).where(webhooks.c.domain == record.domain)
    ).scalar_one()
    if count >= MAX_WEBHOOKS_PER_DOMAIN:
        raise ConflictError(
            f"domain {record.domain!r} has {count} webhooks, the limit; delete one it no longer needs"
        )
    conn.execute(
        webhooks.insert(),
        {
            "public_id": record.id,
            "domain": record.domain,
            "url": record.url,
            "secret": record.secret,
            "event_types": [kind.value for kind in record.event_types],
            "created_at": record.created_at,
        },
    )
    return record


def _list(conn: Connection, domain: str) -> list[WebhookRecord]:
    _require_domain(conn, domain)
    rows = conn.execute(select(webhooks).where(webhooks.c.domain == domain).order_by(webhooks.c.id))
    return [_webhook(row) for row in rows]


def _row(conn: Connection, domain: str, webhook_id: str) -> Any:
    row = conn.execute(
        select(webhooks).where(webhooks.c.domain == domain, webhooks.c.public_id == webhook_id)
    ).first()
    if row is None:
        _require_domain(conn, domain)
        raise NotFoundError(f"domain {domain!r} has no webhook {webhook_id!r}")
    return row


def _get(conn: Connection, domain: str, webhook_id: str) -> WebhookRecord:
    return _webhook(_row(conn, domain, webhook_id))


def _update(
    conn: Connection, domain: str, webhook_id: str, change: WebhookChange, now: float
) -> WebhookRecord:
    row = _row(conn, domain, webhook_id)
    values: dict[str, Any] = {}
    if change.url is not None:
        values["url"] = change.url
    if change.event_types is not None:
        values["event_types"] = [kind.value for kind in change.event_types]
    if change.enabled and row.disabled_at is not None:
        values.update(disabled_at=None, disabled_reason=None, failing_since=None)
    elif change.enabled is False and row.disabled_at is None:
        values.update(disabled_at=now, disabled_reason="disabled through the API")
        _fail_pending(conn, row.id)
    if values:
        conn.execute(update(webhooks).where(webhooks.c.id == row.id).values(**values))
    return _get(conn, domain, webhook_id)


def _delete(conn: Connection, domain: str, webhook_id: str) -> None:
    row = _row(conn, domain, webhook_id)
    # Explicitly, not only by ON DELETE CASCADE: that needs SQLite's foreign_keys pragma.
    conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == row.id))
    conn.execute(delete(webhooks).where(webhooks.c.id == row.id))


def _deliveries(
    conn: Connection, domain: str, webhook_id: str, before_id: int, limit: int
) -> list[WebhookDeliveryRecord]:
    row = _row(conn, domain, webhook_id)
    query = select(webhook_deliveries).where(webhook_deliveries.c.webhook_id == row.id)
    if before_id:
        query = query.where(webhook_deliveries.c.id < before_id)
    rows = conn.execute(query.order_by(webhook_deliveries.c.id.desc()).limit(limit))
    return [_delivery(item) for item in rows]


def _due_query(skip: Collection[int], skip_webhooks: Collection[int]) -> Any:
    query = (
        select(
            webhook_deliveries.c.id,
            webhook_deliveries.c.webhook_id,
            webhook_deliveries.c.event_id,
            webhook_deliveries.c.payload,
            webhook_deliveries.c.attempts,
            webhook_deliveries.c.created_at,
            webhooks.c.public_id,
            webhooks.c.url,
            webhooks.c.secret,
        )
        .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
        .where(webhook_deliveries.c.status == PENDING, webhooks.c.disabled_at.is_(None))
    )
    # Both sets hold what is in flight: at most [webhooks] concurrency ids each.
    if skip:
        query = query.where(webhook_deliveries.c.id.not_in(list(skip)))
    if skip_webhooks:
        query = query.where(webhook_deliveries.c.webhook_id.not_in(list(skip_webhooks)))
    return query


def _record_attempt(
    conn: Connection, delivery: DueDelivery, attempt: WebhookAttempt, policy: WebhookRetryPolicy
) -> AttemptRecorded:
    this = webhook_deliveries.c.id == delivery.id
    values: dict[str, Any] = {
        "attempts": webhook_deliveries.c.attempts + 1,
        "last_attempt_at": attempt.at,
        "last_status": attempt.status,
        "last_error": None if attempt.error is None else attempt.error[:MAX_ERROR_TEXT],
    }
    if attempt.delivered:
        conn.execute(
            update(webhook_deliveries).where(this).values(status=DELIVERED, next_attempt_at=None, **values)
        )
        conn.execute(update(webhooks).where(webhooks.c.id == delivery.webhook).values(failing_since=None))
        return AttemptRecorded(DELIVERED, None)
    at = next_attempt(
        delivery.attempts + 1, delivery.created_at, attempt.at, policy.retry_hours, policy.base_seconds
    )
    status = PENDING if at is not None else FAILED
    # Only while pending: a webhook disabled during the POST has given its deliveries up.
    still_pending = webhook_deliveries.c.status == PENDING
    conn.execute(
        update(webhook_deliveries)
        .where(this, still_pending)
        .values(status=status, next_attempt_at=at, **values)
    )
    disabled = _note_failure(conn, delivery.webhook, attempt, policy)
    return AttemptRecorded(status, at, webhook_disabled=disabled)


def _note_failure(
    conn: Connection, webhook: int, attempt: WebhookAttempt, policy: WebhookRetryPolicy
) -> bool:
    """Start the webhook's failing streak, or disable it when the streak is long enough."""
    row = conn.execute(
        select(webhooks.c.failing_since, webhooks.c.disabled_at).where(webhooks.c.id == webhook)
    ).first()
    if row is None or row.disabled_at is not None:
        return False  # deleted or disabled while the POST was under way
    if row.failing_since is None:
        conn.execute(update(webhooks).where(webhooks.c.id == webhook).values(failing_since=attempt.at))
        return False
    if not should_disable(row.failing_since, attempt.at, policy.disable_after_days):
        return False
    reason = disabled_reason(row.failing_since, policy.disable_after_days, attempt.error)
    conn.execute(
        update(webhooks)
        .where(webhooks.c.id == webhook)
        .values(disabled_at=attempt.at, disabled_reason=reason)
    )
    _fail_pending(conn, webhook)
    return True


def _fail_pending(conn: Connection, webhook: int) -> None:
    """A disabled webhook's queued deliveries are given up, not kept for a later re-enable."""
    conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.webhook_id == webhook, webhook_deliveries.c.status == PENDING)
        .values(
            status=FAILED,
            next_attempt_at=None,
            last_error=func.coalesce(webhook_deliveries.c.last_error, NOT_SENT),
        )
    )


# -- records from rows ------------------------------------------------------------------------


def _webhook(row: Any) -> WebhookRecord:
    return WebhookRecord(
        id=row.public_id,
        domain=row.domain,
        url=row.url,
        event_types=tuple(EventType(value) for value in row.event_types),
        created_at=row.created_at,
        failing_since=row.failing_since,
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
        secret=row.secret,
    )


def _delivery(row: Any) -> WebhookDeliveryRecord:
    return WebhookDeliveryRecord(
        id=row.id,
        event_id=row.event_id,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        last_status=row.last_status,
        last_error=row.last_error,
    )


def _due(row: Any) -> DueDelivery:
    return DueDelivery(
        id=row.id,
        webhook=row.webhook_id,
        webhook_id=row.public_id,
        url=row.url,
        event_id=row.event_id,
        attempts=row.attempts,
        created_at=row.created_at,
        secret=row.secret,
        payload=row.payload.encode(),
    )
