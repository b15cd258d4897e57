"""Fixtures for the SMTP listeners: a real mailnode service, its listeners, API keys, raw clients."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailnode.core.apikey import key_hash, key_prefix, new_api_key
from mailnode.smtp.auth import ThrottleSettings
from mailnode.smtp.server import SmtpListeners
from mailnode.smtp.tls import ensure_dev_certificate, server_tls_context
from mailnode.storage.store import ApiKeyRecord
from tests.support.mailnode import Mailnode, deep_merge, make_config, start_mailnode, stop_mailnode
from tests.support.sink import Sink

HOSTNAME = "mailnode.test"
# Fast tests: failed AUTH is "delayed" through a recording sleep that returns at once.
SMTP_CONFIG = {
    "hostname": HOSTNAME,
    "submission": {"listen": "127.0.0.1:0"},
    "submission_tls": {"enabled": True, "listen": "127.0.0.1:0"},
    "ingress": {"listen": "127.0.0.1:0"},
}
THROTTLE = ThrottleSettings(first_delay_seconds=1.0, max_delay_seconds=4.0, ban_after_failures=5)


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Stands in for asyncio.sleep in the AUTH throttle: records each delay, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Smtp:
    """A running mailnode service with its SMTP listeners."""

    node: Mailnode
    listeners: SmtpListeners
    client_tls: ssl.SSLContext
    clock: FakeClock
    sleep: RecordingSleep
    keys: list[ApiKeyRecord] = field(default_factory=list)

    def port(self, listener: str) -> int:
        return self.listeners.addresses[listener][1]

    async def add_key(
        self, domain: str | None, *, expires_at: float | None = None
    ) -> tuple[str, ApiKeyRecord]:
        store = self.node.service.store
        assert store is not None
        key = new_api_key(secrets.token_bytes)
        record = await store.add_api_key(
            name=f"key for {domain}",
            domain=domain,
            prefix=key_prefix(key),
            key_hash=key_hash(key),
            expires_at=expires_at,
        )
        return key, record

    async def deactivate(self, record: ApiKeyRecord) -> None:
        """Deactivate a key in the database file, as an operator's tool would."""
        with contextlib.closing(sqlite3.connect(self.node.db_path)) as db, db:
            db.execute("UPDATE api_keys SET deactivated_at = ? WHERE id = ?", (self.clock(), record.id))

    def statuses(self) -> list[str]:
        return [row[0] for row in self.node.rows("SELECT status FROM transactions ORDER BY id")]

    async def wait_statuses(self, expected: list[str], timeout: float = 10.0) -> None:
        """Poll the database (with a deadline) until the deliveries reach `expected`."""
        async with asyncio.timeout(timeout):
            while self.statuses() != expected:  # noqa: ASYNC110 - the database has no event to wait on
                await asyncio.sleep(0.02)


SmtpFactory = Callable[..., Awaitable[Smtp]]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_dev_certificate(tmp_path_factory.mktemp("tls"), HOSTNAME)


@pytest.fixture
def client_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A client that verifies the listener's certificate (issued for 127.0.0.1 among others)."""
    return ssl.create_default_context(cafile=str(tls_files[0]))


@pytest.fixture
async def smtp_factory(
    tmp_path: Path, sink: Sink, tls_files: tuple[Path, Path], client_tls: ssl.SSLContext
) -> AsyncIterator[SmtpFactory]:
    """Start mailnode (smarthost → the sink) and its SMTP listeners on 127.0.0.1 port 0."""
    started: list[Smtp] = []

    async def start(*, throttle: ThrottleSettings = THROTTLE, **overrides: Any) -> Smtp:
        config = make_config(tmp_path, sink.port, **deep_merge({"smtp": SMTP_CONFIG}, overrides))
        node = await start_mailnode(config)
        clock, sleep = FakeClock(), RecordingSleep()
        service = node.service
        assert service.exploder is not None and service.store is not None
        try:
            listeners = await SmtpListeners.start(
                service.config,
                exploder=service.exploder,
                store=service.store,
                tls_context=server_tls_context(*tls_files),
                clock=clock,
                throttle=throttle,
                sleep=sleep,
            )
        except BaseException:
            await stop_mailnode(node)
            raise
        smtp = Smtp(node, listeners, client_tls, clock, sleep)
        started.append(smtp)
        return smtp

    yield start
    for smtp in started:
        await smtp.listeners.close()
        await stop_mailnode(smtp.node)


@pytest.fixture
async def smtp(smtp_factory: SmtpFactory) -> Smtp:
    return await smtp_factory()


class RawClient:
    """A line-level SMTP client: exact bytes out, exact replies back, nothing hidden."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, *, tls: ssl.SSLContext | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        return cls(reader, writer)

    async def reply(self, timeout: float = 5.0) -> str:
        """One whole reply (every line of a multi-line one), CRLFs kept."""
        lines: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError(f"connection closed after {lines!r}")
                lines.append(line.decode())
                if line[3:4] != b"-":
                    return "".join(lines)

    async def send(self, line: str | bytes) -> None:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()

    async def command(self, line: str | bytes) -> str:
        await self.send(line)
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext) -> None:
        assert (await self.command("STARTTLS")).startswith("220 ")
        await self.writer.start_tls(context, server_hostname="127.0.0.1")

    async def closed(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest.fixture
async def raw_clients() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """Open raw clients (greeting already read); all closed at the end of the test."""
    clients: list[RawClient] = []

    async def connect(port: int, *, tls: ssl.SSLContext | None = None, greeting: bool = True) -> RawClient:
        client = await RawClient.connect(port, tls=tls)
        clients.append(client)
        if greeting:
            assert (await client.reply()).startswith(f"220 {HOSTNAME} ")
        return client

    yield connect
    for client in clients:
        await client.close()
