"""`mailnode signing-key`: the secrets VERP return paths and tracking tokens are signed with."""

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
    runtime,
    utc_time,
    with_store,
)
from mailnode.config import load_config
from mailnode.storage.batches import TRACKING_KEYS, VERP_KEYS, BatchStore, SigningKeyInfo

SECRET_BYTES = 32  # as the service makes the first key of each purpose
PURPOSES = {
    VERP_KEYS: "VERP return paths (bounces find their delivery)",
    TRACKING_KEYS: "open, click and unsubscribe links",
}


@click.group("signing-key")
def signing_key() -> None:
    """Secrets that sign VERP return paths and tracking links (never printed).

    Example: mailnode signing-key rotate tracking
    """


@signing_key.command("list")
@json_option
@config_option
@fail_cleanly
def signing_key_list(as_json: bool, config_file: str | None) -> None:
    """List signing keys by purpose: which one signs, which ones still verify.

    Example: mailnode signing-key list --json
    """
    config = load_config(config_path(config_file))
    keys = run(with_store(config, lambda store: BatchStore(store).signing_keys()))
    if as_json:
        echo_json([_key_json(key) for key in keys])
        return
    echo_table(
        ["PURPOSE", "KEY", "CREATED", "STATE"],
        [[key.purpose, key.key_id, utc_time(key.created_at), _state(key)] for key in keys],
    )
    if not keys:
        click.echo("no signing keys yet: mailnode serve makes the first of each purpose", err=True)


@signing_key.command("rotate")
@click.argument("purpose", type=click.Choice(list(PURPOSES)))
@json_option
@config_option
@fail_cleanly
def signing_key_rotate(purpose: str, as_json: bool, config_file: str | None) -> None:
    """Add a new key for verp or tracking; it signs once mailnode serve reloads (SIGHUP).

    The older keys keep verifying, so return paths and links already sent keep working.

    Example: mailnode signing-key rotate verp
    """
    config = load_config(config_path(config_file))
    make_secret = runtime().random_bytes

    key = run(
        with_store(
            config,
            lambda store: BatchStore(store).rotate_signing_key(purpose, lambda: make_secret(SECRET_BYTES)),
        )
    )
    if as_json:
        echo_json(_key_json(key))
        return
    click.echo(f"new {purpose} key {key.key_id} for {PURPOSES[purpose]}")
    click.echo(
        "it signs once `mailnode serve` reloads (kill -HUP, systemctl reload mailnode) or restarts; "
        "the older keys keep verifying"
    )


def _state(key: SigningKeyInfo) -> str:
    if key.retired_at is not None:
        return "retired"
    return "signs" if key.current else "verifies"


def _key_json(key: SigningKeyInfo) -> dict[str, Any]:
    return {
        "purpose": key.purpose,
        "key_id": key.key_id,
        "state": _state(key),
        "created_at": rfc3339(key.created_at),
        "retired_at": rfc3339(key.retired_at),
    }
