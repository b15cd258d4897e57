"""A database with deliveries in every state, made through the real Store, and a CliRunner on it.

Time is fixed: the Store that writes the deliveries and the command line (Runtime(clock=...))
read the same clock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mailnode.cli import cli
from mailnode.cli.common import Runtime
from mailnode.core.outcome import AttemptResult, decide
from mailnode.core.response import Response
from mailnode.core.retry import RetryPolicy
from mailnode.core.transaction import InlineBlob, NewTransaction
from mailnode.storage.events import EventHook, EventStore
from mailnode.storage.store import Store

NOW = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
HOUR = 3600.0
MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: seed\r\n\r\nHello.\r\n"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    config: Path
    database: Path
    clock: Clock

    @property
    def url(self) -> str:
        return f"sqlite+aiosqlite:///{self.database}"

    def run(self, *args: str, stdin: str | None = None) -> Result:
        """`mailnode ARGS --config FILE` in-process, at the setup's time."""
        return CliRunner().invoke(
            cli,
            [*args, "--config", str(self.config)],
            input=stdin,
            env={"MAILNODE_CONFIG": None},
            obj=Runtime(clock=self.clock, random_bytes=lambda n: bytes(range(n))),
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.database) as conn:
            return conn.execute(sql, params).fetchall()

    async def store(self) -> Store:
        store = await Store.open(self.url, clock=self.clock)
        store.add_transition_hook(EventHook(store))
        return store


def make_setup(tmp_path: Path) -> Setup:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "mailnode.toml"
    database = data / "mailnode.db"
    config.write_text(
        'hostname = "mailnode.test"\n'
        f'[storage]\nurl = "sqlite+aiosqlite:///{database}"\n'
        '[platform]\nsending_ips = ["192.0.2.7"]\n'
    )
    return Setup(config, database, Clock())


def one_line_error(result: Result, code: int, *fragments: str) -> str:
    """Exit `code`, no traceback, one line on stderr holding every fragment; that line."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def new_delivery(rcpt_to: str, domain: str | None = "example.com") -> NewTransaction:
    return NewTransaction(
        sender="api",
        mail_from="a@example.com",
        rcpt_to=rcpt_to,
        retry=True,
        bounce=False,
        protocol="HTTP",
        blobs=(InlineBlob("body", MESSAGE),),
        domain=domain,
    )


async def attempted(store: Store, rcpt_to: str, rcpt: Response, domain: str | None = "example.com") -> str:
    """A delivery created now and attempted once, upstream answering `rcpt` at RCPT."""
    created = await store.create_transaction(new_delivery(rcpt_to, domain))
    (claimed,) = await store.claim_due("seed", limit=1, lease_seconds=60)
    assert claimed.id == created.id
    result = AttemptResult(
        mail=Response(250, "2.1.0 ok"),
        rcpt=rcpt,
        data=Response(250, "2.0.0 queued as 1234") if rcpt.ok else None,
        remote_host="mx.example.org",
    )
    decision = decide(
        result,
        retry=RetryPolicy(),
        bounce_enabled=False,
        attempts_made=1,
        created_at=store.clock(),
        now=store.clock(),
    )
    assert await store.finish_attempt(claimed, "seed", result, decision) is not None
    return created.rest_id


async def seed_deliveries(setup: Setup) -> dict[str, str]:
    """Five deliveries, by name: delivered and failed 3 h ago, deferred 2.5 h ago, two fresh ones."""
    store = await setup.store()
    try:
        setup.clock.now = NOW - 3 * HOUR
        ids = {"delivered": await attempted(store, "ok@example.net", Response(250, "2.1.5 ok"))}
        ids["failed"] = await attempted(store, "gone@example.net", Response(550, "5.1.1 no such user"))
        setup.clock.now = NOW - 2.5 * HOUR
        ids["deferred"] = await attempted(store, "busy@example.org", Response(451, "4.2.1 mailbox busy"))
        setup.clock.now = NOW - 60
        ids["fresh"] = (await store.create_transaction(new_delivery("new@example.org"))).rest_id
        ids["other"] = (
            await store.create_transaction(new_delivery("x@example.net", "other.example"))
        ).rest_id
        await EventStore(store).process_outbox()
    finally:
        await store.close()
        setup.clock.now = NOW
    return ids


def seeded(tmp_path: Path) -> tuple[Setup, dict[str, str]]:
    setup = make_setup(tmp_path)
    return setup, asyncio.run(seed_deliveries(setup))
