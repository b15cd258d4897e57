"""Migrations bring an older database to exactly the shape a fresh one gets."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text

from mailnode.errors import StorageError
from mailnode.storage.engine import create_engine
from mailnode.storage.migrations import migrate
from mailnode.storage.tables import SCHEMA_VERSION

V2_TABLES = ("domains", "dkim_keys", "templates", "batches", "idempotency_keys", "signing_keys")
V3_TABLES = ("events", "stats_hourly", "suppressions", "webhooks", "webhook_deliveries")


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


def _rebuild_transactions_without(conn: Connection, unwanted: Callable[[str], bool]) -> None:
    """Rebuild the transactions table from its own CREATE statement without some lines.

    SQLite cannot drop a column a foreign key names (SQLite's documented way around it).
    """
    create = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'transactions'")).scalar_one()
    lines = [line for line in create.splitlines() if not unwanted(line)]
    old_create = re.sub(r",\s*\)\s*$", "\n)", "\n".join(lines))
    # After a rename SQLite keeps the new name quoted in the stored statement.
    old_create = re.sub(r'CREATE TABLE "?transactions"?', "CREATE TABLE transactions_old", old_create)
    indexes = conn.execute(
        text(
            "SELECT sql FROM sqlite_master"
            " WHERE tbl_name = 'transactions' AND type = 'index' AND sql IS NOT NULL"
        )
    ).scalars()
    indexes = [sql for sql in indexes if not unwanted(sql)]
    conn.execute(text(old_create))
    columns = ", ".join(row[1] for row in conn.execute(text("PRAGMA table_info(transactions_old)")).all())
    conn.execute(text(f"INSERT INTO transactions_old SELECT {columns} FROM transactions"))
    conn.execute(text("DROP TABLE transactions"))
    conn.execute(text("ALTER TABLE transactions_old RENAME TO transactions"))
    for sql in indexes:
        conn.execute(text(sql))


def _downgrade_to_v2(engine: Engine) -> None:
    """Turn a fresh database back into what version 2 created."""
    with engine.begin() as conn:
        for table in reversed(V3_TABLES):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("ALTER TABLE domains DROP COLUMN tracking_opens"))
        conn.execute(text("ALTER TABLE domains DROP COLUMN tracking_links"))
        _rebuild_transactions_without(conn, lambda line: line.strip().startswith("domain "))
        conn.execute(text("UPDATE schema_migrations SET version = 2"))
    assert "'domain'" not in str(_shape(engine)["transactions"])


def _downgrade_to_v1(engine: Engine) -> None:
    """Turn a fresh database back into what version 1 created."""
    _downgrade_to_v2(engine)
    with engine.begin() as conn:
        _rebuild_transactions_without(
            conn, lambda line: any(word in line for word in ("batch_id", "recipient ", "batches"))
        )
        for table in reversed(V2_TABLES):
            conn.execute(text(f"DROP TABLE {table}"))
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


def test_version_2_batch_deliveries_get_their_batch_domain(tmp_path: Path) -> None:
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate(fresh)
    old = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(old)
    _downgrade_to_v2(old)
    with old.begin() as conn:
        conn.execute(text("INSERT INTO domains (id, name, created_at) VALUES (1, 'example.com', 1)"))
        conn.execute(
            text("INSERT INTO blobs (id, stored_length, total_length, created_at) VALUES (1, 0, 0, 1)")
        )
        conn.execute(
            text(
                "INSERT INTO batches (id, public_id, domain, content_blob_id, recipients, rejected, tags,"
                " metadata, created_at) VALUES (7, 'b7', 'example.com', 1, 1, '[]', '[]', '{}', 1)"
            )
        )
        for rest_id, batch_id in (("batched", 7), ("plain", None)):
            conn.execute(
                text(
                    "INSERT INTO transactions (rest_id, sender, mail_from, rcpt_to, status, version,"
                    " created_at, updated_at, attempt_count, retry, bounce, cancelled, protocol, batch_id)"
                    " VALUES (:rest_id, 'platform', 'a@example.com', 'b@example.org', 'queued', 1, 1, 1, 0,"
                    " 1, 0, 0, 'HTTP', :batch_id)"
                ),
                {"rest_id": rest_id, "batch_id": batch_id},
            )
    assert migrate(old) == (2, SCHEMA_VERSION)
    assert _shape(old) == _shape(fresh)
    with old.connect() as conn:
        rows = conn.execute(text("SELECT rest_id, domain FROM transactions ORDER BY rest_id")).all()
        assert rows == [("batched", "example.com"), ("plain", None)]
        policy = conn.execute(text("SELECT tracking_opens, tracking_links FROM domains")).one()
        assert tuple(policy) == ("off", "off")
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
