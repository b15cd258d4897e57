"""Housekeeping: finished transactions are garbage-collected after the TTL, bodies that never
arrive end as "downstream timeout". The service's clock is a parameter: the tests move it on
instead of waiting for real TTLs to pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.clock import OffsetClock as Clock
from tests.support.mailnode import Mailnode, deep_merge, make_config, start_mailnode, stop_mailnode
from tests.support.sink import Reply, Sink

MESSAGE = (
    "From: a@example.com\r\n"
    "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
    "Message-ID: <gc@example.com>\r\n"
    "Subject: s\r\n"
    "\r\n"
    "body\r\n"
)
TTL = 60.0
LATER = "later@example.net"  # the sink defers this recipient forever


Start = Callable[..., Awaitable[Mailnode]]


@pytest.fixture
async def start(tmp_path: Path, sink: Sink) -> AsyncIterator[Start]:
    """Start a service on a test clock with fast housekeeping; every one is stopped after."""
    started: list[Mailnode] = []

    async def start_node(clock: Clock, **overrides: Any) -> Mailnode:
        base = {
            "storage": {"gc_ttl_seconds": TTL, "gc_interval_seconds": 0.05},
            # One attempt to LATER, then nothing more during the test.
            "retry": {"initial_delay_seconds": 3600, "max_delay_seconds": 3600},
        }
        config = make_config(tmp_path, sink.port, **deep_merge(base, overrides))
        node = await start_mailnode(config, clock=clock)
        started.append(node)
        return node

    yield start_node
    for node in started:
        await stop_mailnode(node)


def tx(rcpt: str, body: dict[str, str] | None = None) -> dict[str, Any]:
    envelope: dict[str, Any] = {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": rcpt}]}
    if body is not None:
        envelope["body"] = body
    return envelope


async def wait_for(
    node: Mailnode, location: str, done: Callable[[int, Any], bool], timeout: float = 10.0
) -> tuple[int, Any]:
    """Follow a transaction with hanging GETs until `done(status, json)`; the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status, body, headers = await node.get(location)
    while not done(status, body):
        remaining = deadline - loop.time()
        assert remaining > 0, f"{location} did not get there in {timeout}s: {status} {body}"
        wait = {"If-None-Match": headers["ETag"], "request-timeout": str(min(remaining, 5))}
        new_status, new_body, new_headers = await node.get(location, **wait)
        if new_status != 304:
            status, body, headers = new_status, new_body, new_headers
    return status, body


