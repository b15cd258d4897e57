"""`mailnode suppression`: addresses a sending domain must not send to."""

from __future__ import annotations

from typing import Any

import click

from mailnode.cli.common import (
    config_option,
    config_path,
    echo_json,
    echo_table,
    fail_cleanly,
    json_option,
    rfc3339,
    run,
    utc_time,
    with_store,
)
from mailnode.config import load_config
from mailnode.core.address import AddressError, parse_address
from mailnode.core.dkim_keys import canonical_domain
from mailnode.core.events import SuppressionReason
from mailnode.errors import MailnodeError, NotFoundError
from mailnode.storage.domains import DomainStore
from mailnode.storage.events import EventStore, SuppressionRecord
from mailnode.storage.store import Store

REASONS = [reason.value for reason in SuppressionReason]
domain_option = click.option("--domain", "domain_name", required=True, help="The sending domain.")


@click.group()
def suppression() -> None:
    """Addresses a domain no longer sends to (hard bounces, complaints, unsubscribes, by hand).

    Example: mailnode suppression list --domain example.com
    """


@suppression.command("list")
@domain_option
@click.option("--reason", type=click.Choice(REASONS), help="Only those suppressed for this reason.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@config_option
@fail_cleanly
def suppression_list(
    domain_name: str, reason: str | None, limit: int, as_json: bool, config_file: str | None
) -> None:
    """List a domain's suppressions, oldest first.

    Example: mailnode suppression list --domain example.com --reason bounced --json
    """
    config = load_config(config_path(config_file))
    domain = canonical_domain(domain_name)

    async def read(store: Store) -> list[SuppressionRecord]:
        await _existing(store, domain)
        return await EventStore(store).suppressions(domain, reason=reason, limit=limit)

    records = run(with_store(config, read))
    if as_json:
        echo_json([suppression_json(r) for r in records])
        return
    echo_table(
        ["ADDRESS", "REASON", "SINCE", "DETAILS"],
        [[r.address, r.reason, utc_time(r.created_at), _details(r.details)] for r in records],
    )
    click.echo(
        f"{len(records)} suppressions" + (" (--limit reached)" if len(records) == limit else ""), err=True
    )


@suppression.command("add")
@click.argument("addresses", nargs=-1, required=True)
@domain_option
@click.option(
    "--reason", type=click.Choice(REASONS), default=SuppressionReason.MANUAL.value, show_default=True
)
@json_option
@config_option
@fail_cleanly
def suppression_add(
    addresses: tuple[str, ...], domain_name: str, reason: str, as_json: bool, config_file: str | None
) -> None:
    """Stop sending to addresses from a domain (sends to them are refused until removed).

    Example: mailnode suppression add someone@example.org --domain example.com
    """
    config = load_config(config_path(config_file))
    domain = canonical_domain(domain_name)
    wanted = [_address(text) for text in addresses]

    async def add(store: Store) -> list[tuple[SuppressionRecord, bool]]:
        await _existing(store, domain)
        events = EventStore(store)
        done = []
        for address in wanted:
            existed = await events.suppression(domain, address) is not None
            record = await events.suppress(domain, address, SuppressionReason(reason), {"source": "cli"})
            done.append((record, not existed))
        return done

    done = run(with_store(config, add))
    if as_json:
        echo_json([{**suppression_json(record), "added": added} for record, added in done])
        return
    for record, added in done:
        if added:
            click.echo(f"suppressed {record.address} for {domain} ({record.reason})")
        else:
            click.echo(f"{record.address} was already suppressed for {domain} ({record.reason})")


@suppression.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@domain_option
@json_option
@config_option
@fail_cleanly
def suppression_remove(
    addresses: tuple[str, ...], domain_name: str, as_json: bool, config_file: str | None
) -> None:
    """Send to addresses again; an address that was not suppressed is an error.

    Example: mailnode suppression remove someone@example.org --domain example.com
    """
    config = load_config(config_path(config_file))
    domain = canonical_domain(domain_name)
    wanted = [_address(text) for text in addresses]

    async def remove(store: Store) -> list[str]:
        await _existing(store, domain)
        removed = []
        for address in wanted:
            if not await EventStore(store).unsuppress(domain, address):
                raise NotFoundError(f"{address} is not suppressed for {domain}")
            removed.append(address)
        return removed

    removed = run(with_store(config, remove))
    if as_json:
        echo_json({"domain": domain, "removed": removed})
        return
    for address in removed:
        click.echo(f"{address} may receive mail from {domain} again")


async def _existing(store: Store, domain: str) -> None:
    if await DomainStore(store).get_domain(domain) is None:
        raise NotFoundError(f"no domain {domain!r}; `mailnode domain list` shows them")


def _address(text: str) -> str:
    try:
        return str(parse_address(text.strip())).lower()
    except AddressError as exc:
        raise MailnodeError(f"{text!r} is not an email address: {exc}") from None


def _details(details: dict[str, Any]) -> str:
    text = " ".join(f"{key}={value}" for key, value in details.items())
    return text if len(text) <= 60 else text[:59] + "…"


def suppression_json(record: SuppressionRecord) -> dict[str, Any]:
    """A suppression as /v1 shows it, with its domain."""
    return {
        "domain": record.domain,
        "address": record.address,
        "reason": record.reason,
        "details": record.details,
        "created_at": rfc3339(record.created_at),
    }
