"""Who is connecting on port 25: forward-confirmed reverse DNS and the HELO name (both optional)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import dns.exception
import dns.resolver
import dns.reversename

from mailnode.smtp.resolvers import make_resolver

# RFC 7372 §3.4: 5.7.25 is the enhanced status for a failed reverse DNS check.
FCRDNS_FAILED = "550 5.7.25 the client's address has no forward-confirmed reverse DNS name"
HELO_FAILED = "550 5.7.1 the HELO/EHLO name does not resolve to the client's address"
CHECK_UNAVAILABLE = "451 4.7.25 cannot check the client's DNS names now; try again later"


class DnsUnavailable(Exception):
    """A lookup could not be answered now (SERVFAIL, timeout): answer 4xx, not 5xx."""


class PeerChecker:
    """DNS checks on the connecting client, every lookup bounded by `timeout`."""

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), timeout: float = 5.0) -> None:
        self._resolver = make_resolver(nameservers, kind="async")
        self._timeout = timeout

    async def fcrdns(self, ip: str) -> str | None:
        """A PTR name of `ip` whose A/AAAA records include `ip` again, or None."""
        names = await self._lookup(dns.reversename.from_address(ip).to_text(), "PTR")
        for name in names[:10]:  # bounded: a PTR set can be large
            if ip in await self._addresses(name):
                return name.rstrip(".").lower()
        return None

    async def helo_resolves_to(self, helo: str, ip: str) -> bool:
        """The HELO name (or address literal) names `ip` (RFC 5321 §4.1.4)."""
        if helo.startswith("[") and helo.endswith("]"):
            literal = helo[1:-1].removeprefix("IPv6:")
            try:
                return ipaddress.ip_address(literal) == ipaddress.ip_address(ip)
            except ValueError:
                return False
        return ip in await self._addresses(helo)

    async def _addresses(self, name: str) -> set[str]:
        found = await asyncio.gather(self._lookup(name, "A"), self._lookup(name, "AAAA"))
        return {str(ipaddress.ip_address(a)) for answer in found for a in answer}

    async def _lookup(self, name: str, rtype: str) -> list[str]:
        try:
            answer = await self._resolver.resolve(
                name, rtype, lifetime=self._timeout, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers) as exc:
            if isinstance(exc, dns.resolver.NoNameservers):
                raise DnsUnavailable(f"{rtype} {name}") from exc
            return []
        except dns.exception.Timeout as exc:
            raise DnsUnavailable(f"{rtype} {name}: timeout") from exc
        except dns.exception.DNSException:
            return []  # a malformed name or answer: no match
        return [rdata.to_text() for rdata in answer.rrset or ()]
