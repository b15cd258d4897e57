"""A loopback authoritative DNS server for tests: dnslib does the wire format, asyncio the I/O."""

from __future__ import annotations

import asyncio
from typing import cast

from dnslib import QTYPE, RCODE, RR, TXT, DNSError, DNSRecord

_UDP_PAYLOAD = 512  # RFC 1035 §4.2.1, unless the query's EDNS OPT record offers more


def _normal(name: str) -> str:
    return name.strip().rstrip(".").lower()


class DnsServer:
    """Answers from records added with `add`, over UDP and TCP on one 127.0.0.1 port.

    A name with no record at all is NXDOMAIN; a name with records, but none of the asked
    type, is NOERROR with an empty answer; a name passed to `servfail` is SERVFAIL.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._records: dict[str, list[RR]] = {}
        self._servfail: set[str] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def add(self, name: str, rtype: str, value: str, ttl: int = 60) -> None:
        """Add a record in zone-file syntax: add("example.test", "MX", "10 mx1.example.test.")."""
        name, rtype = _normal(name), rtype.upper()
        if rtype == "TXT":
            # A TXT value is sent as character-strings of at most 255 octets (RFC 1035 §3.3.14).
            data = value.encode()
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            records = [RR(f"{name}.", QTYPE.TXT, ttl=ttl, rdata=TXT(chunks))]
        else:
            records = RR.fromZone(f"{name}. {ttl} IN {rtype} {value}")
        self._records.setdefault(name, []).extend(records)

    def servfail(self, name: str) -> None:
        """Answer SERVFAIL for every query about `name`."""
        self._servfail.add(_normal(name))

    async def close(self) -> None:
        """Stop both listeners and end open TCP connections."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        # Abort rather than cancel: on Python 3.11 a cancelled stream handler logs an error.
        for writer in self._tcp_clients.values():
            writer.transport.abort()
        await asyncio.gather(*self._tcp_clients)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    def answer(self, packet: bytes, limit: int | None = None) -> bytes | None:
        """The reply to one query packet (None for garbage); truncated (TC) beyond `limit`."""
        try:
            request = DNSRecord.parse(packet)
        except DNSError:
            return None
        reply = request.reply()
        for question in request.questions:
            name = _normal(str(question.qname))
            self.queries.append((name, QTYPE.get(question.qtype, str(question.qtype))))
            if name in self._servfail:
                reply.header.rcode = RCODE.SERVFAIL
            elif name not in self._records:
                reply.header.rcode = RCODE.NXDOMAIN
            else:
                for record in self._records[name]:
                    if record.rtype == question.qtype:
                        reply.add_answer(record)
        packed: bytes = reply.pack()
        if limit is not None:
            offered = [r.rclass for r in request.ar if r.rtype == QTYPE.OPT]
            if len(packed) > max([limit, *offered]):
                # TC with the question kept (dnspython matches it), so the client retries on TCP.
                truncated = request.reply()
                truncated.header.tc = 1
                packed = truncated.pack()
        return packed

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_clients[task] = writer
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(size))
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            del self._tcp_clients[task]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data, limit=_UDP_PAYLOAD)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def start_dns_server(host: str = "127.0.0.1") -> DnsServer:
    """Start a DnsServer on `host`, UDP and TCP on the same free port."""
    loop = asyncio.get_running_loop()
    server = DnsServer(host)
    for _ in range(20):
        tcp = await asyncio.start_server(server._serve_tcp, host, 0)
        port = tcp.sockets[0].getsockname()[1]
        try:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(server), local_addr=(host, port)
            )
        except OSError:  # the UDP port is taken: try another TCP port
            tcp.close()
            await tcp.wait_closed()
            continue
        server.port, server._tcp, server._udp = port, tcp, udp
        return server
    raise OSError(f"no port free for both UDP and TCP on {host}")
