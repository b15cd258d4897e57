"""The `mailnode` command line."""

from __future__ import annotations

import asyncio
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
from mailnode.config import Config, load_config
from mailnode.core.apikey import key_hash, key_prefix, new_api_key
from mailnode.errors import ConfigError, MailnodeError
from mailnode.service import Service, data_dir
from mailnode.storage.store import Store
from mailnode.systemd import Notifier

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFIG_HELP = "TOML config file (default: $MAILNODE_CONFIG, else the embedded developer default)."
DEV_KEY_FILE = "dev-api-key"


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

    def ready(service: Service) -> None:
        click.echo(f"mailnode {__version__} is running", err=True)
        click.echo(f"  HTTP API:   {service.base_url}", err=True)
        for name, (host, port) in (service.smtp.addresses if service.smtp else {}).items():
            click.echo(f"  SMTP {name + ':':<11} {host}:{port}", err=True)
        click.echo(f"  database:   {config.storage.url}", err=True)
        click.echo(f"  delivery:   {config.delivery.mode}", err=True)
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


async def _with_store(config: Config, action: Callable[[Store], Awaitable[T]]) -> T:
    store = await Store.open(config.storage.url, sqlite_synchronous=config.storage.sqlite_synchronous)
    try:
        return await action(store)
    finally:
        await store.close()


async def _create_key(config: Config, *, name: str, domain: str | None, expires_at: float | None) -> str:
    key = new_api_key(secrets.token_bytes)

    async def add(store: Store) -> None:
        await store.add_api_key(
            name=name,
            domain=domain,
            prefix=key_prefix(key),
            key_hash=key_hash(key),
            expires_at=expires_at,
        )

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
