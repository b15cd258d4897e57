"""An SMTP sink to run as its own process: `python -m benchlib.sink [--host H] [--port P]`.

It accepts every message and reports each one on stdout as one line, `<tag> <time>`: `tag`
is the value of the message's `X-Bench-Id` header (`-` when absent) and `time` is
`time.monotonic()` when the end of DATA arrived. On Linux that clock is CLOCK_MONOTONIC,
which every process on the machine shares, so the parent can subtract its own readings from
it. The first line is `PORT <n>`. The sink exits on SIGTERM/SIGINT or when stdin closes (its
parent died).

Why not aiosmtpd: measured here it costs about 1 ms of CPU per message (one connection per
message), more than aiosmtplib spends sending it (about 0.7 ms), so a reference run against it
measures the sink, not the sender. This sink speaks just enough SMTP for a cooperative client
(any command but EHLO/HELO, DATA and QUIT gets 250; pipelining works) and costs about half.

`SinkProcess` is the parent's side: it starts this module with the running interpreter and
sorts the reported arrivals into `Arrivals`, one per phase of a benchmark. Tags look like
`<phase>.<index>`, or `<phase>.*` for a load generator that sends one message file over and
over (smtp-source -F): those are counted, not told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from benchlib.processes import Child, spawn

SCRIPTS_DIR = Path(__file__).resolve().parent.parent  # holds the benchlib package
MAX_BUFFERED = 64 * 1024 * 1024  # a connection that sends more without ending DATA is cut
_TAG = re.compile(rb"^X-Bench-Id:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
_EHLO = b"250-sink.bench\r\n250-PIPELINING\r\n250-SIZE 67108864\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
_END_OF_DATA = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4; a dot-stuffed line never matches it


class Reporter:
    """Writes `<tag> <time>` lines, flushed once per event-loop iteration rather than per line."""

    def __init__(self, out: BinaryIO, loop: asyncio.AbstractEventLoop) -> None:
        self._out, self._loop = out, loop
        self._pending: list[bytes] = []

    def arrived(self, message: bytes, when: float) -> None:
        header_end = message.find(b"\r\n\r\n")
        match = _TAG.search(message, 0, header_end if header_end >= 0 else len(message))
        self._pending.append(b"%s %.6f\n" % (match.group(1) if match else b"-", when))
        if len(self._pending) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._out.write(b"".join(self._pending))
        self._out.flush()
        self._pending.clear()


class SinkProtocol(asyncio.Protocol):
    """One SMTP connection: command lines in, one reply each; DATA until <CRLF>.<CRLF>."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._buffer = b""
        self._in_data = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(b"220 sink.bench ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while not self._transport.is_closing():
            reply = self._message() if self._in_data else self._command()
            if reply is None:
                break
            self._transport.write(reply)
        if len(self._buffer) > MAX_BUFFERED:
            self._transport.abort()

    def _message(self) -> bytes | None:
        # The CRLF that ends the DATA command line counts as the one before a leading ".".
        end = (b"\r\n" + self._buffer).find(_END_OF_DATA)
        if end < 0:
            return None
        message, self._buffer = self._buffer[:end], self._buffer[end + 3 :]
        self._in_data = False
        self._reporter.arrived(message, time.monotonic())
        return b"250 2.0.0 OK\r\n"

    def _command(self) -> bytes | None:
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            return None
        verb = self._buffer[:4].upper()
        self._buffer = self._buffer[line_end + 2 :]
        if verb in (b"EHLO", b"HELO"):
            return _EHLO if verb == b"EHLO" else b"250 sink.bench\r\n"
        if verb == b"DATA":
            self._in_data = True
            return b"354 end with <CRLF>.<CRLF>\r\n"
        if verb == b"QUIT":
            assert self._transport is not None
            self._transport.write(b"221 2.0.0 bye\r\n")
            self._transport.close()
            return None
        return b"250 2.0.0 OK\r\n"


async def serve(host: str, port: int) -> None:
    """Listen until a signal arrives or stdin reaches EOF."""
    loop = asyncio.get_running_loop()
    reporter = Reporter(sys.stdout.buffer, loop)
    server = await loop.create_server(lambda: SinkProtocol(reporter), host, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_reader(sys.stdin.fileno(), _stop_on_eof, stop)
    sys.stdout.buffer.write(b"PORT %d\n" % server.sockets[0].getsockname()[1])
    sys.stdout.buffer.flush()
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        server.close()


def _stop_on_eof(stop: asyncio.Event) -> None:
    with contextlib.suppress(OSError):
        if os.read(sys.stdin.fileno(), 4096):
            return
    stop.set()


# -- the parent's side -------------------------------------------------------------------------


@dataclass
class Arrivals:
    """Arrival times (sink clock) of one phase's messages, by index."""

    expected: int
    times: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0  # a message that arrived twice: a double delivery
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    _waiters: dict[int, asyncio.Future[float]] = field(default_factory=dict)

    def arrived(self, index: int, when: float) -> None:
        if index in self.times:
            self.duplicates += 1
            return
        self.times[index] = when
        waiter = self._waiters.pop(index, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(when)
        if len(self.times) >= self.expected:
            self.complete.set()

    def arrived_unnumbered(self, when: float) -> None:
        """One more message of a phase whose messages all carry the same tag."""
        self.arrived(len(self.times), when)

    def expect_only(self, n: int) -> None:
        """Lower the count to wait for (e.g. to the messages the server accepted)."""
        self.expected = n
        if len(self.times) >= n:
            self.complete.set()

    def wait_for(self, index: int) -> asyncio.Future[float]:
        """A future that resolves with the arrival time of message `index`."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if index in self.times:
            future.set_result(self.times[index])
        else:
            self._waiters[index] = future
        return future


@dataclass
class SinkProcess:
    """The sink running as a child process, and what it reported so far."""

    child: Child
    host: str
    port: int
    strays: int = 0  # messages without a tag of an expected phase
    _phases: dict[str, Arrivals] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, host: str = "127.0.0.1", timeout: float = 30.0) -> SinkProcess:
        env = {**os.environ, "PYTHONPATH": str(SCRIPTS_DIR)}
        child = await spawn(
            "sink", sys.executable, "-m", "benchlib.sink", "--host", host, stdout_pipe=True, env=env
        )
        try:
            stdout = child.process.stdout
            assert stdout is not None
            first = await asyncio.wait_for(stdout.readline(), timeout)
            if not first.startswith(b"PORT "):
                await child.stop()
                raise RuntimeError(child.describe_exit())
            sink = cls(child, host, int(first.split()[1]))
        except BaseException:
            await child.stop()
            raise
        sink._reader = asyncio.create_task(sink._read_reports(stdout), name="sink-reports")
        return sink

    def expect(self, phase: str, n: int) -> Arrivals:
        """Start collecting the arrivals of `n` messages tagged `<phase>.<index>`."""
        arrivals = Arrivals(n)
        self._phases[phase] = arrivals
        return arrivals

    def progress(self) -> str:
        """How far the unfinished phases got, e.g. `r1-mn 734/2000`."""
        unfinished = [(tag, a) for tag, a in self._phases.items() if not a.complete.is_set()]
        return ", ".join(f"{tag} got {len(a.times)} of {a.expected}" for tag, a in unfinished) or "-"

    async def _read_reports(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            tag, _, when = line.decode().partition(" ")
            phase, _, index = tag.rpartition(".")
            arrivals = self._phases.get(phase)
            if arrivals is not None and index.isdigit():
                arrivals.arrived(int(index), float(when))
            elif arrivals is not None and index == "*":
                arrivals.arrived_unnumbered(float(when))
            else:
                self.strays += 1

    async def stop(self) -> None:
        try:
            await self.child.stop()
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def loopback_sink(timeout: float, advice: str, host: str = "127.0.0.1") -> AsyncIterator[SinkProcess]:
    """A sink for a whole benchmark, which must end within `timeout` seconds; stopped after it.

    On timeout it raises RuntimeError saying how far the sink got, and `advice` (what to
    change). Messages nobody expected (e.g. a DSN) are reported as a warning at the end.
    """
    sink = await SinkProcess.start(host)
    try:
        async with asyncio.timeout(timeout):
            yield sink
    except TimeoutError:
        raise RuntimeError(
            f"not done after --timeout {timeout:.0f} s (sink: {sink.progress()}); {advice}"
        ) from None
    finally:
        await sink.stop()
    if sink.strays:
        print(f"warning: the sink got {sink.strays} messages it could not attribute (DSNs?)", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
