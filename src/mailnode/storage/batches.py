"""Batches of the sending platform: one send, its content blob and one delivery per recipient."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Integer, Table, bindparam, delete, func, select, update

from mailnode.core.events import EventType
from mailnode.core.outcome import FinalReason, Status
from mailnode.core.transaction import TransactionRecord
from mailnode.errors import ConflictError
from mailnode.storage.store import LOAD_TRANSACTIONS, Store, inserted_id, load_rows
from mailnode.storage.tables import (
    batches,
    blob_chunks,
    blobs,
    events,
    idempotency_keys,
    signing_keys,
    transactions,
)

PLATFORM_SENDER = "platform"
VERP_KEYS = "verp"  # the signing_keys purpose of VERP return paths
TRACKING_KEYS = "tracking"  # ... and of tracking and managed-unsubscribe tokens


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One accepted recipient of a send, ready to store."""

    rest_id: str
    rcpt_to: str
    mail_from: str  # the VERP return path
    recipient: dict[str, Any]  # {"name": ..., "fields": {...}}


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The first answer to a send made with an Idempotency-Key."""

    request_hash: str
    status: int
    response: dict[str, Any]
    # Only for storing: an older answer under the same key has expired and is replaced.
    fresh_after: float = 0.0


@dataclass(frozen=True, slots=True)
class NewBatch:
    public_id: str
    domain: str
    api_key_id: int
    content: bytes
    deliveries: Sequence[NewDelivery]
    rejected: list[dict[str, str]]
    tags: list[str]
    metadata: dict[str, Any]
    scheduled_at: float | None
    # Stored in the same transaction, so a repeat finds it exactly when the batch exists.
    idempotency_key: str | None = None
    idempotency: IdempotencyRecord | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    public_id: str
    domain: str
    recipients: int
    rejected: list[dict[str, str]]
    tags: list[str]
    metadata: dict[str, Any]
    scheduled_at: float | None
    created_at: float
    cancelled_at: float | None
    counts: dict[str, int]  # deliveries per status


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    """A signing key as an operator sees it: everything but its secret."""

    purpose: str
    key_id: str
    created_at: float
    retired_at: float | None
    current: bool  # the newest unretired key of its purpose: it signs


class SigningKeyring:
    """The secrets of one purpose: the newest signs, every one verifies.

    A running service reloads it in place after `mailnode signing-key rotate` (SIGHUP): the
    id and the keys are swapped as one, so `signer()` never pairs one key's id with another.
    """

    __slots__ = ("_state",)

    def __init__(self, current_id: str, keys: Mapping[str, bytes]) -> None:
        if current_id not in keys:
            raise ValueError(f"the current key {current_id!r} is not among the keys")
        self._state: tuple[str, dict[str, bytes]] = (current_id, dict(keys))

    @property
    def current_id(self) -> str:
        return self._state[0]

    @property
    def keys(self) -> Mapping[str, bytes]:
        return self._state[1]

    @property
    def current(self) -> bytes:
        current_id, keys = self._state
        return keys[current_id]

    def signer(self) -> tuple[str, bytes]:
        """(the id, the secret) that sign now, read together."""
        current_id, keys = self._state
        return current_id, keys[current_id]

    def replace_with(self, newer: SigningKeyring) -> None:
        """Take `newer`'s keys (a reload); whoever holds this keyring sees them at once."""
        self._state = newer._state


