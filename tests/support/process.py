"""Run `mailnode` as a real subprocess (the way users and systemd run it)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

_FIELD = re.compile(rb"^\s+([A-Za-z][A-Za-z _]*?):\s+(\S+)")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class CliResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


async def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60.0) -> CliResult:
    """Run `python -m mailnode ARGS` (in `cwd`, never with the caller's $MAILNODE_CONFIG)."""
    env = {name: value for name, value in os.environ.items() if name != "MAILNODE_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailnode", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    url: str
    stderr_lines: list[bytes]
    fields: dict[str, str]  # what serve printed when ready: "HTTP API", "SMTP submission", ...

    def address(self, name: str) -> tuple[str, int]:
        """A listener's (host, port), e.g. address("SMTP submission")."""
        host, _, port = self.fields[name].rpartition(":")
        return host, int(port)

    async def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a power cut of the process."""
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, timeout: float = 15.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)


async def start_serve(config: Path, timeout: float = 30.0) -> ServeProcess:
    """Start `mailnode serve` and wait until it has printed where it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailnode", "serve", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[bytes] = []
    fields: dict[str, str] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while "delivery" not in fields:  # the last line of the ready banner
        remaining = deadline - asyncio.get_running_loop().time()
        line = await asyncio.wait_for(process.stderr.readline(), max(remaining, 0.01))
        if not line:
            raise AssertionError(f"mailnode serve exited early: {b''.join(lines).decode()}")
        lines.append(line)
        match = _FIELD.match(line)
        if match:
            fields[match.group(1).decode()] = match.group(2).decode()
    serve = ServeProcess(process, fields["HTTP API"], lines, fields)
    asyncio.get_running_loop().create_task(_drain(process, lines))
    return serve


async def _drain(process: asyncio.subprocess.Process, lines: list[bytes]) -> None:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        lines.append(line)
