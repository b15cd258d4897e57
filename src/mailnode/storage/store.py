"""The Store: every read and write of durable state. Each public write is one DB transaction."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Row, and_, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailnode.core.outcome import AttemptResult, Decision, FinalReason, Status, check_transition
from mailnode.core.response import Response
from mailnode.core.transaction import (
    BODY,
    AttemptRecord,
    BlobStatus,
    InlineBlob,
    NewTransaction,
    ReusedBlob,
    TransactionRecord,
    UploadBlob,
)
from mailnode.errors import BlobRangeError, ConflictError, NotFoundError, StorageError
from mailnode.storage.engine import WRITE_OPTION, create_engine
from mailnode.storage.migrations import migrate
from mailnode.storage.tables import (
    api_keys,
    attempts,
    blob_chunks,
    blobs,
    captures,
    sessions,
    transaction_blobs,
    transactions,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")
P = ParamSpec("P")


def shielded(
    method: Callable[Concatenate[Store, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Store, P], Coroutine[Any, Any, T]]:
    """Run a write to completion even if its caller is cancelled.

    A transaction cut off half way by a cancellation can leave the driver's connection holding
    the write lock; shielding lets it commit or roll back whole. The Store tracks the task so
    close() waits for it.
    """

    async def wrapper(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(self, *args, **kwargs))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)

    functools.update_wrapper(wrapper, method)
    return wrapper


def new_rest_id() -> str:
    """A transaction id for URLs: 96 random bits, URL-safe."""
    return secrets.token_urlsafe(12)


class StoreListener(Protocol):
    """Told after each commit: the version cache and the output handler listen."""

    def changed(self, rest_id: str, version: int) -> None: ...

    def queued(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: int
    name: str
    domain: str | None
    prefix: str
    key_hash: str
    created_at: float
    expires_at: float | None
    deactivated_at: float | None


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    id: int
    transaction_rest_id: str
    mail_from: str
    rcpt_to: str
    created_at: float
    size: int
    message: bytes | None  # None in listings


class Store:
    """Durable state on a SQLAlchemy URL (SQLite by default, PostgreSQL by changing the URL)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = time.time,
        new_id: Callable[[], str] = new_rest_id,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._new_id = new_id
        self._listeners: list[StoreListener] = []
        self._writes: set[asyncio.Future[Any]] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        sqlite_synchronous: str = "full",
        clock: Clock = time.time,
        new_id: Callable[[], str] = new_rest_id,
    ) -> Store:
        """Connect, apply migrations, and return a ready Store."""
        engine = create_engine(url, sqlite_synchronous=sqlite_synchronous)
        try:
            await migrate(engine)
        except SQLAlchemyError as exc:
            await engine.dispose()
            raise StorageError(f"cannot open database {url}: {exc}") from exc
        return cls(engine, clock=clock, new_id=new_id)

    async def close(self) -> None:
        """Wait for writes still running (shielded from cancelled callers), then disconnect."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.engine.dispose()

    def subscribe(self, listener: StoreListener) -> None:
        self._listeners.append(listener)

    def _notify(self, records: Iterable[TransactionRecord], *, queued: bool) -> None:
        for record in records:
            for listener in self._listeners:
                listener.changed(record.rest_id, record.version)
        if queued:
            for listener in self._listeners:
                listener.queued()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as connection:
                connection = await connection.execution_options(**{WRITE_OPTION: True})
                async with connection.begin():
                    yield connection
        except SQLAlchemyError as exc:
            raise StorageError(f"database write failed: {exc.__class__.__name__}: {exc}") from exc

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise StorageError(f"database read failed: {exc.__class__.__name__}: {exc}") from exc

    # -- sessions ------------------------------------------------------------------------

    @shielded
    async def register_session(self, session_id: str) -> None:
        now = self.clock()
        async with self._write() as conn:
            await conn.execute(sessions.insert().values(id=session_id, started_at=now, heartbeat_at=now))

    @shielded
    async def heartbeat(self, session_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(sessions).where(sessions.c.id == session_id).values(heartbeat_at=self.clock())
            )

    @shielded
    async def end_session(self, session_id: str) -> None:
        """Forget a session and hand its leases back (graceful stop)."""
        async with self._write() as conn:
            await conn.execute(
                update(transactions)
                .where(transactions.c.lease_owner == session_id)
                .values(lease_owner=None, lease_expires_at=None)
            )
            await conn.execute(delete(sessions).where(sessions.c.id == session_id))

    # -- transactions --------------------------------------------------------------------

    @shielded
    async def create_transaction(
        self, new: NewTransaction, *, lease_owner: str | None = None, lease_seconds: float = 0.0
    ) -> TransactionRecord:
        """Store a new delivery; it is due at once when its body is complete.

        With `lease_owner` the delivery is created leased to that session with its first
        attempt started: the SMTP exploder drives it at once (cut-through).
        """
        async with self._write() as conn:
            record = await self._insert_transaction(
                conn, new, self.clock(), lease_owner=lease_owner, lease_seconds=lease_seconds
            )
        self._notify([record], queued=record.status is Status.QUEUED and lease_owner is None)
        return record

    async def _insert_transaction(
        self,
        conn: AsyncConnection,
        new: NewTransaction,
        now: float,
        *,
        lease_owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> TransactionRecord:
        refs: list[tuple[str, int, bool]] = []  # (name, blob id, finalized)
        for source in new.blobs:
            refs.append((source.name, *await self._blob_for(conn, source, now)))
        input_done = not new.body_later and all(finalized for _, _, finalized in refs)
        status = Status.QUEUED if input_done else Status.AWAITING_BODY
        result = await conn.execute(
            transactions.insert().values(
                rest_id=self._new_id(),
                sender=new.sender,
                mail_from=new.mail_from,
                rcpt_to=new.rcpt_to,
                message_builder=new.message_builder,
                status=status.value,
                version=1,
                created_at=now,
                updated_at=now,
                next_attempt_at=now if input_done else None,
                attempt_count=0 if lease_owner is None else 1,
                lease_owner=lease_owner,
                lease_expires_at=None if lease_owner is None else now + lease_seconds,
                retry=new.retry,
                bounce=new.bounce,
                cancelled=False,
                client_address=new.client_address,
                client_helo=new.client_helo,
                protocol=new.protocol,
                api_key_id=new.api_key_id,
                parent_id=new.parent_id,
            )
        )
        tx_id = _inserted_id(result)
        if lease_owner is not None:
            await conn.execute(attempts.insert().values(transaction_id=tx_id, number=1, started_at=now))
        if refs:
            await conn.execute(
                transaction_blobs.insert(),
                [{"transaction_id": tx_id, "name": name, "blob_id": blob_id} for name, blob_id, _ in refs],
            )
        (record,) = await self._load(conn, [tx_id])
        return record

    async def _blob_for(
        self, conn: AsyncConnection, source: InlineBlob | UploadBlob | ReusedBlob, now: float
    ) -> tuple[int, bool]:
        if isinstance(source, ReusedBlob):
            row = (
                await conn.execute(
                    select(blobs.c.id, blobs.c.stored_length, blobs.c.total_length)
                    .join(transaction_blobs, transaction_blobs.c.blob_id == blobs.c.id)
                    .join(transactions, transactions.c.id == transaction_blobs.c.transaction_id)
                    .where(
                        transactions.c.rest_id == source.source_rest_id,
                        transaction_blobs.c.name == source.source_name,
                    )
                )
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no blob {source.source_name!r} in transaction {source.source_rest_id!r}"
                )
            if row.total_length is None or row.stored_length != row.total_length:
                raise ConflictError(f"blob {source.source_name!r} is not completely uploaded yet")
            return row.id, True
        data = source.data if isinstance(source, InlineBlob) else b""
        total = len(data) if isinstance(source, InlineBlob) else None
        result = await conn.execute(
            blobs.insert().values(stored_length=len(data), total_length=total, created_at=now)
        )
        blob_id = _inserted_id(result)
        if data:
            await conn.execute(blob_chunks.insert().values(blob_id=blob_id, offset=0, data=data))
        return blob_id, total is not None

    async def get_transaction(self, rest_id: str) -> TransactionRecord | None:
        async with self._read() as conn:
            tx_id = await self._id_for(conn, rest_id)
            if tx_id is None:
                return None
            (record,) = await self._load(conn, [tx_id])
            return record

    async def _id_for(self, conn: AsyncConnection, rest_id: str) -> int | None:
        return (
            await conn.execute(select(transactions.c.id).where(transactions.c.rest_id == rest_id))
        ).scalar()

    @shielded
    async def append_blob(
        self, rest_id: str, name: str, start: int, data: bytes, total: int | None
    ) -> BlobStatus:
        """Append an upload chunk at `start`; `total` (when known) finalizes the blob.

        A chunk that overlaps what is stored only adds its new tail, so a client may retry a
        failed upload from an earlier offset; one that leaves a gap raises BlobRangeError.
        """
        now = self.clock()
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(
                        transactions.c.id.label("tx_id"),
                        transactions.c.status,
                        blobs.c.id.label("blob_id"),
                        blobs.c.stored_length,
                        blobs.c.total_length,
                    )
                    .join(transaction_blobs, transaction_blobs.c.transaction_id == transactions.c.id)
                    .join(blobs, blobs.c.id == transaction_blobs.c.blob_id)
                    .where(transactions.c.rest_id == rest_id, transaction_blobs.c.name == name)
                )
            ).first()
            if row is None:
                raise NotFoundError(f"no blob {name!r} in transaction {rest_id!r}")
            status = self._apply_chunk(row, name, start, data, total)
            if status.stored_length > row.stored_length or status.total_length != row.total_length:
                await self._store_chunk(conn, row, status, data[row.stored_length - start :])
                record = await self._after_upload(conn, row.tx_id, Status(row.status), now)
            else:
                record = None
        if record is not None:
            self._notify([record], queued=record.status is Status.QUEUED)
        return status

    @staticmethod
    def _apply_chunk(row: Any, name: str, start: int, data: bytes, total: int | None) -> BlobStatus:
        stored, declared = row.stored_length, row.total_length
        current = BlobStatus(name, stored, declared)
        end = start + len(data)
        if start > stored:
            raise BlobRangeError(f"chunk starts at {start} but {stored} bytes are stored", stored, declared)
        if total is not None and end != total:
            raise BlobRangeError(f"chunk ends at {end}, not at the total length {total}", stored, declared)
        if current.finalized:
            if end > stored or (total is not None and total != declared):
                raise BlobRangeError("the blob is already complete", stored, declared)
            return current
        if Status(row.status).final:
            raise ConflictError("the transaction is finished; no more uploads")
        return BlobStatus(name, max(stored, end), total)

    @staticmethod
    async def _store_chunk(conn: AsyncConnection, row: Any, status: BlobStatus, new_tail: bytes) -> None:
        if new_tail:
            await conn.execute(
                blob_chunks.insert().values(blob_id=row.blob_id, offset=row.stored_length, data=new_tail)
            )
        await conn.execute(
            update(blobs)
            .where(blobs.c.id == row.blob_id)
            .values(stored_length=status.stored_length, total_length=status.total_length)
        )

    async def _after_upload(
        self, conn: AsyncConnection, tx_id: int, status: Status, now: float
    ) -> TransactionRecord:
        (record,) = await self._load(conn, [tx_id])
        values: dict[str, Any] = {"version": transactions.c.version + 1, "updated_at": now}
        if status is Status.AWAITING_BODY and record.input_done:
            check_transition(status, Status.QUEUED)
            values.update(status=Status.QUEUED.value, next_attempt_at=now)
        await conn.execute(update(transactions).where(transactions.c.id == tx_id).values(**values))
        (record,) = await self._load(conn, [tx_id])
        return record

    @shielded
    async def attach_body(self, tx_ids: Sequence[int], data: bytes) -> list[TransactionRecord]:
        """Store one body for deliveries created with `body_later`, shared by all of them."""
        now = self.clock()
        async with self._write() as conn:
            blob_id, _ = await self._blob_for(conn, InlineBlob(BODY, data), now)
            await conn.execute(
                transaction_blobs.insert(),
                [{"transaction_id": tx_id, "name": BODY, "blob_id": blob_id} for tx_id in tx_ids],
            )
            await conn.execute(
                update(transactions)
                .where(transactions.c.id.in_(tx_ids), transactions.c.status == Status.AWAITING_BODY.value)
                .values(
                    status=Status.QUEUED.value,
                    next_attempt_at=now,
                    updated_at=now,
                    version=transactions.c.version + 1,
                )
            )
            records = await self._load(conn, list(tx_ids))
        self._notify(records, queued=False)
        return records

    @shielded
    async def cancel(self, rest_id: str) -> TransactionRecord:
        """Cancel a delivery that is not finished; a finished one keeps its outcome."""
        now = self.clock()
        async with self._write() as conn:
            tx_id = await self._id_for(conn, rest_id)
            if tx_id is None:
                raise NotFoundError(f"no transaction {rest_id!r}")
            (record,) = await self._load(conn, [tx_id])
            if record.status.final:
                return record
            check_transition(record.status, Status.CANCELLED)
            await conn.execute(
                update(transactions)
                .where(transactions.c.id == tx_id)
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
            (record,) = await self._load(conn, [tx_id])
        self._notify([record], queued=False)
        return record

    # -- the output handler's side -------------------------------------------------------

    @shielded
    async def claim_due(self, owner: str, *, limit: int, lease_seconds: float) -> list[TransactionRecord]:
        """Lease up to `limit` due deliveries to `owner` and start an attempt of each."""
        now = self.clock()
        async with self._write() as conn:
            due = (
                await conn.execute(
                    select(transactions.c.id, transactions.c.attempt_count)
                    .where(
                        transactions.c.status == Status.QUEUED.value,
                        transactions.c.next_attempt_at <= now,
                        or_(
                            transactions.c.lease_owner.is_(None),
                            transactions.c.lease_expires_at < now,
                        ),
                    )
                    .order_by(transactions.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not due:
                return []
            ids = [row.id for row in due]
            await conn.execute(
                update(transactions)
                .where(transactions.c.id.in_(ids))
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    attempt_count=transactions.c.attempt_count + 1,
                    version=transactions.c.version + 1,
                    updated_at=now,
                )
            )
            await conn.execute(
                attempts.insert(),
                [
                    {"transaction_id": row.id, "number": row.attempt_count + 1, "started_at": now}
                    for row in due
                ],
            )
            records = await self._load(conn, ids)
        self._notify(records, queued=False)
        return records

    async def next_due_at(self) -> float | None:
        """When the earliest queued delivery is due (None: nothing queued)."""
        async with self._read() as conn:
            due: float | None = (
                await conn.execute(
                    select(func.min(transactions.c.next_attempt_at)).where(
                        transactions.c.status == Status.QUEUED.value
                    )
                )
            ).scalar()
            return due

    @shielded
    async def renew_leases(self, owner: str, tx_ids: Sequence[int], lease_seconds: float) -> None:
        if not tx_ids:
            return
        async with self._write() as conn:
            await conn.execute(
                update(transactions)
                .where(transactions.c.id.in_(tx_ids), transactions.c.lease_owner == owner)
                .values(lease_expires_at=self.clock() + lease_seconds)
            )

    async def read_blobs(self, tx_id: int) -> dict[str, bytes]:
        """Every blob of a transaction, by name, as bytes."""
        async with self._read() as conn:
            rows = await conn.execute(
                select(transaction_blobs.c.name, blob_chunks.c.data)
                .join(blob_chunks, blob_chunks.c.blob_id == transaction_blobs.c.blob_id)
                .where(transaction_blobs.c.transaction_id == tx_id)
                .order_by(transaction_blobs.c.name, blob_chunks.c.offset)
            )
            parts: dict[str, list[bytes]] = defaultdict(list)
            for name, data in rows:
                parts[name].append(data)
            names = await conn.execute(
                select(transaction_blobs.c.name).where(transaction_blobs.c.transaction_id == tx_id)
            )
            return {name: b"".join(parts.get(name, ())) for (name,) in names}

    @shielded
    async def finish_attempt(
        self,
        record: TransactionRecord,
        owner: str,
        result: AttemptResult,
        decision: Decision,
        dsn: NewTransaction | None = None,
    ) -> TransactionRecord | None:
        """Record an attempt's answers and the delivery's next state; queue a DSN if given.

        Returns None when the lease was lost meanwhile (the answers are still recorded).
        """
        now = self.clock()
        async with self._write() as conn:
            await conn.execute(
                update(attempts)
                .where(
                    attempts.c.transaction_id == record.id,
                    attempts.c.number == record.attempt_count,
                )
                .values(finished_at=now, remote_host=result.remote_host, **_response_columns(result))
            )
            current = (
                await conn.execute(
                    select(transactions.c.status, transactions.c.lease_owner).where(
                        transactions.c.id == record.id
                    )
                )
            ).first()
            if current is None or current.lease_owner != owner:
                log.warning("lease lost before the attempt finished tx=%s", record.rest_id)
                return None
            values: dict[str, Any] = {
                "lease_owner": None,
                "lease_expires_at": None,
                "updated_at": now,
                "version": transactions.c.version + 1,
            }
            status = Status(current.status)
            if not status.final:  # not cancelled meanwhile
                check_transition(status, decision.status)
                values.update(
                    status=decision.status.value,
                    final_attempt_reason=decision.final_reason.value if decision.final_reason else None,
                    next_attempt_at=decision.next_attempt_at,
                    finished_at=now if decision.status.final else None,
                )
            await conn.execute(update(transactions).where(transactions.c.id == record.id).values(**values))
            (updated,) = await self._load(conn, [record.id])
            changed = [updated]
            if dsn is not None:
                changed.append(await self._insert_transaction(conn, dsn, now))
        self._notify(changed, queued=dsn is not None or updated.status is Status.QUEUED)
        return updated

    @shielded
    async def expire_awaiting_body(self, older_than: float) -> int:
        """End deliveries whose body never arrived (final reason "downstream timeout")."""
        now = self.clock()
        async with self._write() as conn:
            expired = select(transactions.c.id).where(
                transactions.c.status == Status.AWAITING_BODY.value,
                transactions.c.updated_at < older_than,
            )
            ids = (await conn.execute(expired)).scalars().all()
            if not ids:
                return 0
            await conn.execute(
                update(transactions)
                .where(transactions.c.id.in_(ids))
                .values(
                    status=Status.FAILED.value,
                    final_attempt_reason=FinalReason.DOWNSTREAM_TIMEOUT.value,
                    finished_at=now,
                    updated_at=now,
                    version=transactions.c.version + 1,
                )
            )
            records = await self._load(conn, ids)
        # Wake hanging GETs now rather than at their next poll.
        self._notify(records, queued=False)
        return len(records)

    @shielded
    async def collect_garbage(self, finished_before: float, *, batch: int = 1000) -> int:
        """Delete finished deliveries (and blobs nobody references any more)."""
        async with self._write() as conn:
            ids = (
                (
                    await conn.execute(
                        select(transactions.c.id)
                        .where(
                            transactions.c.finished_at < finished_before,
                            transactions.c.lease_owner.is_(None),
                        )
                        .limit(batch)
                    )
                )
                .scalars()
                .all()
            )
            if ids:
                await conn.execute(delete(transactions).where(transactions.c.id.in_(ids)))
            orphans = select(blobs.c.id).where(
                ~select(transaction_blobs.c.blob_id).where(transaction_blobs.c.blob_id == blobs.c.id).exists()
            )
            await conn.execute(delete(blobs).where(blobs.c.id.in_(orphans)))
            return len(ids)

    # -- loading records -----------------------------------------------------------------

    async def _load(self, conn: AsyncConnection, ids: Sequence[int]) -> list[TransactionRecord]:
        rows = {
            row.id: row for row in await conn.execute(select(transactions).where(transactions.c.id.in_(ids)))
        }
        blob_rows = await conn.execute(
            select(
                transaction_blobs.c.transaction_id,
                transaction_blobs.c.name,
                blobs.c.stored_length,
                blobs.c.total_length,
            )
            .join(blobs, blobs.c.id == transaction_blobs.c.blob_id)
            .where(transaction_blobs.c.transaction_id.in_(ids))
            .order_by(transaction_blobs.c.name)
        )
        blob_status: dict[int, list[BlobStatus]] = defaultdict(list)
        for tx_id, name, stored, total in blob_rows:
            blob_status[tx_id].append(BlobStatus(name, stored, total))
        attempt_rows = await conn.execute(
            select(attempts)
            .join(
                transactions,
                and_(
                    transactions.c.id == attempts.c.transaction_id,
                    transactions.c.attempt_count == attempts.c.number,
                ),
            )
            .where(attempts.c.transaction_id.in_(ids))
        )
        latest = {row.transaction_id: row for row in attempt_rows}
        return [_record(rows[i], tuple(blob_status[i]), latest.get(i)) for i in ids]

    # -- capture endpoint ----------------------------------------------------------------

    @shielded
    async def add_capture(self, rest_id: str, mail_from: str, rcpt_to: str, message: bytes) -> int:
        async with self._write() as conn:
            result = await conn.execute(
                captures.insert().values(
                    transaction_rest_id=rest_id,
                    mail_from=mail_from,
                    rcpt_to=rcpt_to,
                    created_at=self.clock(),
                    message=message,
                )
            )
            return _inserted_id(result)

    async def list_captures(self, *, limit: int = 50, before_id: int | None = None) -> list[CaptureRecord]:
        query = (
            select(
                captures.c.id,
                captures.c.transaction_rest_id,
                captures.c.mail_from,
                captures.c.rcpt_to,
                captures.c.created_at,
                func.length(captures.c.message).label("size"),
            )
            .order_by(captures.c.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            query = query.where(captures.c.id < before_id)
        async with self._read() as conn:
            return [CaptureRecord(*row, message=None) for row in await conn.execute(query)]

    async def get_capture(self, capture_id: int) -> CaptureRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(captures).where(captures.c.id == capture_id))).first()
        if row is None:
            return None
        return CaptureRecord(
            row.id,
            row.transaction_rest_id,
            row.mail_from,
            row.rcpt_to,
            row.created_at,
            len(row.message),
            row.message,
        )

    # -- API keys ------------------------------------------------------------------------

    @shielded
    async def add_api_key(
        self, *, name: str, domain: str | None, prefix: str, key_hash: str, expires_at: float | None
    ) -> ApiKeyRecord:
        now = self.clock()
        async with self._write() as conn:
            result = await conn.execute(
                api_keys.insert().values(
                    name=name,
                    domain=domain,
                    prefix=prefix,
                    key_hash=key_hash,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            key_id = _inserted_id(result)
        return ApiKeyRecord(key_id, name, domain, prefix, key_hash, now, expires_at, None)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash))).first()
        return None if row is None else ApiKeyRecord(*row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self._read() as conn:
            return [
                ApiKeyRecord(*row) for row in await conn.execute(select(api_keys).order_by(api_keys.c.id))
            ]


def _inserted_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _response_columns(result: AttemptResult) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for stage, response in (("mail", result.mail), ("rcpt", result.rcpt), ("data", result.data)):
        columns[f"{stage}_code"] = response.code if response else None
        columns[f"{stage}_message"] = response.message if response else None
    return columns


def _response(code: int | None, message: str | None) -> Response | None:
    return None if code is None else Response(code, message or "")


def _record(
    row: Row[Any], blob_status: tuple[BlobStatus, ...], attempt: Row[Any] | None
) -> TransactionRecord:
    latest = None
    if attempt is not None:
        latest = AttemptRecord(
            number=attempt.number,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
            mail=_response(attempt.mail_code, attempt.mail_message),
            rcpt=_response(attempt.rcpt_code, attempt.rcpt_message),
            data=_response(attempt.data_code, attempt.data_message),
            remote_host=attempt.remote_host,
        )
    return TransactionRecord(
        id=row.id,
        rest_id=row.rest_id,
        sender=row.sender,
        mail_from=row.mail_from,
        rcpt_to=row.rcpt_to,
        status=Status(row.status),
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_attempt_at=row.next_attempt_at,
        attempt_count=row.attempt_count,
        final_attempt_reason=row.final_attempt_reason,
        cancelled=row.cancelled,
        retry=row.retry,
        bounce=row.bounce,
        protocol=row.protocol,
        client_address=row.client_address,
        client_helo=row.client_helo,
        parent_id=row.parent_id,
        message_builder=row.message_builder,
        blobs=blob_status,
        latest_attempt=latest,
    )
