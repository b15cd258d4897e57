"""Run a benchmark script under the project's virtual environment (stdlib only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[2]  # the repository


def reexec_under_project_venv(script: str) -> NoReturn:
    """Replace this process with the same script run by .venv's Python, or exit with advice.

    Called when the script's dependencies cannot be imported. The venv is the one
    scripts/lib/venv.sh makes: $MAILNODE_VENV, else .venv in the repository.
    """
    venv = Path(os.environ.get("MAILNODE_VENV", ROOT / ".venv"))
    python = venv / "bin" / "python"
    if not python.exists() or Path(sys.prefix).resolve() == venv.resolve():
        sys.exit(
            f"{script}: needs mailnode and its dependencies, which are not installed for {sys.executable}.\n"
            f"Create the venv first with scripts/test (or scripts/run), then run: {python} {script}"
        )
    os.execv(python, [str(python), script, *sys.argv[1:]])
    raise AssertionError("unreachable: os.execv does not return")
