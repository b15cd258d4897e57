"""Setting an installation up: `init`, `migrate`, `check-config`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from mailnode.cli.common import CONFIG_HELP, config_path, fail_cleanly
from mailnode.config import Config, load_config
from mailnode.errors import MailnodeError


@click.command()
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
@fail_cleanly
def migrate(config_file: str | None) -> None:
    """Create the database or bring its schema up to date.

    Example: mailnode migrate --config /etc/mailnode/mailnode.toml
    """
    from mailnode.storage.engine import create_engine
    from mailnode.storage.migrations import migrate as run_migrations

    config = load_config(config_path(config_file))
    engine = create_engine(config.storage.url)
    try:
        before, after = run_migrations(engine)
    finally:
        engine.dispose()
    click.echo(f"schema version {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@click.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
@fail_cleanly
def check_config(file: str) -> None:
    """Validate a config file: exit 0, or 2 with `key.path: what is wrong`.

    Example: mailnode check-config /etc/mailnode/mailnode.toml
    """
    load_config(Path(file))
    click.echo(f"{file}: ok")


@click.command()
@click.option(
    "--config", "config_file", metavar="FILE", default="mailnode.toml", show_default=True,
    help="Where to write the config file.",
)  # fmt: skip
@click.option(
    "--data-dir", metavar="DIR", default="mailnode-data", show_default=True,
    help="Where the database and the development certificate go.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite an existing config file (with a new admin token).")
@click.option(
    "--secrets-env", metavar="FILE",
    help="Put the admin token in this environment file (MAILNODE_ADMIN_TOKEN=…, mode 0600) "
    "instead of the config, which is then world-readable (systemd: EnvironmentFile=).",
)  # fmt: skip
@fail_cleanly
def init(config_file: str, data_dir: str, force: bool, secrets_env: str | None) -> None:
    """Write a commented config with a fresh admin token, a data directory and a dev certificate.

    The config is the annotated reference (every key, its default and why) with the database,
    the admin token and a self-signed TLS certificate of this installation filled in.

    Example: mailnode init --config /etc/mailnode/mailnode.toml --data-dir /var/lib/mailnode \\
                           --secrets-env /etc/mailnode/secrets.env
    """
    import tomllib

    from mailnode.config import config_from_dict, secret_env_var
    from mailnode.init_config import initial_config, reference_config
    from mailnode.smtp.tls import ensure_dev_certificate

    path, data = Path(config_file), Path(data_dir).resolve()
    if path.exists() and not force:
        raise MailnodeError(f"{path} already exists; use --force to overwrite it (the admin token changes)")
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    reference = reference_config()
    hostname = config_from_dict(tomllib.loads(reference)).smtp_hostname
    cert, key = ensure_dev_certificate(data / "tls", hostname)
    token = secrets.token_urlsafe(32)
    text = initial_config(
        reference,
        storage_url=f"sqlite+aiosqlite:///{data / 'mailnode.db'}",
        admin_token="" if secrets_env else token,
        cert_file=str(cert),
        key_file=str(key),
    )
    environ = {secret_env_var("admin", "token"): token} if secrets_env else {}
    config = config_from_dict(tomllib.loads(text), environ)  # what serve will read must be valid
    version = _migrate(config)[1]
    if secrets_env:
        _write_private(Path(secrets_env), f"{secret_env_var('admin', 'token')}={token}\n")
        _write_private(path, text)
        path.chmod(0o644)
        click.echo(f"wrote {path} (mode 0644: it holds no secret)")
        click.echo(f"wrote {secrets_env} (mode 0600: the admin token)")
    else:
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
