"""What a reload (SIGHUP) changes: the keys that differ between two configs, split into those
the running service takes at once and those that need a restart.

Pure: the service applies the result (Service.reload), the CLI reads the file and logs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mailnode.config import Config, HostPort

# Keys (or whole tables) a running service applies without a restart. Each is read where it is
# used (per SMTP session, per claim of the output handler, per housekeeping round), or swapped
# in by Service.reload: routes, limits and timeouts, the retry schedule, the log level.
LIVE: tuple[str, ...] = (
    "log_level",
    "ingress.routes",
    "smtp.max_message_bytes",
    "smtp.max_recipients",
    "smtp.max_connections",
    "smtp.command_timeout_seconds",
    "smtp.submission.rcpt_timeout_seconds",
    "smtp.submission.data_timeout_seconds",
    "smtp.ingress.rcpt_timeout_seconds",
    "smtp.ingress.data_timeout_seconds",
    "smtp.ingress.require_fcrdns",
    "smtp.ingress.require_helo_match",
    "delivery.concurrency",
    "retry",
    "storage.gc_ttl_seconds",
    "storage.body_timeout_seconds",
    "events.retention_days",
    "platform.idempotency_ttl_seconds",
)


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of comparing the running config with the file as it is now."""

    applied: tuple[str, ...]  # changed keys now in effect
    needs_restart: tuple[str, ...]  # changed keys that stay as they were until a restart
    config: Config  # the running config with the applied keys changed

    def summary(self) -> str:
        """One log line; key names only (a changed secret is named, never shown)."""
        if not self.applied and not self.needs_restart:
            return "config reloaded: nothing changed"
        parts = [f"applied={','.join(self.applied) or '-'}"]
        if self.needs_restart:
            parts.append(f"needs_restart={','.join(self.needs_restart)}")
        return "config reloaded: " + " ".join(parts)


def changed_keys(old: Any, new: Any, path: str = "") -> Iterator[str]:
    """Dotted paths where `new` differs from `old`; tables of settings are walked, values
    (an address) and lists and maps of entries (routes, sender profiles) compare as one key."""
    if dataclasses.is_dataclass(old) and type(old) is type(new) and not isinstance(old, HostPort):
        for f in dataclasses.fields(old):
            yield from changed_keys(
                getattr(old, f.name), getattr(new, f.name), f"{path}.{f.name}" if path else f.name
            )
    elif old != new:
        yield path


def is_live(key: str) -> bool:
    return any(key == live or key.startswith(live + ".") for live in LIVE)


def plan_reload(running: Config, wanted: Config) -> Reload:
    """Which changes take effect now; `config` is `running` with those applied."""
    changes = list(changed_keys(running, wanted))
    applied = tuple(key for key in changes if is_live(key))
    needs_restart = tuple(key for key in changes if not is_live(key))
    config = running
    for key in applied:
        config = _with(config, key.split("."), _get(wanted, key.split(".")))
    return Reload(applied, needs_restart, config)


def _get(obj: Any, path: list[str]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def _with(obj: Any, path: list[str], value: Any) -> Any:
    """A copy of the nested frozen dataclass `obj` with the field at `path` set to `value`."""
    head, *rest = path
    inner = value if not rest else _with(getattr(obj, head), rest, value)
    return dataclasses.replace(obj, **{head: inner})
