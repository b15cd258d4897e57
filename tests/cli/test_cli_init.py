"""`mailnode init`: a config that validates, holds a fresh secret, and starts a service."""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path

import aiohttp
import pytest

from mailnode.config import load_config
from mailnode.init_config import reference_config, set_values
from tests.support.process import run_cli, start_serve

pytestmark = pytest.mark.slow

REFERENCE_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "mailnode.toml"


def admin_token(path: Path) -> str:
    return str(tomllib.loads(path.read_text())["admin"]["token"])


def assert_written(config_path: Path, data: Path) -> None:
    """The config is private and valid, and names the database and certificate init made."""
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert (data / "mailnode.db").is_file()
    config = load_config(config_path)
    assert config.storage.url == f"sqlite+aiosqlite:///{data / 'mailnode.db'}"
    assert len(config.admin_token()) >= 24
    assert Path(config.tls.cert_file) == data / "tls" / "smtp-dev-cert.pem"
    assert Path(config.tls.key_file).is_file()


def test_the_packaged_reference_is_etc_mailnode_toml() -> None:
    assert reference_config() == REFERENCE_CONFIG.read_text(encoding="utf-8")


def test_set_values_fails_loudly_when_the_reference_lacks_a_key() -> None:
    with pytest.raises(ValueError, match=r"admin\.tokn"):
        set_values(reference_config(), {("admin", "tokn"): "x"})


async def test_init_writes_a_private_valid_config_database_and_certificate(tmp_path: Path) -> None:
    result = await run_cli("init", cwd=tmp_path)
    assert result.code == 0, result
    config_path = tmp_path / "mailnode.toml"
    assert_written(config_path, tmp_path / "mailnode-data")
    assert "next: mailnode serve --config mailnode.toml" in result.stdout
    # The comments of the reference come along: every key still says what it is for.
    assert "# On SIGTERM: how long open HTTP requests" in config_path.read_text()
    checked = await run_cli("check-config", "mailnode.toml", cwd=tmp_path)
    assert checked.code == 0, checked


async def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    config_path = tmp_path / "etc" / "node.toml"
    args = ("init", "--config", str(config_path), "--data-dir", str(tmp_path / "data"))
    assert (await run_cli(*args, cwd=tmp_path)).code == 0
    before = config_path.read_bytes()

    again = await run_cli(*args, cwd=tmp_path)
    assert again.code == 1
    assert again.stdout == ""
    assert again.stderr.strip().count("\n") == 0
    assert str(config_path) in again.stderr and "--force" in again.stderr
    assert config_path.read_bytes() == before

    forced = await run_cli(*args, "--force", cwd=tmp_path)
    assert forced.code == 0, forced
    assert admin_token(config_path) != tomllib.loads(before.decode())["admin"]["token"]
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600


async def test_the_written_config_serves_with_its_admin_token(tmp_path: Path) -> None:
    assert (await run_cli("init", cwd=tmp_path)).code == 0
    config_path = tmp_path / "mailnode.toml"
    # Only the listen addresses change: the test cannot own the fixed ports.
    text = re.sub(
        r'^listen = "127\.0\.0\.1:\d+"$', 'listen = "127.0.0.1:0"', config_path.read_text(), flags=re.M
    )
    config_path.write_text(text)
    token = admin_token(config_path)
    serve = await start_serve(config_path)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{serve.url}/v1/domains", headers=headers) as response:
                assert response.status == 200, await response.text()
            async with http.get(f"{serve.url}/v1/domains", headers={"Authorization": "Bearer x"}) as response:
                assert response.status == 401
    finally:
        assert await serve.terminate() == 0
