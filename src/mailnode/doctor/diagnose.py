"""`diagnose`: ask DNS and read the certificate, then let `doctor.checks` judge each part."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncresolver

from mailnode.config import Config
from mailnode.core.dkim_keys import canonical_domain
from mailnode.doctor.checks import (
    MAX_PTR_NAMES,
    MAX_SPF_ROUNDS,
    Answer,
    CertificateFacts,
    DkimKey,
    certificate_facts,
    check_bounce_mx,
    check_certificate,
    check_dkim,
    check_dmarc,
    check_forward,
    check_hostname,
    check_no_certificate,
    check_ptr,
    check_spf,
    hostname_problem,
    reverse_name,
)
from mailnode.doctor.lookups import DoctorDns
from mailnode.doctor.report import SERVER, Check, DoctorReport, Status
from mailnode.errors import ConfigError, NotFoundError
from mailnode.smtp.resolvers import make_resolver
from mailnode.storage.domains import DomainRecord, DomainStore


async def diagnose(
    config: Config,
    domains: DomainStore,
    *,
    domain: str | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    clock: Callable[[], float] = time.time,
) -> DoctorReport:
    """Check one sending domain (and the bounce domain), or every domain and this server.

    `resolver` defaults to one on `[dns] nameservers`; every lookup is bounded by
    `[dns] timeout_seconds`. Unreachable DNS makes failed checks, not an exception.
    """
    selected = await _selected_domains(domains, domain)
    lookups = _lookups(config, resolver)
    async with asyncio.TaskGroup() as group:
        server = group.create_task(_server_checks(config, lookups, clock, everything=domain is None))
        per_domain = [group.create_task(_domain_checks(config, lookups, record)) for record in selected]
    checks = [*server.result(), *(check for task in per_domain for check in task.result())]
    return DoctorReport(tuple(checks), lookups.servers)


async def _selected_domains(domains: DomainStore, name: str | None) -> list[DomainRecord]:
    if name is None:
        return await domains.list_domains()
    record = await domains.get_domain(canonical_domain(name))
    if record is None:
        raise NotFoundError(f"no domain {name!r}; list them with `mailnode domain list`")
    return [record]


def _lookups(config: Config, resolver: dns.asyncresolver.Resolver | None) -> DoctorDns:
    timeout = config.dns.timeout_seconds
    if resolver is not None:
        return DoctorDns(resolver, timeout)
    nameservers = [(ns.host, ns.port) for ns in config.dns.nameservers]
    try:
        return DoctorDns(make_resolver(nameservers, kind="async"), timeout)
    except ConfigError as exc:  # no /etc/resolv.conf and no [dns] nameservers
        return DoctorDns(None, timeout, unavailable=f"cannot reach DNS ({exc})")


def _mx_host(config: Config) -> str:
    return config.smtp_hostname.strip().rstrip(".").lower()


# -- this server ----------------------------------------------------------------------------------


async def _server_checks(
    config: Config, lookups: DoctorDns, clock: Callable[[], float], *, everything: bool
) -> list[Check]:
    bounce = config.bounce_domain.strip().rstrip(".").lower()
    parts: list[Awaitable[Check | list[Check]]] = [
        _bounce_mx(config, lookups),
        _spf(config, lookups, SERVER, "bounce-spf", bounce),
    ]
    if everything:
        parts = [_hostname(config, lookups), _certificate(config, clock), *parts]
        parts += [_reverse_dns(config, lookups, ip) for ip in config.platform.sending_ips]
        if not config.platform.sending_ips:
            parts.append(_unknown_sending_address())
    found = await asyncio.gather(*parts)
    return [check for part in found for check in (part if isinstance(part, list) else [part])]


async def _hostname(config: Config, lookups: DoctorDns) -> Check:
    hostname = _mx_host(config)
    answers: list[Answer] = []
    if hostname_problem(hostname) is None:
        answers = list(await asyncio.gather(lookups.answer(hostname, "A"), lookups.answer(hostname, "AAAA")))
    return check_hostname(hostname, answers, config.platform.sending_ips)


async def _certificate(config: Config, clock: Callable[[], float]) -> Check:
    cert_file = config.tls.cert_file
    if not cert_file:
        return check_no_certificate()
    facts: CertificateFacts | str
    try:
        facts = certificate_facts(await asyncio.to_thread(Path(cert_file).read_bytes))
    except OSError as exc:
        facts = f"cannot read it: {exc.strerror}"
    except ValueError:
        facts = "no PEM certificate in it"
    return check_certificate(cert_file, facts, _mx_host(config), clock())


async def _bounce_mx(config: Config, lookups: DoctorDns) -> Check:
    bounce = config.bounce_domain.strip().rstrip(".").lower()
    return check_bounce_mx(SERVER, await lookups.answer(bounce, "MX"), bounce, _mx_host(config))


async def _reverse_dns(config: Config, lookups: DoctorDns, ip: str) -> list[Check]:
    ptr = await lookups.answer(reverse_name(ip), "PTR")
    checks = [check_ptr(ip, ptr, _mx_host(config))]
    if ptr.failure is None and ptr.records:
        names = list(ptr.records[:MAX_PTR_NAMES])
        found = await lookups.answers({(name, rtype) for name in names for rtype in ("A", "AAAA")})
        addresses = {name: [found[(name, "A")], found[(name, "AAAA")]] for name in names}
        checks.append(check_forward(ip, names, addresses))
    return checks


async def _unknown_sending_address() -> Check:
    detail = "this server's public address is unknown: set [platform] sending_ips to check its PTR"
    return Check(SERVER, "ptr", Status.WARN, detail)


async def _spf(config: Config, lookups: DoctorDns, scope: str, name: str, domain: str) -> Check:
    """Evaluate SPF over answers fetched round by round, as pyspf walks the record."""
    answers: dict[tuple[str, str], Answer] = {}
    for _ in range(MAX_SPF_ROUNDS):
        verdict = check_spf(
            scope,
            name,
            domain,
            sending_ips=config.platform.sending_ips,
            mx_host=_mx_host(config),
            answers=answers,
        )
        if isinstance(verdict, Check):
            return verdict
        answers.update(await lookups.answers(verdict))
    detail = f"SPF of {domain} needs more than {MAX_SPF_ROUNDS} rounds of lookups (RFC 7208 §4.6.4)"
    return Check(scope, name, Status.FAIL, detail)


# -- one sending domain ---------------------------------------------------------------------------


async def _domain_checks(config: Config, lookups: DoctorDns, record: DomainRecord) -> list[Check]:
    domain = record.name
    signing = record.signing_key
    key = None if signing is None else DkimKey(signing.selector, signing.algorithm, signing.public_key_b64)

    async def dkim() -> Check:
        if key is None:
            return check_dkim(domain, Answer(), None)
        return check_dkim(domain, await lookups.answer(f"{key.selector}._domainkey.{domain}", "TXT"), key)

    async def dmarc() -> Check:
        return check_dmarc(domain, await lookups.answer(f"_dmarc.{domain}", "TXT"))

    found = await asyncio.gather(dkim(), _spf(config, lookups, domain, "spf", domain), dmarc())
    return list(found)
