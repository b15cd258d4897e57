"""`mailnode doctor` through click's CliRunner, against the loopback DNS server and a real database.

The command runs its own event loop (asyncio.run), so it runs in a worker thread while the DNS
server answers on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailnode.cli import cli
from mailnode.core.dkim_keys import DkimKeyPair, dkim_txt_value, generate_dkim_key
from mailnode.storage.domains import DomainStore
from mailnode.storage.store import Store
from tests.doctor.certs import DAY, certificate_pem
from tests.doctor.test_diagnose import BOUNCE, DOMAIN, HOST, IP, PTR_NAME, closed_port
from tests.support.dns_server import DnsServer


@pytest.fixture
async def config_file(tmp_path: Path) -> Path:
    now = time.time()
    cert = tmp_path / "cert.pem"
    cert.write_bytes(certificate_pem([HOST], not_before=now - DAY, not_after=now + 365 * DAY))
    path = tmp_path / "mailnode.toml"
    path.write_text(
        f'hostname = "{HOST}"\n'
        f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/data/mailnode.db"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout_seconds = 0.3\n'
        f'[tls]\ncert_file = "{cert}"\nkey_file = "{tmp_path}/key.pem"\n'
        f'[platform]\nbounce_domain = "{BOUNCE}"\nsending_ips = ["{IP}"]\n'
    )
    return path


@pytest.fixture
async def key(tmp_path: Path) -> DkimKeyPair:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/data/mailnode.db")
    created = generate_dkim_key("ed25519")
    await DomainStore(store).create_domain(DOMAIN, created, "mailnode")
    await store.close()
    return created


def publish(dns: DnsServer, key: DkimKeyPair) -> None:
    dns.add(HOST, "A", IP)
    dns.add(PTR_NAME, "PTR", f"{HOST}.")
    dns.add(BOUNCE, "MX", f"10 {HOST}.")
    dns.add(BOUNCE, "TXT", f"v=spf1 ip4:{IP} ~all")
    dns.add(f"mailnode._domainkey.{DOMAIN}", "TXT", dkim_txt_value(key.algorithm, key.public_key_b64))
    dns.add(DOMAIN, "TXT", f"v=spf1 ip4:{IP} -all")
    dns.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none")


async def doctor(config: Path, *args: str) -> Result:
    argv = ["doctor", *args, "--config", str(config)]
    return await asyncio.to_thread(CliRunner().invoke, cli, argv, env={"MAILNODE_CONFIG": None})


async def test_good_records_exit_0(dns_server: DnsServer, config_file: Path, key: DkimKeyPair) -> None:
    publish(dns_server, key)
    server = f"127.0.0.1:{dns_server.port}"
    result = await doctor(config_file, "--dns-server", server)

    assert result.exit_code == 0, result.output
    assert "9 pass, 0 warn, 0 fail" in result.stdout
    assert f"  PASS  dkim         mailnode._domainkey.{DOMAIN} publishes the active key" in result.stdout

    as_json = await doctor(config_file, DOMAIN, "--json", "--dns-server", server)
    report = json.loads(as_json.stdout)
    assert (as_json.exit_code, report["ok"], report["dns_servers"]) == (0, True, server)
    assert [c["name"] for c in report["checks"]] == ["bounce-mx", "bounce-spf", "dkim", "spf", "dmarc"]


async def test_missing_records_exit_1_with_the_records_to_publish(
    dns_server: DnsServer, config_file: Path, key: DkimKeyPair
) -> None:
    dns_server.add(HOST, "A", IP)
    result = await doctor(config_file, DOMAIN, "--dns-server", f"127.0.0.1:{dns_server.port}")

    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    published = [line.strip() for line in result.stdout.splitlines() if "publish:" in line]
    assert published == [
        f"publish: {BOUNCE}. IN MX 10 {HOST}.",
        f'publish: {BOUNCE}. IN TXT "v=spf1 ip4:{IP} ~all"',
        f'publish: mailnode._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=ed25519; p={key.public_key_b64}"',
        f'publish: {DOMAIN}. IN TXT "v=spf1 ip4:{IP} ~all"',
        f'publish: _dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{DOMAIN}"',
    ]


async def test_unreachable_dns_is_a_clear_line_per_check_and_exit_1(
    config_file: Path, key: DkimKeyPair
) -> None:
    port = closed_port()
    started = time.monotonic()
    result = await doctor(config_file, "--dns-server", f"127.0.0.1:{port}")

    assert time.monotonic() - started < 5.0
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    unreachable = [line for line in result.stdout.splitlines() if "cannot reach DNS" in line]
    assert len(unreachable) == 7  # hostname, bounce MX and SPF, PTR; DKIM, SPF, DMARC
    assert all(
        "FAIL" in line and f"(127.0.0.1:{port}: no answer within 0.3 s)" in line for line in unreachable
    )


async def test_dns_server_from_config_and_errors_in_one_line(config_file: Path, key: DkimKeyPair) -> None:
    # Without --dns-server, [dns] nameservers is asked (port 9 on loopback: nothing answers).
    result = await doctor(config_file, DOMAIN)
    assert "cannot reach DNS (127.0.0.1:9: no answer within 0.3 s)" in result.stdout

    unknown = await doctor(config_file, "unknown.test")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip().splitlines() == [
        "mailnode: no domain 'unknown.test'; list them with `mailnode domain list`"
    ]

    bad = await doctor(config_file, "--dns-server", "dns.example:53")
    assert bad.exit_code == 2
    assert "is not IP or IP:PORT" in bad.stderr


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--help"])
    assert result.exit_code == 0
    assert "Example: mailnode doctor example.com" in result.output
    assert "doctor" in CliRunner().invoke(cli, ["--help"]).output
