"""`mailnode domain …`, `template …` and `key create --domain` on a real database, and the
developer default's admin token."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner, Result

from mailnode.cli import cli
from mailnode.storage.domains import DomainStore
from mailnode.storage.store import Store
from tests.cli.test_cli import DevServe, dev_serve  # noqa: F401  (the fixture, shared)


def write_config(tmp_path: Path, hostname: str = "mailnode.test") -> Path:
    path = tmp_path / "mailnode.toml"
    path.write_text(
        f'hostname = "{hostname}"\n'
        f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/data/mailnode.db"\n'
        '[platform]\nsending_ips = ["192.0.2.7"]\n'
    )
    return path


def run(config: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, [*args, "--config", str(config)], input=stdin, env={"MAILNODE_CONFIG": None}
    )


def one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def show(config: Path, name: str) -> dict:
    result = run(config, "domain", "show", name, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_domain_create_prints_the_records_to_publish(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run(config, "domain", "create", "Example.COM")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("example.com  (created ")
    domain = show(config, "example.com")
    public_key = domain["dkim"][0]["public_key"]
    dkim_line = ["TXT", "mailnode._domainkey.example.com", f"v=DKIM1; k=rsa; p={public_key}"]
    assert dkim_line in [line.split(None, 2) for line in result.stdout.splitlines()]
    assert "v=spf1 ip4:192.0.2.7 ~all" in result.stdout
    assert {"name": "bounces.mailnode.test", "type": "MX"}.items() <= next(
        r for r in domain["dns_records"] if r["type"] == "MX"
    ).items()

    listed = run(config, "domain", "list", "--json")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["example.com"]
    one_line_error(run(config, "domain", "create", "example.com"), 1, "domain 'example.com' already exists")


@pytest.mark.parametrize(("name", "says"), [("localhost", "two labels"), ("a..b", "empty label")])
def test_domain_create_refuses_a_bad_name_in_one_line(tmp_path: Path, name: str, says: str) -> None:
    one_line_error(run(write_config(tmp_path), "domain", "create", name), 1, says)


def test_rotate_dkim_adds_a_selector_that_signs(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "domain", "create", "example.com", "--dkim-algorithm", "ed25519").exit_code == 0
    result = run(config, "domain", "rotate-dkim", "example.com", "--dkim-algorithm", "ed25519")
    assert result.exit_code == 0, result.output
    selectors = [(k["selector"], k["signing"]) for k in show(config, "example.com")["dkim"]]
    assert selectors[0] == ("mailnode", False) and selectors[1][1] is True
    assert f"new DKIM selector {selectors[1][0]} (ed25519)" in result.stdout
    assert f"{selectors[1][0]}._domainkey.example.com" in result.stdout
    dns = json.loads(run(config, "domain", "dns", "example.com", "--json").stdout)
    assert sum(r["name"].endswith("._domainkey.example.com") for r in dns) == 2


def test_domain_dns_says_which_config_to_set_when_it_cannot_build_the_records(tmp_path: Path) -> None:
    config = write_config(tmp_path, hostname="localhost")
    assert run(config, "domain", "create", "example.com", "--dkim-algorithm", "ed25519").exit_code == 0
    one_line_error(run(config, "domain", "dns", "example.com"), 2, "config error", "`hostname`")
    one_line_error(run(config, "domain", "dns", "example.org"), 1, "no domain 'example.org'")


def test_key_create_needs_an_existing_domain(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    one_line_error(
        run(config, "key", "create", "--name", "app", "--domain", "example.org"),
        1,
        "no domain 'example.org'",
        "mailnode domain create example.org",
    )
    assert run(config, "domain", "create", "example.org", "--dkim-algorithm", "ed25519").exit_code == 0
    created = run(config, "key", "create", "--name", "app", "--domain", "Example.ORG")
    assert created.exit_code == 0, created.output
    with sqlite3.connect(tmp_path / "data" / "mailnode.db") as db:
        assert db.execute("SELECT name, domain FROM api_keys").fetchall() == [("app", "example.org")]


def test_domain_delete_asks_first_then_takes_everything_of_the_domain(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "domain", "create", "example.com", "--dkim-algorithm", "ed25519").exit_code == 0
    assert run(config, "key", "create", "--name", "app", "--domain", "example.com").exit_code == 0

    refused = run(config, "domain", "delete", "example.com", stdin="n\n")
    assert refused.exit_code == 1
    assert show(config, "example.com")["name"] == "example.com"

    result = run(config, "domain", "delete", "example.com", "--yes")
    assert (result.exit_code, result.stdout) == (0, "deleted example.com; 0 unsent deliveries cancelled\n")
    assert json.loads(run(config, "domain", "list", "--json").stdout) == []
    with sqlite3.connect(tmp_path / "data" / "mailnode.db") as db:
        assert db.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)


def test_template_list_and_show(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run(config, "domain", "create", "example.com", "--dkim-algorithm", "ed25519").exit_code == 0
    asyncio.run(add_template(tmp_path, "tpl_welcome"))

    listed = run(config, "template", "list", "--domain", "EXAMPLE.com")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.startswith("tpl_welcome  welcome ")
    assert "1 of 1 templates" in listed.stderr
    shown = run(config, "template", "show", "tpl_welcome", "--domain", "example.com")
    assert shown.exit_code == 0, shown.output
    assert "subject:  Hi {{ name }}" in shown.stdout and "--- html ---\n<p>Hi</p>" in shown.stdout
    as_json = json.loads(
        run(config, "template", "show", "tpl_welcome", "--domain", "example.com", "--json").stdout
    )
    assert (as_json["id"], as_json["text"]) == ("tpl_welcome", None)
    one_line_error(
        run(config, "template", "show", "tpl_nope", "--domain", "example.com"), 1, "no template 'tpl_nope'"
    )
    one_line_error(run(config, "template", "list", "--domain", "example.org"), 1, "no domain 'example.org'")


async def add_template(tmp_path: Path, template_id: str) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/data/mailnode.db")
    try:
        await DomainStore(store).create_template(
            "example.com", template_id, name="welcome", subject="Hi {{ name }}", html="<p>Hi</p>", text=None
        )
    finally:
        await store.close()


@pytest.mark.slow
async def test_the_developer_default_has_an_admin_token(
    tmp_path: Path,
    dev_serve: DevServe,  # noqa: F811
) -> None:
    token_file = tmp_path / "mailnode-data" / "admin-token"
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32
    assert any(line.strip().startswith(f"admin token: {token}") for line in dev_serve.lines)
    async with aiohttp.ClientSession(dev_serve.url) as http:
        async with http.get("/v1/domains", headers={"Authorization": f"Bearer {token}"}) as response:
            assert (response.status, await response.json()) == (200, {"items": []})
        async with http.get("/v1/domains", headers={"Authorization": f"Bearer {dev_serve.key}"}) as response:
            assert response.status == 401  # the developer API key is not the operator
