"""What the commands share: running a coroutine, the store, errors, output."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from mailnode.config import Config
from mailnode.errors import ConfigError, MailnodeError
from mailnode.storage.domains import DomainStore
from mailnode.storage.store import Store

T = TypeVar("T")

CONFIG_HELP = "TOML config file (default: $MAILNODE_CONFIG, else the embedded developer default)."


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
    store = await Store.open(config.storage.url, sqlite_synchronous=config.storage.sqlite_synchronous)
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