class BatchStore:
    """Reads and writes of batches, their deliveries and idempotency records."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.clock = store.clock

    def new_id(self) -> str:
        """A delivery id, from the Store's (injectable) id source."""
        return self._store.new_id()

    async def create_batch(self, batch: NewBatch) -> BatchRecord:
        """Store the content once, the batch and every delivery, in one database transaction.

        With an Idempotency-Key, a concurrent send that stored the same key first makes this
        one fail with IdempotencyConflict and store nothing.
        """
        now = self.clock()
        due = now if batch.scheduled_at is None else max(now, batch.scheduled_at)
        batch_id = await self._store.write(
            lambda conn: _insert_batch(conn, batch, now, due),
            on_commit=lambda _: self._committed(batch),
        )
        return BatchRecord(
            batch_id,
            batch.public_id,
            batch.domain,
            len(batch.deliveries),
            batch.rejected,
            batch.tags,
            batch.metadata,
            batch.scheduled_at,
            now,
            None,
            {Status.QUEUED.value: len(batch.deliveries)} if batch.deliveries else {},
        )

    def _committed(self, batch: NewBatch) -> None:
        self._store.notify((), queued=bool(batch.deliveries))
        self._store.events_written()

    async def find_idempotent(self, api_key_id: int, key: str, newer_than: float) -> IdempotencyRecord | None:
        """The stored answer for (key id, Idempotency-Key) if it is recent enough."""
        row = await self._store.read(
            lambda conn: conn.execute(
                _IDEMPOTENT, {"api_key_id": api_key_id, "key": key, "newer_than": newer_than}
            ).first()
        )
        return None if row is None else IdempotencyRecord(row.request_hash, row.status, row.response)

    async def forget_idempotency_keys(self, older_than: float) -> int:
        """Delete Idempotency-Key answers older than `older_than` (housekeeping)."""
        statement = delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than)
        count: int = await self._store.write(lambda conn: conn.execute(statement).rowcount)
        return count

    async def get_batch(self, public_id: str, domain: str | None) -> BatchRecord | None:
        """A batch with its delivery counts; with `domain`, only if it belongs to it."""
        return await self._store.read(lambda conn: _get_batch(conn, public_id, domain))

    async def deliveries(self, batch_id: int, *, after: int, limit: int) -> list[TransactionRecord]:
        """The batch's deliveries in creation order, after the row id `after`."""
        rows = await self._store.read(
            lambda conn: load_rows(conn, _BATCH_DELIVERIES, batch_id=batch_id, after=after, limit=limit)
        )
        return [record for _, record in rows]

    async def cancel_batch(self, batch_id: int) -> int:
        """Cancel every delivery of the batch not yet finished; returns how many."""
        now = self.clock()
        return await self._store.write(lambda conn: _cancel_batch(conn, batch_id, now))

    async def content(self, batch_id: int) -> bytes | None:
        """The batch's stored content (JSON), or None if the batch is gone."""
        rows = await self._store.read(lambda conn: conn.execute(_CONTENT, {"batch_id": batch_id}).all())
        return b"".join(row.data for row in rows) if rows else None

    async def signing_keyring(self, purpose: str, make_secret: Callable[[], bytes]) -> SigningKeyring:
        """The keys of `purpose`; the first call for a purpose creates its first key."""
        now = self.clock()
        return await self._store.write(lambda conn: _keyring(conn, purpose, make_secret, now))

    async def rotate_signing_key(self, purpose: str, make_secret: Callable[[], bytes]) -> SigningKeyInfo:
        """Add a key that signs from now on (once the service reloads its keyrings: SIGHUP or a
        restart); the older ones keep verifying."""
        now = self.clock()
        return await self._store.write(lambda conn: _rotate_signing_key(conn, purpose, make_secret, now))

    async def signing_keys(self) -> list[SigningKeyInfo]:
        """Every signing key, by purpose, oldest first; secrets stay in the database."""
        return await self._store.read(_signing_keys)


# -- statements and units --------------------------------------------------------------------

_IDEMPOTENT = select(idempotency_keys).where(
    idempotency_keys.c.api_key_id == bindparam("api_key_id"),
    idempotency_keys.c.key == bindparam("key"),
    idempotency_keys.c.created_at > bindparam("newer_than"),
)
_BATCH_DELIVERIES = (
    LOAD_TRANSACTIONS.where(
        transactions.c.batch_id == bindparam("batch_id"), transactions.c.id > bindparam("after")
    )
    .order_by(transactions.c.id)
    .limit(bindparam("limit", type_=Integer))
)
_COUNTS = (
    select(transactions.c.status, func.count())
    .where(transactions.c.batch_id == bindparam("batch_id"))
    .group_by(transactions.c.status)
)
_CONTENT = (
    select(blob_chunks.c.data)
    .join(batches, batches.c.content_blob_id == blob_chunks.c.blob_id)
    .where(batches.c.id == bindparam("batch_id"))
    .order_by(blob_chunks.c.offset)
)
_UNFINISHED = (Status.QUEUED.value, Status.AWAITING_BODY.value)


