"""Migrations bring an older database to exactly the shape a fresh one gets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from mailnode.errors import StorageError
from mailnode.storage.engine import create_engine
from mailnode.storage.migrations import migrate
from mailnode.storage.tables import SCHEMA_VERSION

V2_TABLES = ("domains", "dkim_keys", "templates", "batches", "idempotency_keys", "signing_keys")


def _shape(engine: Engine) -> dict[str, object]:
    inspector = inspect(engine)
    shape: dict[str, object] = {}
    for table in sorted(inspector.get_table_names()):
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
        indexes = sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table))
        keys = sorted(
            (tuple(k["constrained_columns"]), k["referred_table"]) for k in inspector.get_foreign_keys(table)
        )
        shape[table] = (sorted(columns), indexes, keys)
    return shape


def _downgrade_to_v1(engine: Engine) -> None:
    """Turn a fresh database back into what version 1 created.

    SQLite cannot drop a column a foreign key names, so the transactions table is rebuilt
    from its own CREATE statement without the version 2 lines (SQLite's documented way).
    """
    with engine.begin() as conn:
        create = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'transactions'")).scalar_one()
        lines = [
            line
            for line in create.splitlines()
            if "batch_id" not in line and "recipient " not in line and "batches" not in line
        ]
        v1_create = re.sub(r",\s*\)\s*$", "\n)", "\n".join(lines))
        v1_create = v1_create.replace("CREATE TABLE transactions", "CREATE TABLE transactions_v1")
        conn.execute(text("DROP INDEX ix_transactions_batch"))
        for table in reversed(V2_TABLES):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text(v1_create))
        conn.execute(text("DROP TABLE transactions"))
        conn.execute(text("ALTER TABLE transactions_v1 RENAME TO transactions"))
        conn.execute(text("CREATE INDEX ix_transactions_due ON transactions (status, next_attempt_at)"))
        conn.execute(text("CREATE INDEX ix_transactions_finished ON transactions (finished_at)"))
        conn.execute(text("UPDATE schema_migrations SET version = 1"))
    assert "batch_id" not in str(_shape(engine)["transactions"])


def test_fresh_database_is_created_at_the_current_version(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert migrate(engine) == (None, SCHEMA_VERSION)
    assert migrate(engine) == (SCHEMA_VERSION, SCHEMA_VERSION)
    engine.dispose()


def test_version_1_database_is_upgraded_to_the_fresh_shape(tmp_path: Path) -> None:
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate(fresh)
    old = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(old)
    _downgrade_to_v1(old)
    with old.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO transactions (rest_id, sender, mail_from, rcpt_to, status, version,"
                " created_at, updated_at, attempt_count, retry, bounce, cancelled, protocol)"
                " VALUES ('kept', 'api', 'a@example.com', 'b@example.org', 'queued', 1, 1, 1, 0, 1, 1, 0,"
                " 'http')"
            )
        )
    assert migrate(old) == (1, SCHEMA_VERSION)
    assert _shape(old) == _shape(fresh)
    with old.connect() as conn:
        assert conn.execute(text("SELECT rest_id, batch_id FROM transactions")).all() == [("kept", None)]
    fresh.dispose()
    old.dispose()


def test_database_newer_than_this_mailnode_is_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO schema_migrations VALUES ({SCHEMA_VERSION + 1}, 0)"))
    with pytest.raises(StorageError, match="newer than this mailnode"):
        migrate(engine)
    engine.dispose()
