"""A batch and its content live as long as its deliveries; Idempotency-Keys for a day."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_TOKEN
from tests.support.clock import OffsetClock
from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.platform import create_domain, send
from tests.support.sink import Sink

TTL = 60.0
BODY: dict[str, Any] = {
    "sender": {"email": "news@example.com"},
    "subject": "s",
    "text": "t",
    "recipients": [{"email": "a@example.org"}, {"email": "b@example.org"}],
}


async def _until(node: Mailnode, sql: str, expected: list[tuple[Any, ...]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while node.rows(sql) != expected:
        assert time.monotonic() < deadline, f"{sql}: {node.rows(sql)} != {expected}"
        await asyncio.sleep(0.02)


async def test_batch_content_is_collected_with_its_last_delivery_and_keys_expire(
    tmp_path: Path, sink: Sink
) -> None:
    clock = OffsetClock()
    config = make_config(
        tmp_path,
        sink.port,
        admin={"token": ADMIN_TOKEN},
        storage={"gc_ttl_seconds": TTL, "gc_interval_seconds": 0.05},
        platform={"idempotency_ttl_seconds": 2 * TTL},
    )
    node = await start_mailnode(config, clock=clock)
    try:
        domain = await create_domain(node, "example.com")
        status, first = await send(node, domain, BODY, **{"Idempotency-Key": "once"})
        assert status == 202
        await sink.wait_for_messages(2)
        await _until(node, "SELECT COUNT(*) FROM transactions WHERE status = 'delivered'", [(2,)])
        assert node.rows("SELECT COUNT(*) FROM batches") == [(1,)]
        assert node.rows("SELECT COUNT(*) FROM blobs") == [(1,)]

        clock.advance(TTL + 1)  # deliveries, then the batch and its content go
        await _until(node, "SELECT COUNT(*) FROM batches", [(0,)])
        assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
        assert node.rows("SELECT COUNT(*) FROM blobs") == [(0,)]
        # The key still answers with the first answer (its batch is gone, the answer is not).
        assert await send(node, domain, BODY, **{"Idempotency-Key": "once"}) == (202, first)
        assert len(sink.messages) == 2

        clock.advance(TTL)  # past the Idempotency-Key TTL: forgotten, a new send goes out
        await _until(node, "SELECT COUNT(*) FROM idempotency_keys", [(0,)])
        status, again = await send(node, domain, BODY, **{"Idempotency-Key": "once"})
        assert status == 202 and again["batch_id"] != first["batch_id"]
        await sink.wait_for_messages(4)
    finally:
        await stop_mailnode(node)
