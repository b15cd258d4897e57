"""What the commands share: running a coroutine, the store, errors, output."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mailnode.config import Config
from mailnode.core.events import rfc3339 as core_rfc3339
from mailnode.errors import ConfigError, MailnodeError
from mailnode.storage.domains import DomainStore
from mailnode.storage.store import Store

T = TypeVar("T")

CONFIG_HELP = "TOML config file (default: $MAILNODE_CONFIG, else the embedded developer default)."


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
config_option = click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What commands take from outside: the time and random bytes (tests pass their own as `obj`)."""

    clock: Callable[[], float] = time.time
    random_bytes: Callable[[int], bytes] = secrets.token_bytes


def runtime() -> Runtime:
    """The Runtime the command line was started with (CliRunner.invoke(obj=...)), else the real one."""
    found = click.get_current_context().find_root().obj
    return found if isinstance(found, Runtime) else Runtime()


class CommandLine(click.Group):
    """The `mailnode` group: click's own errors (a bad option, a missing argument) are one line too."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = "mailnode" if exc.ctx is None else _command_path(exc.ctx)
            message = " ".join(exc.format_message().split())  # click's choice lists span lines
            click.echo(f"{where}: {message} (see --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"mailnode: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("mailnode: aborted", err=True)
            sys.exit(1)
        except BrokenPipeError:  # `mailnode queue list | head`: the reader has gone
            sys.stdout = None  # nothing more to flush at exit
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def _command_path(ctx: click.Context) -> str:
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["mailnode", *reversed(names)])


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def config_path(value: str | None) -> Path | None:
    # The config loader's caller is the one place that looks at the environment.
    value = value or os.environ.get("MAILNODE_CONFIG")
    return Path(value) if value else None


async def with_store(config: Config, action: Callable[[Store], Awaitable[T]]) -> T:
    store = await Store.open(
        config.storage.url, sqlite_synchronous=config.storage.sqlite_synchronous, clock=runtime().clock
    )
    try:
        return await action(store)
    finally:
        await store.close()


def domain_store(config: Config, action: Callable[[DomainStore], Awaitable[T]]) -> T:
    return run(with_store(config, lambda store: action(DomainStore(store))))


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def utc_time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns padded to their widest cell, two spaces apart; the last one is not padded."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in "90s", "15m", "2h", "3d", "1w" or "1d12h"; ValueError otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 2h, 3d or 1w")
    return float(sum(int(number) * _UNITS[unit] for number, unit in parts))


class Duration(click.ParamType[float]):
    """A duration option: "2h", "3d", ... as seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Moment(click.ParamType[float]):
    """A point in time: 2026-03-01, 2026-03-01T09:30 (UTC unless it says), or "7d" (ago)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            return runtime().clock() - parse_duration(text)
        except ValueError:
            pass
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not a time like 2026-03-01, 2026-03-01T09:30 or 7d (ago)", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()


def ago(seconds: float) -> str:
    """A span for people: "40s", "12m", "3h", "2d"."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def rfc3339(timestamp: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC text, as --json shows times (None stays None)."""
    return None if timestamp is None else core_rfc3339(timestamp)
