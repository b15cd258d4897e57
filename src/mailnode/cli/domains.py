"""`mailnode domain`: sending domains, their DKIM keys and DNS records."""

from __future__ import annotations

import click

from mailnode.api.v1_domains import (
    dkim_dns_record,
    dns_problem,
    dns_records,
    domain_json,
    domain_with_records_json,
    record_json,
)
from mailnode.cli.common import (
    CONFIG_HELP,
    config_path,
    domain_store,
    echo_json,
    fail_cleanly,
    json_option,
    utc_time,
)
from mailnode.config import Config, load_config
from mailnode.core.dkim_keys import ALGORITHMS, DkimAlgorithm, canonical_domain, generate_dkim_key
from mailnode.errors import ConfigError, NotFoundError
from mailnode.storage.domains import DomainRecord


@click.group()
def domain() -> None:
    """Sending domains (/v1): DKIM keys and the DNS records to publish.

    Example: mailnode domain create example.com
    """


def _echo_records(config: Config, record: DomainRecord) -> None:
    """The DNS records to publish, one per line; why not, on stderr, when the config cannot say."""
    try:
        records = dns_records(config, record)
    except ValueError as exc:
        click.echo(f"mailnode: {dns_problem(exc)}", err=True)
        return
    for r in records:
        click.echo(f"{r.type:<6} {r.name:<40} {r.value}")


def _domain_text(config: Config, record: DomainRecord, *, with_dns: bool) -> None:
    click.echo(f"{record.name}  (created {utc_time(record.created_at)})")
    for key in record.dkim_keys:
        signing = "  signing" if key is record.signing_key else ""
        click.echo(f"  DKIM {key.selector} ({key.algorithm}, created {utc_time(key.created_at)}){signing}")
    if with_dns:
        click.echo("DNS records to publish:")
        _echo_records(config, record)


def _found(record: DomainRecord | None, name: str) -> DomainRecord:
    if record is None:
        raise NotFoundError(f"no domain {name!r}; `mailnode domain list` shows them")
    return record


_ALGORITHM_HELP = "DKIM key type (default: [platform] dkim_algorithm, rsa = RSA-2048)."


@domain.command("create")
@click.argument("name")
@click.option("--dkim-algorithm", type=click.Choice(ALGORITHMS), help=_ALGORITHM_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def domain_create(
    name: str, dkim_algorithm: DkimAlgorithm | None, as_json: bool, config_file: str | None
) -> None:
    """Create a sending domain with a DKIM key; print the DNS records to publish.

    Example: mailnode domain create example.com
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(name)
    key = generate_dkim_key(dkim_algorithm or config.platform.dkim_algorithm)
    selector = config.platform.dkim_selector
    record = domain_store(config, lambda domains: domains.create_domain(canonical, key, selector))
    if as_json:
        echo_json(domain_with_records_json(config, record))
    else:
        _domain_text(config, record, with_dns=True)


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def domain_list(as_json: bool, config_file: str | None) -> None:
    """List sending domains and their DKIM selectors.

    Example: mailnode domain list --json
    """
    config = load_config(config_path(config_file))
    records = domain_store(config, lambda domains: domains.list_domains())
    if as_json:
        echo_json([domain_json(r) for r in records])
        return
    for r in records:
        signing = r.signing_key.selector if r.signing_key else "-"
        click.echo(f"{r.name:<40} DKIM {signing:<24} created {utc_time(r.created_at)}")


@domain.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def domain_show(name: str, as_json: bool, config_file: str | None) -> None:
    """Show a domain, its DKIM keys and the DNS records to publish.

    Example: mailnode domain show example.com
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(name)
    record = _found(domain_store(config, lambda domains: domains.get_domain(canonical)), canonical)
    if as_json:
        echo_json(domain_with_records_json(config, record))
    else:
        _domain_text(config, record, with_dns=True)


@domain.command("dns")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def domain_dns(name: str, as_json: bool, config_file: str | None) -> None:
    """Print the DNS records the domain publishes: DKIM, SPF, DMARC, bounce MX, tracking.

    Example: mailnode domain dns example.com
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(name)
    record = _found(domain_store(config, lambda domains: domains.get_domain(canonical)), canonical)
    try:
        records = dns_records(config, record)
    except ValueError as exc:
        raise ConfigError(dns_problem(exc)) from None
    if as_json:
        echo_json([record_json(r) for r in records])
        return
    for r in records:
        click.echo(f"{r.type:<6} {r.name:<40} {r.value}")


@domain.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def domain_delete(name: str, yes: bool, as_json: bool, config_file: str | None) -> None:
    """Delete a domain with its DKIM keys, API keys and templates; cancel its unsent mail.

    Example: mailnode domain delete example.com --yes
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(name)
    if not yes:
        click.confirm(
            f"Delete {canonical}, its keys and templates, and cancel its unsent mail?", abort=True, err=True
        )
    cancelled = domain_store(config, lambda domains: domains.delete_domain(canonical))
    if as_json:
        echo_json({"domain": canonical, "deleted": True, "cancelled": cancelled})
        return
    click.echo(f"deleted {canonical}; {cancelled} unsent deliveries cancelled")


@domain.command("rotate-dkim")
@click.argument("name")
@click.option("--dkim-algorithm", type=click.Choice(ALGORITHMS), help=_ALGORITHM_HELP)
@json_option
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def domain_rotate_dkim(
    name: str, dkim_algorithm: DkimAlgorithm | None, as_json: bool, config_file: str | None
) -> None:
    """Make a new DKIM key under a new selector; it signs from now on, the old one stays.

    Publish the new record shown, then remove the old key with the API
    (DELETE /v1/domains/{domain}/dkim/{selector}) once resolvers have it.

    Example: mailnode domain rotate-dkim example.com
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(name)
    key = generate_dkim_key(dkim_algorithm or config.platform.dkim_algorithm)
    selector = config.platform.dkim_selector
    added = domain_store(config, lambda domains: domains.add_dkim_key(canonical, key, selector))
    record = dkim_dns_record(canonical, added)
    if as_json:
        echo_json(
            {
                "domain": canonical,
                "selector": added.selector,
                "algorithm": added.algorithm,
                "publish": record_json(record),
            }
        )
        return
    click.echo(f"new DKIM selector {added.selector} ({added.algorithm}) signs for {canonical}; publish:")
    click.echo(f"{record.type:<6} {record.name:<40} {record.value}")


# The names issue 6 and Postal users know, beside create/delete (the /v1 verbs).
domain.add_command(domain_create, "add")
domain.add_command(domain_delete, "remove")
