"""A process killed between RCPT and the end of DATA: the deliveries it had started at RCPT
never get their body (the client was cut off and never heard 250). The next start cancels
them at once instead of leaving them to wait [storage] body_timeout_seconds."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosmtplib

from tests.support.process import start_serve, write_config
from tests.support.sink import Sink


def _config(tmp_path: Path, sink_port: int) -> Path:
    return write_config(
        tmp_path / "mailnode.toml",
        f"""
hostname = "mailnode.test"
[storage]
url = "sqlite+aiosqlite:///{tmp_path}/mailnode.db"
[http]
listen = "127.0.0.1:0"
[smtp.submission]
listen = "127.0.0.1:0"
[smtp.ingress]
listen = "127.0.0.1:0"
[ingress]
check_authentication = false
[[ingress.routes]]
domain = "example.net"
endpoint = "smtp:127.0.0.1:{sink_port}"
""",
    )


def _rows(tmp_path: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(tmp_path / "mailnode.db") as db:
        return db.execute(
            "SELECT rcpt_to, status, final_attempt_reason FROM transactions ORDER BY id"
        ).fetchall()


async def test_deliveries_a_killed_process_started_at_rcpt_are_cancelled_at_the_next_start(
    tmp_path: Path, sink: Sink
) -> None:
    config = _config(tmp_path, sink.port)
    serve = await start_serve(config)
    host, port = serve.address("SMTP ingress")
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=10, start_tls=False)
    await client.connect()
    await client.mail("sender@elsewhere.example")
    assert (await client.rcpt("one@example.net"))[0] == 250
    assert (await client.rcpt("two@example.net"))[0] == 250
    await serve.kill()  # SIGKILL before DATA
    client.close()
    assert _rows(tmp_path) == [
        ("one@example.net", "awaiting_body", None),
        ("two@example.net", "awaiting_body", None),
    ]

    serve = await start_serve(config)
    try:
        assert _rows(tmp_path) == [
            ("one@example.net", "cancelled", "downstream cancelled"),
            ("two@example.net", "cancelled", "downstream cancelled"),
        ]
        log = b"".join(serve.stderr_lines).decode()
        assert "cancelled 2 SMTP deliveries a stopped process left without their body" in log
        await asyncio.sleep(0.3)
        assert sink.messages == []  # nothing was sent for them
    finally:
        assert await serve.terminate() == 0
