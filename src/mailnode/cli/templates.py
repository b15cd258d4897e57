"""`mailnode template`: read a domain's templates."""

from __future__ import annotations

import click

from mailnode.api.v1_domains import (
    template_json,
)
from mailnode.cli.common import CONFIG_HELP, config_path, domain_store, echo_json, fail_cleanly, utc_time
from mailnode.config import load_config
from mailnode.core.dkim_keys import canonical_domain
from mailnode.errors import NotFoundError


@click.group()
def template() -> None:
    """Read the templates of a sending domain (create and change them with /v1).

    Example: mailnode template list --domain example.com
    """


@template.command("list")
@click.option("--domain", "domain_name", required=True, help="The sending domain.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def template_list(domain_name: str, limit: int, offset: int, as_json: bool, config_file: str | None) -> None:
    """List a domain's templates, oldest first.

    Example: mailnode template list --domain example.com
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(domain_name)
    items, total = domain_store(
        config, lambda domains: domains.list_templates(canonical, limit=limit, offset=offset)
    )
    if as_json:
        echo_json({"items": [template_json(t) for t in items], "total": total})
        return
    for t in items:
        click.echo(f"{t.id}  {t.name:<32} updated {utc_time(t.updated_at)}")
    click.echo(f"{len(items)} of {total} templates", err=True)


@template.command("show")
@click.argument("template_id")
@click.option("--domain", "domain_name", required=True, help="The sending domain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def template_show(template_id: str, domain_name: str, as_json: bool, config_file: str | None) -> None:
    """Print one template: name, subject, html and text.

    Example: mailnode template show tpl_3q2v... --domain example.com
    """
    config = load_config(config_path(config_file))
    canonical = canonical_domain(domain_name)
    record = domain_store(config, lambda domains: domains.get_template(canonical, template_id))
    if record is None:
        raise NotFoundError(f"no template {template_id!r} in {canonical}; see `mailnode template list`")
    if as_json:
        echo_json(template_json(record))
        return
    click.echo(f"id:       {record.id}\nname:     {record.name}\nsubject:  {record.subject}")
    for part, text in (("html", record.html), ("text", record.text)):
        if text is not None:
            click.echo(f"--- {part} ---\n{text}")
