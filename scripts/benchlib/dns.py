"""A loopback DNS server that knows no names: every query is answered NXDOMAIN at once.

mailnode's ingress checks SPF, DKIM, ARC and DMARC through its `[dns] nameservers`. Pointed
here, the benchmark's lookups stay on the machine and cost no network round trips: the
checks' own cost is measured, and every result is "none". UDP only (dnspython switches to
TCP only for truncated answers, and these are tiny).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

from dnslib import RCODE, DNSError, DNSRecord


@dataclass
class NxDomainServer:
    host: str
    port: int
    queries: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: NxDomainServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # 3.11's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = DNSRecord.parse(data)
        except DNSError:
            return  # not DNS: no answer, as a real server would do
        reply = query.reply()
        reply.header.rcode = RCODE.NXDOMAIN
        self._server.queries += 1
        assert self._transport is not None
        self._transport.sendto(reply.pack(), addr)


@asynccontextmanager
async def nxdomain_server(host: str = "127.0.0.1") -> AsyncIterator[NxDomainServer]:
    """Serve on a free UDP port of `host` in this event loop until the block ends."""
    server = NxDomainServer(host, 0)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Protocol(server), local_addr=(host, 0)
    )
    try:
        server.port = transport.get_extra_info("sockname")[1]
        yield server
    finally:
        transport.close()
