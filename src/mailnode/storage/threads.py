"""Database threads: each owns one connection and runs whole units of synchronous SQLAlchemy work.

A unit is one function over a Connection, run in one transaction: all its statements go to the
database without returning to the event loop in between, so a write holds SQLite's write lock
only for the time its SQL takes. The Store runs its writes on one such thread (writes are
serialized in-process and never wait for each other's lock) and its reads on a few more.

Group commit: the writer runs the units that queued up while it was busy in one transaction, so
they share one commit. With `synchronous=FULL` each commit waits for an fsync (~4 ms on a
typical disk), which otherwise caps writes at a few hundred per second. Units never wait to be
grouped: a lone unit commits at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from mailnode.errors import StorageError
from mailnode.storage.engine import start_transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

# Most units one group commit takes: bounds how long the first of them waits for its commit.
GROUP_LIMIT = 32


@dataclass(slots=True)
class _Unit:
    work: Callable[[Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    on_commit: Callable[[Any], None] | None


# A unit's outcome: (unit, result, error); error None means it committed.
_Outcome = tuple[_Unit, Any, BaseException | None]


class DatabaseThreads:
    """`threads` threads with a connection each, taking units from one queue in order.

    A writer (`write=True`) has one thread and commits the units queued together as a group.
    The queue has no bound of its own: every caller awaits its unit, and the callers are
    bounded (HTTP connections, SMTP sessions, the output handler's concurrency).
    """

    def __init__(self, engine: Engine, *, threads: int, write: bool, name: str) -> None:
        self._engine = engine
        # What the database itself raises: SQLAlchemy's wrapped errors, and the driver's own
        # (engine.py's BEGIN IMMEDIATE goes straight to the driver, so a read-only or broken
        # database fails there unwrapped).
        self._database_errors: tuple[type[Exception], ...] = (
            SQLAlchemyError,
            engine.dialect.loaded_dbapi.Error,
        )
        self._write = write
        self._group_limit = GROUP_LIMIT if write else 1
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{number}", daemon=True)
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(
        self, work: Callable[[Connection], T], *, on_commit: Callable[[T], None] | None = None
    ) -> T:
        """Run `work` in one transaction on one of the threads and return what it returned.

        A write runs to its commit (or rollback) even when the caller is cancelled meanwhile,
        and `on_commit` is then still called, on the event loop: listeners hear of every commit.
        Database errors (SQLAlchemy's or the driver's) come back as StorageError; other
        exceptions roll back and pass through.
        """
        if self._closed:
            raise StorageError("the database is closed (mailnode is stopping)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Unit(work, loop, future, on_commit))
        return await future

    async def close(self) -> None:
        """Finish every unit queued so far, then stop the threads and close their connections."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    # -- in the database thread ----------------------------------------------------------------

    def _serve(self) -> None:
        connection: Connection | None = None
        stopping = False
        try:
            while not stopping:
                units, stopping = self._take()
                if len(units) == 1:
                    connection, outcome = self._run(connection, units[0])
                    _settle([outcome])
                elif units:
                    connection = self._run_group(connection, units)
        finally:
            if connection is not None:
                connection.close()

    def _take(self) -> tuple[list[_Unit], bool]:
        """The next units to run (waiting for the first), and whether to stop after them."""
        units: list[_Unit] = []
        unit = self._queue.get()
        while unit is not None:
            if self._write or not unit.future.cancelled():  # nobody waits for a cancelled read
                units.append(unit)
            if len(units) >= self._group_limit:
                return units, False
            try:
                unit = self._queue.get_nowait()
            except queue.Empty:
                return units, False
        return units, True

    def _connect(self) -> Connection:
        return self._engine.connect()

    def _run(self, connection: Connection | None, unit: _Unit) -> tuple[Connection | None, _Outcome]:
        """Run one unit in its own transaction."""
        try:
            connection = connection or self._connect()
            with connection.begin():
                start_transaction(connection, write=self._write)
                result = unit.work(connection)
        except self._database_errors as exc:
            return self._discard(connection), (unit, None, self._storage_error(exc))
        except Exception as exc:
            return connection, (unit, None, exc)
        return connection, (unit, result, None)

    def _run_group(self, connection: Connection | None, units: list[_Unit]) -> Connection | None:
        """Run units in one transaction; if any of them fails, each again in its own."""
        began = False
        try:
            connection = connection or self._connect()
            with connection.begin():
                start_transaction(connection, write=self._write)
                began = True
                results = [unit.work(connection) for unit in units]
        except Exception as exc:
            if isinstance(exc, self._database_errors):
                connection = self._discard(connection)
                if not began:  # no connection, or BEGIN failed (say, locked): each would fail alike
                    _settle([(unit, None, self._storage_error(exc)) for unit in units])
                    return connection
            # Undone whole: run each unit on its own, so that a failure fails only its caller.
            log.debug("a group of %d writes failed (%s); running them one by one", len(units), exc)
            outcomes = []
            for unit in units:
                connection, outcome = self._run(connection, unit)
                outcomes.append(outcome)
            _settle(outcomes)
            return connection
        _settle([(unit, result, None) for unit, result in zip(units, results, strict=True)])
        return connection

    def _storage_error(self, exc: Exception) -> StorageError:
        kind = "write" if self._write else "read"
        error = StorageError(f"database {kind} failed: {exc.__class__.__name__}: {exc}")
        error.__cause__ = exc
        return error

    @staticmethod
    def _discard(connection: Connection | None) -> None:
        """Hand a connection that failed back to the pool, which resets (or replaces) it."""
        if connection is not None:
            connection.close()


def _settle(outcomes: list[_Outcome]) -> None:
    """Hand outcomes to their event loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, settled)
        except RuntimeError:  # the event loop is closed: nobody waits for these units any more
            log.warning("%d database units finished after their event loop closed", len(settled))


def _deliver(outcomes: list[_Outcome]) -> None:
    """On the event loop: tell the listeners of each commit, then the caller (if still waiting)."""
    for unit, result, error in outcomes:
        if error is None and unit.on_commit is not None:
            try:
                unit.on_commit(result)
            except Exception:
                log.exception("a listener failed after a commit")
        if unit.future.cancelled():
            if error is not None:
                log.warning("a database unit failed after its caller was cancelled: %s", error)
        elif error is None:
            unit.future.set_result(result)
        else:
            unit.future.set_exception(error)
