"""The DNS records a sending domain publishes: DKIM keys, SPF, DMARC, the bounce MX, tracking."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mailnode.core.dkim_keys import DkimAlgorithm, canonical_domain, dkim_txt_value, validate_selector

RecordType = Literal["TXT", "MX", "CNAME"]
# RFC 5321 §5.1: with a single MX its preference value does not matter; 10 leaves room around it.
BOUNCE_MX_PREFERENCE = 10


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One record to publish: owner name (no final dot), type, value, and why it is needed.

    An MX value is "<preference> <host>"; a TXT value is the whole text, which `txt_chunks`
    splits into 255-octet strings where a DNS provider wants them.
    """

    name: str
    type: RecordType
    value: str
    purpose: str


def records_to_publish(
    *,
    domain: str,
    dkim: Sequence[tuple[str, DkimAlgorithm, str]],
    sending_ips: Sequence[str],
    bounce_domain: str,
    bounce_mx_host: str,
    tracking_host: str | None,
    tracking_target: str | None,
) -> list[DnsRecord]:
    """Every record `domain` needs to send through mailnode; `dkim` holds (selector, algorithm, p=)."""
    domain = canonical_domain(domain)
    bounce_domain = canonical_domain(bounce_domain)
    bounce_mx_host = canonical_domain(bounce_mx_host)
    if bounce_domain == domain:
        raise ValueError(
            f"bounce domain {bounce_domain} must differ from the sending domain (like bounces.{domain}): "
            f"its MX record would take over all mail to {domain}"
        )
    spf = spf_value(sending_ips, bounce_mx_host)
    return [
        *(_dkim_record(domain, *key) for key in dkim),
        DnsRecord(domain, "TXT", spf, _SPF_PURPOSE.format(domain=domain)),
        DnsRecord(f"_dmarc.{domain}", "TXT", dmarc_value(domain), _DMARC_PURPOSE),
        DnsRecord(bounce_domain, "MX", f"{BOUNCE_MX_PREFERENCE} {bounce_mx_host}", _MX_PURPOSE),
        DnsRecord(bounce_domain, "TXT", spf, _BOUNCE_SPF_PURPOSE.format(domain=bounce_domain)),
        *_tracking_records(domain, tracking_host, tracking_target),
    ]


def spf_value(sending_ips: Sequence[str], bounce_mx_host: str) -> str:
    """The SPF policy (RFC 7208) for the addresses mailnode sends from."""
    # "~all" (softfail), not "-all": some receivers act on an SPF fail before DMARC looks at the
    # DKIM signature (RFC 7489 §10.1), so "-all" would lose forwarded mail that DKIM alone
    # would have carried. DMARC's p= is the place to ask receivers to reject.
    if sending_ips:
        # ip4:/ip6: cost no DNS lookups against SPF's limit of ten (RFC 7208 §4.6.4).
        mechanisms = dict.fromkeys(_ip_mechanism(ip) for ip in sending_ips)
        return f"v=spf1 {' '.join(mechanisms)} ~all"
    # No addresses configured: mailnode sends from the box that receives its bounces (one
    # process, one host), so the bounce MX host's A/AAAA records are its sending addresses.
    # A bare "mx" or "a" would name the domain's own mailbox provider or web server instead.
    return f"v=spf1 a:{bounce_mx_host} ~all"


def dmarc_value(domain: str) -> str:
    """A first DMARC policy (RFC 7489 §6.3): monitor only, aggregate reports to the domain."""
    # p=none asks receivers to change nothing, only to report (RFC 7489 §6.3, §7.2): the owner
    # first sees in the reports that every source of their mail passes SPF or DKIM aligned,
    # then raises p to quarantine and reject. The report address is on the domain itself, so
    # no external-destination record is needed (RFC 7489 §7.1).
    return f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"


def _dkim_record(domain: str, selector: str, algorithm: DkimAlgorithm, public_key_b64: str) -> DnsRecord:
    # RFC 6376 §3.6.2.1: keys live at <selector>._domainkey.<domain>.
    name = f"{validate_selector(selector)}._domainkey.{domain}"
    purpose = f"DKIM public key for selector {selector} ({algorithm}): receivers check mailnode's signatures"
    return DnsRecord(name, "TXT", dkim_txt_value(algorithm, public_key_b64), purpose)


def _ip_mechanism(text: str) -> str:
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise ValueError(f"sending IP {text!r} is not an IP address or network: {exc}") from exc
    prefix = "ip4" if network.version == 4 else "ip6"
    # RFC 7208 §5.6: a single address is written without its prefix length.
    if network.num_addresses == 1:
        return f"{prefix}:{network.network_address}"
    return f"{prefix}:{network}"


def _tracking_records(domain: str, host: str | None, target: str | None) -> list[DnsRecord]:
    if host is None and target is None:
        return []
    if host is None or target is None:
        raise ValueError("tracking needs both a tracking host and the target its CNAME points to")
    host, target = canonical_domain(host), canonical_domain(target)
    if host == domain:
        # RFC 1034 §3.6.2: a CNAME cannot share its name with other records (the apex has SOA, NS).
        raise ValueError(f"tracking host must be a subdomain like track.{domain}, not {domain} itself")
    purpose = f"open and click tracking links on {host} reach mailnode"
    return [DnsRecord(host, "CNAME", target, purpose)]


_SPF_PURPOSE = (
    "SPF for {domain}: the addresses mailnode sends from. A domain may publish only one "
    "v=spf1 record (RFC 7208 §3.2): merge these mechanisms into an existing one"
)
_BOUNCE_SPF_PURPOSE = (
    "SPF for {domain}: mailnode's envelope sender (VERP) domain, the one SPF checks (RFC 7208 §2.4)"
)
_DMARC_PURPOSE = (
    "DMARC policy: monitoring only (p=none) with aggregate reports; keep an existing DMARC record instead"
)
_MX_PURPOSE = "bounces to the envelope sender (VERP) addresses come back to mailnode"
