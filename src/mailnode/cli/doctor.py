"""`mailnode doctor`: DNS records, TLS certificate and hostname, checked; what to publish, printed."""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from typing import Any

import click

from mailnode.cli.common import CONFIG_HELP, config_path, domain_store, echo_json, fail_cleanly, runtime
from mailnode.config import Config, HostPort, load_config
from mailnode.doctor import diagnose, render_text

DNS_PORT = 53


class NameserverAddress(click.ParamType[HostPort]):
    """`IP` or `IP:PORT` (IPv6 as `[::1]:5353`): a DNS server to ask."""

    name = "ip[:port]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> HostPort:
        if isinstance(value, HostPort):
            return value
        text = str(value).strip()
        try:
            found = HostPort(str(ipaddress.ip_address(text)), DNS_PORT)
        except ValueError:
            try:
                found = HostPort.parse(text)
                ipaddress.ip_address(found.host)
            except ValueError:
                self.fail(f"{text!r} is not IP or IP:PORT (like 127.0.0.1:5353 or [::1]:53)", param, ctx)
        return found


@click.command()
@click.argument("domain_name", metavar="[DOMAIN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--dns-server",
    "dns_servers",
    type=NameserverAddress(),
    multiple=True,
    help="Ask this DNS server instead of [dns] nameservers (repeatable).",
)
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def doctor(
    domain_name: str | None, as_json: bool, dns_servers: tuple[HostPort, ...], config_file: str | None
) -> None:
    """Check DNS records, the TLS certificate and the hostname; print what to publish.

    With DOMAIN: its DKIM, SPF and DMARC records and the bounce domain's. Without: every
    sending domain, and this server's hostname, certificate, bounce MX and reverse DNS.
    Each failing or warning check shows the record to publish. Exit 1 when a check fails;
    warnings alone exit 0.

    Example: mailnode doctor example.com --dns-server 9.9.9.9
    """
    config = load_config(config_path(config_file))
    if dns_servers:
        config = _with_nameservers(config, dns_servers)
    clock = runtime().clock
    report = domain_store(config, lambda domains: diagnose(config, domains, domain=domain_name, clock=clock))
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(render_text(report), nl=False)
    if report.failed:
        sys.exit(report.exit_code)


def _with_nameservers(config: Config, nameservers: tuple[HostPort, ...]) -> Config:
    return dataclasses.replace(config, dns=dataclasses.replace(config.dns, nameservers=nameservers))
