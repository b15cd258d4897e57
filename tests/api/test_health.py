"""/healthz says the process answers; /readyz says whether mail is actually moving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.clock import OffsetClock as Clock
from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.sink import HANG, Reply, Sink

MESSAGE = "From: a@example.com\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: s\r\n\r\nhi\r\n"


@pytest.fixture
async def node_and_clock(tmp_path: Path, sink: Sink) -> AsyncIterator[tuple[Mailnode, Clock]]:
    clock = Clock()
    config = make_config(tmp_path, sink.port, delivery={"concurrency": 1, "lease_seconds": 30})
    node = await start_mailnode(config, clock=clock)
    yield node, clock
    await stop_mailnode(node)


async def probe(node: Mailnode, path: str) -> tuple[int, dict]:
    async with node.http.get(f"{node.url}{path}") as response:  # no Authorization: public
        return response.status, await response.json()


def tx(rcpt: str) -> dict:
    return {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": MESSAGE}}


async def test_ready_while_mail_moves_and_503_when_the_queue_is_stuck(
    node_and_clock: tuple[Mailnode, Clock], sink: Sink
) -> None:
    node, clock = node_and_clock
    assert (await probe(node, "/readyz"))[0] == 200
    sink.reply_for("slow@example.net", Reply(data=HANG))
    await node.create(tx("slow@example.net"))  # takes the only delivery slot and hangs
    await node.wait_rows(
        "SELECT rcpt_to FROM transactions WHERE lease_owner IS NOT NULL", [("slow@example.net",)]
    )
    await node.create(tx("next@example.net"))  # due, but nothing can pick it up
    status, body = await probe(node, "/readyz")
    assert (status, body["status"]) == (200, "ready")

    clock.offset = 400  # five minutes on, it is still waiting

    status, body = await probe(node, "/readyz")
    assert status == 503
    assert body["status"] == "not ready" and body["reason"].startswith("queue: a due delivery has waited")
    assert (await probe(node, "/healthz"))[0] == 200  # alive all the same
