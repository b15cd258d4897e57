"""A bare aiohttp app as its own process, the reference HTTP server: `python -m benchlib.hello [--host H]`.

One handler answers "hello" on the route shape of mailnode's open pixel (`/t/o/{token}`), so a
client's requests are alike byte for byte and the difference to mailnode is what mailnode does
per request (middlewares, token check, event queueing, headers). No middlewares, no access log,
the default asyncio loop, as mailnode runs. The first stdout line is `PORT <n>`; it exits on
SIGTERM/SIGINT or when stdin closes (its parent died).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from benchlib.processes import Child, spawn

SCRIPTS_DIR = Path(__file__).resolve().parent.parent  # holds the benchlib package
ROUTE = "/t/o/{token}"


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def serve(host: str, port: int) -> None:
    """Listen until a signal arrives or stdin reaches EOF."""
    app = web.Application()
    app.router.add_get(ROUTE, hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_reader(sys.stdin.fileno(), _stop_on_eof, stop)
    sys.stdout.buffer.write(b"PORT %d\n" % runner.addresses[0][1])
    sys.stdout.buffer.flush()
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await runner.cleanup()


def _stop_on_eof(stop: asyncio.Event) -> None:
    with contextlib.suppress(OSError):
        if os.read(sys.stdin.fileno(), 4096):
            return
    stop.set()


@dataclass
class HelloProcess:
    """The parent's side: the app running as a child process."""

    child: Child
    url: str  # e.g. http://127.0.0.1:40123

    @classmethod
    async def start(cls, host: str = "127.0.0.1", timeout: float = 30.0) -> HelloProcess:
        env = {**os.environ, "PYTHONPATH": str(SCRIPTS_DIR)}
        child = await spawn(
            "hello", sys.executable, "-m", "benchlib.hello", "--host", host, stdout_pipe=True, env=env
        )
        try:
            stdout = child.process.stdout
            assert stdout is not None
            first = await asyncio.wait_for(stdout.readline(), timeout)
            if not first.startswith(b"PORT "):
                raise RuntimeError(child.describe_exit())
            return cls(child, f"http://{host}:{int(first.split()[1])}")
        except BaseException:
            await child.stop()
            raise

    async def stop(self) -> None:
        await self.child.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
