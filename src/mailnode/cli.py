"""The `mailnode` command line."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mailnode import __version__
from mailnode.api.v1_domains import (
    dkim_dns_record,
    dns_problem,
    dns_records,
    domain_json,
    domain_with_records_json,
    record_json,
    template_json,
)
from mailnode.config import Config, load_config
from mailnode.core.address import AddressError
from mailnode.core.apikey import key_hash, key_prefix, new_api_key
from mailnode.core.compose import builder_spec, parse_mailbox
from mailnode.core.dkim_keys import ALGORITHMS, DkimAlgorithm, canonical_domain, generate_dkim_key
from mailnode.core.message_builder import Mailbox, SpecError
from mailnode.core.templating import TemplateError, compile_content, recipient_context
from mailnode.core.transaction import NewTransaction, TransactionRecord
from mailnode.errors import ConfigError, MailnodeError, NotFoundError
from mailnode.service import Service, data_dir
from mailnode.storage.domains import DomainRecord, DomainStore
from mailnode.storage.store import Store
from mailnode.systemd import Notifier

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFIG_HELP = "TOML config file (default: $MAILNODE_CONFIG, else the embedded developer default)."
DEV_KEY_FILE = "dev-api-key"
DEV_ADMIN_FILE = "admin-token"  # the developer default's operator token


def _run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line on stderr and a non-zero exit instead of a traceback (unless --debug)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"mailnode: config error: {exc}", err=True)
            sys.exit(2)
        except MailnodeError as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"mailnode: {exc}", err=True)
            sys.exit(1)

    return wrapper


def _config_path(value: str | None) -> Path | None:
    # The config loader's caller is the one place that looks at the environment.
    value = value or os.environ.get("MAILNODE_CONFIG")
    return Path(value) if value else None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # aiosmtpd logs every command line at INFO; mailnode logs the lifecycle events itself.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command()
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def serve(config_file: str | None) -> None:
    """Run mailnode until SIGTERM or Ctrl-C.

    Example: mailnode serve --config /etc/mailnode/mailnode.toml
    """
    path = _config_path(config_file)
    config = load_config(path)
    _setup_logging(config.log_level)
    _run(_serve(config, dev_default=path is None))


async def _serve(config: Config, *, dev_default: bool) -> None:
    stop = asyncio.Event()
    notifier = Notifier.from_environ(os.environ, pid=os.getpid())

    def shut_down() -> None:
        if not stop.is_set():
            notifier.stopping()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shut_down)
    dev_key = await _ensure_dev_key(config) if dev_default else None
    dev_admin_token = _ensure_dev_admin_token(config) if dev_default and not config.admin_token() else None
    if dev_admin_token is not None:
        config = dataclasses.replace(config, admin=dataclasses.replace(config.admin, token=dev_admin_token))

    def ready(service: Service) -> None:
        click.echo(f"mailnode {__version__} is running", err=True)
        click.echo(f"  HTTP API:   {service.base_url}", err=True)
        for name, (host, port) in (service.smtp.addresses if service.smtp else {}).items():
            click.echo(f"  SMTP {name + ':':<11} {host}:{port}", err=True)
        click.echo(f"  database:   {config.storage.url}", err=True)
        click.echo(f"  delivery:   {config.delivery.mode}", err=True)
        if dev_admin_token is not None:
            where = data_dir(config) / DEV_ADMIN_FILE
            click.echo(f"  admin token: {dev_admin_token}   (/v1/domains; kept in {where})", err=True)
        if dev_key is not None:
            click.echo(
                f"  API key:    {dev_key}   (developer default, kept in {_dev_key_path(config)})",
                err=True,
            )
            auth = f"Authorization: Bearer {dev_key}"
            click.echo(f"  try:        curl -H '{auth}' {service.base_url}/capture/messages", err=True)
        smtp = service.smtp.addresses if service.smtp else {}
        listening = [f"HTTP {service.base_url}"] + [f"SMTP {n} {h}:{p}" for n, (h, p) in smtp.items()]
        notifier.ready(status="listening: " + ", ".join(listening))  # on_ready: every listener is bound

    async with notifier.watchdog():
        await Service(config).run(stop, on_ready=ready)


def _dev_key_path(config: Config) -> Path:
    return data_dir(config) / DEV_KEY_FILE


async def _ensure_dev_key(config: Config) -> str:
    """The developer default's API key: made once, kept in the data directory (mode 0600)."""
    path = _dev_key_path(config)
    if path.is_file():
        return path.read_text().strip()
    key = await _create_key(config, name="developer default", domain=None, expires_at=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _ensure_dev_admin_token(config: Config) -> str:
    """The developer default's operator token: made once, kept in the data directory (0600)."""
    path = data_dir(config) / DEV_ADMIN_FILE
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


async def _with_store(config: Config, action: Callable[[Store], Awaitable[T]]) -> T:
    store = await Store.open(config.storage.url, sqlite_synchronous=config.storage.sqlite_synchronous)
    try:
        return await action(store)
    finally:
        await store.close()


async def _create_key(config: Config, *, name: str, domain: str | None, expires_at: float | None) -> str:
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

    await _with_store(config, add)
    return key


@cli.command()
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def migrate(config_file: str | None) -> None:
    """Create the database or bring its schema up to date.

    Example: mailnode migrate --config /etc/mailnode/mailnode.toml
    """
    from mailnode.storage.engine import create_engine
    from mailnode.storage.migrations import migrate as run_migrations

    config = load_config(_config_path(config_file))
    engine = create_engine(config.storage.url)
    try:
        before, after = run_migrations(engine)
    finally:
        engine.dispose()
    click.echo(f"schema version {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
@_fail_cleanly
def check_config(file: str) -> None:
    """Validate a config file: exit 0, or 2 with `key.path: what is wrong`.

    Example: mailnode check-config /etc/mailnode/mailnode.toml
    """
    load_config(Path(file))
    click.echo(f"{file}: ok")


@cli.command()
@click.option(
    "--config", "config_file", metavar="FILE", default="mailnode.toml", show_default=True,
    help="Where to write the config file.",
)  # fmt: skip
@click.option(
    "--data-dir", metavar="DIR", default="mailnode-data", show_default=True,
    help="Where the database and the development certificate go.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite an existing config file (with a new admin token).")
@_fail_cleanly
def init(config_file: str, data_dir: str, force: bool) -> None:
    """Write a commented config with a fresh admin token, a data directory and a dev certificate.

    The config is the annotated reference (every key, its default and why) with the database,
    the admin token and a self-signed TLS certificate of this installation filled in.

    Example: mailnode init --config /etc/mailnode/mailnode.toml --data-dir /var/lib/mailnode
    """
    import tomllib

    from mailnode.config import config_from_dict
    from mailnode.init_config import initial_config, reference_config
    from mailnode.smtp.tls import ensure_dev_certificate

    path, data = Path(config_file), Path(data_dir).resolve()
    if path.exists() and not force:
        raise MailnodeError(f"{path} already exists; use --force to overwrite it (the admin token changes)")
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    reference = reference_config()
    hostname = config_from_dict(tomllib.loads(reference)).smtp_hostname
    cert, key = ensure_dev_certificate(data / "tls", hostname)
    text = initial_config(
        reference,
        storage_url=f"sqlite+aiosqlite:///{data / 'mailnode.db'}",
        admin_token=secrets.token_urlsafe(32),
        cert_file=str(cert),
        key_file=str(key),
    )
    config = config_from_dict(tomllib.loads(text))  # what serve will read must be valid
    version = _migrate(config)[1]
    _write_private(path, text)
    click.echo(f"wrote {path} (mode 0600: it holds the admin token)")
    click.echo(f"database: {data / 'mailnode.db'} (schema version {version})")
    click.echo(f"TLS certificate: {cert} (self-signed, for development only)")
    click.echo(f"next: mailnode serve --config {path}")


def _migrate(config: Config) -> tuple[int | None, int]:
    from mailnode.storage.engine import create_engine
    from mailnode.storage.migrations import migrate as run_migrations

    engine = create_engine(config.storage.url)
    try:
        return run_migrations(engine)
    finally:
        engine.dispose()


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the start, replacing any file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


@cli.group()
def key() -> None:
    """Create and list API keys (they authenticate the REST API)."""


@key.command("create")
@click.option("--name", required=True, help="What the key is for, e.g. 'billing app'.")
@click.option("--domain", help="The sending domain the key belongs to.")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Expire the key after N days.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def key_create(name: str, domain: str | None, expires_in_days: int | None, config_file: str | None) -> None:
    """Create an API key and print it once (only its hash is stored).

    Example: mailnode key create --name "billing app" --domain example.com
    """
    config = load_config(_config_path(config_file))
    domain = None if domain is None else canonical_domain(domain)
    expires_at = None
    if expires_in_days is not None:
        expires_at = datetime.datetime.now(datetime.UTC).timestamp() + expires_in_days * 86400
    click.echo(_run(_create_key(config, name=name, domain=domain, expires_at=expires_at)))
    click.echo("Store it now: mailnode keeps only its hash and cannot show it again.", err=True)


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def key_list(as_json: bool, config_file: str | None) -> None:
    """List API keys (prefix, name, domain, state).

    Example: mailnode key list --json
    """
    config = load_config(_config_path(config_file))
    records = _run(_with_store(config, lambda store: store.list_api_keys()))
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


@cli.group()
def domain() -> None:
    """Sending domains (/v1): DKIM keys and the DNS records to publish."""


def _domain_store(config: Config, action: Callable[[DomainStore], Awaitable[T]]) -> T:
    return _run(_with_store(config, lambda store: action(DomainStore(store))))


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


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
    click.echo(f"{record.name}  (created {_when(record.created_at)})")
    for key in record.dkim_keys:
        signing = "  signing" if key is record.signing_key else ""
        click.echo(f"  DKIM {key.selector} ({key.algorithm}, created {_when(key.created_at)}){signing}")
    if with_dns:
        click.echo("DNS records to publish:")
        _echo_records(config, record)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
@_fail_cleanly
def domain_create(
    name: str, dkim_algorithm: DkimAlgorithm | None, as_json: bool, config_file: str | None
) -> None:
    """Create a sending domain with a DKIM key; print the DNS records to publish.

    Example: mailnode domain create example.com
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(name)
    key = generate_dkim_key(dkim_algorithm or config.platform.dkim_algorithm)
    selector = config.platform.dkim_selector
    record = _domain_store(config, lambda domains: domains.create_domain(canonical, key, selector))
    if as_json:
        _echo_json(domain_with_records_json(config, record))
    else:
        _domain_text(config, record, with_dns=True)


@domain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def domain_list(as_json: bool, config_file: str | None) -> None:
    """List sending domains and their DKIM selectors.

    Example: mailnode domain list --json
    """
    config = load_config(_config_path(config_file))
    records = _domain_store(config, lambda domains: domains.list_domains())
    if as_json:
        _echo_json([domain_json(r) for r in records])
        return
    for r in records:
        signing = r.signing_key.selector if r.signing_key else "-"
        click.echo(f"{r.name:<40} DKIM {signing:<24} created {_when(r.created_at)}")


@domain.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def domain_show(name: str, as_json: bool, config_file: str | None) -> None:
    """Show a domain, its DKIM keys and the DNS records to publish.

    Example: mailnode domain show example.com
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(name)
    record = _found(_domain_store(config, lambda domains: domains.get_domain(canonical)), canonical)
    if as_json:
        _echo_json(domain_with_records_json(config, record))
    else:
        _domain_text(config, record, with_dns=True)


@domain.command("dns")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def domain_dns(name: str, as_json: bool, config_file: str | None) -> None:
    """Print the DNS records the domain publishes: DKIM, SPF, DMARC, bounce MX, tracking.

    Example: mailnode domain dns example.com
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(name)
    record = _found(_domain_store(config, lambda domains: domains.get_domain(canonical)), canonical)
    try:
        records = dns_records(config, record)
    except ValueError as exc:
        raise ConfigError(dns_problem(exc)) from None
    if as_json:
        _echo_json([record_json(r) for r in records])
        return
    for r in records:
        click.echo(f"{r.type:<6} {r.name:<40} {r.value}")


@domain.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def domain_delete(name: str, yes: bool, config_file: str | None) -> None:
    """Delete a domain with its DKIM keys, API keys and templates; cancel its unsent mail.

    Example: mailnode domain delete example.com --yes
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(name)
    if not yes:
        click.confirm(f"Delete {canonical}, its keys and templates, and cancel its unsent mail?", abort=True)
    cancelled = _domain_store(config, lambda domains: domains.delete_domain(canonical))
    click.echo(f"deleted {canonical}; {cancelled} unsent deliveries cancelled")


@domain.command("rotate-dkim")
@click.argument("name")
@click.option("--dkim-algorithm", type=click.Choice(ALGORITHMS), help=_ALGORITHM_HELP)
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def domain_rotate_dkim(name: str, dkim_algorithm: DkimAlgorithm | None, config_file: str | None) -> None:
    """Make a new DKIM key under a new selector; it signs from now on, the old one stays.

    Publish the new record shown, then remove the old key with the API
    (DELETE /v1/domains/{domain}/dkim/{selector}) once resolvers have it.

    Example: mailnode domain rotate-dkim example.com
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(name)
    key = generate_dkim_key(dkim_algorithm or config.platform.dkim_algorithm)
    selector = config.platform.dkim_selector
    added = _domain_store(config, lambda domains: domains.add_dkim_key(canonical, key, selector))
    record = dkim_dns_record(canonical, added)
    click.echo(f"new DKIM selector {added.selector} ({added.algorithm}) signs for {canonical}; publish:")
    click.echo(f"{record.type:<6} {record.name:<40} {record.value}")


@cli.group()
def template() -> None:
    """Read the templates of a sending domain (create and change them with /v1)."""


@template.command("list")
@click.option("--domain", "domain_name", required=True, help="The sending domain.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def template_list(domain_name: str, limit: int, offset: int, as_json: bool, config_file: str | None) -> None:
    """List a domain's templates, oldest first.

    Example: mailnode template list --domain example.com
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(domain_name)
    items, total = _domain_store(
        config, lambda domains: domains.list_templates(canonical, limit=limit, offset=offset)
    )
    if as_json:
        _echo_json({"items": [template_json(t) for t in items], "total": total})
        return
    for t in items:
        click.echo(f"{t.id}  {t.name:<32} updated {_when(t.updated_at)}")
    click.echo(f"{len(items)} of {total} templates", err=True)


@template.command("show")
@click.argument("template_id")
@click.option("--domain", "domain_name", required=True, help="The sending domain.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def template_show(template_id: str, domain_name: str, as_json: bool, config_file: str | None) -> None:
    """Print one template: name, subject, html and text.

    Example: mailnode template show tpl_3q2v... --domain example.com
    """
    config = load_config(_config_path(config_file))
    canonical = canonical_domain(domain_name)
    record = _domain_store(config, lambda domains: domains.get_template(canonical, template_id))
    if record is None:
        raise NotFoundError(f"no template {template_id!r} in {canonical}; see `mailnode template list`")
    if as_json:
        _echo_json(template_json(record))
        return
    click.echo(f"id:       {record.id}\nname:     {record.name}\nsubject:  {record.subject}")
    for part, text in (("html", record.html), ("text", record.text)):
        if text is not None:
            click.echo(f"--- {part} ---\n{text}")


PROGRESS_ABOVE = 20  # recipients; fewer are stored before a progress bar would show


@dataclasses.dataclass(frozen=True)
class _Recipient:
    mailbox: Mailbox
    fields: dict[str, str]


@cli.command()
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
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def send(
    sender: str,
    to: tuple[str, ...],
    subject: str,
    text: str | None,
    html: str | None,
    body_file: Path | None,
    recipients_csv: Path | None,
    config_file: str | None,
) -> None:
    """Queue a message for delivery by the running `mailnode serve`; print each delivery id.

    Stored in the database through the `api` sender profile; the service picks it up within
    [delivery] poll_interval_seconds (in the developer default it lands in the capture store).

    Example: mailnode send --from me@example.com --to you@example.org --subject Hi --text Hello
    """
    config = load_config(_config_path(config_file))
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
    for item, record in zip(
        new, _run(_with_store(config, lambda store: _store_all(store, new))), strict=True
    ):
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


@cli.group()
def capture() -> None:
    """Read messages kept by the capture endpoint (the developer default)."""


@capture.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def capture_list(limit: int, as_json: bool, config_file: str | None) -> None:
    """List the newest captured messages.

    Example: mailnode capture list --limit 5
    """
    config = load_config(_config_path(config_file))
    records = _run(_with_store(config, lambda store: store.list_captures(limit=limit)))
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
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@_fail_cleanly
def capture_show(capture_id: int, config_file: str | None) -> None:
    """Print one captured message as it was delivered (RFC 5322 source).

    Example: mailnode capture show 12
    """
    config = load_config(_config_path(config_file))
    record = _run(_with_store(config, lambda store: store.get_capture(capture_id)))
    if record is None or record.message is None:
        raise MailnodeError(f"no captured message {capture_id}")
    sys.stdout.buffer.write(record.message)


def main() -> None:
    cli()
