"""`mailnode capture`: messages kept by the capture endpoint."""

from __future__ import annotations

import datetime
import json
import sys

import click

from mailnode.cli.common import (
    CONFIG_HELP,
    config_path,
    echo_json,
    fail_cleanly,
    json_option,
    run,
    with_store,
)
from mailnode.config import load_config
from mailnode.errors import MailnodeError


@click.group()
def capture() -> None:
    """Read messages kept by the capture endpoint (the developer default).

    Example: mailnode capture list --limit 5
    """


@capture.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def capture_list(limit: int, as_json: bool, config_file: str | None) -> None:
    """List the newest captured messages.

    Example: mailnode capture list --limit 5
    """
    config = load_config(config_path(config_file))
    records = run(with_store(config, lambda store: store.list_captures(limit=limit)))
    if as_json:
        fields = ("id", "transaction_rest_id", "mail_from", "rcpt_to", "created_at", "size")
        rows = [{name: getattr(r, name) for name in fields} for r in records]
        click.echo(json.dumps(rows, indent=2))
        return
    for r in records:
        when = datetime.datetime.fromtimestamp(r.created_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{r.id:>6}  {when}  {r.mail_from or '<>'} -> {r.rcpt_to}  ({r.size} bytes)")


@capture.command("show")
@click.argument("capture_id", type=int)
@json_option
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def capture_show(capture_id: int, as_json: bool, config_file: str | None) -> None:
    """Print one captured message as it was delivered (RFC 5322 source).

    With --json: its envelope and the source as text (undecodable bytes replaced).

    Example: mailnode capture show 12
    """
    config = load_config(config_path(config_file))
    record = run(with_store(config, lambda store: store.get_capture(capture_id)))
    if record is None or record.message is None:
        raise MailnodeError(f"no captured message {capture_id}; `mailnode capture list` shows them")
    if as_json:
        fields = ("id", "transaction_rest_id", "mail_from", "rcpt_to", "created_at", "size")
        echo_json(
            {
                **{name: getattr(record, name) for name in fields},
                "message": record.message.decode("utf-8", "replace"),
            }
        )
        return
    sys.stdout.buffer.write(record.message)
