"""Memory of `mailnode serve` against the depth of its queue: peak RSS with 0, 10,000 and
100,000 deliveries waiting.

The deliveries are queued the way a user queues them: `POST /v1/send` batches of up to
10,000 recipients, scheduled a day ahead (deferred: stored, not due). Each depth is then
measured in a fresh process on the same data directory: exec → READY=1 (benchlib.startup),
then `settle` seconds of its normal life (the output handler's polls, housekeeping, the
workers), with `/readyz` asked once a second as a monitor would (it looks at the queue).
The figure is the process's peak RSS (VmHWM) over all of it; the reference is the same at
0 queued, so the ratio shows what the queue costs beyond the process itself. The database
size beside it is "the rows themselves". The upstream is a closed loopback port: nothing is
due, and nothing would leave the machine if it were.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
) -> dict[int, list[DepthReading]]:
    """Readings by depth (ascending), `runs` fresh processes at each; the queue only grows."""
    readings: dict[int, list[DepthReading]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        data_dir = Path(tmp)
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
            readings[depth] = [await measure_depth(config, data_dir, url, depth, settle) for _ in range(runs)]
            last = readings[depth][-1]
            print(
                f"memory: {depth} queued: peak RSS {last.peak_rss_mib:.1f} MiB, "
                f"READY after {last.ready_seconds:.2f} s, database {last.database_mib:.1f} MiB",
                flush=True,
            )
    return readings
