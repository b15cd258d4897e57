"""`mailnode key`: API keys."""

from __future__ import annotations

import json
import secrets

import click

from mailnode.cli.common import (
    CONFIG_HELP,
    config_option,
    config_path,
    echo_json,
    fail_cleanly,
    json_option,
    rfc3339,
    run,
    runtime,
    utc_time,
    with_store,
)
from mailnode.config import Config, load_config
from mailnode.core.apikey import key_hash, key_prefix, new_api_key
from mailnode.core.dkim_keys import canonical_domain
from mailnode.errors import NotFoundError
from mailnode.storage.domains import DomainStore
from mailnode.storage.store import Store


async def create_key(config: Config, *, name: str, domain: str | None, expires_at: float | None) -> str:
    key = new_api_key(secrets.token_bytes)

    async def add(store: Store) -> None:
        if domain is None:
            await store.add_api_key(
                name=name, domain=None, prefix=key_prefix(key), key_hash=key_hash(key), expires_at=expires_at
            )
            return
        try:
            await DomainStore(store).create_api_key(
                domain, name=name, prefix=key_prefix(key), key_hash=key_hash(key), expires_at=expires_at
            )
        except NotFoundError:
            raise NotFoundError(
                f"no domain {domain!r}: create it first with `mailnode domain create {domain}`"
            ) from None

    await with_store(config, add)
    return key


@click.group()
def key() -> None:
    """Create, list and revoke API keys (they authenticate the REST API).

    Example: mailnode key create --name "billing app" --domain example.com
    """


@key.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. 'billing app'.")
@click.option("--domain", help="The sending domain the key belongs to.")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Expire the key after N days.")
@json_option
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def key_create(
    name: str, domain: str | None, expires_in_days: int | None, as_json: bool, config_file: str | None
) -> None:
    """Create an API key and print it once (only its hash is stored).

    Example: mailnode key create --name "billing app" --domain example.com
    """
    config = load_config(config_path(config_file))
    domain = None if domain is None else canonical_domain(domain)
    expires_at = None
    if expires_in_days is not None:
        expires_at = runtime().clock() + expires_in_days * 86400
    key = run(create_key(config, name=name, domain=domain, expires_at=expires_at))
    if as_json:
        echo_json(
            {
                "key": key,
                "prefix": key_prefix(key),
                "name": name,
                "domain": domain,
                "expires_at": rfc3339(expires_at),
            }
        )
    else:
        click.echo(key)
    click.echo("Store it now: mailnode keeps only its hash and cannot show it again.", err=True)


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def key_list(as_json: bool, config_file: str | None) -> None:
    """List API keys (prefix, name, domain, state).

    Example: mailnode key list --json
    """
    config = load_config(config_path(config_file))
    records = run(with_store(config, lambda store: store.list_api_keys()))
    rows = [
        {
            "id": r.id,
            "prefix": r.prefix,
            "name": r.name,
            "domain": r.domain,
            "state": "deactivated" if r.deactivated_at else "active",
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        domain = row["domain"] or "-"
        click.echo(f"{row['id']:>4}  {row['prefix']}…  {row['state']:<11}  {domain:<24}  {row['name']}")


@key.command("revoke")
@click.argument("key_id", type=int)
@json_option
@config_option
@fail_cleanly
def key_revoke(key_id: int, as_json: bool, config_file: str | None) -> None:
    """Deactivate an API key for good: requests and SMTP logins with it are refused from now on.

    KEY_ID is the number `mailnode key list` shows.

    Example: mailnode key revoke 7
    """
    config = load_config(config_path(config_file))
    record = run(with_store(config, lambda store: store.deactivate_api_key(key_id)))
    if record is None:
        raise NotFoundError(f"no API key {key_id}; `mailnode key list` shows them")
    if as_json:
        echo_json(
            {
                "id": record.id,
                "prefix": record.prefix,
                "name": record.name,
                "domain": record.domain,
                "state": "deactivated",
                "deactivated_at": rfc3339(record.deactivated_at),
            }
        )
        return
    assert record.deactivated_at is not None
    click.echo(
        f"key {record.id} ({record.prefix}…, {record.name}) deactivated {utc_time(record.deactivated_at)}"
    )
