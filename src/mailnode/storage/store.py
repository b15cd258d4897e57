"""The Store: every read and write of durable state. Each public write is one DB transaction."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

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
from mailnode.storage.engine import concurrent_readers, create_engine
from mailnode.storage.migrations import migrate
from mailnode.storage.tables import (
    api_keys,
    attempts,
    batches,
    blob_chunks,
    blobs,
    captures,
    sessions,
    transaction_blobs,
    transactions,
)
from mailnode.storage.threads import DatabaseThreads

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")

# Reads run beside the writer (SQLite's WAL lets them); a few threads are plenty for short reads.
READER_THREADS = 4


def new_rest_id() -> str:
    """A transaction id for URLs: 96 random bits, URL-safe, starting with a letter or digit
    (an id starting with "-" would read as an option on a command line: `queue cancel -x…`)."""
    while True:
        rest_id = secrets.token_urlsafe(12)
        if rest_id[0].isalnum():
            return rest_id


class StoreListener(Protocol):
    """Told after each commit: the version cache and the output handler listen."""

    def changed(self, rest_id: str, version: int) -> None: ...

    def queued(self) -> None: ...


class TransitionHook(Protocol):
    """Writes more rows in the same database transaction as a delivery's state change.

    Called on the writer thread, inside the write: what it writes commits (or rolls back)
    together with the change. The feedback loop's events and suppressions are written so.
    """

    def created(self, conn: Connection, record: TransactionRecord) -> None: ...

    def attempted(
        self, conn: Connection, record: TransactionRecord, result: AttemptResult, decision: Decision
    ) -> None: ...


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


@dataclass(frozen=True, slots=True)
class QueueQuery:
    """The deliveries an operator means (`mailnode queue`): every filter given must match."""

    statuses: frozenset[Status] = frozenset()
    deferred: bool = False  # queued ones with an attempt made: waiting for the next
    domain: str | None = None  # the sending domain
    recipient: str | None = None  # an address, or "@example.org" for every one at that domain
    created_before: float | None = None
    after_id: int = 0  # the cursor: deliveries with a greater id, oldest first
    limit: int | None = 100


class Store:
    """Durable state on a SQLAlchemy URL (SQLite by default, PostgreSQL by changing the URL).

    Each public method is one unit of synchronous SQLAlchemy work in a database thread
    (storage/threads.py): writes one at a time on the writer thread, each in one transaction;
    reads on a few reader threads beside it. Listeners hear of a write once it has committed.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock = time.time,
        new_id: Callable[[], str] = new_rest_id,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._new_id = new_id
        self._listeners: list[StoreListener] = []
        self._hooks: list[TransitionHook] = []
        self._event_listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        self._writer = DatabaseThreads(engine, threads=1, write=True, name="mailnode-db-writer")
        self._readers = (
            DatabaseThreads(engine, threads=READER_THREADS, write=False, name="mailnode-db-reader")
            if concurrent_readers(engine)
            else self._writer
        )

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
            await asyncio.to_thread(migrate, engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StorageError(f"cannot open database {url}: {exc}") from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock=clock, new_id=new_id)

    async def close(self) -> None:
        """Wait for the writes queued so far (those of cancelled callers too), then disconnect."""
        await self._writer.close()
        await self._readers.close()
        await asyncio.to_thread(self.engine.dispose)

    def subscribe(self, listener: StoreListener) -> None:
        self._listeners.append(listener)

    def on_events(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the running loop) whenever events were written (events_written)."""
        self._event_listeners.append((asyncio.get_running_loop(), listener))

    def events_written(self) -> None:
        """Wake the event listeners; callable from any thread, a database thread included."""
        for loop, listener in self._event_listeners:
            loop.call_soon_threadsafe(listener)

    def add_transition_hook(self, hook: TransitionHook) -> None:
        """Have `hook` write beside every delivery created and every attempt finished."""
        self._hooks.append(hook)

    async def write(
        self, work: Callable[[Connection], T], *, on_commit: Callable[[T], None] | None = None
    ) -> T:
        """Run `work` as one write transaction (for the platform's stores beside this one)."""
        return await self._writer.run(work, on_commit=on_commit)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a reader connection."""
        return await self._readers.run(work)

    def new_id(self) -> str:
        """A new transaction id (random; injectable for tests)."""
        return self._new_id()

    def notify(self, records: Iterable[TransactionRecord], *, queued: bool) -> None:
        """Tell listeners about deliveries another store wrote (after its commit)."""
        self._notify(records, queued=queued)

    def _notify(self, records: Iterable[TransactionRecord], *, queued: bool) -> None:
        for record in records:
            for listener in self._listeners:
                listener.changed(record.rest_id, record.version)
        if queued:
            for listener in self._listeners:
                listener.queued()

    # -- sessions ------------------------------------------------------------------------

    async def register_session(self, session_id: str) -> None:
        now = self.clock()
        await self._writer.run(
            _statements(sessions.insert().values(id=session_id, started_at=now, heartbeat_at=now))
        )

    async def heartbeat(self, session_id: str) -> None:
        await self._writer.run(
            _statements(update(sessions).where(sessions.c.id == session_id).values(heartbeat_at=self.clock()))
        )

    async def end_session(self, session_id: str) -> None:
        """Forget a session and hand its leases back (graceful stop)."""
        await self._writer.run(
            _statements(
                update(transactions)
                .where(transactions.c.lease_owner == session_id)
                .values(lease_owner=None, lease_expires_at=None),
                delete(sessions).where(sessions.c.id == session_id),
            )
        )

    # -- transactions --------------------------------------------------------------------

    async def create_transaction(
        self, new: NewTransaction, *, lease_owner: str | None = None, lease_seconds: float = 0.0
    ) -> TransactionRecord:
        """Store a new delivery; it is due at once when its body is complete.

        With `lease_owner` the delivery is created leased to that session with its first
        attempt started: the SMTP exploder drives it at once (cut-through).
        """
        now = self.clock()

        def committed(record: TransactionRecord) -> None:
            self._notify([record], queued=record.status is Status.QUEUED and lease_owner is None)

        return await self._writer.run(
            lambda conn: self._insert_transaction(
                conn, new, now, lease_owner=lease_owner, lease_seconds=lease_seconds
            ),
            on_commit=committed,
        )

    def _insert_transaction(
        self,
        conn: Connection,
        new: NewTransaction,
        now: float,
        *,
        lease_owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> TransactionRecord:
        refs = [self._blob_for(conn, source, now) for source in new.blobs]
        input_done = not new.body_later and all(status.finalized for _, status in refs)
        status = Status.QUEUED if input_done else Status.AWAITING_BODY
        rest_id = self._new_id()
        next_attempt_at = now if input_done else None
        attempt_count = 0 if lease_owner is None else 1
        result = conn.execute(
            _INSERT_TRANSACTION,
            dict(
                rest_id=rest_id,
                sender=new.sender,
                mail_from=new.mail_from,
                rcpt_to=new.rcpt_to,
                message_builder=new.message_builder,
                status=status.value,
                version=1,
                created_at=now,
                updated_at=now,
                next_attempt_at=next_attempt_at,
                attempt_count=attempt_count,
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
                domain=new.domain,
            ),
        )
        tx_id = _inserted_id(result)
        latest = None
        if lease_owner is not None:
            conn.execute(_INSERT_ATTEMPT, {"transaction_id": tx_id, "number": 1, "started_at": now})
            latest = AttemptRecord(1, now, None, None, None, None, None)
        if refs:
            conn.execute(
                _INSERT_TRANSACTION_BLOB,
                [{"transaction_id": tx_id, "name": s.name, "blob_id": blob_id} for blob_id, s in refs],
            )
        # Built from the values just written rather than read back: it equals what a read returns.
        record = TransactionRecord(
            id=tx_id,
            rest_id=rest_id,
            sender=new.sender,
            mail_from=new.mail_from,
            rcpt_to=new.rcpt_to,
            status=status,
            version=1,
            created_at=now,
            updated_at=now,
            next_attempt_at=next_attempt_at,
            attempt_count=attempt_count,
            final_attempt_reason=None,
            cancelled=False,
            retry=new.retry,
            bounce=new.bounce,
            protocol=new.protocol,
            client_address=new.client_address,
            client_helo=new.client_helo,
            parent_id=new.parent_id,
            message_builder=_as_stored(new.message_builder),
            blobs=_sorted_blobs(s for _, s in refs),
            latest_attempt=latest,
            domain=new.domain,
        )
        for hook in self._hooks:
            hook.created(conn, record)
        return record

    @staticmethod
    def _blob_for(
        conn: Connection, source: InlineBlob | UploadBlob | ReusedBlob, now: float
    ) -> tuple[int, BlobStatus]:
        if isinstance(source, ReusedBlob):
            row = conn.execute(
                _REUSED_BLOB, {"rest_id": source.source_rest_id, "blob_name": source.source_name}
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no blob {source.source_name!r} in transaction {source.source_rest_id!r}"
                )
            if row.total_length is None or row.stored_length != row.total_length:
                raise ConflictError(f"blob {source.source_name!r} is not completely uploaded yet")
            return row.id, BlobStatus(source.name, row.stored_length, row.total_length)
        data = source.data if isinstance(source, InlineBlob) else b""
        total = len(data) if isinstance(source, InlineBlob) else None
        result = conn.execute(
            _INSERT_BLOB, {"stored_length": len(data), "total_length": total, "created_at": now}
        )
        blob_id = _inserted_id(result)
        if data:
            conn.execute(_INSERT_CHUNK, {"blob_id": blob_id, "offset": 0, "data": data})
        return blob_id, BlobStatus(source.name, len(data), total)

    async def get_transaction(self, rest_id: str) -> TransactionRecord | None:
        found = await self._readers.run(lambda conn: _load_rows(conn, _LOAD_BY_REST_ID, rest_id=rest_id))
        return found[0][1] if found else None

    async def append_blob(
        self, rest_id: str, name: str, start: int, data: bytes, total: int | None
    ) -> BlobStatus:
        """Append an upload chunk at `start`; `total` (when known) finalizes the blob.

        A chunk that overlaps what is stored only adds its new tail, so a client may retry a
        failed upload from an earlier offset; one that leaves a gap raises BlobRangeError.
        """
        now = self.clock()

        def committed(result: tuple[BlobStatus, TransactionRecord | None]) -> None:
            _, record = result
            if record is not None:
                self._notify([record], queued=record.status is Status.QUEUED)

        status, _ = await self._writer.run(
            lambda conn: self._append_blob(conn, rest_id, name, start, data, total, now),
            on_commit=committed,
        )
        return status

    def _append_blob(
        self,
        conn: Connection,
        rest_id: str,
        name: str,
        start: int,
        data: bytes,
        total: int | None,
        now: float,
    ) -> tuple[BlobStatus, TransactionRecord | None]:
        row = conn.execute(_UPLOAD_TARGET, {"rest_id": rest_id, "blob_name": name}).first()
        if row is None:
            raise NotFoundError(f"no blob {name!r} in transaction {rest_id!r}")
        status = self._apply_chunk(row, name, start, data, total)
        if status.stored_length == row.stored_length and status.total_length == row.total_length:
            return status, None
        self._store_chunk(conn, row, status, data[row.stored_length - start :])
        return status, self._after_upload(conn, row.tx_id, now)

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
    def _store_chunk(conn: Connection, row: Any, status: BlobStatus, new_tail: bytes) -> None:
        if new_tail:
            conn.execute(
                _INSERT_CHUNK, {"blob_id": row.blob_id, "offset": row.stored_length, "data": new_tail}
            )
        conn.execute(
            _UPDATE_BLOB,
            {"id_": row.blob_id, "stored_length": status.stored_length, "total_length": status.total_length},
        )

    @staticmethod
    def _after_upload(conn: Connection, tx_id: int, now: float) -> TransactionRecord:
        (record,) = _load(conn, [tx_id])
        values: dict[str, Any] = {"id_": tx_id, "updated_at": now}
        changes: dict[str, Any] = {"version": record.version + 1, "updated_at": now}
        if record.status is Status.AWAITING_BODY and record.input_done:
            check_transition(record.status, Status.QUEUED)
            values.update(status=Status.QUEUED.value, next_attempt_at=now)
            changes.update(status=Status.QUEUED, next_attempt_at=now)
        conn.execute(_UPDATE_TRANSACTION, values)
        return replace(record, **changes)

    async def attach_body(
        self, records: Sequence[TransactionRecord], data: bytes, copies: Sequence[NewTransaction] = ()
    ) -> list[TransactionRecord]:
        """Store one body for deliveries created with `body_later`, shared by all of them.

        `copies` are new deliveries created in the same database transaction; their blobs may
        reuse this body by naming one of `records`' transactions.
        """
        now = self.clock()
        waiting = list(records)

        def attach(conn: Connection) -> list[TransactionRecord]:
            attached = self._attach_body(conn, waiting, data, now)
            return attached + [self._insert_transaction(conn, copy, now) for copy in copies]

        return await self._writer.run(
            attach, on_commit=lambda records: self._notify(records, queued=bool(copies))
        )

    def _attach_body(
        self, conn: Connection, records: list[TransactionRecord], data: bytes, now: float
    ) -> list[TransactionRecord]:
        blob_id, blob = self._blob_for(conn, InlineBlob(BODY, data), now)
        conn.execute(
            _INSERT_TRANSACTION_BLOB,
            [{"transaction_id": record.id, "name": BODY, "blob_id": blob_id} for record in records],
        )
        updated = conn.execute(
            _BODY_ATTACHED,
            [{"id_": record.id, "expected_version": record.version, "now": now} for record in records],
        )
        if updated.rowcount != len(records):
            # Changed since the caller read it (a cancel through the API): read what it is now.
            return _load(conn, [record.id for record in records])
        return [
            replace(
                record,
                status=Status.QUEUED,
                next_attempt_at=now,
                updated_at=now,
                version=record.version + 1,
                blobs=_sorted_blobs([*record.blobs, blob]),
            )
            for record in records
        ]

    async def cancel(self, rest_id: str) -> TransactionRecord:
        """Cancel a delivery that is not finished; a finished one keeps its outcome."""
        now = self.clock()

        def committed(result: tuple[TransactionRecord, bool]) -> None:
            record, changed = result
            if changed:
                self._notify([record], queued=False)

        record, _ = await self._writer.run(lambda conn: self._cancel(conn, rest_id, now), on_commit=committed)
        return record

    @staticmethod
    def _cancel(conn: Connection, rest_id: str, now: float) -> tuple[TransactionRecord, bool]:
        found = _load_rows(conn, _LOAD_BY_REST_ID, rest_id=rest_id)
        if not found:
            raise NotFoundError(f"no transaction {rest_id!r}")
        ((_, record),) = found
        if record.status.final:
            return record, False
        check_transition(record.status, Status.CANCELLED)
        conn.execute(
            _UPDATE_TRANSACTION,
            {
                "id_": record.id,
                "status": Status.CANCELLED.value,
                "cancelled": True,
                "final_attempt_reason": FinalReason.CANCELLED.value,
                "finished_at": now,
                "next_attempt_at": None,
                "updated_at": now,
            },
        )
        cancelled = replace(
            record,
            status=Status.CANCELLED,
            cancelled=True,
            final_attempt_reason=FinalReason.CANCELLED.value,
            next_attempt_at=None,
            updated_at=now,
            version=record.version + 1,
        )
        return cancelled, True

    # -- the output handler's side -------------------------------------------------------

    async def claim_due(self, owner: str, *, limit: int, lease_seconds: float) -> list[TransactionRecord]:
        """Lease up to `limit` due deliveries to `owner` and start an attempt of each."""
        now = self.clock()
        return await self._writer.run(
            lambda conn: self._claim_due(conn, owner, limit, now + lease_seconds, now),
            on_commit=lambda records: self._notify(records, queued=False),
        )

    @staticmethod
    def _claim_due(
        conn: Connection, owner: str, limit: int, lease_expires_at: float, now: float
    ) -> list[TransactionRecord]:
        due = conn.execute(_DUE, {"now": now, "limit": limit}).all()
        if not due:
            return []
        ids = [row.id for row in due]
        conn.execute(
            _CLAIM,
            {"ids": ids, "lease_owner": owner, "lease_expires_at": lease_expires_at, "updated_at": now},
        )
        conn.execute(
            _INSERT_ATTEMPT,
            [{"transaction_id": row.id, "number": row.attempt_count + 1, "started_at": now} for row in due],
        )
        statuses = _blob_statuses(conn, ids)
        claimed = []
        for row in due:
            number = row.attempt_count + 1
            started = AttemptRecord(number, now, None, None, None, None, None)
            record = _record(row, statuses.get(row.id, ()), started)
            claimed.append(replace(record, attempt_count=number, version=row.version + 1, updated_at=now))
        return claimed

    async def next_due_at(self) -> float | None:
        """When the earliest queued delivery is due (None: nothing queued)."""
        due: float | None = await self._readers.run(lambda conn: conn.execute(_NEXT_DUE).scalar())
        return due

    async def oldest_unclaimed_due(self) -> float | None:
        """When the longest-waiting delivery that nobody holds became due (None: none waits)."""
        now = self.clock()
        query = select(func.min(transactions.c.next_attempt_at)).where(
            transactions.c.status == Status.QUEUED.value,
            transactions.c.next_attempt_at <= now,
            or_(transactions.c.lease_owner.is_(None), transactions.c.lease_expires_at < now),
        )
        due: float | None = await self._readers.run(lambda conn: conn.execute(query).scalar())
        return due

    async def renew_leases(self, owner: str, tx_ids: Sequence[int], lease_seconds: float) -> None:
        if not tx_ids:
            return
        await self._writer.run(
            _statements(
                update(transactions)
                .where(transactions.c.id.in_(tx_ids), transactions.c.lease_owner == owner)
                .values(lease_expires_at=self.clock() + lease_seconds)
            )
        )

    async def attempts(self, tx_id: int) -> list[AttemptRecord]:
        """Every attempt of a delivery, oldest first."""
        query = select(attempts).where(attempts.c.transaction_id == tx_id).order_by(attempts.c.number)
        return await self._readers.run(lambda conn: [_attempt(row) for row in conn.execute(query)])

    async def read_blobs(self, tx_id: int) -> dict[str, bytes]:
        """Every blob of a transaction, by name, as bytes."""
        return await self._readers.run(lambda conn: _read_blobs(conn, tx_id))

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

        def committed(changed: list[TransactionRecord] | None) -> None:
            if changed is not None:
                self._notify(changed, queued=dsn is not None or changed[0].status is Status.QUEUED)

        changed = await self._writer.run(
            lambda conn: self._finish_attempt(conn, record, owner, result, decision, dsn, now),
            on_commit=committed,
        )
        return None if changed is None else changed[0]

    def _finish_attempt(
        self,
        conn: Connection,
        record: TransactionRecord,
        owner: str,
        result: AttemptResult,
        decision: Decision,
        dsn: NewTransaction | None,
        now: float,
    ) -> list[TransactionRecord] | None:
        """The delivery as updated, then the DSN if one was queued; None if the lease was lost."""
        conn.execute(
            _FINISH_ATTEMPT,
            {
                "tx_id": record.id,
                "attempt_number": record.attempt_count,
                "finished_at": now,
                "remote_host": result.remote_host,
                **_response_columns(result),
            },
        )
        changed = self._finished_as_expected(conn, record, owner, result, decision, now)
        decided = changed is not None
        if changed is None:
            # Changed since the attempt began (a cancel, a lost lease): decide on what it is now.
            found = _load_rows(conn, _LOAD_BY_ID, id_=record.id)
            if not found or found[0][0].lease_owner != owner:
                log.warning("lease lost before the attempt finished tx=%s", record.rest_id)
                return None
            ((_, current),) = found
            decided = not current.status.final  # else cancelled meanwhile: that stands
            changed = self._finish(conn, current, decision if decided else None, now)
        if decided:
            for hook in self._hooks:
                hook.attempted(conn, changed, result, decision)
        finished = [changed]
        if dsn is not None:
            finished.append(self._insert_transaction(conn, dsn, now))
        return finished

    @staticmethod
    def _finished_as_expected(
        conn: Connection,
        record: TransactionRecord,
        owner: str,
        result: AttemptResult,
        decision: Decision,
        now: float,
    ) -> TransactionRecord | None:
        """Write the attempt's outcome if the delivery is as the attempt began it: still at
        `record.version` and leased to `owner` (one UPDATE, no read); None if it is not."""
        if record.status.final:  # cancelled before the attempt ended: the cancel stands
            return None
        check_transition(record.status, decision.status)
        updated = conn.execute(
            _FINISH_EXPECTED,
            {
                "id_": record.id,
                "expected_version": record.version,
                "owner": owner,
                "version": record.version + 1,
                "updated_at": now,
                **_outcome_columns(decision, now),
            },
        )
        if updated.rowcount != 1:
            return None
        started_at = record.latest_attempt.started_at if record.latest_attempt else now
        attempt = AttemptRecord(
            record.attempt_count, started_at, now, result.mail, result.rcpt, result.data, result.remote_host
        )
        return replace(
            record,
            latest_attempt=attempt,
            updated_at=now,
            version=record.version + 1,
            **_outcome_changes(decision),
        )

    @staticmethod
    def _finish(
        conn: Connection, current: TransactionRecord, decision: Decision | None, now: float
    ) -> TransactionRecord:
        """Release the lease of a delivery as read back, and set the attempt's outcome if
        `decision` is given."""
        values: dict[str, Any] = {
            "id_": current.id,
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        changes: dict[str, Any] = {"updated_at": now, "version": current.version + 1}
        if decision is not None:
            check_transition(current.status, decision.status)
            values.update(_outcome_columns(decision, now))
            changes.update(_outcome_changes(decision))
        conn.execute(_UPDATE_TRANSACTION, values)
        return replace(current, **changes)

    async def cancel_orphans(self, live_session: str, senders: Sequence[str]) -> int:
        """Cancel deliveries of `senders` (the SMTP listeners') still awaiting their body that
        another process started: it was killed before the client's DATA was committed, so the
        client never heard 250 and will send again. Otherwise they would wait for
        [storage] body_timeout_seconds. Call once at start, when no other process serves."""
        now = self.clock()
        orphans = select(transactions.c.rest_id).where(
            transactions.c.status == Status.AWAITING_BODY.value,
            transactions.c.sender.in_(list(senders)),
            or_(transactions.c.lease_owner.is_(None), transactions.c.lease_owner != live_session),
        )

        def cancel_all(conn: Connection) -> list[TransactionRecord]:
            rest_ids = list(conn.execute(orphans).scalars())
            return [self._cancel(conn, rest_id, now)[0] for rest_id in rest_ids]

        records = await self._writer.run(
            cancel_all, on_commit=lambda records: self._notify(records, queued=False)
        )
        return len(records)

    async def expire_awaiting_body(self, older_than: float) -> int:
        """End deliveries whose body never arrived (final reason "downstream timeout")."""
        now = self.clock()
        # Wake hanging GETs now rather than at their next poll.
        records = await self._writer.run(
            lambda conn: self._expire_awaiting_body(conn, older_than, now),
            on_commit=lambda records: self._notify(records, queued=False),
        )
        return len(records)

    @staticmethod
    def _expire_awaiting_body(conn: Connection, older_than: float, now: float) -> list[TransactionRecord]:
        expired = select(transactions.c.id).where(
            transactions.c.status == Status.AWAITING_BODY.value,
            transactions.c.updated_at < older_than,
        )
        ids = list(conn.execute(expired).scalars())
        if not ids:
            return []
        conn.execute(
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
        return _load(conn, ids)

    async def collect_garbage(self, finished_before: float, *, batch: int = 1000) -> int:
        """Delete finished deliveries (and blobs nobody references any more)."""
        return await self._writer.run(lambda conn: _collect_garbage(conn, finished_before, batch))

    # -- the operator's side (`mailnode queue`) -------------------------------------------

    async def list_deliveries(self, query: QueueQuery) -> list[TransactionRecord]:
        """The deliveries `query` matches, oldest first after its cursor."""
        statement = _LOAD.where(*_queue_where(query)).order_by(transactions.c.id)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        return await self._readers.run(lambda conn: [record for _, record in _load_rows(conn, statement)])

    async def count_deliveries(self, query: QueueQuery) -> int:
        """How many deliveries `query` matches (its cursor counts, its limit does not)."""
        statement = select(func.count()).select_from(transactions).where(*_queue_where(query))
        return int(await self._readers.run(lambda conn: conn.execute(statement).scalar() or 0))

    async def retry(self, rest_id: str) -> TransactionRecord:
        """Make a queued delivery due now, or queue a failed one again for one more attempt."""
        now = self.clock()
        return await self._writer.run(
            lambda conn: self._retry(conn, rest_id, now),
            on_commit=lambda record: self._notify([record], queued=True),
        )

    @staticmethod
    def _retry(conn: Connection, rest_id: str, now: float) -> TransactionRecord:
        found = _load_rows(conn, _LOAD_BY_REST_ID, rest_id=rest_id)
        if not found:
            raise NotFoundError(f"no delivery {rest_id!r}")
        ((_, record),) = found
        if record.status not in (Status.QUEUED, Status.FAILED):
            raise ConflictError(
                f"delivery {rest_id} is {record.status.value}: only queued and failed ones can be retried"
            )
        check_transition(record.status, Status.QUEUED)
        conn.execute(
            _UPDATE_TRANSACTION,
            {
                "id_": record.id,
                "status": Status.QUEUED.value,
                "final_attempt_reason": None,
                "finished_at": None,
                "next_attempt_at": now,
                "updated_at": now,
            },
        )
        return replace(
            record,
            status=Status.QUEUED,
            final_attempt_reason=None,
            next_attempt_at=now,
            updated_at=now,
            version=record.version + 1,
        )

    async def purge(self, query: QueueQuery) -> int:
        """Delete the finished deliveries `query` matches (and blobs nobody references any more)."""
        return await self._writer.run(lambda conn: _purge(conn, query))

    # -- capture endpoint ----------------------------------------------------------------

    async def add_capture(self, rest_id: str, mail_from: str, rcpt_to: str, message: bytes) -> int:
        statement = captures.insert().values(
            transaction_rest_id=rest_id,
            mail_from=mail_from,
            rcpt_to=rcpt_to,
            created_at=self.clock(),
            message=message,
        )
        return await self._writer.run(lambda conn: _inserted_id(conn.execute(statement)))

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
        return await self._readers.run(
            lambda conn: [CaptureRecord(*row, message=None) for row in conn.execute(query)]
        )

    async def get_capture(self, capture_id: int) -> CaptureRecord | None:
        query = select(captures).where(captures.c.id == capture_id)
        row = await self._readers.run(lambda conn: conn.execute(query).first())
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

    async def add_api_key(
        self, *, name: str, domain: str | None, prefix: str, key_hash: str, expires_at: float | None
    ) -> ApiKeyRecord:
        now = self.clock()
        statement = api_keys.insert().values(
            name=name,
            domain=domain,
            prefix=prefix,
            key_hash=key_hash,
            created_at=now,
            expires_at=expires_at,
        )
        key_id = await self._writer.run(lambda conn: _inserted_id(conn.execute(statement)))
        return ApiKeyRecord(key_id, name, domain, prefix, key_hash, now, expires_at, None)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = await self._readers.run(
            lambda conn: conn.execute(_API_KEY_BY_HASH, {"key_hash": key_hash}).first()
        )
        return None if row is None else ApiKeyRecord(*row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        query = select(api_keys).order_by(api_keys.c.id)
        return await self._readers.run(lambda conn: [ApiKeyRecord(*row) for row in conn.execute(query)])

    async def deactivate_api_key(self, key_id: int) -> ApiKeyRecord | None:
        """Deactivate a key for good (any domain's); None if there is no such key."""
        now = self.clock()
        statement = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.deactivated_at.is_(None))
            .values(deactivated_at=now)
        )
        query = select(api_keys).where(api_keys.c.id == key_id)

        def work(conn: Connection) -> ApiKeyRecord | None:
            conn.execute(statement)
            row = conn.execute(query).first()
            return None if row is None else ApiKeyRecord(*row)

        return await self._writer.run(work)


# -- statements ------------------------------------------------------------------------------
# Built once, with bind parameters: SQLAlchemy then finds their compiled form without building
# each statement and its cache key again for every call (a profile showed that cost).

_INSERT_TRANSACTION = transactions.insert()
_INSERT_ATTEMPT = attempts.insert()
_INSERT_BLOB = blobs.insert()
_INSERT_CHUNK = blob_chunks.insert()
_INSERT_TRANSACTION_BLOB = transaction_blobs.insert()

# Columns not named here are set from the parameters given with the statement.
_UPDATE_TRANSACTION = (
    update(transactions)
    .where(transactions.c.id == bindparam("id_"))
    .values(version=transactions.c.version + 1)
)
_UPDATE_BLOB = update(blobs).where(blobs.c.id == bindparam("id_"))
# Optimistic writes: they change a row only if it is still at the version the caller read;
# a rowcount short of the rows meant sends the caller to read what changed.
_BODY_ATTACHED = (
    update(transactions)
    .where(
        transactions.c.id == bindparam("id_"),
        transactions.c.version == bindparam("expected_version"),
        transactions.c.status == Status.AWAITING_BODY.value,
    )
    .values(
        status=Status.QUEUED.value,
        next_attempt_at=bindparam("now"),
        updated_at=bindparam("now"),
        version=transactions.c.version + 1,
    )
)
_FINISH_EXPECTED = (
    update(transactions)
    .where(
        transactions.c.id == bindparam("id_"),
        transactions.c.version == bindparam("expected_version"),
        transactions.c.lease_owner == bindparam("owner"),
    )
    .values(lease_owner=None, lease_expires_at=None)
)
_FINISH_ATTEMPT = update(attempts).where(
    attempts.c.transaction_id == bindparam("tx_id"), attempts.c.number == bindparam("attempt_number")
)
_DUE = (
    select(transactions)
    .where(
        transactions.c.status == Status.QUEUED.value,
        transactions.c.next_attempt_at <= bindparam("now"),
        or_(transactions.c.lease_owner.is_(None), transactions.c.lease_expires_at < bindparam("now")),
    )
    .order_by(transactions.c.next_attempt_at)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)
_CLAIM = (
    update(transactions)
    .where(transactions.c.id.in_(bindparam("ids", expanding=True)))
    .values(attempt_count=transactions.c.attempt_count + 1, version=transactions.c.version + 1)
)

_REUSED_BLOB = (
    select(blobs.c.id, blobs.c.stored_length, blobs.c.total_length)
    .join(transaction_blobs, transaction_blobs.c.blob_id == blobs.c.id)
    .join(transactions, transactions.c.id == transaction_blobs.c.transaction_id)
    .where(
        transactions.c.rest_id == bindparam("rest_id"),
        transaction_blobs.c.name == bindparam("blob_name"),
    )
)
_UPLOAD_TARGET = (
    select(
        transactions.c.id.label("tx_id"),
        transactions.c.status,
        blobs.c.id.label("blob_id"),
        blobs.c.stored_length,
        blobs.c.total_length,
    )
    .join(transaction_blobs, transaction_blobs.c.transaction_id == transactions.c.id)
    .join(blobs, blobs.c.id == transaction_blobs.c.blob_id)
    .where(transactions.c.rest_id == bindparam("rest_id"), transaction_blobs.c.name == bindparam("blob_name"))
)
_READ_BLOBS = (
    select(transaction_blobs.c.name, blob_chunks.c.data)
    .select_from(
        transaction_blobs.outerjoin(blob_chunks, blob_chunks.c.blob_id == transaction_blobs.c.blob_id)
    )
    .where(transaction_blobs.c.transaction_id == bindparam("tx_id"))
    .order_by(transaction_blobs.c.name, blob_chunks.c.offset)
)
_NEXT_DUE = select(func.min(transactions.c.next_attempt_at)).where(
    transactions.c.status == Status.QUEUED.value
)
_API_KEY_BY_HASH = select(api_keys).where(api_keys.c.key_hash == bindparam("key_hash"))

# A transaction's row comes with its latest attempt's columns, labelled attempt_*.
_LOAD = select(
    transactions,
    *(column.label(f"attempt_{column.name}") for column in attempts.c if column.name != "transaction_id"),
).select_from(
    transactions.outerjoin(
        attempts,
        and_(
            attempts.c.transaction_id == transactions.c.id,
            attempts.c.number == transactions.c.attempt_count,
        ),
    )
)
_LOAD_BY_IDS = _LOAD.where(transactions.c.id.in_(bindparam("ids", expanding=True)))
# One-row forms: cheaper to run than an IN with one value, and by far the most common.
_LOAD_BY_ID = _LOAD.where(transactions.c.id == bindparam("id_"))
_LOAD_BY_REST_ID = _LOAD.where(transactions.c.rest_id == bindparam("rest_id"))
_BLOB_STATUS = select(
    transaction_blobs.c.transaction_id,
    transaction_blobs.c.name,
    blobs.c.stored_length,
    blobs.c.total_length,
).join(blobs, blobs.c.id == transaction_blobs.c.blob_id)
_BLOB_STATUSES = _BLOB_STATUS.where(transaction_blobs.c.transaction_id.in_(bindparam("ids", expanding=True)))
_BLOB_STATUSES_OF_ONE = _BLOB_STATUS.where(transaction_blobs.c.transaction_id == bindparam("id_"))


# -- units and their parts (run in a database thread) -------------------------------------


def _statements(*statements: Executable) -> Callable[[Connection], None]:
    """A unit that executes `statements` in order."""

    def work(conn: Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return work


def _read_blobs(conn: Connection, tx_id: int) -> dict[str, bytes]:
    rows = conn.execute(_READ_BLOBS, {"tx_id": tx_id})
    parts: dict[str, list[bytes]] = {}
    for name, data in rows:
        chunks = parts.setdefault(name, [])
        if data is not None:  # an empty blob has no chunk
            chunks.append(data)
    return {name: b"".join(chunks) for name, chunks in parts.items()}


def _collect_garbage(conn: Connection, finished_before: float, batch: int) -> int:
    ids = list(
        conn.execute(
            select(transactions.c.id)
            .where(
                transactions.c.finished_at < finished_before,
                transactions.c.lease_owner.is_(None),
            )
            .limit(batch)
        ).scalars()
    )
    if ids:
        conn.execute(delete(transactions).where(transactions.c.id.in_(ids)))
    # A batch outlives its deliveries only until GC finds none left (and it is old enough).
    conn.execute(
        delete(batches).where(
            batches.c.created_at < finished_before,
            ~select(transactions.c.id).where(transactions.c.batch_id == batches.c.id).exists(),
        )
    )
    _delete_orphan_blobs(conn)
    return len(ids)


def _delete_orphan_blobs(conn: Connection) -> None:
    orphans = select(blobs.c.id).where(
        ~select(transaction_blobs.c.blob_id).where(transaction_blobs.c.blob_id == blobs.c.id).exists(),
        ~select(batches.c.id).where(batches.c.content_blob_id == blobs.c.id).exists(),
    )
    conn.execute(delete(blobs).where(blobs.c.id.in_(orphans)))


def _queue_where(query: QueueQuery) -> list[ColumnElement[bool]]:
    """QueueQuery's filters as SQL conditions on transactions."""
    where: list[ColumnElement[bool]] = [transactions.c.id > query.after_id]
    states: list[ColumnElement[bool]] = []
    if query.statuses:
        states.append(transactions.c.status.in_([status.value for status in query.statuses]))
    if query.deferred:
        states.append(and_(transactions.c.status == Status.QUEUED.value, transactions.c.attempt_count > 0))
    if states:
        where.append(or_(*states))
    if query.domain is not None:
        where.append(transactions.c.domain == query.domain)
    if query.recipient is not None:
        recipient = func.lower(transactions.c.rcpt_to)
        wanted = query.recipient.lower()
        where.append(
            recipient.endswith(wanted, autoescape=True) if wanted.startswith("@") else recipient == wanted
        )
    if query.created_before is not None:
        where.append(transactions.c.created_at < query.created_before)
    return where


def _purge(conn: Connection, query: QueueQuery) -> int:
    """Delete what `query` matches among finished deliveries no session holds."""
    finished = [status.value for status in Status if status.final]
    ids = select(transactions.c.id).where(
        *_queue_where(query), transactions.c.status.in_(finished), transactions.c.lease_owner.is_(None)
    )
    if query.limit is not None:
        ids = ids.limit(query.limit)
    result = conn.execute(delete(transactions).where(transactions.c.id.in_(ids)))
    _delete_orphan_blobs(conn)
    return int(result.rowcount)


# -- loading records -------------------------------------------------------------------------


def _load(conn: Connection, ids: Sequence[int]) -> list[TransactionRecord]:
    """The records of `ids`, in that order."""
    if len(ids) == 1:
        found = _load_rows(conn, _LOAD_BY_ID, id_=ids[0])
    else:
        found = _load_rows(conn, _LOAD_BY_IDS, ids=list(ids))
    records = {record.id: record for _, record in found}
    return [records[tx_id] for tx_id in ids]


def _load_rows(
    conn: Connection, query: Select[Any], **params: Any
) -> list[tuple[Row[Any], TransactionRecord]]:
    """The transactions `query` finds: their rows, and their records."""
    rows = conn.execute(query, params).all()
    if not rows:
        return []
    statuses = _blob_statuses(conn, [row.id for row in rows])
    return [(row, _record(row, statuses.get(row.id, ()), _latest_attempt(row))) for row in rows]


def _blob_statuses(conn: Connection, ids: list[int]) -> dict[int, tuple[BlobStatus, ...]]:
    found: dict[int, list[BlobStatus]] = defaultdict(list)
    if len(ids) == 1:
        rows = conn.execute(_BLOB_STATUSES_OF_ONE, {"id_": ids[0]})
    else:
        rows = conn.execute(_BLOB_STATUSES, {"ids": ids})
    for tx_id, name, stored, total in rows:
        found[tx_id].append(BlobStatus(name, stored, total))
    return {tx_id: _sorted_blobs(statuses) for tx_id, statuses in found.items()}


def _sorted_blobs(statuses: Iterable[BlobStatus]) -> tuple[BlobStatus, ...]:
    # Sorted here rather than by the database, whose collation may differ from Python's.
    return tuple(sorted(statuses, key=lambda status: status.name))


def _as_stored(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON column's value as a read returns it (JSON-encoded and decoded again)."""
    return None if value is None else cast(dict[str, Any], json.loads(json.dumps(value)))


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


def _outcome_columns(decision: Decision, now: float) -> dict[str, Any]:
    """The transactions columns an attempt's decision sets."""
    return {
        "status": decision.status.value,
        "final_attempt_reason": decision.final_reason.value if decision.final_reason else None,
        "next_attempt_at": decision.next_attempt_at,
        "finished_at": now if decision.status.final else None,
    }


def _outcome_changes(decision: Decision) -> dict[str, Any]:
    """The same decision as changes to a TransactionRecord."""
    return {
        "status": decision.status,
        "final_attempt_reason": decision.final_reason.value if decision.final_reason else None,
        "next_attempt_at": decision.next_attempt_at,
    }


def _response(code: int | None, message: str | None) -> Response | None:
    return None if code is None else Response(code, message or "")


def _latest_attempt(row: Row[Any]) -> AttemptRecord | None:
    """The attempt columns _LOAD joins in (labelled attempt_*), if there is an attempt."""
    return None if row.attempt_number is None else _attempt(row, "attempt_")


def _attempt(row: Row[Any], prefix: str = "") -> AttemptRecord:
    """An attempts row, or its columns under `prefix` in a wider row."""
    column = row._mapping
    return AttemptRecord(
        number=column[f"{prefix}number"],
        started_at=column[f"{prefix}started_at"],
        finished_at=column[f"{prefix}finished_at"],
        mail=_response(column[f"{prefix}mail_code"], column[f"{prefix}mail_message"]),
        rcpt=_response(column[f"{prefix}rcpt_code"], column[f"{prefix}rcpt_message"]),
        data=_response(column[f"{prefix}data_code"], column[f"{prefix}data_message"]),
        remote_host=column[f"{prefix}remote_host"],
    )


def _record(
    row: Row[Any], blob_status: tuple[BlobStatus, ...], latest: AttemptRecord | None
) -> TransactionRecord:
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
        batch_id=row.batch_id,
        recipient=row.recipient,
        domain=row.domain,
    )


# For the platform's stores beside this one (storage/batches.py).
LOAD_TRANSACTIONS = _LOAD
load_rows = _load_rows
inserted_id = _inserted_id
