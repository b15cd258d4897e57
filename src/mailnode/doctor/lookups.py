"""The doctor's DNS questions, asked with dnspython, each bounded by `[dns] timeout_seconds`."""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdata
import dns.resolver

from mailnode.doctor.checks import Answer, LookupKey, lookup_key

# dnspython can overrun its lifetime a little (a retry round in progress): the outer bound.
_GRACE_SECONDS = 0.5


class DoctorDns:
    """Answers for the checks: cached per name and type, at most `concurrency` in flight.

    Once one lookup finds DNS unreachable, the rest get the same "cannot reach DNS (…)" answer
    at once instead of each waiting out its own timeout.
    """

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver | None,
        timeout: float,
        *,
        concurrency: int = 8,
        unavailable: str | None = None,
    ) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._cache: dict[LookupKey, Answer] = {}
        if resolver is None and unavailable is None:
            unavailable = "cannot reach DNS (no resolver)"
        self._down = unavailable

    @property
    def servers(self) -> str:
        """The nameservers asked, as people write them."""
        if self._resolver is None:
            return "no resolver"
        shown = [_server_text(ns) for ns in self._resolver.nameservers]
        return ", ".join(shown) or "no nameservers"

    async def answer(self, name: str, rtype: str) -> Answer:
        """The answer for (name, type), asked once per run."""
        key = lookup_key(name, rtype)
        if key not in self._cache:
            self._cache[key] = await self._ask(*key)
        return self._cache[key]

    async def answers(self, keys: set[LookupKey]) -> dict[LookupKey, Answer]:
        """Several answers, asked concurrently."""
        ordered = sorted(keys)
        found = await asyncio.gather(*(self.answer(name, rtype) for name, rtype in ordered))
        return dict(zip(ordered, found, strict=True))

    async def _ask(self, name: str, rtype: str) -> Answer:
        async with self._slots:
            if self._down is not None or self._resolver is None:
                return Answer(failure=self._down)
            try:
                async with asyncio.timeout(self._timeout + _GRACE_SECONDS):
                    result = await self._resolver.resolve(
                        name, rtype, lifetime=self._timeout, search=False, raise_on_no_answer=False
                    )
            except dns.resolver.NXDOMAIN:
                return Answer(nxdomain=True)
            except (dns.exception.Timeout, TimeoutError):
                return self._unreachable(f"no answer within {self._timeout:g} s")
            except dns.resolver.NoNameservers as exc:
                return self._no_nameservers(name, rtype, exc)
            except dns.exception.DNSException as exc:
                return Answer(failure=f"DNS lookup of {rtype} {name} failed: {exc}")
        return Answer(records=tuple(_text(rdata) for rdata in result.rrset or ()))

    def _unreachable(self, why: str) -> Answer:
        if self._down is None:
            self._down = f"cannot reach DNS ({self.servers}: {why})"
        return Answer(failure=self._down)

    def _no_nameservers(self, name: str, rtype: str, exc: dns.resolver.NoNameservers) -> Answer:
        """Every server failed: unreachable (I/O errors), or answered an error such as SERVFAIL."""
        errors = exc.kwargs.get("errors") or []
        rcodes = []
        for _server, _tcp, _port, error, response in errors:
            if isinstance(error, OSError | dns.exception.Timeout | EOFError):
                return self._unreachable(str(error) or type(error).__name__)
            if isinstance(response, dns.message.Message):
                rcodes.append(dns.rcode.to_text(response.rcode()))
        why = ", ".join(dict.fromkeys(rcodes)) or "no usable answer"
        return Answer(failure=f"DNS lookup of {rtype} {name} failed: the server answered {why}")


def _server_text(nameserver: str | dns.nameserver.Nameserver) -> str:
    if isinstance(nameserver, dns.nameserver.Do53Nameserver):
        host, port = nameserver.address, nameserver.port
        shown = f"[{host}]" if ":" in host else host
        return shown if port == 53 else f"{shown}:{port}"
    return str(nameserver)


def _text(rdata: dns.rdata.Rdata) -> str:
    """One record as `checks.Answer` holds it."""
    rdtype = rdata.rdtype.name
    if rdtype in ("TXT", "SPF"):
        # RFC 7208 §3.3, RFC 6376 §3.6.2.2: the strings of one record join without spaces.
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdtype == "MX":
        exchange: dns.name.Name = rdata.exchange  # type: ignore[attr-defined]
        host = "." if exchange == dns.name.root else exchange.to_text(omit_final_dot=True).lower()
        return f"{rdata.preference} {host}"  # type: ignore[attr-defined]
    if rdtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(rdata.address))  # type: ignore[attr-defined]
    if rdtype == "PTR":
        return str(rdata.target.to_text(omit_final_dot=True)).lower()  # type: ignore[attr-defined]
    return rdata.to_text()
