# Sourced by scripts/run, scripts/test and scripts/check: make sure .venv exists and holds
# mailnode plus the pinned dependencies, reinstalling only when pyproject.toml or
# constraints.txt changed. Needs nothing but Python 3.11+ on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MAILNODE_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "mailnode needs Python 3.11 or newer on PATH" >&2; return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment in $VENV" >&2
  "$(find_python)" -m venv "$VENV"
fi
stamp="$VENV/.stamp-install${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/constraints.txt" -nt "$stamp" ]; then
  echo "installing mailnode${EXTRAS:+[$EXTRAS]} and its pinned dependencies" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$ROOT/constraints.txt" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
