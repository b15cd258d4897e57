"""`mailnode send`: queued in the database, delivered by a running `mailnode serve`."""

from __future__ import annotations

import asyncio
import email
import json
import re
from email import policy
from pathlib import Path

import pytest

from tests.support.process import run_cli, start_serve

pytestmark = pytest.mark.slow

DELIVERY_ID = re.compile(r"^(\S+)  (\S+)$")


def serve_on_free_ports(config: Path) -> None:
    text = re.sub(r'^listen = "127\.0\.0\.1:\d+"$', 'listen = "127.0.0.1:0"', config.read_text(), flags=re.M)
    config.write_text(text.replace("poll_interval_seconds = 1.0", "poll_interval_seconds = 0.1"))


@pytest.fixture
async def node(tmp_path: Path) -> Path:
    """A directory with `mailnode init` done; its config listens on free ports."""
    assert (await run_cli("init", cwd=tmp_path)).code == 0
    serve_on_free_ports(tmp_path / "mailnode.toml")
    return tmp_path


async def captured(cwd: Path, count: int, timeout: float = 15.0) -> list[dict[str, object]]:
    """The capture store's messages once it holds `count`, polled with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await run_cli(
            "capture", "list", "--limit", "100", "--json", "--config", "mailnode.toml", cwd=cwd
        )
        assert result.code == 0, result
        rows: list[dict[str, object]] = json.loads(result.stdout)
        if len(rows) >= count or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.1)


async def message(cwd: Path, capture_id: object) -> email.message.EmailMessage:
    result = await run_cli("capture", "show", str(capture_id), "--config", "mailnode.toml", cwd=cwd)
    assert result.code == 0, result
    parsed = email.message_from_string(result.stdout, policy=policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


async def test_send_is_delivered_by_serve_to_the_capture_store(node: Path) -> None:
    result = await run_cli(
        "send", "--config", "mailnode.toml", "--from", "Alice <alice@example.com>",
        "--to", "bob@example.org", "--to", "carol@example.net",
        "--subject", "Quarterly report", "--text", "Numbers inside.\n", "--html", "<p>Numbers inside.</p>",
        cwd=node,
    )  # fmt: skip
    assert result.code == 0, result
    lines = [DELIVERY_ID.match(line) for line in result.stdout.splitlines()]
    assert [m.group(2) for m in lines if m] == ["bob@example.org", "carol@example.net"]

    serve = await start_serve(node / "mailnode.toml")
    try:
        rows = await captured(node, 2)
    finally:
        assert await serve.terminate() == 0
    assert sorted(str(row["rcpt_to"]) for row in rows) == ["bob@example.org", "carol@example.net"]
    delivered_ids = {row["transaction_rest_id"] for row in rows}
    assert delivered_ids == {m.group(1) for m in lines if m}
    sent = await message(node, rows[0]["id"])
    assert sent["From"] == "Alice <alice@example.com>"
    assert sent["To"] == "bob@example.org, carol@example.net"
    assert sent["Subject"] == "Quarterly report"
    assert sent["Message-ID"] and sent["Date"]  # the api profile adds what is missing
    text_part = sent.get_body(("plain",))
    assert text_part is not None and text_part.get_content().strip() == "Numbers inside."


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--from", "alice@example.com", "--to", "bob.example.org"), "--to 'bob.example.org'"),
        (("--from", "alice", "--to", "bob@example.org"), "--from 'alice'"),
    ],
)
async def test_a_bad_address_is_one_line_naming_the_option(
    node: Path, args: tuple[str, ...], fragment: str
) -> None:
    result = await run_cli(
        "send", "--config", "mailnode.toml", *args, "--subject", "x", "--text", "y", cwd=node
    )
    assert result.code == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert await captured(node, 0, timeout=0) == []


async def test_recipients_csv_renders_each_row_with_its_fields(node: Path) -> None:
    rows = ["email,name,plan"] + [f"user{i}@example.org,User {i},plan-{i}" for i in range(25)]
    (node / "people.csv").write_text("\n".join(rows) + "\n")
    result = await run_cli(
        "send", "--config", "mailnode.toml", "--from", "alice@example.com",
        "--recipients-csv", "people.csv", "--subject", "Hello {{ name }}", "--text", "Your plan: {{ plan }}",
        cwd=node,
    )  # fmt: skip
    assert result.code == 0, result
    assert len(result.stdout.splitlines()) == 25

    serve = await start_serve(node / "mailnode.toml")
    try:
        captures = await captured(node, 25)
    finally:
        assert await serve.terminate() == 0
    assert len(captures) == 25
    seventh = next(row for row in captures if row["rcpt_to"] == "user7@example.org")
    sent = await message(node, seventh["id"])
    assert sent["Subject"] == "Hello User 7"
    assert sent["To"] == "User 7 <user7@example.org>"
    assert "Your plan: plan-7" in sent.get_content()


async def test_a_csv_without_a_field_the_template_uses_is_refused(node: Path) -> None:
    (node / "people.csv").write_text("email,name\nuser@example.org,User\n")
    result = await run_cli(
        "send", "--config", "mailnode.toml", "--from", "alice@example.com",
        "--recipients-csv", "people.csv", "--subject", "Hi", "--text", "{{ plan }}",
        cwd=node,
    )  # fmt: skip
    assert result.code == 1
    assert "plan" in result.stderr and result.stderr.strip().count("\n") == 0
