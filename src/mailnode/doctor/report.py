"""What the doctor found: checks with a status, a detail line and the record to publish."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mailnode.core.dkim_keys import txt_chunks

SERVER = "server"  # the scope of checks about this server rather than one sending domain
# Names whose value in a zone file is a domain name, written with its final dot.
_NAME_VALUED = ("MX", "PTR", "CNAME")


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Record:
    """One DNS record to publish; `value` as in core.dns_records (MX: "<preference> <host>")."""

    name: str
    type: str
    value: str

    def zone_line(self) -> str:
        """The record in zone-file syntax (RFC 1035 §5.1), long TXT values split in strings."""
        value = self.value
        if self.type == "TXT":
            value = " ".join(_quoted(chunk) for chunk in txt_chunks(value))
        elif self.type in _NAME_VALUED:
            value = value.rstrip(".") + "."
        return f"{self.name}. IN {self.type} {value}"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "value": self.value, "zone": self.zone_line()}


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: `scope` is a sending domain or SERVER; `record` is what to publish, if known."""

    scope: str
    name: str
    status: Status
    detail: str
    record: Record | None = None

    def to_json(self) -> dict[str, Any]:
        record = None if self.record is None else self.record.to_json()
        return {
            "scope": self.scope,
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "record": record,
        }


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Every check of one run, servers checks first, then each domain's in name order."""

    checks: tuple[Check, ...]
    dns_servers: str  # which resolvers answered ("system resolver" or "127.0.0.1:53, …")

    @property
    def failed(self) -> bool:
        return any(check.status is Status.FAIL for check in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings alone included), else 1."""
        return 1 if self.failed else 0

    def counts(self) -> dict[Status, int]:
        return {status: sum(c.status is status for c in self.checks) for status in Status}

    def scopes(self) -> list[str]:
        return list(dict.fromkeys(check.scope for check in self.checks))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "dns_servers": self.dns_servers,
            "counts": {status.value: n for status, n in self.counts().items()},
            "checks": [check.to_json() for check in self.checks],
        }


def render_text(report: DoctorReport) -> str:
    """The report for people: one line per check, grouped by scope, records indented below."""
    lines = [f"DNS: {report.dns_servers}"]
    for scope in report.scopes():
        lines.append("")
        lines.append(scope)
        lines.extend(_check_lines(c for c in report.checks if c.scope == scope))
    counts = report.counts()
    lines.append("")
    lines.append(", ".join(f"{counts[status]} {status.value}" for status in Status))
    return "\n".join(lines) + "\n"


def _check_lines(checks: Iterable[Check]) -> list[str]:
    lines = []
    for check in checks:
        lines.append(f"  {check.status.value.upper():<4}  {check.name:<12} {check.detail}")
        if check.record is not None and check.status is not Status.PASS:
            lines.append(f"        publish: {check.record.zone_line()}")
    return lines
