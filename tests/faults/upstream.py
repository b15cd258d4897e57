"""A misbehaving receiving server on 127.0.0.1 port 0, in plain asyncio (no SMTP library).

It does what aiosmtpd (tests/support/sink.py) cannot be told to: a 4xx greeting, no greeting
at all, a connection cut in the middle of the message, a STARTTLS whose handshake fails. Once
`fault` is set to None it behaves: it answers 250 and records each message it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field

MAX_LINE = 4096


class Fault(enum.Enum):
    GREETING_421 = "421 4.3.2 too busy, come back later"  # then it closes
    SILENT = "no greeting: the client waits for it"
    DROP_MID_DATA = "closes after part of the message"
    BROKEN_TLS = "offers STARTTLS, answers 220, then sends no TLS"


@dataclass
class Upstream:
    fault: Fault | None
    port: int = 0
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _clients: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        self.connections += 1
        try:
            await self._session(self.fault, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            del self._clients[task]

    async def _session(
        self, fault: Fault | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if fault is Fault.SILENT:
            await reader.read()  # until the client gives up and closes
            return
        if fault is Fault.GREETING_421:
            writer.write(f"{fault.value}\r\n".encode())
            await writer.drain()
            return
        writer.write(b"220 upstream.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                tls = b"250-STARTTLS\r\n" if fault is Fault.BROKEN_TLS else b""
                writer.write(b"250-upstream.test\r\n" + tls + b"250 8BITMIME\r\n")
            elif verb == b"STAR" and fault is Fault.BROKEN_TLS:
                writer.write(b"220 2.0.0 go ahead\r\nthis is not a TLS record\r\n")
                await writer.drain()
                return
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                if fault is Fault.DROP_MID_DATA:
                    await reader.readexactly(100)  # some of the message, then the cable is cut
                    writer.transport.abort()
                    return
                self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 2.0.0 received\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                return
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._clients.values():
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def start_upstream(fault: Fault | None, port: int = 0) -> Upstream:
    """Listen on 127.0.0.1 (a free port unless `port` is given)."""
    upstream = Upstream(fault)
    upstream._server = await asyncio.start_server(upstream.serve, "127.0.0.1", port, limit=MAX_LINE)
    upstream.port = upstream._server.sockets[0].getsockname()[1]
    return upstream
