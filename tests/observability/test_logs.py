"""Log lines: `mailnode serve` with log_format = "json" writes one object per line, keyed by ids."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib

from mailnode.logs import JsonFormatter
from tests.conftest import ADMIN_TOKEN
from tests.support.process import ServeProcess, start_serve, write_config
from tests.support.sink import Sink

BODY_MARKER = "the-body-must-never-be-logged"


def json_config(tmp_path: Path, sink: Sink) -> Path:
    return write_config(
        tmp_path / "mailnode.toml",
        f"""
hostname = "mailnode.test"
log_format = "json"
[storage]
url = "sqlite+aiosqlite:///{tmp_path}/mailnode.db"
sqlite_synchronous = "normal"
[http]
listen = "127.0.0.1:0"
[smtp.submission]
listen = "127.0.0.1:0"
allow_plaintext_auth_on_loopback = true
[smtp.ingress]
enabled = false
[delivery]
mode = "smarthost"
smarthost = "127.0.0.1:{sink.port}"
[admin]
token = "{ADMIN_TOKEN}"
""",
    )


async def domain_key(url: str, domain: str) -> str:
    """A domain and an API key of it, over the admin API."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=admin) as http:
        async with http.post(f"{url}/v1/domains", json={"name": domain}) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{url}/v1/domains/{domain}/keys", json={"name": "logs"}) as response:
            assert response.status == 201, await response.text()
            key: str = (await response.json())["key"]
            return key


async def wait_for_line(serve: ServeProcess, text: bytes, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(text in line for line in serve.stderr_lines):
        assert asyncio.get_running_loop().time() < deadline, f"no log line with {text!r}"
        await asyncio.sleep(0.05)


def records(serve: ServeProcess) -> list[dict[str, Any]]:
    """Every log line, parsed; the ready banner (plain text, for people) is the only other kind."""
    parsed = []
    for raw in serve.stderr_lines:
        line = raw.decode()
        if line.startswith("{"):
            parsed.append(json.loads(line))
        else:
            assert line.startswith(("mailnode ", "  ")), line  # "mailnode 0.1.0 is running", "  HTTP API: …"
    return parsed


async def test_serve_logs_json_lines_with_the_ids_and_never_the_body_or_a_secret(
    tmp_path: Path, sink: Sink
) -> None:
    serve = await start_serve(json_config(tmp_path, sink))
    try:
        key = await domain_key(serve.url, "example.com")
        host, port = serve.address("SMTP submission")
        message = f"From: alice@example.com\r\nTo: bob@dest.test\r\nSubject: hi\r\n\r\n{BODY_MARKER}\r\n"
        async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
            await client.login("example.com", key)
            await client.sendmail("alice@example.com", ["bob@dest.test"], message)
        await sink.wait_for_messages(1)
        await wait_for_line(serve, b"attempt done")
    finally:
        assert await serve.terminate() == 0

    logged = records(serve)
    assert {"time", "level", "logger", "msg"} <= set(logged[0])
    [smtp] = [r for r in logged if r["logger"] == "mailnode.smtp.server" and "reply" in r]
    assert smtp["session"].startswith("submission-") and smtp["tx"] == 1
    assert (smtp["reply"], smtp["rcpts"], smtp["level"]) == (250, 1, "info")
    [attempt] = [r for r in logged if r["msg"].startswith("attempt done")]
    assert attempt["status"] == "delivered" and isinstance(attempt["tx"], str) and attempt["tx"]
    assert any(r["msg"].startswith("mailnode stopped") and "session" in r for r in logged)
    everything = b"".join(serve.stderr_lines).decode()
    for secret in (BODY_MARKER, key, ADMIN_TOKEN):
        assert secret not in everything


def test_a_failure_logs_its_traceback_inside_the_one_json_line() -> None:
    try:
        raise ValueError("the database went away")
    except ValueError:
        record = logging.LogRecord(
            "mailnode.router", logging.ERROR, __file__, 1, "attempt failed tx=%s", ("tx_1",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["tx"] == "tx_1" and parsed["level"] == "error"
    assert parsed["exc"].endswith("ValueError: the database went away")
    assert parsed["time"].endswith("Z")
