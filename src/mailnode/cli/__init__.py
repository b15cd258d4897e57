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


def main() -> None:
    cli()
