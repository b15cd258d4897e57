"""`mailnode serve`: run the service until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
from pathlib import Path

import click

from mailnode import __version__
from mailnode.cli.common import CONFIG_HELP, config_path, fail_cleanly, run
from mailnode.cli.keys import create_key
from mailnode.config import Config, load_config
from mailnode.errors import ConfigError
from mailnode.logs import LogFormat, setup_logging
from mailnode.service import Service, data_dir
from mailnode.systemd import Notifier

log = logging.getLogger(__name__)

DEV_KEY_FILE = "dev-api-key"
DEV_ADMIN_FILE = "admin-token"  # the developer default's operator token


@click.command()
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as key=value text or one JSON object each (default: the config's log_format).",
)
@fail_cleanly
def serve(config_file: str | None, log_format: LogFormat | None) -> None:
    """Run mailnode until SIGTERM or Ctrl-C.

    Example: mailnode serve --config /etc/mailnode/mailnode.toml --log-format json
    """
    path = config_path(config_file)
    config = load_config(path)
    setup_logging(config.log_level, log_format or config.log_format)
    run(_serve(config, path))


async def _serve(config: Config, path: Path | None) -> None:
    dev_default = path is None
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
        login = "log in with the admin token" if config.admin_token() else "closed: set [admin] token"
        click.echo(f"  console:    {service.base_url}/ui/   ({login})", err=True)
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

    service = Service(config)

    reloading: set[asyncio.Task[None]] = set()

    def reload() -> None:
        """SIGHUP: read the file again and apply what can change while running; take keys
        added by `mailnode signing-key rotate`."""
        notifier.reloading()
        if path is None:
            log.info("SIGHUP: running on the embedded default, there is no config file to read again")
        else:
            try:
                service.reload(load_config(path))
            except ConfigError as exc:
                log.error("config reload refused, still running on the previous config: %s", exc)
        keys = loop.create_task(service.reload_signing_keys(), name="reload-signing-keys")
        reloading.add(keys)
        keys.add_done_callback(reloaded)

    def reloaded(task: asyncio.Task[None]) -> None:
        reloading.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reloading the signing keys failed: %s", task.exception())
        notifier.ready(status="reloaded")

    loop.add_signal_handler(signal.SIGHUP, reload)
    async with notifier.watchdog():
        await service.run(stop, on_ready=ready)


def _dev_key_path(config: Config) -> Path:
    return data_dir(config) / DEV_KEY_FILE


async def _ensure_dev_key(config: Config) -> str:
    """The developer default's API key: made once, kept in the data directory (mode 0600)."""
    path = _dev_key_path(config)
    if path.is_file():
        return path.read_text().strip()
    key = await create_key(config, name="developer default", domain=None, expires_at=None)
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
