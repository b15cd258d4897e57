"""Storage faults on the live database: it turns read-only, or the disk fills during DATA.

SMTP clients get 451 4.3.0 and REST clients 503 with Retry-After (both mean "try again";
never 250 or 201, never a permanent refusal, never a hang); a message accepted before the
fault is still delivered, and mailnode recovers by itself when the fault clears.

The faults are SQLite's own, set on mailnode's live connections: `PRAGMA query_only` makes
every write fail with SQLITE_READONLY ("attempt to write a readonly database"), as on a file
system remounted read-only; `PRAGMA max_page_count` at the current size makes every write that
needs a new page fail with SQLITE_FULL ("database or disk is full"), as on a full disk. (As
root, which CI is, file modes cannot make the file read-only, and a small tmpfs needs mount
rights a container may not have.)
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Connection, event

from mailnode.errors import StorageError
from mailnode.storage.store import Store
from tests.conftest import MailnodeFactory
from tests.faults.submission import CLIENT_TIMEOUT, SUBMISSION, submit
from tests.support.mailnode import Mailnode
from tests.support.sink import Reply, Sink


def message(subject: str, size: int = 0) -> str:
    return (
        f"From: alice@example.com\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
        "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n\r\n" + ("x" * 76 + "\r\n") * (size // 78) + "body\r\n"
    )


# What a write fails with once the pragma is set: SQLITE_READONLY, SQLITE_FULL.
_FAULT_ERRORS = {"query_only": "readonly database", "max_page_count": "database or disk is full"}


class DatabaseFault:
    """Sets pragmas on every connection of a Store's engine: the writer's (through a write
    unit, on its own thread) and any connection checked out later (a failed write hands its
    connection back to the pool and takes one again)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pragmas: dict[str, int] = {}
        event.listen(store.engine, "checkout", self._on_checkout)

    def _on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        for name, value in self.pragmas.items():
            dbapi_connection.execute(f"PRAGMA {name}={value}")

    async def read_pragma(self, name: str) -> int:
        def read(conn: Connection) -> int:
            return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())

        return await self.store.write(read)

    async def set(self, **pragmas: int) -> None:
        """Set the pragmas now (the writer's connection) and on every later checkout."""
        self.pragmas.update(pragmas)

        def apply(conn: Connection) -> None:
            for name, value in pragmas.items():
                conn.exec_driver_sql(f"PRAGMA {name}={value}")

        try:
            await self.store.write(apply)
        except StorageError as exc:
            # Run in one group with a background write (the events outbox), the pragma takes
            # effect on the connection and fails the rest of its group, then its own retry:
            # the fault is in place when the error is the fault's own.
            if not any(pragmas.get(name) and sign in str(exc) for name, sign in _FAULT_ERRORS.items()):
                raise

    async def clear(self, timeout: float = 10.0, **pragmas: int) -> None:
        """Set the pragmas back, waiting until the writer writes again.

        Under query_only even BEGIN IMMEDIATE fails, so the writer's connection cannot be
        told: its next failure hands it back to the pool, and the checkout sets it right.
        """
        self.pragmas.update(pragmas)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.set(**pragmas)
                    return
                except StorageError:
                    await asyncio.sleep(0.02)

    def remove(self) -> None:
        event.remove(self.store.engine, "checkout", self._on_checkout)


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    # Retries never run out while the test holds the earlier message back (see accept_earlier_message).
    retry = {"initial_delay_seconds": 0.2, "max_delay_seconds": 0.2, "max_attempts": 1000}
    return await mailnode_factory(
        smtp={"submission": SUBMISSION}, delivery={"command_timeout_seconds": 1}, retry=retry
    )


@pytest.fixture
async def fault(node: Mailnode) -> Any:
    assert node.service.store is not None
    fault = DatabaseFault(node.service.store)
    yield fault
    fault.remove()


async def post(node: Mailnode, rcpt: str, body: str) -> tuple[int, dict[str, Any], Any]:
    payload = {"mail_from": {"m": "alice@example.com"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": body}}
    async with asyncio.timeout(CLIENT_TIMEOUT):
        return await node.create(payload)


async def accept_earlier_message(node: Mailnode, sink: Sink) -> None:
    """A message taken before the fault, its delivery deferred upstream (451) and queued."""
    sink.reply_for("early@example.org", Reply(data="451 4.3.0 not now"))
    assert (await submit(node, "early@example.org", message("early")))[0] == 250
    await node.wait_rows("SELECT status FROM transactions WHERE rcpt_to = 'early@example.org'", [("queued",)])


async def assert_recovered(node: Mailnode, sink: Sink, refused: list[tuple[str, str, str]]) -> None:
    """The earlier message is delivered, and new ones are accepted over SMTP and REST; what
    the fault refused is `refused` (rcpt_to, status, final_attempt_reason), never delivered."""
    sink.reply_for("early@example.org", Reply())
    code, reply = await submit(node, "after@example.org", message("after"))
    assert code == 250, reply
    status, _, _ = await post(node, "rest-after@example.org", message("rest after"))
    assert status == 201
    received = await sink.wait_for_messages(3, timeout=15)
    assert sorted(m.rcpt_tos[0] for m in received) == [
        "after@example.org",
        "early@example.org",
        "rest-after@example.org",
    ]
    await node.wait_rows(
        "SELECT rcpt_to, status, final_attempt_reason FROM transactions WHERE status != 'delivered'", refused
    )


async def test_read_only_database_is_451_and_503_then_recovers(
    node: Mailnode, sink: Sink, fault: DatabaseFault
) -> None:
    await accept_earlier_message(node, sink)

    await fault.set(query_only=1)
    code, reply = await submit(node, "during@example.org", message("during"))
    status, error, headers = await post(node, "rest-during@example.org", message("rest during"))
    await fault.clear(query_only=0)

    assert (code, reply) == (451, "4.3.0 internal error, try again later")
    assert status == 503 and error["error"]["code"] == "unavailable"
    assert headers["Retry-After"] == "5"
    await assert_recovered(node, sink, refused=[])  # refused at RCPT: nothing was created


async def test_disk_full_during_data_is_451_and_503_then_recovers(
    node: Mailnode, sink: Sink, fault: DatabaseFault
) -> None:
    await accept_earlier_message(node, sink)
    normal_limit = await fault.read_pragma("max_page_count")
    full = await fault.read_pragma("page_count")  # no room to grow: a big body cannot be stored

    await fault.set(max_page_count=full)
    code, reply = await submit(node, "during@example.org", message("during", size=200_000))
    status, error, headers = await post(node, "rest-during@example.org", message("rest", size=200_000))
    await fault.clear(max_page_count=normal_limit)

    assert (code, reply) == (451, "4.3.0 internal error, try again later")
    assert status == 503 and error["error"]["code"] == "unavailable"
    assert headers["Retry-After"] == "5"
    # RCPT still fitted in the free pages; the body did not: the delivery started at RCPT ends.
    await assert_recovered(node, sink, refused=[("during@example.org", "cancelled", "downstream cancelled")])
