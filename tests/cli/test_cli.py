"""The `mailnode` command line, run as real subprocesses the way people and systemd run it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailnode.storage.tables import SCHEMA_VERSION

pytestmark = pytest.mark.slow

KEY_PATTERN = re.compile(r"^mk_[A-Za-z0-9_-]{40,}$")
REFERENCE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "mailnode.toml"
DEV_ADDRESS = ("127.0.0.1", 8025)  # the embedded developer default listens here, fixed
MESSAGE = (
    "From: me@example.com\r\n"
    "To: you@example.net\r\n"
    "Subject: captured\r\n"
    "Date: Mon, 23 Nov 2026 01:00:00 +0000\r\n"
    "Message-ID: <cli@example.com>\r\n"
    "\r\n"
    "Hello from the CLI test.\r\n"
)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def environment() -> dict[str, str]:
    """The test's environment without MAILNODE_CONFIG, so only what a test passes counts."""
    return {name: value for name, value in os.environ.items() if name != "MAILNODE_CONFIG"}


async def mailnode(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0) -> Result:
    """Run `python -m mailnode ARGS` in `cwd` and wait for it to exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailnode", *args,
        cwd=cwd, env=env or environment(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def assert_one_line_error(result: Result, code: int, *fragments: str, logs: bool = False) -> None:
    """Exit `code`, nothing on stdout, one line on stderr holding every fragment, no traceback.

    With `logs`, the service's own log lines (`level=...`) may come before it.
    """
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == code, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    if logs:
        lines = [line for line in lines if " level=" not in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "mailnode.toml"
    storage = f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/data/mailnode.db"\n'
    smtp = '[smtp.submission]\nlisten = "127.0.0.1:0"\n[smtp.ingress]\nlisten = "127.0.0.1:0"\n'
    path.write_text(storage + smtp + text)
    return path


def database_bytes(db_path: Path) -> bytes:
    """The database file and its WAL/journal companions, as they are on disk."""
    return b"".join(path.read_bytes() for path in sorted(db_path.parent.glob(db_path.name + "*")))


# -- help and check-config ----------------------------------------------------------------------


async def test_help_lists_the_commands(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mailnode")  # the installed console script
    process = await asyncio.create_subprocess_exec(
        script, "--help", cwd=tmp_path, env=environment(), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    text = stdout.decode()
    assert text.startswith("Usage: mailnode ")
    for command in ("serve", "migrate", "check-config", "key", "capture"):
        assert re.search(rf"^\s+{command}\s+\S", text, re.MULTILINE), f"{command} not listed:\n{text}"
    commands = text.partition("Commands:")[2]
    assert "..." not in commands, f"a one-line summary was cut off:\n{commands}"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[delivery]\nconcurency = 4\n", ["delivery.concurency: unknown key", "concurrency"]),
        ('[delivery]\nconcurrency = "four"\n', ["delivery.concurrency: expected int, got a string"]),
        ('[http]\nlisten = "127.0.0.1:70000"\n', ["http.listen: port 70000 is out of range"]),
        ('[delivery]\nmode = "smarthost"\n', ["delivery.smarthost: required"]),
        ("[retry]\nmax_attempts = 0\n", ["retry.max_attempts: must be at least 1"]),
        ("[delivery\nmode = 1\n", ["not valid TOML"]),
    ],
)
async def test_check_config_names_the_bad_key_and_exits_2(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    config = tmp_path / "mailnode.toml"
    config.write_text(text)

    result = await mailnode("check-config", str(config), cwd=tmp_path)

    assert_one_line_error(result, 2, "mailnode: config error: ", *fragments)


def _ec_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("key_file", "problem"),
    [
        (b"not a key\n", "is not an unencrypted PEM private key"),
        (_ec_key_pem(), "is not an RSA key"),
    ],
)
async def test_check_config_refuses_a_dkim_key_file_that_cannot_sign(
    tmp_path: Path, key_file: bytes, problem: str
) -> None:
    (tmp_path / "dkim.pem").write_bytes(key_file)
    config = write_config(
        tmp_path, f'[dkim."example.com"]\nselector = "s1"\nkey_file = "{tmp_path}/dkim.pem"\n'
    )

    result = await mailnode("check-config", str(config), cwd=tmp_path)

    assert_one_line_error(result, 2, "dkim.example.com.key_file: ", problem)


async def test_check_config_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = await mailnode("check-config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert_one_line_error(result, 2, "nope.toml: cannot read")


async def test_check_config_accepts_the_annotated_reference(tmp_path: Path) -> None:
    result = await mailnode("check-config", str(REFERENCE_CONFIG), cwd=tmp_path)
    assert (result.code, result.stdout, result.stderr) == (0, f"{REFERENCE_CONFIG}: ok\n", "")


async def test_serve_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[delivery]\nconcurency = 4\n")
    result = await mailnode("serve", "--config", str(config), cwd=tmp_path)
    assert_one_line_error(result, 2, "delivery.concurency: unknown key")
    assert not (tmp_path / "data").exists()  # nothing was created


async def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, f'[http]\nlisten = "127.0.0.1:{port}"\n')
        result = await mailnode("serve", "--config", str(config), cwd=tmp_path)
    assert_one_line_error(result, 1, f"127.0.0.1:{port}", "in use", "http.listen", logs=True)
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "mailnode.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone() == (0,)  # cleaned up


# -- migrate and keys ---------------------------------------------------------------------------


async def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db_path = tmp_path / "data" / "mailnode.db"

    first = await mailnode("migrate", "--config", str(config), cwd=tmp_path)
    assert (first.code, first.stdout) == (0, f"schema version {SCHEMA_VERSION} (was empty)\n")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {
            "schema_migrations", "sessions", "blobs", "blob_chunks", "transactions",
            "transaction_blobs", "attempts", "captures", "api_keys",
        } <= tables  # fmt: skip
        assert db.execute("SELECT version FROM schema_migrations").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    again = await mailnode("migrate", "--config", str(config), cwd=tmp_path)
    assert (again.code, again.stdout) == (0, f"schema version {SCHEMA_VERSION}\n")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (1,)


async def test_key_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    domain = await mailnode("domain", "create", "example.com", "--config", str(config), cwd=tmp_path)
    assert domain.code == 0, domain.stderr
    result = await mailnode(
        "key", "create", "--name", "billing app", "--domain", "example.com", "--config", str(config),
        cwd=tmp_path,
    )  # fmt: skip

    assert result.code == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n"
    assert KEY_PATTERN.match(key), key
    assert "only its hash" in result.stderr
    db_path = tmp_path / "data" / "mailnode.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT name, domain, prefix, key_hash FROM api_keys").fetchall()
    assert rows == [("billing app", "example.com", key[:8], hashlib.sha256(key.encode()).hexdigest())]
    stored = database_bytes(db_path)
    assert key.encode() not in stored
    assert key[8:].encode() not in stored  # not even the part after the shown prefix

    second = await mailnode("key", "create", "--name", "other", "--config", str(config), cwd=tmp_path)
    assert second.code == 0 and KEY_PATTERN.match(second.stdout.strip())
    assert second.stdout.strip() != key


async def test_key_list_json_shows_prefixes_never_keys(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    # MAILNODE_CONFIG stands in for --config.
    env = {**environment(), "MAILNODE_CONFIG": str(config)}
    assert (await mailnode("domain", "create", "example.com", cwd=tmp_path, env=env)).code == 0
    first = await mailnode(
        "key", "create", "--name", "app one", "--domain", "example.com", cwd=tmp_path, env=env
    )
    second = await mailnode("key", "create", "--name", "app two", cwd=tmp_path, env=env)
    keys = [first.stdout.strip(), second.stdout.strip()]

    result = await mailnode("key", "list", "--json", cwd=tmp_path, env=env)

    assert result.code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [{k: v for k, v in row.items() if k != "id"} for row in listed] == [
        {"prefix": keys[0][:8], "name": "app one", "domain": "example.com", "state": "active"},
        {"prefix": keys[1][:8], "name": "app two", "domain": None, "state": "active"},
    ]
    assert all(key[8:] not in result.stdout for key in keys)


# -- serve on the developer default -------------------------------------------------------------


@dataclass
class DevServe:
    process: asyncio.subprocess.Process
    lines: list[str]
    url: str
    key: str


def _port_free(address: tuple[str, int]) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


async def _start_dev_default(cwd: Path, timeout: float = 30.0) -> DevServe | str:
    """`mailnode serve` with no config; the DevServe, or the stderr if it exited early."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailnode", "serve",
        cwd=cwd, env=environment(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(timeout):
        while "API key" not in fields:
            line = (await process.stderr.readline()).decode()
            if not line:
                await process.wait()
                return "".join(lines)
            lines.append(line)
            name, sep, value = line.strip().partition(":")
            if sep and name in ("HTTP API", "API key"):
                fields[name] = value.split()[0]
    return DevServe(process, lines, fields["HTTP API"], fields["API key"])


@pytest.fixture
async def dev_serve(tmp_path: Path) -> AsyncIterator[DevServe]:
    """The developer default, in tmp_path. Its port is fixed, so when another run (say, this
    suite in another checkout) holds it, wait for it with a deadline, then fail saying why."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while True:
        if _port_free(DEV_ADDRESS):
            started = await _start_dev_default(tmp_path)
            if isinstance(started, DevServe):
                break
            if "in use" not in started:
                pytest.fail(f"mailnode serve (developer default) exited early:\n{started}")
        if loop.time() > deadline:
            pytest.fail("127.0.0.1:8025, the developer default's fixed port, stayed busy for 90 s")
        await asyncio.sleep(0.5)  # the port is someone else's; nothing of ours to wait on

    assert started.process.stderr is not None
    drain = asyncio.create_task(started.process.stderr.read())
    try:
        yield started
    finally:
        if started.process.returncode is None:
            started.process.send_signal(signal.SIGKILL)
            await started.process.wait()
        await drain


async def test_serve_without_config_runs_the_developer_default(tmp_path: Path, dev_serve: DevServe) -> None:
    assert dev_serve.url == "http://127.0.0.1:8025"
    assert any("SMTP submission:" in line and "127.0.0.1:2587" in line for line in dev_serve.lines)
    assert any("SMTP ingress:" in line and "127.0.0.1:2525" in line for line in dev_serve.lines)
    assert KEY_PATTERN.match(dev_serve.key)
    assert any("delivery:" in line and "capture" in line for line in dev_serve.lines)
    key_file = tmp_path / "mailnode-data" / "dev-api-key"
    assert key_file.read_text().strip() == dev_serve.key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "mailnode-data" / "mailnode.db").is_file()

    auth = {"Authorization": f"Bearer {dev_serve.key}"}
    body = {
        "mail_from": {"m": "me@example.com"},
        "rcpt_to": [{"m": "you@example.net"}],
        "body": {"inline": MESSAGE},
    }
    async with aiohttp.ClientSession(dev_serve.url, headers=auth) as http:
        async with http.post("/senders/api/transactions", json=body) as response:
            assert response.status == 201
            location = response.headers["Location"]
            etag = response.headers["ETag"]
        tx = {}
        async with asyncio.timeout(20):
            while "final_attempt_reason" not in tx:
                wait = {"If-None-Match": etag, "request-timeout": "5"}
                async with http.get(location, headers=wait) as response:
                    if response.status == 200:
                        tx, etag = await response.json(), response.headers["ETag"]
        assert tx["final_attempt_reason"] == "upstream response success"
        assert tx["data_response"]["message"].startswith("2.0.0 captured as message ")

        async with http.get("/capture/messages") as response:
            assert response.status == 200
            (listed,) = (await response.json())["messages"]
        assert (listed["transaction"], listed["mail_from"], listed["rcpt_to"]) == (
            location,
            "me@example.com",
            "you@example.net",
        )
        async with http.get(f"/capture/messages/{listed['id']}/raw") as response:
            raw = await response.read()
    assert raw.endswith(MESSAGE.encode())
    assert b"Received: " in raw

    # The CLI, run in the same directory with no config, reads the same capture store.
    listing = await mailnode("capture", "list", cwd=tmp_path)
    assert listing.code == 0, listing.stderr
    assert re.search(
        rf"^\s*{listed['id']}\s.*me@example\.com -> you@example\.net", listing.stdout, re.MULTILINE
    )
    shown = await mailnode("capture", "show", str(listed["id"]), cwd=tmp_path)
    assert shown.code == 0, shown.stderr
    assert shown.stdout.encode() == raw
    missing = await mailnode("capture", "show", "999999", cwd=tmp_path)
    assert_one_line_error(missing, 1, "no captured message 999999")

    dev_serve.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(dev_serve.process.wait(), 15) == 0
