"""The Store against real SQLite in tmp_path: each call one unit of work in a database thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailnode.core.outcome import AttemptResult, Decision, FinalReason, Status
from mailnode.core.response import Response
from mailnode.core.transaction import BODY, InlineBlob, NewTransaction, ReusedBlob, UploadBlob
from mailnode.errors import NotFoundError, StorageError
from mailnode.storage.engine import sync_url
from mailnode.storage.store import Store, new_rest_id

OWNER = "session-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Listener:
    def __init__(self) -> None:
        self.changes: list[tuple[str, int]] = []

    def changed(self, rest_id: str, version: int) -> None:
        self.changes.append((rest_id, version))

    def queued(self) -> None:
        pass


def new(**changes: Any) -> NewTransaction:
    base = NewTransaction(
        sender="api",
        mail_from="a@example.com",
        rcpt_to="b@example.net",
        retry=True,
        bounce=True,
        protocol="http",
        blobs=(InlineBlob(BODY, b"Subject: hi\r\n\r\nbody\r\n"),),
    )
    return replace(base, **changes)


def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/mailnode.db"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(url(tmp_path), sqlite_synchronous="normal", clock=Clock())
    yield opened
    await opened.close()


def rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "mailnode.db") as db:
        return db.execute(sql).fetchall()


@pytest.mark.parametrize(
    ("configured", "used"),
    [
        ("sqlite+aiosqlite:///./data/mailnode.db", "sqlite+pysqlite:///./data/mailnode.db"),
        ("postgresql+asyncpg://mail@db/mailnode", "postgresql+psycopg://mail@db/mailnode"),
        ("postgresql+psycopg_async://mail@db/mailnode", "postgresql+psycopg://mail@db/mailnode"),
        ("sqlite:///mailnode.db", "sqlite:///mailnode.db"),
    ],
)
def test_asyncio_driver_urls_keep_working_with_the_synchronous_driver(configured: str, used: str) -> None:
    assert sync_url(configured).render_as_string(hide_password=False) == used


async def test_every_write_returns_the_record_a_fresh_read_returns(store: Store) -> None:
    spec = {"subject": "hi", "parts": [{"blob": "logo"}, ("a", 1)]}
    upload = await store.create_transaction(new(blobs=(UploadBlob("logo"),), message_builder=spec))
    assert upload.status is Status.AWAITING_BODY
    assert upload == await store.get_transaction(upload.rest_id)

    await store.append_blob(upload.rest_id, "logo", 0, b"png", None)
    await store.append_blob(upload.rest_id, "logo", 3, b"data", 7)
    shared = await store.create_transaction(
        new(blobs=(InlineBlob(BODY, b"x"), ReusedBlob("logo", upload.rest_id, "logo")))
    )
    assert shared == await store.get_transaction(shared.rest_id)
    assert await store.read_blobs(shared.id) == {BODY: b"x", "logo": b"pngdata"}

    claimed = await store.claim_due(OWNER, limit=10, lease_seconds=30)
    assert [record.rest_id for record in claimed] == [upload.rest_id, shared.rest_id]
    assert claimed == [await store.get_transaction(record.rest_id) for record in claimed]

    later = Decision(Status.QUEUED, None, store.clock() + 60, bounce=False)
    answers = AttemptResult(Response(250, "ok"), Response(250, "ok"), Response(451, "later"), "mx.test")
    finished = await store.finish_attempt(claimed[0], OWNER, answers, later)
    assert finished is not None
    assert finished == await store.get_transaction(upload.rest_id)

    cancelled = await store.cancel(upload.rest_id)
    assert (cancelled.status, cancelled.final_attempt_reason) == (Status.CANCELLED, FinalReason.CANCELLED)
    assert cancelled == await store.get_transaction(upload.rest_id)

    leased = await store.create_transaction(
        new(blobs=(), body_later=True), lease_owner=OWNER, lease_seconds=30
    )
    assert leased == await store.get_transaction(leased.rest_id)
    [attached] = await store.attach_body([leased], b"late body")
    assert attached == await store.get_transaction(leased.rest_id)


async def test_writes_from_a_stale_record_see_what_changed_meanwhile(store: Store, tmp_path: Path) -> None:
    """attach_body and finish_attempt write without reading first; a delivery changed since
    the caller's record (cancelled through the API) is read back and its cancel stands."""
    leased = await store.create_transaction(
        new(blobs=(), body_later=True), lease_owner=OWNER, lease_seconds=30
    )
    await store.cancel(leased.rest_id)
    [attached] = await store.attach_body([leased], b"late body")
    assert (attached.status, attached.final_attempt_reason) == (Status.CANCELLED, FinalReason.CANCELLED)
    assert attached == await store.get_transaction(leased.rest_id)

    delivered = Decision(Status.DELIVERED, FinalReason.SUCCESS, None, bounce=False)
    answers = AttemptResult(Response(250, "ok"), Response(250, "ok"), Response(250, "ok"), "mx.test")
    finished = await store.finish_attempt(attached, OWNER, answers, delivered)
    assert finished is not None
    assert finished.status is Status.CANCELLED
    assert finished == await store.get_transaction(leased.rest_id)
    joined = "SELECT lease_owner, data_code FROM transactions JOIN attempts ON transaction_id = id"
    assert rows(tmp_path, joined) == [(None, 250)]
    events = rows(tmp_path, "SELECT type FROM events ORDER BY id")
    assert ("delivered",) not in events