class IdempotencyConflict(ConflictError):
    """Another request stored an answer under the same Idempotency-Key first."""


def _claim_idempotency_key(conn: Connection, batch: NewBatch, now: float) -> None:
    """Fail if the key is taken (and still fresh); writes are serialized, so this is race-free."""
    assert batch.idempotency is not None
    where = (
        idempotency_keys.c.api_key_id == batch.api_key_id,
        idempotency_keys.c.key == batch.idempotency_key,
    )
    created = conn.execute(select(idempotency_keys.c.created_at).where(*where)).scalar()
    if created is not None and created > batch.idempotency.fresh_after:
        raise IdempotencyConflict("this Idempotency-Key was just used by another request")
    if created is not None:
        conn.execute(delete(idempotency_keys).where(*where))


def _insert_batch(conn: Connection, batch: NewBatch, now: float, due: float) -> int:
    if batch.idempotency is not None:
        _claim_idempotency_key(conn, batch, now)
        conn.execute(
            idempotency_keys.insert(),
            {
                "api_key_id": batch.api_key_id,
                "key": batch.idempotency_key,
                "request_hash": batch.idempotency.request_hash,
                "status": batch.idempotency.status,
                "response": batch.idempotency.response,
                "created_at": now,
            },
        )
    blob_id = inserted_id(
        conn.execute(
            blobs.insert(),
            {"stored_length": len(batch.content), "total_length": len(batch.content), "created_at": now},
        )
    )
    conn.execute(blob_chunks.insert(), {"blob_id": blob_id, "offset": 0, "data": batch.content})
    batch_id = inserted_id(
        conn.execute(
            batches.insert(),
            {
                "public_id": batch.public_id,
                "domain": batch.domain,
                "api_key_id": batch.api_key_id,
                "content_blob_id": blob_id,
                "recipients": len(batch.deliveries),
                "rejected": batch.rejected,
                "tags": batch.tags,
                "metadata": batch.metadata,
                "scheduled_at": batch.scheduled_at,
                "created_at": now,
            },
        )
    )
    if batch.deliveries:
        shared = _shared_delivery_values(batch, batch_id, now, due)
        rows = [
            {
                **shared,
                "rest_id": d.rest_id,
                "mail_from": d.mail_from,
                "rcpt_to": d.rcpt_to,
                "recipient": json.dumps(d.recipient, separators=(",", ":")),
            }
            for d in batch.deliveries
        ]
        bulk_insert(conn, transactions, rows)
    _insert_intake_events(conn, batch, now)
    return batch_id


def _insert_intake_events(conn: Connection, batch: NewBatch, now: float) -> None:
    """An `accepted` event per delivery and a `rejected` one per refused recipient (the outbox)."""
    shared = {"occurred_at": now, "domain": batch.domain, "batch": batch.public_id, "processed": False}
    rows = [
        {
            **shared,
            "type": EventType.ACCEPTED.value,
            "delivery": d.rest_id,
            "recipient": d.rcpt_to,
            "data": "{}",
        }
        for d in batch.deliveries
    ]
    rows.extend(
        {
            **shared,
            "type": EventType.REJECTED.value,
            "delivery": None,
            "recipient": r["email"],
            "data": json.dumps({"reason": r["reason"]}),
        }
        for r in batch.rejected
    )
    if rows:
        bulk_insert(conn, events, rows)


def _shared_delivery_values(batch: NewBatch, batch_id: int, now: float, due: float) -> dict[str, Any]:
    """The columns every delivery of a batch has in common."""
    return {
        "sender": PLATFORM_SENDER,
        "status": Status.QUEUED.value,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": due,
        "attempt_count": 0,
        "retry": True,
        "bounce": False,
        "cancelled": False,
        "protocol": "HTTP",
        "api_key_id": batch.api_key_id,
        "batch_id": batch_id,
        "domain": batch.domain,
    }