async def housekeeping_rounds(node: Mailnode, rounds: int = 3, timeout: float = 10.0) -> None:
    """Wait until housekeeping has run `rounds` more times (each round stamps a heartbeat)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    query = "SELECT heartbeat_at FROM sessions WHERE id = ?"
    seen = node.rows(query, node.service.session_id)
    for _ in range(rounds):
        while (current := node.rows(query, node.service.session_id)) == seen:
            assert loop.time() < deadline, f"housekeeping did not run {rounds} times in {timeout}s"
            await asyncio.sleep(0.01)
        seen = current


def gone(status: int, _body: Any) -> bool:
    return status == 404


def deferred_once(status: int, body: Any) -> bool:
    return status == 200 and body.get("data_response", {}).get("code") == 451


def blob_ids(node: Mailnode, rest_id: str) -> list[int]:
    return [
        row[0]
        for row in node.rows(
            "SELECT tb.blob_id FROM transaction_blobs tb JOIN transactions t ON t.id = tb.transaction_id"
            " WHERE t.rest_id = ?",
            rest_id,
        )
    ]


def rest_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


async def test_finished_transactions_are_collected_after_the_ttl_and_queued_ones_kept(
    start: Start, sink: Sink
) -> None:
    clock = Clock()
    node = await start(clock)
    sink.reply_for(LATER, Reply(data="451 4.3.0 try again later"))
    _, _, queued_headers = await node.create(tx(LATER, {"inline": MESSAGE}))
    queued = queued_headers["Location"]
    _, _, done_headers = await node.create(tx("bob@example.net", {"inline": MESSAGE}))
    delivered = done_headers["Location"]
    await wait_for(node, queued, deferred_once)
    final = await node.wait_final(delivered)
    assert final["status"] == "delivered"
    (delivered_blob,) = blob_ids(node, rest_id(delivered))

    await housekeeping_rounds(node)  # younger than the TTL: kept
    assert (await node.get(delivered))[0] == 200
    clock.advance(TTL + 1)
    await wait_for(node, delivered, gone)

    assert node.rows("SELECT rest_id FROM transactions") == [(rest_id(queued),)]
    assert node.rows("SELECT COUNT(*) FROM attempts") == [(1,)]  # the queued one's attempt
    assert node.rows("SELECT COUNT(*) FROM blobs WHERE id = ?", delivered_blob) == [(0,)]
    assert node.rows("SELECT COUNT(*) FROM blob_chunks WHERE blob_id = ?", delivered_blob) == [(0,)]
    status, body, _ = await node.get(queued)
    assert (status, body["status"], body["attempt_count"]) == (200, "queued", 1)
    (queued_blob,) = blob_ids(node, rest_id(queued))
    assert node.rows("SELECT data FROM blob_chunks WHERE blob_id = ?", queued_blob) == [(MESSAGE.encode(),)]


async def test_a_shared_blob_lives_until_its_last_transaction_is_collected(start: Start, sink: Sink) -> None:
    clock = Clock()
    node = await start(clock)
    sink.reply_for(LATER, Reply(data="451 4.3.0 try again later"))
    _, first, first_headers = await node.create(tx("bob@example.net", {"inline": MESSAGE}))
    reuse = {"reuse_uri": first["body"]["blob_status"]["uri"]}
    _, _, second_headers = await node.create(tx(LATER, reuse))
    first_location, second_location = first_headers["Location"], second_headers["Location"]
    assert (await node.wait_final(first_location))["status"] == "delivered"
    await wait_for(node, second_location, deferred_once)
    (shared,) = set(blob_ids(node, rest_id(first_location)) + blob_ids(node, rest_id(second_location)))

    clock.advance(TTL + 1)
    await wait_for(node, first_location, gone)
    assert node.rows("SELECT data FROM blob_chunks WHERE blob_id = ?", shared) == [(MESSAGE.encode(),)]
    status, body, _ = await node.get(second_location)
    assert (status, body["body"]["blob_status"]["finalized"]) == (200, True)

    async with node.http.post(f"{node.url}{second_location}/cancel", headers=node.headers()) as response:
        assert response.status == 200
    clock.advance(TTL + 1)
    await wait_for(node, second_location, gone)
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
    assert node.rows("SELECT COUNT(*) FROM blobs") == [(0,)]
    assert node.rows("SELECT COUNT(*) FROM blob_chunks") == [(0,)]


async def test_a_body_never_uploaded_ends_as_downstream_timeout(start: Start, sink: Sink) -> None:
    clock = Clock()
    # A slow re-read of waiters: the hanging GET below must be woken by the expiry itself.
    node = await start(clock, storage={"body_timeout_seconds": 30}, delivery={"poll_interval_seconds": 20})
    status, created, headers = await node.create(tx("bob@example.net"))  # no body: upload later
    assert (status, created["status"]) == (201, "awaiting_body")
    location, etag = headers["Location"], headers["ETag"]
    await housekeeping_rounds(node)
    assert (await node.get(location))[1]["status"] == "awaiting_body"  # not before its time

    clock.advance(31)
    async with asyncio.timeout(5):
        status, body, _ = await node.get(location, **{"If-None-Match": etag, "request-timeout": "30"})

    assert status == 200
    assert body["final_attempt_reason"] == "downstream timeout"
    assert body["status"] == "failed"
    assert body["attempt_count"] == 0
    assert sink.messages == []
    async with node.http.put(
        f"{node.url}{location}/body", data=MESSAGE.encode(), headers=node.headers()
    ) as response:
        assert response.status == 409  # too late: the transaction is finished
    assert node.rows("SELECT status, final_attempt_reason FROM transactions") == [
        ("failed", "downstream timeout")
    ]
