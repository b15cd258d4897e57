"""`mailnode serve` as a child process of a benchmark, the way users run it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchlib.processes import Child, spawn

_HTTP_URL = re.compile(r"HTTP API:\s+(http://\S+)")
_SMTP_LISTENER = re.compile(r"SMTP (\S+):\s+(\S+):(\d+)\s*$")
_LOG_LEVEL = re.compile(r" level=([A-Z]+) ")  # mailnode's log format (cli._setup_logging)


@dataclass
class MailnodeProcess:
    child: Child
    url: str  # the HTTP API, e.g. http://127.0.0.1:40123
    # SMTP listeners by name ("submission", "ingress", ...), as printed at start-up.
    smtp: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Log lines by level ("INFO", "WARNING", ...), and the last warnings and errors.
    log_levels: Counter[str] = field(default_factory=Counter)
    problems: deque[str] = field(default_factory=lambda: deque(maxlen=20))


def base_config(
    data_dir: Path, host: str, log_level: str, sqlite_synchronous: str, http_port: int = 0
) -> str:
    """The start of a benchmark's mailnode TOML: its top-level settings, SQLite in data_dir and
    HTTP on `http_port` (0: a free port) of `host`, ending with a newline: the caller appends
    its own tables."""
    return f"""
hostname = "mailnode.bench"
log_level = "{log_level}"
[storage]
url = "sqlite+aiosqlite:///{data_dir}/mailnode.db"
sqlite_synchronous = "{sqlite_synchronous}"
[http]
listen = "{host}:{http_port}"
"""


async def run_cli(*args: str, timeout: float = 60.0) -> str:
    """Run `python -m mailnode ARGS` to completion and return its stdout; raise on failure."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailnode",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"mailnode {' '.join(args)} failed ({process.returncode}): {stderr.decode()}")
    return stdout.decode()


async def create_api_key(config: Path, name: str = "bench", domain: str | None = None) -> str:
    """A new API key from `mailnode key create`; for `domain`, when given, which
    `mailnode domain create` makes first (with a DKIM key: its mail is signed, as a user's is)."""
    args = ("key", "create", "--name", name, "--config", str(config))
    if domain:
        await run_cli("domain", "create", domain, "--config", str(config))
    return (await run_cli(*args, *(("--domain", domain) if domain else ()))).strip()


async def admin_setup(
    http: aiohttp.ClientSession, base_url: str, admin_token: str, domain: str, algorithm: str
) -> str:
    """Over the admin API, as an operator does: create `domain` (DKIM key of `algorithm`) and an
    API key for it; return the key."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    body = {"name": domain, "dkim_algorithm": algorithm}
    async with http.post(f"{base_url}/v1/domains", json=body, headers=admin) as response:
        if response.status != 201:
            raise RuntimeError(f"POST /v1/domains answered {response.status}: {await response.text()}")
    async with http.post(
        f"{base_url}/v1/domains/{domain}/keys", json={"name": "bench"}, headers=admin
    ) as response:
        if response.status != 201:
            raise RuntimeError(
                f"POST /v1/domains/{domain}/keys answered {response.status}: {await response.text()}"
            )
        return str((await response.json())["key"])


async def start_mailnode(
    config: Path, timeout: float = 60.0, smtp_listeners: Collection[str] = ()
) -> MailnodeProcess:
    """Start `mailnode serve --config FILE` and wait until it prints its HTTP address.

    With `smtp_listeners` (e.g. {"submission"}) it also waits for those SMTP addresses.
    """
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    http_url: list[str] = []
    smtp: dict[str, tuple[str, int]] = {}
    log_levels: Counter[str] = Counter()
    problems: deque[str] = deque(maxlen=20)

    def watch(line: str) -> None:
        if match := _LOG_LEVEL.search(line):
            log_levels[match.group(1)] += 1
            if match.group(1) in ("WARNING", "ERROR", "CRITICAL"):
                problems.append(line.rstrip())
        elif match := _HTTP_URL.search(line):
            http_url.append(match.group(1))
        elif match := _SMTP_LISTENER.search(line):
            smtp[match.group(1).rstrip(":")] = (match.group(2), int(match.group(3)))
        if http_url and all(name in smtp for name in smtp_listeners) and not url.done():
            url.set_result(http_url[0])

    child = await spawn(
        "mailnode serve", sys.executable, "-m", "mailnode", "serve", "--config", str(config), on_stderr=watch
    )
    try:
        exited = asyncio.ensure_future(child.process.wait())
        either: set[asyncio.Future[Any]] = {url, exited}
        done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if url not in done:
            wanted = ", ".join(["HTTP", *smtp_listeners])
            problem = f"did not print its addresses ({wanted})" if not done else "exited early"
            raise RuntimeError(f"mailnode serve {problem}: {child.describe_exit()}")
        return MailnodeProcess(child, url.result(), smtp, log_levels, problems)
    except BaseException:
        await child.stop()
        raise


@contextlib.asynccontextmanager
async def running_mailnode(
    config: Path, timeout: float = 60.0, smtp_listeners: Collection[str] = ()
) -> AsyncIterator[MailnodeProcess]:
    """start_mailnode() for the block, stopped after it; raise if it did not exit cleanly."""
    node = await start_mailnode(config, timeout, smtp_listeners)
    try:
        yield node
    finally:
        await node.child.stop()
    if node.child.process.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(node.child.describe_exit())
