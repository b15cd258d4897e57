"""Suppressions: a domain's addresses it no longer sends to; search, add, remove."""

from __future__ import annotations

import logging

from aiohttp import web
from yarl import URL

from mailnode.console.page import PREFIX, BadInput, console, render, see_other, text_input
from mailnode.core.address import AddressError, parse_address
from mailnode.core.events import SuppressionReason

log = logging.getLogger(__name__)

PAGE = 50
REASONS = tuple(reason.value for reason in SuppressionReason)


async def suppressions(request: web.Request) -> web.Response:
    state = console(request)
    names = [record.name for record in await state.ctx.domains.list_domains()]
    domain = text_input(request.query, "domain") or (names[0] if names else "")
    if domain and domain not in names:
        raise BadInput(f"domain: no domain {domain!r}")
    prefix = text_input(request.query, "q")
    reason = text_input(request.query, "reason")
    if reason and reason not in REASONS:
        raise BadInput(f"reason: one of {', '.join(REASONS)}")
    after = text_input(request.query, "after") or None
    rows = (
        await state.store.suppressions(domain, prefix=prefix, reason=reason or None, after=after, limit=PAGE)
        if domain
        else []
    )
    more = rows[-1].address if len(rows) == PAGE else None
    return render(
        request,
        "suppressions.html",
        nav="suppressions",
        names=names,
        domain=domain,
        q=prefix,
        reason=reason,
        reasons=REASONS,
        rows=rows,
        more=more,
        paged=after is not None,
        back=request.path_qs,
    )


async def _target(request: web.Request) -> tuple[str, str]:
    form = await request.post()
    domain = text_input(form, "domain")
    if await console(request).ctx.domains.get_domain(domain) is None:
        raise BadInput(f"domain: no domain {domain!r}")
    address = text_input(form, "address")
    try:
        parse_address(address)
    except AddressError as exc:
        raise BadInput(f"address: {exc}") from None
    return domain, address


def _back_to(domain: str, done: str) -> web.Response:
    return see_other(str(URL(f"{PREFIX}/suppressions").with_query(domain=domain, done=done)))


async def add(request: web.Request) -> web.Response:
    domain, address = await _target(request)
    await console(request).ctx.events.suppress(
        domain, address, SuppressionReason.MANUAL, {"source": "console"}
    )
    log.info("console: suppressed an address domain=%s", domain)
    return _back_to(domain, "suppressed")


async def remove(request: web.Request) -> web.Response:
    domain, address = await _target(request)
    await console(request).ctx.events.unsuppress(domain, address)
    log.info("console: removed a suppression domain=%s", domain)
    return _back_to(domain, "unsuppressed")
