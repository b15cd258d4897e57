"""The DNS records a sending domain is told to publish."""

from __future__ import annotations

from typing import Any

import pytest

from mailnode.core.dns_records import DnsRecord, records_to_publish

RSA_P = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"
ED_P = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

BASE: dict[str, Any] = {
    "domain": "example.com",
    "dkim": [("mailnode", "rsa", RSA_P)],
    "sending_ips": ["192.0.2.10"],
    "bounce_domain": "bounces.example.com",
    "bounce_mx_host": "mx.mailnode.example.net",
    "tracking_host": None,
    "tracking_target": None,
}


def _rows(**overrides: Any) -> list[tuple[str, str, str]]:
    return [(r.name, r.type, r.value) for r in records_to_publish(**{**BASE, **overrides})]


def test_a_domain_with_one_key_and_one_address() -> None:
    assert _rows() == [
        ("mailnode._domainkey.example.com", "TXT", f"v=DKIM1; k=rsa; p={RSA_P}"),
        ("example.com", "TXT", "v=spf1 ip4:192.0.2.10 ~all"),
        ("_dmarc.example.com", "TXT", "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"),
        ("bounces.example.com", "MX", "10 mx.mailnode.example.net"),
        ("bounces.example.com", "TXT", "v=spf1 ip4:192.0.2.10 ~all"),
    ]


@pytest.mark.parametrize(
    ("sending_ips", "spf"),
    [
        (["192.0.2.10"], "v=spf1 ip4:192.0.2.10 ~all"),
        (["2001:db8::25"], "v=spf1 ip6:2001:db8::25 ~all"),
        (["192.0.2.10", "2001:db8::25"], "v=spf1 ip4:192.0.2.10 ip6:2001:db8::25 ~all"),
        (["198.51.100.0/24", "2001:db8:1::/48"], "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:1::/48 ~all"),
        (["192.0.2.10", " 192.0.2.10 ", "192.0.2.10/32"], "v=spf1 ip4:192.0.2.10 ~all"),
        (["2001:DB8::25"], "v=spf1 ip6:2001:db8::25 ~all"),
        # Nothing configured: the host that takes the bounces is the host that sends.
        ([], "v=spf1 a:mx.mailnode.example.net ~all"),
    ],
)
def test_spf_for_the_domain_and_the_bounce_domain(sending_ips: list[str], spf: str) -> None:
    rows = _rows(sending_ips=sending_ips)
    assert ("example.com", "TXT", spf) in rows
    assert ("bounces.example.com", "TXT", spf) in rows


def test_one_dkim_record_per_key_in_order() -> None:
    rows = _rows(dkim=[("mailnode", "rsa", RSA_P), ("Mailnode-20260523", "ed25519", ED_P)])
    assert rows[:2] == [
        ("mailnode._domainkey.example.com", "TXT", f"v=DKIM1; k=rsa; p={RSA_P}"),
        ("mailnode-20260523._domainkey.example.com", "TXT", f"v=DKIM1; k=ed25519; p={ED_P}"),
    ]


def test_a_domain_without_keys_gets_no_dkim_record() -> None:
    assert all("_domainkey" not in name for name, _, _ in _rows(dkim=[]))


def test_tracking_host_gets_a_cname() -> None:
    rows = _rows(tracking_host="Track.Example.com", tracking_target="track.mailnode.example.net.")
    assert rows[-1] == ("track.example.com", "CNAME", "track.mailnode.example.net")


def test_names_are_canonical_a_labels() -> None:
    rows = _rows(domain="Bücher.DE.", bounce_domain="bounces.bücher.de", dkim=[("s1", "rsa", RSA_P)])
    names = [name for name, _, _ in rows]
    assert names == [
        "s1._domainkey.xn--bcher-kva.de",
        "xn--bcher-kva.de",
        "_dmarc.xn--bcher-kva.de",
        "bounces.xn--bcher-kva.de",
        "bounces.xn--bcher-kva.de",
    ]
    assert "rua=mailto:dmarc-reports@xn--bcher-kva.de" in rows[2][2]


def test_every_record_says_why() -> None:
    records = records_to_publish(
        **{**BASE, "tracking_host": "t.example.com", "tracking_target": "t.example.net"}
    )
    assert all(isinstance(r, DnsRecord) and r.purpose for r in records)
    spf = next(r for r in records if r.name == "example.com")
    assert "only one" in spf.purpose  # RFC 7208 §3.2: merge, don't add a second SPF record


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bounce_domain": "Example.com"}, "must differ from the sending domain"),
        ({"tracking_host": "track.example.com"}, "both a tracking host and the target"),
        ({"tracking_target": "track.example.net"}, "both a tracking host and the target"),
        (
            {"tracking_host": "example.com", "tracking_target": "t.example.net"},
            "subdomain like track.example.com",
        ),
        ({"sending_ips": ["192.0.2.300"]}, "not an IP address"),
        ({"sending_ips": ["192.0.2.10/24"]}, "host bits"),
        ({"domain": "localhost"}, "at least two labels"),
        ({"dkim": [("bad_selector", "rsa", RSA_P)]}, "letters, digits"),
        ({"dkim": [("s1", "rsa", "not base64!")]}, "base64"),
    ],
)
def test_refuses_records_that_would_not_work(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        records_to_publish(**{**BASE, **overrides})
