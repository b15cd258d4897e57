"""`diagnose` against a loopback DNS server and a real database: good, missing and wrong records,
unreachable DNS, and certificates near or past their expiry."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailnode.api.v1_domains import dns_records
from mailnode.config import Config, config_from_dict
from mailnode.core.dkim_keys import DkimKeyPair, dkim_txt_value, generate_dkim_key
from mailnode.doctor import SERVER, DoctorReport, Status, diagnose, render_text
from mailnode.errors import NotFoundError
from mailnode.storage.domains import DomainRecord, DomainStore
from mailnode.storage.store import Store
from tests.doctor.certs import DAY, certificate_pem
from tests.support.dns_server import DnsServer

NOW = 1_800_000_000.0  # 2027-01-15
HOST = "mail.example.test"
IP = "192.0.2.7"
BOUNCE = "bounces.example.test"
DOMAIN = "example.test"
PTR_NAME = "7.2.0.192.in-addr.arpa"
ALL_CHECKS = [
    (SERVER, "hostname"),
    (SERVER, "tls"),
    (SERVER, "bounce-mx"),
    (SERVER, "bounce-spf"),
    (SERVER, "ptr"),
    (SERVER, "ptr-forward"),
    (DOMAIN, "dkim"),
    (DOMAIN, "spf"),
    (DOMAIN, "dmarc"),
]


@pytest.fixture(scope="module")
def rsa_key() -> DkimKeyPair:
    # RSA: its 2048-bit record is split in two TXT strings, which the check must join again.
    return generate_dkim_key("rsa")


@pytest.fixture
async def domains(tmp_path: Path, rsa_key: DkimKeyPair) -> AsyncIterator[DomainStore]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/mailnode.db", clock=lambda: NOW)
    store_domains = DomainStore(store)
    await store_domains.create_domain(DOMAIN, rsa_key, "mailnode")
    yield store_domains
    await store.close()


@pytest.fixture
def cert_file(tmp_path: Path) -> Path:
    path = tmp_path / "cert.pem"
    path.write_bytes(certificate_pem([HOST], not_before=NOW - DAY, not_after=NOW + 90 * DAY))
    return path


def make_config(port: int, cert_file: Path, *, timeout: float = 2.0, **platform: Any) -> Config:
    return config_from_dict(
        {
            "hostname": HOST,
            "dns": {"nameservers": [f"127.0.0.1:{port}"], "timeout_seconds": timeout},
            "tls": {"cert_file": str(cert_file), "key_file": str(cert_file.with_name("key.pem"))},
            "platform": {"bounce_domain": BOUNCE, "sending_ips": [IP], **platform},
        }
    )


def publish_good(dns: DnsServer, key: DkimKeyPair) -> None:
    dns.add(HOST, "A", IP)
    dns.add(PTR_NAME, "PTR", f"{HOST}.")
    dns.add(BOUNCE, "MX", f"10 {HOST}.")
    dns.add(BOUNCE, "TXT", f"v=spf1 ip4:{IP} ~all")
    dns.add(f"mailnode._domainkey.{DOMAIN}", "TXT", dkim_txt_value(key.algorithm, key.public_key_b64))
    # The domain's SPF reaches the address through an include, next to an unrelated TXT record.
    dns.add(DOMAIN, "TXT", "site-verification=abc123")
    dns.add(DOMAIN, "TXT", "v=spf1 include:_spf.example.test ~all")
    dns.add(f"_spf.{DOMAIN}", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.test")


def verdicts(report: DoctorReport) -> dict[tuple[str, str], Status]:
    return {(c.scope, c.name): c.status for c in report.checks}


def check(report: DoctorReport, scope: str, name: str) -> Any:
    found = [c for c in report.checks if (c.scope, c.name) == (scope, name)]
    assert len(found) == 1, report.checks
    return found[0]


async def test_good_records_pass_every_check(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path, rsa_key: DkimKeyPair
) -> None:
    publish_good(dns_server, rsa_key)
    report = await diagnose(make_config(dns_server.port, cert_file), domains, clock=lambda: NOW)

    assert [(c.scope, c.name) for c in report.checks] == ALL_CHECKS
    assert all(c.status is Status.PASS for c in report.checks), render_text(report)
    assert report.exit_code == 0
    text = render_text(report)
    assert f"DNS: 127.0.0.1:{dns_server.port}" in text
    assert "9 pass, 0 warn, 0 fail" in text
    assert "publish:" not in text


async def test_missing_records_fail_with_the_records_domain_dns_proposes(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path
) -> None:
    config = make_config(dns_server.port, cert_file)
    report = await diagnose(config, domains, clock=lambda: NOW)

    record = await domains.get_domain(DOMAIN)
    assert isinstance(record, DomainRecord)
    proposed = {(r.name, r.type): r.value for r in dns_records(config, record)}
    for scope, name in [(SERVER, "bounce-mx"), (SERVER, "bounce-spf"), (DOMAIN, "dkim")]:
        found = check(report, scope, name)
        assert found.status is Status.FAIL
        assert proposed[(found.record.name, found.record.type)] == found.record.value
    for name in ("spf", "dmarc"):
        found = check(report, DOMAIN, name)
        assert proposed[(found.record.name, found.record.type)] == found.record.value
    assert check(report, DOMAIN, "spf").record.value == f"v=spf1 ip4:{IP} ~all"
    assert check(report, SERVER, "ptr").record.zone_line() == f"{PTR_NAME}. IN PTR {HOST}."
    assert check(report, SERVER, "hostname").record.zone_line() == f"{HOST}. IN A {IP}"
    assert (SERVER, "ptr-forward") not in verdicts(report)  # nothing to confirm without a PTR
    assert report.exit_code == 1
    text = render_text(report)
    assert f"publish: {BOUNCE}. IN MX 10 {HOST}." in text
    assert f'publish: _dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{DOMAIN}"' in text


async def test_wrong_records_fail_or_warn_with_the_record_to_publish(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path
) -> None:
    other_key = generate_dkim_key("ed25519")
    dns_server.add(HOST, "A", "203.0.113.9")
    dns_server.add(PTR_NAME, "PTR", "host-7.provider.example.")
    dns_server.add("host-7.provider.example", "A", "203.0.113.9")
    dns_server.add(BOUNCE, "MX", "10 mx.elsewhere.example.")
    dns_server.add(BOUNCE, "TXT", "v=spf1 ip4:198.51.100.1 -all")
    dns_server.add(
        f"mailnode._domainkey.{DOMAIN}", "TXT", f"v=DKIM1; k=ed25519; p={other_key.public_key_b64}"
    )
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx ~all")
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none")
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject")

    report = await diagnose(make_config(dns_server.port, cert_file), domains, clock=lambda: NOW)

    assert verdicts(report) == {
        (SERVER, "hostname"): Status.WARN,
        (SERVER, "tls"): Status.PASS,
        (SERVER, "bounce-mx"): Status.FAIL,
        (SERVER, "bounce-spf"): Status.FAIL,
        (SERVER, "ptr"): Status.WARN,
        (SERVER, "ptr-forward"): Status.FAIL,
        (DOMAIN, "dkim"): Status.FAIL,
        (DOMAIN, "spf"): Status.FAIL,
        (DOMAIN, "dmarc"): Status.FAIL,
    }
    assert "mx.elsewhere.example" in check(report, SERVER, "bounce-mx").detail
    # The address joins the published mechanisms, before the final "all".
    assert check(report, SERVER, "bounce-spf").record.value == f"v=spf1 ip4:198.51.100.1 ip4:{IP} -all"
    assert check(report, DOMAIN, "spf").record.value == f"v=spf1 mx ip4:{IP} ~all"
    assert "different key" in check(report, DOMAIN, "dkim").detail
    assert "2 DMARC records" in check(report, DOMAIN, "dmarc").detail
    assert check(report, SERVER, "ptr").record.value == HOST
    forward = check(report, SERVER, "ptr-forward")
    assert forward.record.zone_line() == f"host-7.provider.example. IN A {IP}"
    assert "203.0.113.9" in check(report, SERVER, "hostname").detail


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_unreachable_dns_is_one_line_per_check_and_quick(domains: DomainStore, cert_file: Path) -> None:
    port = closed_port()
    started = time.monotonic()
    report = await diagnose(make_config(port, cert_file, timeout=0.3), domains, clock=lambda: NOW)

    assert time.monotonic() - started < 3.0
    line = f"cannot reach DNS (127.0.0.1:{port}: no answer within 0.3 s)"
    dns_checks = [c for c in report.checks if c.name != "tls"]
    assert {(c.scope, c.name) for c in dns_checks} == set(ALL_CHECKS) - {
        (SERVER, "tls"),
        (SERVER, "ptr-forward"),
    }
    assert all((c.status, c.detail, c.record) == (Status.FAIL, line, None) for c in dns_checks)
    assert check(report, SERVER, "tls").status is Status.PASS  # no DNS needed
    assert report.exit_code == 1
    assert render_text(report).count(line) == len(dns_checks)


async def test_servfail_fails_that_check_only(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path, rsa_key: DkimKeyPair
) -> None:
    publish_good(dns_server, rsa_key)
    dns_server.servfail(f"_dmarc.{DOMAIN}")
    report = await diagnose(make_config(dns_server.port, cert_file), domains, clock=lambda: NOW)

    dmarc = check(report, DOMAIN, "dmarc")
    assert dmarc.status is Status.FAIL
    assert "SERVFAIL" in dmarc.detail
    assert [c.name for c in report.checks if c.status is not Status.PASS] == ["dmarc"]


async def test_one_domain_gets_its_checks_and_the_bounce_domain(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path, rsa_key: DkimKeyPair
) -> None:
    publish_good(dns_server, rsa_key)
    config = make_config(dns_server.port, cert_file)
    report = await diagnose(config, domains, domain="Example.TEST.", clock=lambda: NOW)

    assert [(c.scope, c.name) for c in report.checks] == [
        (SERVER, "bounce-mx"),
        (SERVER, "bounce-spf"),
        (DOMAIN, "dkim"),
        (DOMAIN, "spf"),
        (DOMAIN, "dmarc"),
    ]
    with pytest.raises(NotFoundError, match="mailnode domain list"):
        await diagnose(config, domains, domain="unknown.test")


async def test_unknown_public_address_warns_naming_the_config_key(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path, rsa_key: DkimKeyPair
) -> None:
    publish_good(dns_server, rsa_key)
    config = make_config(dns_server.port, cert_file, sending_ips=[])
    report = await diagnose(config, domains, clock=lambda: NOW)

    warned = {(c.scope, c.name) for c in report.checks if c.status is Status.WARN}
    assert warned == {(SERVER, "bounce-spf"), (SERVER, "ptr"), (DOMAIN, "spf")}
    assert all("[platform] sending_ips" in c.detail for c in report.checks if c.status is Status.WARN)
    assert report.exit_code == 0  # warnings alone


@pytest.mark.parametrize(
    ("days_later", "status", "words"),
    [
        (0, Status.PASS, "valid until 2027-04-15"),
        (80, Status.WARN, "in 10 days"),
        (91, Status.FAIL, "expired"),
    ],
)
async def test_certificate_expiry_against_the_injected_clock(
    dns_server: DnsServer,
    domains: DomainStore,
    cert_file: Path,
    rsa_key: DkimKeyPair,
    days_later: int,
    status: Status,
    words: str,
) -> None:
    publish_good(dns_server, rsa_key)
    config = make_config(dns_server.port, cert_file)
    report = await diagnose(config, domains, clock=lambda: NOW + days_later * DAY)

    tls = check(report, SERVER, "tls")
    assert (tls.status, words in tls.detail) == (status, True), tls.detail


async def test_localhost_greeting_fails_without_asking_dns(
    dns_server: DnsServer, domains: DomainStore, cert_file: Path
) -> None:
    config = config_from_dict({"dns": {"nameservers": [f"127.0.0.1:{dns_server.port}"]}})
    report = await diagnose(config, domains, clock=lambda: NOW)

    hostname = check(report, SERVER, "hostname")
    assert hostname.status is Status.FAIL
    assert "[smtp] hostname" in hostname.detail
    assert ("localhost", "A") not in dns_server.queries
