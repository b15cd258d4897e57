"""Memory of `mailnode serve` against the depth of its queue: peak RSS with 0, 10,000 and
100,000 deliveries waiting.

The deliveries are queued the way a user queues them: `POST /v1/send` batches of up to
10,000 recipients, scheduled a day ahead (deferred: stored, not due). Each depth is then
measured in a fresh process on the same data directory: exec → READY=1 (benchlib.startup),
then `settle` seconds of its normal life (the output handler's polls, housekeeping, the
workers), with `/readyz` asked once a second as a monitor would (it looks at the queue).
The figure is the process's peak RSS (VmHWM) over all of it; the reference is the same at
0 queued, so the ratio shows what the queue costs beyond the process itself. The database
size beside it is "the rows themselves".

Last, the deepest queue is made due (its rows' next attempt set to now in the stopped
database, as if the day had passed) and measured once more: the output handler then claims
and attempts them against the upstream, a closed loopback port, so every attempt is deferred
(connection refused): the queue under load, not at rest. Nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from benchlib.mailnode import admin_setup, base_config
from benchlib.processes import free_port, memory_kib
from benchlib.startup import serve_until_ready

HOST = "127.0.0.1"
DOMAIN = "queue.bench"
CHUNK = 10_000  # recipients per send
SCHEDULED_AHEAD = 86_400.0  # seconds: deferred for the whole benchmark
ADMIN_TOKEN = "bench-admin-" + secrets.token_hex(16)
MIB = 1024 * 1024


@dataclass(frozen=True)
class DepthReading:
    """One process's life at one queue depth."""

    queued: int
    peak_rss_mib: float  # VmHWM: the most it ever held
    final_rss_mib: float  # VmRSS at the end of the settle time
    ready_seconds: float  # exec -> READY=1
    database_mib: float  # the SQLite files (database and WAL)
    attempts: int = 0  # delivery attempts made during the process's life


@dataclass(frozen=True)
class MemoryReadings:
    deferred: dict[int, list[DepthReading]]  # by depth: scheduled a day ahead, nothing due
    due: list[DepthReading] = field(default_factory=list)  # the deepest queue, all due


def memory_config(data_dir: Path, http_port: int, log_level: str, sqlite_synchronous: str) -> str:
    """mailnode with HTTP on a known port, listeners on free ports, a closed port as upstream."""
    return (
        base_config(data_dir, HOST, log_level, sqlite_synchronous, http_port)
        + f"""[smtp.submission]
listen = "{HOST}:0"
[smtp.ingress]
listen = "{HOST}:0"
[admin]
token = "{ADMIN_TOKEN}"
[platform]
dkim_algorithm = "ed25519"
max_recipients_per_send = {CHUNK}
[delivery]
mode = "smarthost"
smarthost = "{HOST}:{free_port(HOST)}"
"""
    )


def send_body(first: int, count: int, scheduled_at: float) -> dict[str, Any]:
    return {
        "sender": {"email": f"news@{DOMAIN}", "name": "Queue Bench"},
        "subject": "Hello {{ name }}",
        "html": "<p>Hello {{ name }}, this is message {{ n }}.</p>",
        "recipients": [
            {"email": f"user{i}@example.net", "name": f"User {i}", "fields": {"n": i}}
            for i in range(first, first + count)
        ],
        "scheduled_at": scheduled_at,
    }


async def enqueue(http: aiohttp.ClientSession, url: str, key: str, first: int, count: int) -> None:
    """Queue `count` deliveries (user{first}.. ), scheduled a day ahead, CHUNK per send."""
    scheduled_at = time.time() + SCHEDULED_AHEAD
    headers = {"Authorization": f"Bearer {key}"}
    for start in range(first, first + count, CHUNK):
        body = send_body(start, min(CHUNK, first + count - start), scheduled_at)
        async with http.post(f"{url}/v1/send", json=body, headers=headers) as response:
            if response.status != 202:
                raise RuntimeError(
                    f"POST /v1/send answered {response.status}: {(await response.text())[:300]}"
                )


def database_mib(data_dir: Path) -> float:
    return sum(p.stat().st_size for p in data_dir.glob("mailnode.db*")) / MIB


def make_due(database: Path, now: float) -> int:
    """Make every queued delivery due at `now` (mailnode stopped); how many there are."""
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        cursor = db.execute("UPDATE transactions SET next_attempt_at = ? WHERE status = 'queued'", (now,))
        return cursor.rowcount


def attempt_count(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT count(*) FROM attempts").fetchone()[0])


async def measure_depth(config: Path, data_dir: Path, url: str, queued: int, settle: float) -> DepthReading:
    """A fresh process on the data directory: READY, `settle` seconds of life, its memory."""
    async with serve_until_ready(config) as (child, ready_seconds), aiohttp.ClientSession() as http:
        deadline = time.monotonic() + settle
        next_probe = 0.0
        while (now := time.monotonic()) < deadline:
            if now >= next_probe:
                next_probe = now + 1.0
                async with http.get(f"{url}/readyz") as response:
                    if response.status != 200:
                        raise RuntimeError(f"/readyz answered {response.status}: {await response.text()}")
            await asyncio.sleep(0.25)
        kib = memory_kib(child.pid)
    if not kib:
        raise RuntimeError(f"mailnode serve was gone before its memory was read: {child.describe_exit()}")
    return DepthReading(
        queued, kib["VmHWM"] / 1024, kib["VmRSS"] / 1024, ready_seconds, database_mib(data_dir)
    )


async def memory_runs(
    depths: Sequence[int], runs: int, settle: float, log_level: str = "info", sqlite_synchronous: str = "full"
) -> MemoryReadings:
    """Readings by depth (ascending), `runs` fresh processes at each (the queue only grows);
    then `runs` more with the deepest queue due."""
    readings = MemoryReadings({})
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        data_dir = Path(tmp)
        database = data_dir / "mailnode.db"
        port = free_port(HOST)
        url = f"http://{HOST}:{port}"
        config = data_dir / "mailnode.toml"
        config.write_text(memory_config(data_dir, port, log_level, sqlite_synchronous))
        queued = 0
        key = ""
        for depth in sorted(depths):
            async with serve_until_ready(config), aiohttp.ClientSession() as http:
                if not key:
                    key = await admin_setup(http, url, ADMIN_TOKEN, DOMAIN, "ed25519")
                await enqueue(http, url, key, queued, depth - queued)
            queued = depth
            readings.deferred[depth] = [
                await measure_depth(config, data_dir, url, depth, settle) for _ in range(runs)
            ]
            _print(readings.deferred[depth][-1], "queued")
        for _ in range(runs):
            due = make_due(database, time.time())
            before = attempt_count(database)
            reading = await measure_depth(config, data_dir, url, due, settle)
            readings.due.append(replace(reading, attempts=attempt_count(database) - before))
            _print(readings.due[-1], "due")
    return readings


def _print(reading: DepthReading, state: str) -> None:
    attempts = f", {reading.attempts} attempts" if reading.attempts else ""
    print(
        f"memory: {reading.queued} {state}: peak RSS {reading.peak_rss_mib:.1f} MiB, "
        f"READY after {reading.ready_seconds:.2f} s, database {reading.database_mib:.1f} MiB{attempts}",
        flush=True,
    )
