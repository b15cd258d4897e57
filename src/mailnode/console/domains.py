"""Domains: DKIM keys, tracking policy, API keys, the DNS records to publish and the doctor's checks."""

from __future__ import annotations

from aiohttp import web

from mailnode.api.v1_domains import dns_problem, dns_records
from mailnode.console.page import BadInput, console, render, text_input
from mailnode.doctor import DoctorReport, diagnose
from mailnode.errors import NotFoundError


async def domains(request: web.Request) -> web.Response:
    found = await console(request).ctx.domains.list_domains()
    return render(request, "domains.html", nav="domains", domains=found)


async def domain(request: web.Request) -> web.Response:
    state = console(request)
    name = request.match_info["name"]
    record = await state.ctx.domains.get_domain(name)
    if record is None:
        raise NotFoundError(f"no domain {name!r}")
    keys = await state.ctx.domains.list_api_keys(record.name)
    try:
        records, problem = dns_records(state.ctx.config, record), None
    except ValueError as exc:
        records, problem = [], dns_problem(exc)
    check = text_input(request.query, "check")
    if check not in ("", "dns"):
        raise BadInput("check: only dns")
    report: DoctorReport | None = None
    if check:
        # Each lookup is bounded by [dns] timeout_seconds; unreachable DNS is a failed check.
        report = await diagnose(
            state.ctx.config, state.ctx.domains, domain=record.name, clock=state.store.clock
        )
    return render(
        request,
        "domain.html",
        nav="domains",
        domain=record,
        api_keys=keys,
        records=records,
        dns_problem=problem,
        report=report,
        now=state.store.clock(),
    )
