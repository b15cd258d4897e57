"""`mailnode send`: queue messages for the running service."""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path
from typing import Any

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
from mailnode.core.address import AddressError
from mailnode.core.compose import builder_spec, parse_mailbox
from mailnode.core.message_builder import Mailbox, SpecError
from mailnode.core.templating import TemplateError, compile_content, recipient_context
from mailnode.core.transaction import NewTransaction, TransactionRecord
from mailnode.errors import ConfigError, MailnodeError
from mailnode.storage.store import Store

PROGRESS_ABOVE = 20  # recipients; fewer are stored before a progress bar would show


@dataclasses.dataclass(frozen=True)
class _Recipient:
    mailbox: Mailbox
    fields: dict[str, str]


@click.command()
@click.option("--from", "sender", required=True, metavar="ADDRESS", help="From and envelope sender.")
@click.option("--to", "to", multiple=True, metavar="ADDRESS", help="A recipient; repeat for more.")
@click.option("--subject", required=True, help="The subject (a template with --recipients-csv).")
@click.option("--text", help="The plain-text body.")
@click.option("--html", help="The HTML body (with --text: both, as alternatives).")
@click.option(
    "--body-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the body from a file: HTML if it ends in .html or .htm, else plain text.",
)  # fmt: skip
@click.option(
    "--recipients-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="One message per row; columns email, name, then fields for {{ field }} in subject and bodies.",
)  # fmt: skip
@json_option
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def send(
    sender: str,
    to: tuple[str, ...],
    subject: str,
    text: str | None,
    html: str | None,
    body_file: Path | None,
    recipients_csv: Path | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Queue a message for delivery by the running `mailnode serve`; print each delivery id.

    Stored in the database through the `api` sender profile; the service picks it up within
    [delivery] poll_interval_seconds (in the developer default it lands in the capture store).

    Example: mailnode send --from me@example.com --to you@example.org --subject Hi --text Hello
    """
    config = load_config(config_path(config_file))
    profile = config.sender("api")
    if profile is None:
        raise ConfigError("senders.api: `mailnode send` needs the api sender profile")
    text, html = _send_bodies(text, html, body_file)
    from_box = _option_mailbox("--from", sender)
    recipients = [_Recipient(_option_mailbox("--to", value), {}) for value in to]
    if recipients_csv is not None:
        recipients += _csv_recipients(recipients_csv, config.platform.max_recipients_per_send)
    if not recipients:
        raise MailnodeError("no recipients: give --to ADDRESS (repeatable) or --recipients-csv FILE")
    if recipients_csv is None:
        spec = _send_spec(from_box, [r.mailbox for r in recipients], subject, text, html)
        specs = [spec] * len(recipients)
    else:
        specs = _personal_specs(from_box, recipients, subject, text, html)
    new = [
        NewTransaction(
            sender="api",
            mail_from=from_box.address,
            rcpt_to=r.mailbox.address,
            retry=profile.retry,
            bounce=profile.bounce,
            protocol="CLI",
            blobs=(),
            message_builder=spec,
        )
        for r, spec in zip(recipients, specs, strict=True)
    ]
    records = run(with_store(config, lambda store: _store_all(store, new)))
    if as_json:
        echo_json(
            [
                {"id": record.rest_id, "rcpt_to": record.rcpt_to, "status": record.status.value}
                for record in records
            ]
        )
        return
    for item, record in zip(new, records, strict=True):
        click.echo(f"{record.rest_id}  {item.rcpt_to}")


def _send_bodies(text: str | None, html: str | None, body_file: Path | None) -> tuple[str | None, str | None]:
    if body_file is not None:
        if text is not None or html is not None:
            raise MailnodeError("--body-file: give either --body-file or --text/--html, not both")
        content = body_file.read_text(encoding="utf-8")
        if body_file.suffix.lower() in (".html", ".htm"):
            return None, content
        return content, None
    if text is None and html is None:
        raise MailnodeError("no body: give --text, --html or --body-file")
    return text, html


def _option_mailbox(option: str, value: str) -> Mailbox:
    try:
        return parse_mailbox(value)
    except AddressError as exc:
        raise MailnodeError(f"{option} {value!r}: {exc}") from None


def _send_spec(
    sender: Mailbox, to: list[Mailbox], subject: str, text: str | None, html: str | None
) -> dict[str, Any]:
    try:
        return builder_spec(sender=sender, to=to, subject=subject, text=text, html=html)
    except SpecError as exc:
        raise MailnodeError(f"cannot build the message: {exc}") from None


def _csv_recipients(path: Path, limit: int) -> list[_Recipient]:
    """Rows of email, name, fields...; [platform] max_recipients_per_send bounds them."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "email" not in reader.fieldnames:
            raise MailnodeError(
                f"--recipients-csv {path}: the first row must name the columns, one of them email"
            )
        recipients: list[_Recipient] = []
        for line, row in enumerate(reader, start=2):
            if len(recipients) >= limit:
                raise MailnodeError(
                    f"--recipients-csv {path}: more than {limit} recipients "
                    "([platform] max_recipients_per_send)"
                )
            try:
                mailbox = parse_mailbox(row["email"] or "")
            except AddressError as exc:
                raise MailnodeError(f"--recipients-csv {path} line {line}: {row['email']!r}: {exc}") from None
            name = row.get("name") or ""
            fields = {k: v or "" for k, v in row.items() if k not in ("email", "name") and k is not None}
            recipients.append(_Recipient(Mailbox(mailbox.address, name or mailbox.display_name), fields))
    return recipients


def _personal_specs(
    sender: Mailbox, recipients: list[_Recipient], subject: str, text: str | None, html: str | None
) -> list[dict[str, Any]]:
    """One message per recipient: subject and bodies rendered as templates with its row's fields."""
    try:
        content = compile_content(subject, html, text, None)
    except TemplateError as exc:
        raise MailnodeError(f"template: {exc}") from None
    specs = []
    for r in recipients:
        context = recipient_context(r.mailbox.address, r.mailbox.display_name, r.fields, {})
        missing = content.missing_fields(context)
        if missing:
            raise MailnodeError(f"--recipients-csv: {r.mailbox.address} has no column {missing[0]!r}")
        try:
            rendered = content.render(context)
        except TemplateError as exc:
            raise MailnodeError(f"template for {r.mailbox.address}: {exc}") from None
        specs.append(_send_spec(sender, [r.mailbox], rendered.subject, rendered.text, rendered.html))
    return specs


async def _store_all(store: Store, new: list[NewTransaction]) -> list[TransactionRecord]:
    if len(new) <= PROGRESS_ABOVE:
        return [await store.create_transaction(item) for item in new]
    records = []
    with click.progressbar(new, label="queueing", file=sys.stderr) as bar:
        for item in bar:
            records.append(await store.create_transaction(item))
    return records
