"""The doctor's decisions as plain functions over DNS answers and certificate facts: no event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailnode.doctor.checks as checks_module
from mailnode.doctor.checks import (
    Answer,
    CertificateFacts,
    DkimKey,
    LookupKey,
    certificate_facts,
    check_bounce_mx,
    check_certificate,
    check_dkim,
    check_dmarc,
    check_forward,
    check_hostname,
    check_spf,
    hostname_problem,
    merged_spf,
    name_covered,
)
from mailnode.doctor.report import SERVER, Check, DoctorReport, Record, Status, render_text
from tests.doctor.certs import DAY, certificate_pem

NOW = 1_800_000_000.0
KEY = DkimKey("mailnode", "ed25519", "tyrK1+oD4YGggFeMhf2+wsUBTObEyVnc6jb8UH5gpMg=")
DOWN = Answer(failure="cannot reach DNS (127.0.0.1:53: no answer within 5 s)")


def txt(*records: str) -> Answer:
    return Answer(records=records)


# -- bounce MX ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (Answer(records=("10 mail.example.test",)), Status.PASS, "is mail.example.test"),
        (Answer(records=("5 backup.example.test", "10 mail.example.test")), Status.PASS, "is mail"),
        (Answer(nxdomain=True), Status.FAIL, "does not exist"),
        (Answer(), Status.FAIL, "has no MX record"),
        (Answer(records=("0 .",)), Status.FAIL, "(null MX)"),
        (Answer(records=("10 mx.other.example",)), Status.FAIL, "points at mx.other.example"),
        (DOWN, Status.FAIL, "cannot reach DNS"),
    ],
)
def test_bounce_mx(answer: Answer, status: Status, words: str) -> None:
    found = check_bounce_mx(SERVER, answer, "bounces.example.test", "mail.example.test")
    assert (found.status, words in found.detail) == (status, True), found.detail
    if status is Status.FAIL and answer.failure is None:
        assert found.record == Record("bounces.example.test", "MX", "10 mail.example.test")


# -- DKIM -----------------------------------------------------------------------------------------

P = KEY.public_key_b64


@pytest.mark.parametrize(
    ("records", "status", "words"),
    [
        ((f"v=DKIM1; k=ed25519; p={P}",), Status.PASS, "publishes the active key"),
        # Whitespace folded into p= and tag names in upper case still match (RFC 6376 §3.6.1).
        ((f"v=DKIM1; K=ed25519; p={P[:20]} {P[20:]}",), Status.PASS, "active key"),
        ((f"v=DKIM1; p={P}",), Status.FAIL, "different key"),  # k= defaults to rsa
        (("v=DKIM1; k=ed25519; p=",), Status.FAIL, "revoked"),
        (("v=DKIM1; k=ed25519; p=AAAA",), Status.FAIL, "different key"),
        (("some other text",), Status.FAIL, "no DKIM key"),
        ((), Status.FAIL, "no DKIM key"),
        ((f"v=DKIM1; k=ed25519; p={P}", "v=DKIM1; k=ed25519; p=AAAA"), Status.WARN, "2 DKIM records"),
    ],
)
def test_dkim(records: tuple[str, ...], status: Status, words: str) -> None:
    found = check_dkim("example.test", txt(*records), KEY)
    assert (found.status, words in found.detail) == (status, True), found.detail
    if status is not Status.PASS:
        assert found.record == Record("mailnode._domainkey.example.test", "TXT", f"v=DKIM1; k=ed25519; p={P}")


def test_dkim_without_a_key_says_how_to_make_one() -> None:
    found = check_dkim("example.test", Answer(), None)
    assert found.status is Status.FAIL
    assert "mailnode domain rotate-dkim example.test" in found.detail


# -- DMARC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "status", "words"),
    [
        (("v=DMARC1; p=reject",), Status.PASS, "p=reject"),
        (("v=DMARC1;p=none;rua=mailto:x@example.test", "unrelated"), Status.PASS, "p=none"),
        (("v=DMARC1; rua=mailto:x@example.test",), Status.FAIL, "no valid p="),
        (("v=DMARC1; p=block",), Status.FAIL, "no valid p="),
        (("p=reject; v=DMARC1",), Status.FAIL, "no DMARC record"),  # v= must come first
        (("v=DMARC1; p=none", "v=DMARC1; p=reject"), Status.FAIL, "2 DMARC records"),
    ],
)
def test_dmarc(records: tuple[str, ...], status: Status, words: str) -> None:
    found = check_dmarc("example.test", txt(*records))
    assert (found.status, words in found.detail) == (status, True), found.detail


# -- SPF ------------------------------------------------------------------------------------------


def spf(answers: dict[LookupKey, Answer], ips: tuple[str, ...] = ("192.0.2.7",)) -> Check | set[LookupKey]:
    return check_spf(
        "example.test", "spf", "example.test", sending_ips=ips, mx_host="mail.example.test", answers=answers
    )


def evaluate(zone: dict[LookupKey, Answer], ips: tuple[str, ...] = ("192.0.2.7",)) -> tuple[Check, int]:
    """Run check_spf as diagnose does, answering from `zone`; the verdict and the rounds it took."""
    answers: dict[LookupKey, Answer] = {}
    for rounds in range(1, 30):
        verdict = spf(answers, ips)
        if isinstance(verdict, Check):
            return verdict, rounds
        answers.update({key: zone.get(key, Answer(nxdomain=True)) for key in verdict})
    raise AssertionError("no verdict")


def test_spf_first_asks_for_the_domain_txt() -> None:
    assert spf({}) == {("example.test", "TXT")}


@pytest.mark.parametrize(
    ("zone", "status", "words"),
    [
        ({("example.test", "TXT"): txt("v=spf1 ip4:192.0.2.0/24 -all")}, Status.PASS, "includes 192.0.2.7"),
        (
            {
                ("example.test", "TXT"): txt("v=spf1 mx -all"),
                ("example.test", "MX"): txt("10 mail.example.test"),
                ("mail.example.test", "A"): txt("192.0.2.7"),
            },
            Status.PASS,
            "includes",
        ),
        (
            {
                ("example.test", "TXT"): txt("v=spf1 include:a.example.test -all"),
                ("a.example.test", "TXT"): txt("v=spf1 include:b.example.test -all"),
                ("b.example.test", "TXT"): txt("v=spf1 a:mail.example.test -all"),
                ("mail.example.test", "A"): txt("192.0.2.7"),
            },
            Status.PASS,
            "includes",
        ),
        ({("example.test", "TXT"): txt("v=spf1 ip4:198.51.100.0/24 ~all")}, Status.FAIL, "softfail"),
        ({("example.test", "TXT"): txt("v=spf1 include:gone.example.test ~all")}, Status.FAIL, "permerror"),
        ({("example.test", "TXT"): txt("v=spf1 -all", "v=spf1 +all")}, Status.FAIL, "2 SPF records"),
        ({("example.test", "TXT"): txt("spf2.0/pra ip4:192.0.2.7")}, Status.FAIL, "no SPF record"),
        ({("example.test", "TXT"): DOWN}, Status.FAIL, "cannot reach DNS"),
        (
            {
                ("example.test", "TXT"): txt("v=spf1 include:a.example.test -all"),
                ("a.example.test", "TXT"): DOWN,
            },
            Status.FAIL,
            "cannot reach DNS",
        ),
    ],
)
def test_spf(zone: dict[LookupKey, Answer], status: Status, words: str) -> None:
    verdict, _ = evaluate(zone)
    assert (verdict.status, words in verdict.detail) == (status, True), verdict.detail


def test_spf_walks_an_include_chain_one_level_per_round() -> None:
    zone = {
        ("example.test", "TXT"): txt("v=spf1 include:a.example.test -all"),
        ("a.example.test", "TXT"): txt("v=spf1 include:b.example.test -all"),
        ("b.example.test", "TXT"): txt("v=spf1 ip4:192.0.2.7 -all"),
    }
    verdict, rounds = evaluate(zone)
    assert (verdict.status, rounds) == (Status.PASS, 4)


def test_spf_names_every_address_left_out_and_merges_them_in() -> None:
    zone = {("example.test", "TXT"): txt("v=spf1 ip4:192.0.2.7 redirect=_spf.example.test")}
    zone[("_spf.example.test", "TXT")] = txt("v=spf1 -all")
    verdict, _ = evaluate(zone, ips=("192.0.2.7", "2001:db8::25", "198.51.100.4"))
    assert verdict.status is Status.FAIL
    assert "2001:db8::25" in verdict.detail and "198.51.100.4" in verdict.detail
    assert "192.0.2.7 (" not in verdict.detail
    assert verdict.record == Record(
        "example.test",
        "TXT",
        "v=spf1 ip4:192.0.2.7 ip6:2001:db8::25 ip4:198.51.100.4 redirect=_spf.example.test",
    )


@pytest.mark.parametrize(
    ("existing", "added", "merged"),
    [
        ("v=spf1 mx ~all", ["ip4:192.0.2.7"], "v=spf1 mx ip4:192.0.2.7 ~all"),
        ("v=spf1 mx -ALL", ["ip4:192.0.2.7"], "v=spf1 mx ip4:192.0.2.7 -ALL"),
        ("v=spf1 mx", ["ip4:192.0.2.7"], "v=spf1 mx ip4:192.0.2.7"),
        ("v=spf1 ip4:192.0.2.7 ~all", ["IP4:192.0.2.7"], "v=spf1 ip4:192.0.2.7 ~all"),
    ],
)
def test_merged_spf(existing: str, added: list[str], merged: str) -> None:
    assert merged_spf(existing, added) == merged


# -- reverse DNS and the greeting name -------------------------------------------------------------


def test_forward_confirmation_accepts_any_ptr_name_and_ipv6_spellings() -> None:
    names = ["a.example.test", "b.example.test"]
    addresses = {
        "a.example.test": [txt("203.0.113.1"), Answer()],
        "b.example.test": [Answer(), txt("2001:db8:0:0::25")],
    }
    found = check_forward("2001:db8::25", names, addresses)
    assert (found.status, found.detail) == (Status.PASS, "b.example.test resolves back to 2001:db8::25")
    failed = check_forward("2001:db8::26", names, addresses)
    assert failed.status is Status.FAIL
    assert failed.record == Record("a.example.test", "AAAA", "2001:db8::26")


@pytest.mark.parametrize(
    ("hostname", "problem"),
    [
        ("mail.example.test", False),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("box.localhost", True),
        ("mailserver", True),
        ("192.0.2.7", True),
    ],
)
def test_hostname_problem(hostname: str, problem: bool) -> None:
    assert (hostname_problem(hostname) is not None) is problem


def test_hostname_that_resolves_elsewhere_warns() -> None:
    found = check_hostname("mail.example.test", [txt("203.0.113.9"), Answer()], ["192.0.2.7"])
    assert found.status is Status.WARN
    assert found.record == Record("mail.example.test", "A", "192.0.2.7")
    assert (
        check_hostname("mail.example.test", [txt("192.0.2.7"), Answer()], ["192.0.2.7"]).status is Status.PASS
    )
    unknown = check_hostname("mail.example.test", [Answer(), Answer()], [])
    assert (unknown.status, unknown.record) == (Status.FAIL, None)
    assert "A or AAAA record" in unknown.detail


# -- TLS certificate ------------------------------------------------------------------------------


def facts(
    names: tuple[str, ...] = ("mail.example.test",), days: float = 90, self_signed: bool = False
) -> CertificateFacts:
    return CertificateFacts(NOW - DAY, NOW + days * DAY, names, self_signed)


@pytest.mark.parametrize(
    ("given", "now", "status", "words"),
    [
        (facts(), NOW, Status.PASS, "valid until 2027-04-15"),
        (facts(days=13.5), NOW, Status.WARN, "in 13 days"),
        (facts(days=14.5), NOW, Status.PASS, "valid until"),
        (facts(days=1), NOW + DAY, Status.FAIL, "expired on 2027-01-16"),
        (facts(), NOW - 2 * DAY, Status.FAIL, "not valid before"),
        (facts(names=("other.example.test",)), NOW, Status.FAIL, "not the hostname"),
        (facts(names=("*.example.test",)), NOW, Status.PASS, "valid until"),
        (facts(self_signed=True), NOW, Status.WARN, "self-signed"),
        ("cannot read it: Permission denied", NOW, Status.FAIL, "Permission denied"),
    ],
)
def test_certificate(given: CertificateFacts | str, now: float, status: Status, words: str) -> None:
    found = check_certificate("/etc/mailnode/cert.pem", given, "mail.example.test", now)
    assert (found.status, words in found.detail) == (status, True), found.detail


@pytest.mark.parametrize(
    ("hostname", "names", "covered"),
    [
        ("mail.example.test", ["MAIL.example.test".lower()], True),
        ("mail.example.test", ["*.example.test"], True),
        ("a.mail.example.test", ["*.example.test"], False),  # one label only (RFC 6125 §6.4.3)
        ("example.test", ["*.example.test"], False),
        ("mail.example.test", ["*.test"], False),
    ],
)
def test_name_covered(hostname: str, names: list[str], covered: bool) -> None:
    assert name_covered(hostname, names) is covered


def test_certificate_facts_read_the_leaf_of_a_chain() -> None:
    leaf = certificate_pem(["mail.example.test", "smtp.example.test"], not_before=NOW, not_after=NOW + DAY)
    other = certificate_pem(["ca.example.test"], not_before=NOW, not_after=NOW + 9 * DAY, self_signed=True)
    found = certificate_facts(leaf + other)
    assert found == CertificateFacts(NOW, NOW + DAY, ("mail.example.test", "smtp.example.test"), False)
    no_san = certificate_facts(certificate_pem([], not_before=NOW, not_after=NOW + DAY))
    assert no_san.names == ("no-name",)  # the CN, for lack of a subjectAltName
    with pytest.raises(ValueError, match="PEM"):
        certificate_facts(b"not a certificate")


# -- the report -----------------------------------------------------------------------------------


def test_long_txt_record_is_written_as_quoted_strings_of_255_octets() -> None:
    record = Record("s._domainkey.example.test", "TXT", 'a"b\\' + "x" * 300)
    line = record.zone_line()
    assert line.startswith('s._domainkey.example.test. IN TXT "a\\"b\\\\')
    strings = line.split(" IN TXT ")[1]
    assert strings.count('" "') == 1
    assert Record("example.test", "MX", "10 mail.example.test").zone_line().endswith("10 mail.example.test.")


def test_report_exit_code_and_json() -> None:
    warned = Check(SERVER, "tls", Status.WARN, "expires soon")
    failed = Check(
        "example.test", "dmarc", Status.FAIL, "none", Record("_dmarc.example.test", "TXT", "v=DMARC1")
    )
    assert DoctorReport((warned,), "127.0.0.1").exit_code == 0
    report = DoctorReport((warned, failed), "127.0.0.1")
    assert report.exit_code == 1
    data = report.to_json()
    assert data["ok"] is False
    assert data["counts"] == {"pass": 0, "warn": 1, "fail": 1}
    assert data["checks"][1]["record"] == {
        "name": "_dmarc.example.test",
        "type": "TXT",
        "value": "v=DMARC1",
        "zone": '_dmarc.example.test. IN TXT "v=DMARC1"',
    }
    assert "publish: _dmarc.example.test." in render_text(report)


def test_decisions_import_no_io() -> None:
    """checks.py and report.py stay pure: no event loop, database, network or HTTP modules."""
    forbidden = (
        "asyncio",
        "sqlalchemy",
        "aiohttp",
        "aiosmtpd",
        "socket",
        "dns.asyncresolver",
        "mailnode.storage",
    )
    directory = Path(checks_module.__file__).parent
    for name in ("checks.py", "report.py"):
        tree = ast.parse((directory / name).read_text())
        imported = [
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        ]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [m for m in imported if m.startswith(forbidden)], (name, imported)
