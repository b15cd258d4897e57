"""Behind a reverse proxy: the client's address and scheme from X-Forwarded-For/-Proto, trusted
only when the connection comes from an address in `[http] trusted_proxies`.

Anyone can send X-Forwarded-For; only the hops a trusted proxy appended are believed. The list
is read from the right (the nearest hop): the first address that is not a trusted proxy is the
client. With no trusted proxies (the default) the headers are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from mailnode.api.errors import Handler

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """ "127.0.0.1", "10.0.0.0/8", "::1" → networks; ValueError names a bad entry."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str | None, proxies: Sequence[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[Network]) -> str | None:
    """The client's address: `peer` unless it is a trusted proxy, else the nearest hop in
    X-Forwarded-For (all its header lines, in order) that is not one; a hop that is not an IP
    address ends the walk at the last one that could be vouched for."""
    if not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client
        client = hop
        if not _trusted(hop, proxies):
            return hop
    return client


def forwarded_middleware(proxies: Sequence[Network]) -> Middleware:
    """Give handlers the client's address (request.remote) and scheme (https when the trusted
    proxy says so: secure cookies, links) instead of the proxy's."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not proxies or not _trusted(request.remote, proxies):
            return await handler(request)
        forwarded_for = request.headers.getall("X-Forwarded-For", [])
        remote = client_address(request.remote, forwarded_for, proxies) or "unknown"
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        scheme = proto if proto in ("http", "https") else request.scheme
        return await handler(request.clone(remote=remote, scheme=scheme))

    return forwarded
