"""`mailnode serve` as a child process of a benchmark, the way users run it."""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.processes import Child, spawn

_HTTP_URL = re.compile(r"HTTP API:\s+(http://\S+)")


@dataclass
class MailnodeProcess:
    child: Child
    url: str  # the HTTP API, e.g. http://127.0.0.1:40123


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


async def create_api_key(config: Path, name: str = "bench") -> str:
    """A new API key from `mailnode key create`."""
    return (await run_cli("key", "create", "--name", name, "--config", str(config))).strip()


async def start_mailnode(config: Path, timeout: float = 60.0) -> MailnodeProcess:
    """Start `mailnode serve --config FILE` and wait until it prints its HTTP address."""
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def watch(line: str) -> None:
        match = _HTTP_URL.search(line)
        if match and not url.done():
            url.set_result(match.group(1))

    child = await spawn(
        "mailnode serve", sys.executable, "-m", "mailnode", "serve", "--config", str(config), on_stderr=watch
    )
    try:
        exited = asyncio.ensure_future(child.process.wait())
        either: set[asyncio.Future[Any]] = {url, exited}
        done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if url not in done:
            problem = "did not print its HTTP address" if not done else "exited early"
            raise RuntimeError(f"mailnode serve {problem}: {child.describe_exit()}")
        return MailnodeProcess(child, url.result())
    except BaseException:
        await child.stop()
        raise
