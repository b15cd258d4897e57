"""What a benchmark report records besides its figures: the environment, readable errors."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import mailnode
from benchlib.stats import Spread
from benchlib.venv import ROOT


def environment() -> dict[str, Any]:
    """Version, commit, Python, platform, CPU count and date, for the JSON report."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "mailnode": mailnode.__version__,
        "commit": commit,
        "uncommitted": _uncommitted(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_report(path: Path, document: dict[str, Any]) -> None:
    """Write a benchmark's figures to `path` as indented JSON, and say where they went."""
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nfigures written to {path}")


def _uncommitted() -> list[str] | None:
    """Files under src/ that differ from the commit (the figures measure the work tree)."""
    try:
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line[3:] for line in status.splitlines()]


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or [exc]."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_exceptions(inner)]
    return [exc]


def print_spreads(summary: dict[str, Spread]) -> None:
    """One line per figure: name, min, median, max (ratios and CPU times with two decimals)."""
    width = max((len(name) for name in summary), default=0)
    print(f"{'':{width}}  {'min':>9} {'median':>9} {'max':>9}")
    for name, spread in summary.items():
        digits = 2 if "ratio" in name or "CPU" in name else 0
        print(
            f"{name:{width}}  {spread.min:9.{digits}f} {spread.median:9.{digits}f} {spread.max:9.{digits}f}"
        )
