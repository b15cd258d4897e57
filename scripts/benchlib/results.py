"""The figures of `scripts/bench` as plain values: rows, goals, the table and bench-results.json.

No I/O and no timing here (tests/test_bench_results.py runs it as is). A row holds one value
per run for mailnode and for the reference measured in the same sitting; what is compared is
their ratio (throughput, memory) or their difference (latency, start-up), run by run, so a
noisy machine moves both sides of each pair together. A goal is about the ratio, the
difference or mailnode's own figure, and is met when every run meets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from benchlib.stats import Spread

SCHEMA = "mailnode-bench/1"
Comparison = Literal["ratio", "difference", "none"]
GoalOn = Literal["comparison", "mailnode"]


@dataclass(frozen=True)
class Goal:
    """A bound on one figure of a row: `on` the comparison (ratio or difference) or mailnode's own."""

    on: GoalOn
    at_least: float | None = None
    at_most: float | None = None
    text: str = ""  # as printed, e.g. "≥ 1.0 (ratio to Postfix)"

    def holds(self, value: float) -> bool:
        low_ok = self.at_least is None or value >= self.at_least
        return low_ok and (self.at_most is None or value <= self.at_most)


@dataclass(frozen=True)
class Row:
    """One line of the table: a workload's figure for mailnode and for its reference, per run."""

    workload: str
    figure: str
    unit: str
    mailnode: tuple[float, ...]
    reference: str = "—"  # what the reference is, e.g. "Postfix relay"
    reference_values: tuple[float, ...] = ()
    compare: Comparison = "none"
    goal: Goal | None = None
    note: str = ""

    def comparisons(self) -> tuple[float, ...]:
        """Ratio or difference of mailnode's figure to the reference's, run by run."""
        pairs = list(zip(self.mailnode, self.reference_values, strict=False))
        if self.compare == "ratio":
            return tuple(m / r for m, r in pairs if r)
        if self.compare == "difference":
            return tuple(m - r for m, r in pairs)
        return ()

    def goal_met(self) -> bool | None:
        """True when every run meets the goal; None without a goal or without figures."""
        if self.goal is None:
            return None
        values = self.comparisons() if self.goal.on == "comparison" else self.mailnode
        if not values:
            return None
        return all(self.goal.holds(v) for v in values)


def spread(values: Sequence[float]) -> Spread | None:
    return Spread.of(values) if values else None


def number(value: float) -> str:
    """Three significant figures at most, no exponent: 1487, 59.3, 5.30, 0.214."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 3
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # never "-0.000"


def signed(value: float) -> str:
    """number() with a "+" before what rounds to above zero: "+5.30", "-0.11", "0.000"."""
    text = number(value)
    return text if text.startswith("-") or float(text) == 0 else "+" + text


def cell(values: Sequence[float], unit: str = "", fmt: Callable[[float], str] = number) -> str:
    """One value, or min / median / max over the runs, and the unit: "133 / 136 / 142 msg/s"."""
    s = spread(values)
    if s is None:
        return "—"
    text = fmt(s.median) if len(values) == 1 else f"{fmt(s.min)} / {fmt(s.median)} / {fmt(s.max)}"
    return f"{text} {unit}".rstrip()


def comparison_cell(row: Row) -> str:
    values = row.comparisons()
    if row.compare == "ratio":
        return cell(values, "", lambda v: f"{v:.2f}")
    if row.compare == "difference":
        return cell(values, row.unit, signed)
    return "—"


def goal_cell(row: Row) -> str:
    if row.goal is None:
        return "—"
    verdict = {True: "met", False: "NOT met", None: "no figure"}[row.goal_met()]
    return f"{row.goal.text}: {verdict}"


def figure_cell(row: Row) -> str:
    """The figure and its note: "peak RSS, 10,000 queued (deferred; database 6 MiB)"."""
    if not row.note:
        return row.figure
    if row.figure.endswith(")"):
        return f"{row.figure[:-1]}; {row.note})"
    return f"{row.figure} ({row.note})"


HEADER = ("workload", "figure", "mailnode", "reference (same run)", "ratio / difference", "goal")


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (pastes into docs/benchmarks.md as printed)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        reference = row.reference
        if row.reference_values:
            reference += ": " + cell(row.reference_values, row.unit)
        cells = (
            row.workload,
            figure_cell(row),
            cell(row.mailnode, row.unit),
            reference,
            comparison_cell(row),
            goal_cell(row),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- bench-results.json ----------------------------------------------------------------------


def _spread_json(values: Sequence[float]) -> dict[str, float] | None:
    s = spread(values)
    return None if s is None else {"min": s.min, "median": s.median, "max": s.max}


def row_json(row: Row) -> dict[str, Any]:
    goal = None
    if row.goal is not None:
        goal = {
            "on": row.goal.on,
            "at_least": row.goal.at_least,
            "at_most": row.goal.at_most,
            "text": row.goal.text,
            "met": row.goal_met(),
        }
    return {
        "workload": row.workload,
        "figure": row.figure,
        "unit": row.unit,
        "note": row.note,
        "mailnode": {"runs": list(row.mailnode), "spread": _spread_json(row.mailnode)},
        "reference": {
            "name": row.reference,
            "runs": list(row.reference_values),
            "spread": _spread_json(row.reference_values),
        },
        "comparison": {
            "kind": row.compare,
            "runs": list(row.comparisons()),
            "spread": _spread_json(row.comparisons()),
        },
        "goal": goal,
    }


def document(
    rows: Sequence[Row],
    *,
    command: str,
    options: Mapping[str, Any],
    environment: Mapping[str, Any],
    workloads: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """bench-results.json: how it was run, every row, and each workload's own details or error."""
    return {
        "schema": SCHEMA,
        "command": command,
        "options": dict(options),
        "environment": dict(environment),
        "rows": [row_json(row) for row in rows],
        "workloads": {name: dict(value) for name, value in workloads.items()},
    }


