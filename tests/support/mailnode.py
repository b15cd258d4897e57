"""Run a real mailnode Service in the test's event loop and talk to it over real HTTP."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mailnode.config import config_from_dict
from mailnode.core.apikey import key_hash, key_prefix, new_api_key
from mailnode.service import Service
from mailnode.storage.store import Clock


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def make_config(tmp_path: Path, smarthost_port: int | None, **overrides: Any) -> dict[str, Any]:
    """A config for tests: fast retries, short timeouts, everything on 127.0.0.1."""
    base: dict[str, Any] = {
        "hostname": "mailnode.test",
        "storage": {
            "url": f"sqlite+aiosqlite:///{tmp_path}/mailnode.db",
            "sqlite_synchronous": "normal",
        },
        "http": {"listen": "127.0.0.1:0"},
        "smtp": {"submission": {"listen": "127.0.0.1:0"}, "ingress": {"listen": "127.0.0.1:0"}},
        # SPF/DKIM/DMARC lookups would go to the system resolver, which is not on loopback;
        # the tests that check authentication turn this on with a loopback DNS server.
        "ingress": {"check_authentication": False},
        "delivery": {
            "mode": "capture",
            "poll_interval_seconds": 0.05,
            "connect_timeout_seconds": 2,
            "command_timeout_seconds": 2,
            "lease_seconds": 3,
        },
        "retry": {
            "initial_delay_seconds": 0.05,
            "backoff_factor": 1.0,
            "max_delay_seconds": 0.05,
            "max_attempts": 5,
        },
    }
    if smarthost_port is not None:
        base["delivery"].update(mode="smarthost", smarthost=f"127.0.0.1:{smarthost_port}")
    return deep_merge(base, overrides)


@dataclass
class Mailnode:
    """A started service plus an API key and an HTTP session pointed at it."""

    service: Service
    key: str
    key_id: int
    http: aiohttp.ClientSession
    db_path: Path

    @property
    def url(self) -> str:
        return self.service.base_url

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}

    async def create(self, body: dict[str, Any], sender: str = "api") -> tuple[int, dict[str, Any], Any]:
        async with self.http.post(
            f"{self.url}/senders/{sender}/transactions", json=body, headers=self.headers()
        ) as response:
            return response.status, await response.json(), response.headers

    async def get(self, path: str, **headers: str) -> tuple[int, Any, Any]:
        async with self.http.get(f"{self.url}{path}", headers=self.headers(**headers)) as response:
            payload = await response.json() if response.status != 304 else None
            return response.status, payload, response.headers

    async def wait_final(self, location: str, timeout: float = 10.0) -> dict[str, Any]:
        """Follow the transaction with hanging GETs until it has a final_attempt_reason."""
        deadline = asyncio.get_running_loop().time() + timeout
        status, tx, headers = await self.get(location)
        while "final_attempt_reason" not in tx:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"no final_attempt_reason within {timeout}s: {tx}"
            status, body, headers = await self.get(
                location,
                **{"If-None-Match": headers["ETag"], "request-timeout": str(min(remaining, 5))},
            )
            if status == 200:
                tx = body
        return tx

    async def wait_rows(self, sql: str, expected: list[tuple[Any, ...]], timeout: float = 10.0) -> None:
        """Poll the database until `sql` returns `expected` (state written after a reply)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (rows := self.rows(sql)) != expected:
            assert asyncio.get_running_loop().time() < deadline, f"{sql}: {rows} != {expected}"
            await asyncio.sleep(0.02)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the database file directly, the way an operator would."""
        with sqlite3.connect(self.db_path) as connection:
            return connection.execute(sql, args).fetchall()


async def start_mailnode(config: dict[str, Any], *, clock: Clock = time.time) -> Mailnode:
    service = Service(config_from_dict(config), clock=clock)
    await service.start()
    assert service.store is not None
    key = new_api_key(secrets.token_bytes)
    record = await service.store.add_api_key(
        name="tests", domain=None, prefix=key_prefix(key), key_hash=key_hash(key), expires_at=None
    )
    db_path = Path(config["storage"]["url"].removeprefix("sqlite+aiosqlite:///"))
    return Mailnode(service, key, record.id, aiohttp.ClientSession(), db_path)


async def stop_mailnode(node: Mailnode) -> None:
    await node.http.close()
    await node.service.stop(grace=2.0)
