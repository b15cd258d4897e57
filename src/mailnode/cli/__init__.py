"""The `mailnode` command line: the group and its commands, one module per command group."""

from __future__ import annotations

import click

from mailnode import __version__
from mailnode.cli.capture import capture
from mailnode.cli.common import CommandLine
from mailnode.cli.doctor import doctor
from mailnode.cli.domains import domain
from mailnode.cli.keys import key
from mailnode.cli.queue import queue
from mailnode.cli.send import send
from mailnode.cli.serve import serve
from mailnode.cli.setup import check_config, init, migrate
from mailnode.cli.signing_keys import signing_key
from mailnode.cli.stats import stats
from mailnode.cli.suppressions import suppression
from mailnode.cli.templates import template


@click.group(cls=CommandLine, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailnode")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def cli(debug: bool) -> None:
    """mailnode: a mail appliance in one process.

    Accepts mail by SMTP submission (587), SMTP ingress (25) and a REST API, delivers it
    one recipient at a time (the receiving server's answer while the client waits, when it
    comes quickly), retries with backoff and bounces what finally fails. Run `mailnode
    serve` with no config to try it: nothing leaves the machine, every message lands in
    the capture store.
    """


cli.add_command(serve)
cli.add_command(init)
cli.add_command(migrate)
cli.add_command(check_config)
cli.add_command(key)
cli.add_command(domain)
cli.add_command(template)
cli.add_command(send)
cli.add_command(capture)
cli.add_command(queue)
cli.add_command(suppression)
cli.add_command(stats)
cli.add_command(signing_key)
cli.add_command(doctor)

# `mailnode --help` lists each command on one line; click would cut the docstrings' first
# sentences at its width ("…"), so each says it in a few words here.
_SUMMARIES = {
    "capture": "Messages kept by the capture endpoint (list, show)",
    "check-config": "Validate a config file; exit 2 naming every bad key",
    "doctor": "Check DNS records, the TLS certificate and the hostname",
    "domain": "Sending domains: DKIM keys and the DNS records to publish",
    "init": "Write a config, a data directory and a dev certificate",
    "key": "Create, list and revoke API keys",
    "migrate": "Create the database or bring its schema up to date",
    "queue": "List, show, retry, cancel and purge deliveries",
    "send": "Send a message, or one per row of a CSV of recipients",
    "serve": "Run mailnode until SIGTERM or Ctrl-C",
    "signing-key": "List and rotate the VERP and tracking signing secrets",
    "stats": "Counts per event type, with a sparkline each",
    "suppression": "Addresses a domain no longer sends to",
    "template": "Read a sending domain's templates",
}
for _name, _summary in _SUMMARIES.items():
    cli.commands[_name].short_help = _summary


def main() -> None:
    cli()