def rows_from_json(doc: Mapping[str, Any]) -> list[Row]:
    """The rows of a bench-results.json document, as they were measured."""
    rows = []
    for row in doc["rows"]:
        goal = row["goal"]
        rows.append(
            Row(
                workload=row["workload"],
                figure=row["figure"],
                unit=row["unit"],
                mailnode=tuple(row["mailnode"]["runs"]),
                reference=row["reference"]["name"],
                reference_values=tuple(row["reference"]["runs"]),
                compare=row["comparison"]["kind"],
                goal=None
                if goal is None
                else Goal(goal["on"], at_least=goal["at_least"], at_most=goal["at_most"], text=goal["text"]),
                note=row["note"],
            )
        )
    return rows


_ROW_KEYS = {"workload", "figure", "unit", "note", "mailnode", "reference", "comparison", "goal"}
_WORKLOAD_KEYS = {"seconds", "error", "details"}


def schema_problems(doc: Mapping[str, Any]) -> list[str]:
    """What in a bench-results.json document does not follow SCHEMA (empty: it does)."""
    problems: list[str] = []
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, found {doc.get('schema')!r}")
    for key in ("command", "options", "environment", "rows", "workloads"):
        if key not in doc:
            problems.append(f"{key}: missing")
    for i, row in enumerate(doc.get("rows", [])):
        problems += [f"rows[{i}]: {p}" for p in _row_problems(row)]
    for name, workload in doc.get("workloads", {}).items():
        if not isinstance(workload, Mapping) or set(workload) - _WORKLOAD_KEYS or "seconds" not in workload:
            problems.append(f"workloads.{name}: expected seconds, and error or details")
    return problems


def _row_problems(row: Mapping[str, Any]) -> list[str]:
    problems = [f"{key}: missing" for key in sorted(_ROW_KEYS - set(row))]
    for side in ("mailnode", "reference", "comparison"):
        part = row.get(side, {})
        runs = part.get("runs")
        if not isinstance(runs, list) or not all(isinstance(v, int | float) for v in runs):
            problems.append(f"{side}.runs: expected a list of numbers")
        s = part.get("spread")
        if s is not None and not (
            isinstance(s, Mapping) and s.get("min", 0) <= s.get("median", 0) <= s.get("max", 0)
        ):
            problems.append(f"{side}.spread: expected min <= median <= max")
    if row.get("comparison", {}).get("kind") not in ("ratio", "difference", "none"):
        problems.append("comparison.kind: expected ratio, difference or none")
    goal = row.get("goal")
    if goal is not None and goal.get("met") not in (True, False, None):
        problems.append("goal.met: expected true, false or null")
    return problems


@dataclass
class WorkloadOutcome:
    """What one workload gave: its rows and details, or the error that stopped it."""

    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": round(self.seconds, 1)}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["details"] = self.details
        return out
