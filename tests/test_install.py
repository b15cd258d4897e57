"""scripts/install.sh (issue 6): a Debian host install that a second run leaves as it was.

Runs the real script into a temporary prefix, config directory and systemd root (the unit is
enabled offline there), so it needs neither a running systemd nor to touch /opt or /etc.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"


def _install(tmp_path: Path) -> str:
    args = [
        str(SCRIPT),
        *("--prefix", str(tmp_path / "opt")),
        *("--config-dir", str(tmp_path / "etc")),
        *("--state-dir", str(tmp_path / "state")),
        *("--systemd-root", str(tmp_path / "root")),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILNODE_", "VIRTUAL_ENV"))}
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_then_install_again_changes_nothing(tmp_path: Path) -> None:
    if shutil.which("systemctl") is None:
        pytest.fail("systemctl not found: install Debian's systemd package (apt-get install systemd)")
    first = _install(tmp_path)
    assert f"installing mailnode into {tmp_path}/opt/venv" in first
    mailnode = tmp_path / "opt" / "venv" / "bin" / "mailnode"
    version = subprocess.run([mailnode, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.startswith("mailnode, version ")

    config, secrets = tmp_path / "etc" / "mailnode.toml", tmp_path / "etc" / "secrets.env"
    assert _mode(config) == 0o644 and _mode(secrets) == 0o600
    name, _, token = secrets.read_text().strip().partition("=")
    assert name == "MAILNODE_ADMIN_TOKEN" and len(token) >= 24
    assert token not in config.read_text()  # the world-readable config holds no secret
    assert f'url = "sqlite+aiosqlite:///{tmp_path}/state/mailnode.db"' in config.read_text()
    assert (tmp_path / "state" / "mailnode.db").is_file()

    unit = tmp_path / "root" / "etc" / "systemd" / "system" / "mailnode.service"
    text = unit.read_text()
    assert f"ExecStart={mailnode} serve --config {config}\n" in text
    assert f"EnvironmentFile=-{secrets}\n" in text
    wanted = tmp_path / "root" / "etc" / "systemd" / "system" / "multi-user.target.wants" / "mailnode.service"
    assert wanted.is_symlink()  # enabled

    before = {path: path.read_bytes() for path in (config, secrets, unit)}
    second = _install(tmp_path)
    assert "is up to date" in second and "installing mailnode" not in second
    assert f"keeping {config}" in second
    assert {path: path.read_bytes() for path in before} == before
