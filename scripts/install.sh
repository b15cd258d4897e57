#!/usr/bin/env bash
# Install mailnode on a Debian host as a systemd service; running it again updates it in place.
#
#   sudo scripts/install.sh            # venv in /opt/mailnode, config in /etc/mailnode, unit enabled
#   sudo scripts/install.sh --start    # ... and start (or restart) it
#
# What it does, each step skipped when already done:
#   1. a venv in PREFIX/venv with mailnode and its pinned dependencies (constraints.txt),
#      reinstalled only when this checkout's sources changed;
#   2. CONFIG_DIR/mailnode.toml (world-readable, no secret) and CONFIG_DIR/secrets.env (0600,
#      MAILNODE_ADMIN_TOKEN) via `mailnode init`, the database and a self-signed certificate in
#      STATE_DIR — never overwritten: your edits and your token survive updates;
#   3. the schema brought up to date (`mailnode migrate`), the config checked (`check-config`);
#   4. mailnode.service in SYSTEMD_ROOT/etc/systemd/system with this PREFIX and CONFIG_DIR, and
#      enabled (`systemctl enable`; offline with --systemd-root, e.g. for an image or a test).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/mailnode
CONFIG_DIR=/etc/mailnode
STATE_DIR=/var/lib/mailnode
SYSTEMD_ROOT=/
START=no

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF

Options:
  --prefix DIR        where the venv goes (default $PREFIX)
  --config-dir DIR    where mailnode.toml and secrets.env go (default $CONFIG_DIR)
  --state-dir DIR     the database and certificate (default $STATE_DIR; the unit's StateDirectory)
  --systemd-root DIR  install and enable the unit under DIR instead of the running system
  --start             start mailnode now (restart it if it runs)
  -h, --help          this text
EOF
}

fail() { echo "install.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --config-dir) CONFIG_DIR="${2:?--config-dir needs a directory}"; shift 2 ;;
    --state-dir) STATE_DIR="${2:?--state-dir needs a directory}"; shift 2 ;;
    --systemd-root) SYSTEMD_ROOT="${2:?--systemd-root needs a directory}"; shift 2 ;;
    --start) START=yes; shift ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option $1 (see --help)" ;;
  esac
done
for dir in PREFIX CONFIG_DIR STATE_DIR SYSTEMD_ROOT; do
  case "${!dir}" in /*) ;; *) fail "$dir must be an absolute path, got ${!dir}" ;; esac
done
if [ "$SYSTEMD_ROOT" = / ] && [ "$(id -u)" -ne 0 ]; then
  fail "run as root (it writes $PREFIX, $CONFIG_DIR and the systemd unit), e.g. sudo $0"
fi

PYTHON=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON="$candidate"; break
  fi
done
[ -n "$PYTHON" ] || fail "needs Python 3.11 or newer with venv (Debian: apt-get install python3 python3-venv)"

# 1. The venv, reinstalled when the sources, pyproject.toml or constraints.txt changed.
VENV="$PREFIX/venv"
SOURCE_HASH="$(cd "$ROOT" && find pyproject.toml constraints.txt etc src -type f ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
  sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
STAMP="$PREFIX/.installed-sources"
if [ ! -x "$VENV/bin/mailnode" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$SOURCE_HASH" ]; then
  step "installing mailnode into $VENV"
  mkdir -p "$PREFIX"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  # A wheel built from a copy: the checkout itself is left as it was (no build/ or egg-info).
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude='*.egg-info' --exclude=mailnode-data \
      --exclude=__pycache__ -cf - pyproject.toml constraints.txt README.md etc src | tar -C "$BUILD" -xf -
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    -c "$BUILD/constraints.txt" "$BUILD"
  echo "$SOURCE_HASH" > "$STAMP"
else
  step "mailnode in $VENV is up to date"
fi
MAILNODE="$VENV/bin/mailnode"

# 2. Config, secrets and state: made once, never overwritten.
CONFIG="$CONFIG_DIR/mailnode.toml"
SECRETS="$CONFIG_DIR/secrets.env"
mkdir -p "$CONFIG_DIR"
if [ ! -e "$CONFIG" ]; then
  step "writing $CONFIG and $SECRETS"
  "$MAILNODE" init --config "$CONFIG" --data-dir "$STATE_DIR" --secrets-env "$SECRETS"
else
  step "keeping $CONFIG (edit it, then: systemctl reload mailnode)"
fi

# 3. The schema and the config, checked with the secrets the service will have.
run_with_secrets() { ( set -a; [ -f "$SECRETS" ] && . "$SECRETS"; set +a; "$@" ); }
run_with_secrets "$MAILNODE" migrate --config "$CONFIG"
run_with_secrets "$MAILNODE" check-config "$CONFIG"

# 4. The unit, pointing at this PREFIX and CONFIG_DIR, enabled.
UNIT_DIR="${SYSTEMD_ROOT%/}/etc/systemd/system"
UNIT="$UNIT_DIR/mailnode.service"
mkdir -p "$UNIT_DIR"
sed -e "s#/opt/mailnode/venv/bin/mailnode#$MAILNODE#" -e "s#/etc/mailnode/#$CONFIG_DIR/#g" \
  "$ROOT/mailnode.service" > "$UNIT.new"
if cmp -s "$UNIT.new" "$UNIT"; then
  rm "$UNIT.new"; step "$UNIT is up to date"
else
  mv "$UNIT.new" "$UNIT"; step "installed $UNIT"
fi
if [ "$STATE_DIR" != /var/lib/mailnode ]; then
  echo "note: the unit's StateDirectory is /var/lib/mailnode; the service can write only there" >&2
fi
if [ "$SYSTEMD_ROOT" != / ] || [ ! -d /run/systemd/system ]; then
  systemctl --root="$SYSTEMD_ROOT" enable mailnode.service 2>&1 | sed 's/^/    /'
  step "enabled (offline); it starts at the next boot of that system"
else
  systemctl daemon-reload
  systemctl enable mailnode.service
  if [ "$START" = yes ]; then
    systemctl restart mailnode.service
    step "started: systemctl status mailnode; journalctl -u mailnode -f"
  else
    step "enabled; start it with: systemctl start mailnode"
  fi
fi