async def test_an_attempt_finished_on_a_stale_record_sees_the_cancel_made_meanwhile(
    store: Store, tmp_path: Path
) -> None:
    """The attempt's record is still queued, but the row moved on (a cancel through the API):
    the optimistic write misses, the row is read back, and the cancel stands."""
    leased = await store.create_transaction(new(), lease_owner=OWNER, lease_seconds=30)
    await store.cancel(leased.rest_id)

    delivered = Decision(Status.DELIVERED, FinalReason.SUCCESS, None, bounce=False)
    answers = AttemptResult(Response(250, "ok"), Response(250, "ok"), Response(250, "ok"), "mx.test")
    finished = await store.finish_attempt(leased, OWNER, answers, delivered)
    assert finished is not None
    assert (finished.status, finished.final_attempt_reason) == (Status.CANCELLED, FinalReason.CANCELLED)
    assert finished == await store.get_transaction(leased.rest_id)
    assert ("delivered",) not in rows(tmp_path, "SELECT type FROM events")


async def test_an_empty_upload_reads_back_as_empty_bytes(store: Store) -> None:
    record = await store.create_transaction(new(blobs=(InlineBlob(BODY, b"body"), UploadBlob("empty"))))
    await store.append_blob(record.rest_id, "empty", 0, b"", 0)

    assert await store.read_blobs(record.id) == {BODY: b"body", "empty": b""}


async def test_a_write_whose_caller_is_cancelled_still_commits_and_is_announced(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path), sqlite_synchronous="normal", new_id=lambda: "tx-1")
    listener = Listener()
    store.subscribe(listener)
    blocker = sqlite3.connect(tmp_path / "mailnode.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the Store's writer now waits for the write lock
    try:
        task = asyncio.create_task(store.create_transaction(new()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await store.close()  # waits for the write the cancelled caller left behind

    assert listener.changes == [("tx-1", 1)]
    assert rows(tmp_path, "SELECT rest_id, status FROM transactions") == [("tx-1", "queued")]


async def test_writes_queued_together_fail_only_their_own_callers(store: Store, tmp_path: Path) -> None:
    blocker = sqlite3.connect(tmp_path / "mailnode.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writes below queue up behind the first one
    try:
        first = asyncio.create_task(store.register_session("first"))
        await asyncio.sleep(0)
        queued = [
            asyncio.create_task(store.register_session("a")),
            asyncio.create_task(store.register_session("a")),
            asyncio.create_task(store.cancel("no-such-transaction")),
            asyncio.create_task(store.create_transaction(new())),
        ]
        await asyncio.sleep(0)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    await first
    registered, duplicate, cancel, created = await asyncio.gather(*queued, return_exceptions=True)

    assert registered is None
    assert isinstance(duplicate, StorageError)
    assert "IntegrityError" in str(duplicate)
    assert isinstance(cancel, NotFoundError)
    assert not isinstance(created, BaseException)
    assert created == await store.get_transaction(created.rest_id)
    assert rows(tmp_path, "SELECT id FROM sessions ORDER BY id") == [("a",), ("first",)]


async def test_an_in_memory_database_works_too() -> None:
    store = await Store.open("sqlite+aiosqlite:///:memory:")
    try:
        record = await store.create_transaction(new())
        assert record == await store.get_transaction(record.rest_id)
    finally:
        await store.close()


async def test_a_closed_store_refuses_work_with_a_storage_error(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path))
    await store.close()

    with pytest.raises(StorageError, match="closed"):
        await store.get_transaction("any")


def test_a_delivery_id_never_starts_with_a_dash_or_underscore() -> None:
    """`mailnode queue cancel -x…` would read the id as an option (a test failed on one)."""
    ids = [new_rest_id() for _ in range(3000)]  # a leading "-" or "_" is 1 in 32 otherwise
    assert all(rest_id[0].isalnum() and len(rest_id) == 16 for rest_id in ids)
    assert len(set(ids)) == len(ids)
