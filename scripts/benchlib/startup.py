"""Start-up time of `mailnode serve`: from exec to READY=1 on a notify socket of our own.

mailnode tells systemd it is ready (every listener bound) with an sd_notify datagram to
$NOTIFY_SOCKET (src/mailnode/systemd.py). Here the benchmark owns that socket: an AF_UNIX
datagram socket in a temporary directory, so the time runs from the exec of the process to the
moment mailnode itself says it is ready, as systemd would see it. The reference is the same
interpreter started the same way running `-c pass` (the floor: fork, exec, interpreter start)
and `-c "import mailnode.service"` (mailnode's imports).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchlib.processes import Child, spawn

READY = b"READY=1"


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound, non-blocking AF_UNIX datagram socket and its path (short: unix(7) allows 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield sock, path


async def wait_ready(sock: socket.socket, child: Child, timeout: float) -> None:
    """Until a datagram with READY=1 arrives; RuntimeError if the child exits or time runs out."""
    loop = asyncio.get_running_loop()
    exited = asyncio.ensure_future(child.process.wait())
    datagram: asyncio.Future[bytes] | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                datagram = asyncio.ensure_future(loop.sock_recv(sock, 4096))
                await asyncio.wait({datagram, exited}, return_when=asyncio.FIRST_COMPLETED)
                if not datagram.done():
                    raise RuntimeError(f"mailnode serve exited before READY=1: {child.describe_exit()}")
                if READY in datagram.result().split(b"\n"):
                    return
    except TimeoutError:
        raise RuntimeError(f"no READY=1 from mailnode serve within {timeout:.0f} s") from None
    finally:
        for future in (exited, datagram):
            if future is not None and not future.done():
                future.cancel()
                await asyncio.gather(future, return_exceptions=True)


@contextlib.asynccontextmanager
async def serve_until_ready(config: Path, timeout: float = 60.0) -> AsyncIterator[tuple[Child, float]]:
    """`mailnode serve --config FILE` with our notify socket: (the child, seconds from exec to
    READY=1) for the block; stopped (SIGTERM, then SIGKILL) after it."""
    with notify_socket() as (sock, path):
        env = {**os.environ, "NOTIFY_SOCKET": path}
        env.pop("WATCHDOG_USEC", None)
        args = (sys.executable, "-m", "mailnode", "serve", "--config", str(config))
        started = time.monotonic()
        child = await spawn("mailnode serve", *args, env=env)
        try:
            await wait_ready(sock, child, timeout)
            seconds = time.monotonic() - started
            yield child, seconds
        finally:
            await child.stop()


async def exec_seconds(*args: str, timeout: float = 60.0) -> float:
    """Seconds from exec of `sys.executable ARGS` to its exit (started as mailnode is)."""
    started = time.monotonic()
    child = await spawn("reference", sys.executable, *args)
    try:
        async with asyncio.timeout(timeout):
            code = await child.process.wait()
    finally:
        await child.stop()
    if code != 0:
        raise RuntimeError(child.describe_exit())
    return time.monotonic() - started


@dataclass(frozen=True)
class StartupRun:
    """Medians over one run's samples, in seconds."""

    ready: float  # mailnode serve: exec -> READY=1
    python: float  # python -c pass
    imports: float  # python -c "import mailnode.service"


async def startup_run(config: Path, samples: int) -> StartupRun:
    """`samples` starts of each, interleaved (mailnode, pass, import), after one unmeasured
    start of each (the first start of mailnode also creates its database)."""
    ready: list[float] = []
    python: list[float] = []
    imports: list[float] = []
    for sample in range(samples + 1):
        async with serve_until_ready(config) as (_child, seconds):
            pass
        floor = await exec_seconds("-c", "pass")
        imported = await exec_seconds("-c", "import mailnode.service")
        if sample > 0:
            ready.append(seconds)
            python.append(floor)
            imports.append(imported)
    return StartupRun(statistics.median(ready), statistics.median(python), statistics.median(imports))
