"""SIGKILL `mailnode serve` with deliveries in flight and queued; after a restart all arrive."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import aiosmtplib

from tests.support.process import run_cli, start_serve, write_config
from tests.support.sink import HANG, Reply, Sink

MESSAGE = "From: a@example.com\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"


def config_text(tmp_path: Path, sink_port: int, submission: str = "") -> str:
    return f"""
hostname = "mailnode.test"
[storage]
url = "sqlite+aiosqlite:///{tmp_path}/mailnode.db"
[http]
listen = "127.0.0.1:0"
[smtp.submission]
listen = "127.0.0.1:0"
{submission}
[smtp.ingress]
listen = "127.0.0.1:0"
[delivery]
mode = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
concurrency = 2
lease_seconds = 1
poll_interval_seconds = 0.1
command_timeout_seconds = 30
[retry]
initial_delay_seconds = 0.1
max_delay_seconds = 0.1
"""


async def test_sigkill_with_pending_deliveries_loses_nothing(tmp_path: Path, sink: Sink) -> None:
    config = write_config(tmp_path / "mailnode.toml", config_text(tmp_path, sink.port))
    code, key, _ = await run_cli("key", "create", "--name", "crash", "--config", str(config))
    assert code == 0
    key = key.strip()
    recipients = [f"r{i}@example.net" for i in range(5)]
    for recipient in recipients:  # the first attempts hang at DATA: in flight when killed
        sink.reply_for(recipient, Reply(data=HANG))

    serve = await start_serve(config)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            for recipient in recipients:
                body = {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": recipient}],
                        "body": {"inline": MESSAGE}}  # fmt: skip
                async with http.post(f"{serve.url}/senders/api/transactions", json=body) as response:
                    assert response.status == 201
            await _wait_for(lambda: sink.transactions >= 2)  # two leased, three still queued
    finally:
        await serve.kill()

    sink._by_recipient.clear()  # the receiving side recovers too
    serve = await start_serve(config)
    try:
        messages = await sink.wait_for_messages(5, timeout=20)
        assert sorted(m.rcpt_tos[0] for m in messages) == recipients
    finally:
        assert await serve.terminate() == 0


async def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_sigkill_right_after_a_store_and_forward_250_loses_nothing(tmp_path: Path, sink: Sink) -> None:
    """Issue 3: the client got 250 because the upstream was slow; mailnode dies at once."""
    submission = "allow_plaintext_auth_on_loopback = true\ndata_timeout_seconds = 0.3"
    config = write_config(tmp_path / "mailnode.toml", config_text(tmp_path, sink.port, submission))
    code, key, _ = await run_cli("key", "create", "--name", "smtp", "--config", str(config))
    assert code == 0
    code, listing, _ = await run_cli("key", "list", "--json", "--config", str(config))
    key_id = str(json.loads(listing)[0]["id"])
    sink.reply_for("late@example.net", Reply(data=HANG))  # the receiving server is slow

    serve = await start_serve(config)
    try:
        host, port = serve.address("SMTP submission")
        message = MESSAGE.replace("Subject: s", "Subject: stored and forwarded")
        async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
            await client.login(key_id, key.strip())
            errors, reply = await client.sendmail("a@example.com", ["late@example.net"], message)
        assert errors == {} and reply.startswith("2.0.0") and "store & forward" in reply
    finally:
        await serve.kill()  # right after the 250

    sink.reply_for("late@example.net", Reply())
    serve = await start_serve(config)
    try:
        (received,) = await sink.wait_for_messages(1, timeout=20)
        assert received.rcpt_tos == ["late@example.net"]
        assert b"Subject: stored and forwarded" in received.data
    finally:
        assert await serve.terminate() == 0