def bulk_insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT many rows of plain values (JSON already serialized) in one executemany.

    SQLAlchemy's per-row parameter processing costs three times the insert itself for a
    10,000-recipient batch; the statement is still compiled by the connection's dialect, so
    this stays portable. Columns not in the rows are NULL.
    """
    columns = list(rows[0])
    compiled = table.insert().compile(dialect=conn.dialect, column_keys=columns)
    if compiled.positional:
        order = compiled.positiontup or []
        conn.exec_driver_sql(compiled.string, [tuple(row[name] for name in order) for row in rows])
    else:
        conn.exec_driver_sql(compiled.string, list(rows))


def _get_batch(conn: Connection, public_id: str, domain: str | None) -> BatchRecord | None:
    query = select(batches).where(batches.c.public_id == public_id)
    if domain is not None:
        query = query.where(batches.c.domain == domain)
    row = conn.execute(query).first()
    if row is None:
        return None
    counts = {status: count for status, count in conn.execute(_COUNTS, {"batch_id": row.id})}
    return BatchRecord(
        row.id,
        row.public_id,
        row.domain,
        row.recipients,
        row.rejected,
        row.tags,
        row.metadata,
        row.scheduled_at,
        row.created_at,
        row.cancelled_at,
        counts,
    )


def _cancel_batch(conn: Connection, batch_id: int, now: float) -> int:
    conn.execute(
        update(batches)
        .where(batches.c.id == batch_id, batches.c.cancelled_at.is_(None))
        .values(cancelled_at=now)
    )
    result = conn.execute(
        update(transactions)
        .where(transactions.c.batch_id == batch_id, transactions.c.status.in_(_UNFINISHED))
        .values(
            status=Status.CANCELLED.value,
            cancelled=True,
            final_attempt_reason=FinalReason.CANCELLED.value,
            finished_at=now,
            next_attempt_at=None,
            updated_at=now,
            version=transactions.c.version + 1,
        )
    )
    return int(result.rowcount)


def _keyring(conn: Connection, purpose: str, make_secret: Callable[[], bytes], now: float) -> SigningKeyring:
    query = (
        select(signing_keys.c.key_id, signing_keys.c.secret)
        .where(signing_keys.c.purpose == purpose, signing_keys.c.retired_at.is_(None))
        .order_by(signing_keys.c.id)
    )
    rows = conn.execute(query).all()
    if not rows:
        conn.execute(
            signing_keys.insert(),
            {"purpose": purpose, "key_id": "k1", "secret": make_secret(), "created_at": now},
        )
        rows = conn.execute(query).all()
    return SigningKeyring(current_id=rows[-1].key_id, keys={row.key_id: row.secret for row in rows})


def _rotate_signing_key(
    conn: Connection, purpose: str, make_secret: Callable[[], bytes], now: float
) -> SigningKeyInfo:
    used = conn.execute(select(signing_keys.c.key_id).where(signing_keys.c.purpose == purpose)).scalars()
    numbers = [int(key_id[1:]) for key_id in used if key_id[:1] == "k" and key_id[1:].isdigit()]
    key_id = f"k{max(numbers, default=0) + 1}"  # k1, k2, ...: VERP and tokens carry it
    conn.execute(
        signing_keys.insert(),
        {"purpose": purpose, "key_id": key_id, "secret": make_secret(), "created_at": now},
    )
    return SigningKeyInfo(purpose, key_id, now, None, current=True)


def _signing_keys(conn: Connection) -> list[SigningKeyInfo]:
    rows = conn.execute(
        select(
            signing_keys.c.purpose,
            signing_keys.c.key_id,
            signing_keys.c.created_at,
            signing_keys.c.retired_at,
        ).order_by(signing_keys.c.purpose, signing_keys.c.id)
    ).all()
    current = {row.purpose: row.key_id for row in rows if row.retired_at is None}  # the last one wins
    return [
        SigningKeyInfo(
            row.purpose, row.key_id, row.created_at, row.retired_at, current.get(row.purpose) == row.key_id
        )
        for row in rows
    ]
