"""Versioned schema migrations, applied at `serve` start and by `mailnode migrate`.

A fresh database is created from tables.py and stamped with SCHEMA_VERSION. An existing one
gets every migration above its version, in order. A change to tables.py therefore ships with
a migration here that brings an older database to the same shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Column, Connection, Engine, Index, func, inspect, select, text
from sqlalchemy.schema import CreateIndex

from mailnode.errors import StorageError
from mailnode.storage import tables
from mailnode.storage.engine import start_transaction
from mailnode.storage.tables import SCHEMA_VERSION, metadata, schema_migrations

log = logging.getLogger(__name__)


def _add_column(connection: Connection, column: Column[object]) -> None:
    """ALTER TABLE ... ADD COLUMN, with the type (and reference) as tables.py declares it."""
    table = column.table.name
    kind = column.type.compile(dialect=connection.dialect)
    references = ""
    for key in column.foreign_keys:
        target = key.column
        references = f" REFERENCES {target.table.name}({target.name}) ON DELETE {key.ondelete}"
    connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}{references}"))


def _create_index(connection: Connection, index: Index) -> None:
    connection.execute(CreateIndex(index, if_not_exists=True))


def _v2_sending_platform(connection: Connection) -> None:
    new_tables = [
        tables.domains,
        tables.dkim_keys,
        tables.templates,
        tables.batches,
        tables.idempotency_keys,
        tables.signing_keys,
    ]
    metadata.create_all(connection, tables=new_tables)
    _add_column(connection, tables.transactions.c.batch_id)
    _add_column(connection, tables.transactions.c.recipient)
    (batch_index,) = [i for i in tables.transactions.indexes if i.name == "ix_transactions_batch"]
    _create_index(connection, batch_index)


def _v3_feedback_loop(connection: Connection) -> None:
    new_tables = [
        tables.events,
        tables.stats_hourly,
        tables.suppressions,
        tables.webhooks,
        tables.webhook_deliveries,
    ]
    metadata.create_all(connection, tables=new_tables)
    _add_column(connection, tables.transactions.c.domain)
    # A database that was at version 1 got the domains table from tables.py as it is now.
    existing = {column["name"] for column in inspect(connection).get_columns("domains")}
    for column in (tables.domains.c.tracking_opens, tables.domains.c.tracking_links):
        if column.name in existing:
            continue
        connection.execute(
            text(f"ALTER TABLE domains ADD COLUMN {column.name} VARCHAR(16) NOT NULL DEFAULT 'off'")
        )
    # Deliveries already queued by a batch count in their batch's domain.
    connection.execute(
        text(
            "UPDATE transactions SET domain = "
            "(SELECT domain FROM batches WHERE batches.id = transactions.batch_id) "
            "WHERE batch_id IS NOT NULL"
        )
    )


# version -> (description, upgrade step). Version 1 is the initial schema (created whole).
MIGRATIONS: dict[int, tuple[str, Callable[[Connection], None]]] = {
    2: ("sending platform: domains, DKIM keys, templates, batches, idempotency", _v2_sending_platform),
    3: ("feedback loop: events, stats, suppressions, webhooks, tracking policy", _v3_feedback_loop),
}


def _current_version(connection: Connection) -> int | None:
    if not inspect(connection).has_table("schema_migrations"):
        return None
    return connection.execute(select(func.max(schema_migrations.c.version))).scalar()


def _migrate(connection: Connection) -> tuple[int | None, int]:
    current = _current_version(connection)
    if current is None:
        metadata.create_all(connection)
        connection.execute(schema_migrations.insert().values(version=SCHEMA_VERSION, applied_at=time.time()))
        return None, SCHEMA_VERSION
    if current > SCHEMA_VERSION:
        raise StorageError(
            f"the database is at schema version {current}, newer than this mailnode "
            f"({SCHEMA_VERSION}); upgrade mailnode"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        description, step = MIGRATIONS[version]
        log.info("applying migration version=%d %s", version, description)
        step(connection)
        connection.execute(schema_migrations.insert().values(version=version, applied_at=time.time()))
    return current, SCHEMA_VERSION


def migrate(engine: Engine) -> tuple[int | None, int]:
    """Bring the schema up to date; returns (version before, version after). Blocks."""
    with engine.connect() as connection, connection.begin():
        # The write lock up front: two processes starting at once migrate one after the other.
        start_transaction(connection, write=True)
        return _migrate(connection)
