"""MX resolution: a recipient domain to the ordered addresses to try (RFC 5321 §5.1, RFC 7505)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from mailnode.core.outcome import Stage
from mailnode.core.response import Response
from mailnode.errors import PermanentDeliveryError, TransientDeliveryError
from mailnode.smtp.resolvers import make_resolver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """One address to try: the MX host (or the domain itself, for an implicit MX) and its IP."""

    host: str
    address: str


class _Missing(Exception):
    """The name exists but has no record of the asked type, or does not exist (NXDOMAIN)."""

    def __init__(self, nxdomain: bool) -> None:
        super().__init__("nxdomain" if nxdomain else "no answer")
        self.nxdomain = nxdomain


class _LookupFailed(Exception):
    """The lookup could not be answered now (SERVFAIL, timeout, no nameserver reachable)."""


class MxResolver:
    """Resolves recipient domains to destinations with dnspython, every lookup time-bounded."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout: float = 5.0,
        *,
        rng: random.Random | None = None,
        max_destinations: int = 10,
    ) -> None:
        # Empty nameservers: the system resolver (/etc/resolv.conf). rng shuffles MX hosts of
        # equal preference (RFC 5321 §5.1 SHOULD); None means a fresh random.Random().
        self._resolver = make_resolver(nameservers, kind="async")
        self._timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self._max_destinations = max_destinations

    async def resolve(self, domain: str) -> list[Destination]:
        """The addresses to try for `domain`, best first; a DeliveryError when there are none."""
        domain = domain.strip().rstrip(".").lower()
        if domain.startswith("[") and domain.endswith("]"):
            return [Destination(domain, _address_literal(domain))]
        _check_domain(domain)
        try:
            hosts = await self._mx_hosts(domain)
        except _Missing as exc:
            if exc.nxdomain:
                raise _permanent(550, f"5.1.2 recipient domain {domain} not found") from None
            # RFC 5321 §5.1: no MX records means the domain itself is the implicit MX.
            return await self._implicit_mx(domain)
        except _LookupFailed as exc:
            raise _transient(f"4.4.3 MX lookup for {domain} failed: {exc}") from None
        destinations, failures = await self._addresses(hosts)
        if not destinations:
            reason = f" ({failures[0]})" if failures else ""
            raise _transient(f"4.4.3 no address for MX hosts of {domain}{reason}")
        return destinations

    async def _mx_hosts(self, domain: str) -> list[str]:
        answer = await self._lookup(domain, "MX")
        records = [(r.preference, r.exchange) for r in answer]
        targets = [(pref, name) for pref, name in records if name != dns.name.root]
        if not targets:
            # RFC 7505 §3: a lone "MX 0 ." is a null MX: the domain accepts no mail.
            raise _permanent(556, f"5.1.10 recipient domain {domain} does not accept mail (null MX)")
        # Shuffle first, then a stable sort: equal preferences end up in random order.
        self._rng.shuffle(targets)
        targets.sort(key=lambda record: record[0])
        hosts = [name.to_text(omit_final_dot=True).lower() for _, name in targets]
        return list(dict.fromkeys(hosts))[: self._max_destinations]

    async def _implicit_mx(self, domain: str) -> list[Destination]:
        destinations, failures = await self._addresses([domain])
        if destinations:
            return destinations
        if failures:
            raise _transient(f"4.4.3 address lookup for {domain} failed: {failures[0]}")
        raise _permanent(550, f"5.1.2 recipient domain {domain} has no MX or address records")

    async def _addresses(self, hosts: list[str]) -> tuple[list[Destination], list[str]]:
        """A then AAAA for every host (looked up concurrently), in MX order, de-duplicated."""
        async with asyncio.TaskGroup() as group:
            lookups = [
                (host, group.create_task(self._host_addresses(host, rtype)))
                for host in hosts
                for rtype in ("A", "AAAA")
            ]
        destinations: dict[str, Destination] = {}
        failures: list[str] = []
        for host, task in lookups:
            addresses, failure = task.result()
            if failure is not None:
                failures.append(failure)
            for address in addresses:
                destinations.setdefault(address, Destination(host, address))
        return list(destinations.values())[: self._max_destinations], failures

    async def _host_addresses(self, host: str, rtype: str) -> tuple[list[str], str | None]:
        """The host's addresses of one type; a failed lookup is skipped and reported."""
        try:
            answer = await self._lookup(host, rtype)
        except _Missing:
            return [], None
        except _LookupFailed as exc:
            log.info("%s lookup for MX host %s failed: %s", rtype, host, exc)
            return [], f"{rtype} {host}: {exc}"
        return [r.to_text() for r in answer], None

    async def _lookup(self, name: str, rtype: str) -> dns.resolver.Answer:
        """One query bounded by the timeout; dnspython's exceptions are translated here, once."""
        try:
            return await self._resolver.resolve(name, rtype, lifetime=self._timeout, search=False)
        except dns.resolver.NXDOMAIN:
            raise _Missing(nxdomain=True) from None
        except dns.resolver.NoAnswer:
            raise _Missing(nxdomain=False) from None
        except dns.exception.Timeout:
            raise _LookupFailed(f"no answer within {self._timeout:g} s") from None
        except dns.resolver.NoNameservers:
            raise _LookupFailed("no nameserver answered (SERVFAIL or refused)") from None
        except dns.exception.DNSException as exc:
            raise _LookupFailed(str(exc) or type(exc).__name__) from None


def _check_domain(domain: str) -> None:
    try:
        if not dns.name.from_text(domain).labels[0]:
            raise dns.name.EmptyLabel
    except dns.exception.DNSException as exc:
        raise _permanent(550, f"5.1.2 invalid recipient domain {domain!r}: {exc}") from None


def _address_literal(literal: str) -> str:
    """The IP inside an RFC 5321 §4.1.3 address literal: [192.0.2.1] or [IPv6:2001:db8::1]."""
    inner = literal[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        raise _permanent(550, f"5.1.2 invalid address literal {literal}") from None


def _permanent(code: int, message: str) -> PermanentDeliveryError:
    return PermanentDeliveryError(Response(code, message), stage=Stage.MAIL.value)


def _transient(message: str) -> TransientDeliveryError:
    return TransientDeliveryError(Response(451, message), stage=Stage.MAIL.value)
