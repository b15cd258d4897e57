"""The engine, and the one place that knows about SQLite.

The Store runs each of its operations as one unit of synchronous SQLAlchemy work in a database
thread (see storage/threads.py), so the engine is a plain synchronous one. `[storage] url`
keeps naming the asyncio drivers it always named (the default is `sqlite+aiosqlite:///...`):
such a URL is mapped to the synchronous driver for the same database, so existing configs keep
working unchanged:

    sqlite+aiosqlite            -> sqlite+pysqlite (the stdlib sqlite3 module)
    postgresql+asyncpg          -> postgresql+psycopg
    postgresql+psycopg_async    -> postgresql+psycopg

Any other URL is used as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as sqlalchemy_create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)


SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
}


def sync_url(url: str) -> URL:
    """`url` with an asyncio driver replaced by the synchronous driver for the same database."""
    parsed = make_url(url)
    driver = SYNC_DRIVERS.get(parsed.drivername)
    return parsed if driver is None else parsed.set(drivername=driver)


def create_engine(url: str, *, sqlite_synchronous: str = "full") -> Engine:
    """A synchronous engine for `url`; for SQLite: WAL, foreign keys on, a busy timeout."""
    parsed = sync_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sqlalchemy_create_engine(parsed, pool_pre_ping=True)
    database = parsed.database or ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        # A file database: one pooled sqlite3 connection per database thread. The Store's
        # threads each keep theirs, so a connection is only ever used by one thread at a time
        # (SQLAlchemy already turns check_same_thread off with this pool).
        engine = sqlalchemy_create_engine(parsed)
    else:
        # An in-memory database exists once per sqlite3 connection: everything shares one,
        # and the Store runs reads on its writer thread (see concurrent_readers).
        engine = sqlalchemy_create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    synchronous = {"full": "FULL", "normal": "NORMAL"}[sqlite_synchronous]

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is turned off so that BEGIN IMMEDIATE (below)
        # takes the write lock up front: a read-then-write transaction never fails half way.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            f"synchronous={synchronous}",
            "busy_timeout=10000",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def start_transaction(connection: Connection, *, write: bool) -> None:
    """Open the database's transaction for a unit that SQLAlchemy's begin() has begun.

    SQLite: the driver's own transaction handling is off (see _on_connect), so the BEGIN is
    issued here, straight to the driver; IMMEDIATE for a writer, which then holds the write
    lock from the start and never fails half way through a read-then-write. Other databases
    began with begin(). Not an engine "begin" event: with any engine event SQLAlchemy
    dispatches events around every statement, a sixth of what a statement costs.
    """
    if connection.dialect.name == "sqlite":
        driver: Any = connection.connection.dbapi_connection
        driver.execute("BEGIN IMMEDIATE" if write else "BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def concurrent_readers(engine: Engine) -> bool:
    """Whether reads may run on their own connections beside the writer's.

    Not for an in-memory SQLite database, whose one connection is the whole database; WAL lets
    file databases (and other databases anyway) read while the writer writes.
    """
    return not isinstance(engine.pool, StaticPool)
