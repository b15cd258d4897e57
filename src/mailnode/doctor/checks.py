"""The doctor's decisions: given what DNS answered (and the certificate), pass, warn or fail.

No I/O here: `mailnode.doctor.diagnose` asks DNS and reads files, these functions judge.
The records proposed are those `core.dns_records` computes for `GET /v1/domains/{d}/dns`.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import spf
from cryptography import x509
from cryptography.x509.oid import NameOID

from mailnode.core.dkim_keys import DkimAlgorithm, dkim_txt_value
from mailnode.core.dns_records import BOUNCE_MX_PREFERENCE, dmarc_value, spf_value
from mailnode.doctor.report import SERVER, Check, Record, Status

# A certificate expiring sooner than this is a warning: renewal (certbot runs at 30 days) failed.
EXPIRY_WARN_DAYS = 14
# RFC 7208 §4.6.4 caps an SPF check at 10 lookup terms; each round below resolves one level.
MAX_SPF_ROUNDS = 25
# RFC 7208 §4.6.4: at most 10 PTR names are followed; the same bound applies here.
MAX_PTR_NAMES = 10
_LOCAL_NAMES = ("localhost", "localhost.localdomain")

LookupKey = tuple[str, str]  # (name, type), the name in lower case without its final dot


@dataclass(frozen=True, slots=True)
class Answer:
    """What DNS said for one name and type.

    `records` hold text: TXT strings joined, MX as "<preference> <host>" ("." for a null MX),
    A/AAAA addresses, PTR names; names in lower case without the final dot. `failure` is set
    when there was no usable answer (DNS unreachable, SERVFAIL): the line to print.
    """

    records: tuple[str, ...] = ()
    nxdomain: bool = False
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class DkimKey:
    """The active (signing) key of a domain, as its DNS record must show it."""

    selector: str
    algorithm: DkimAlgorithm
    public_key_b64: str


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What the checks need from the leaf certificate of `[tls] cert_file`."""

    not_before: float
    not_after: float
    names: tuple[str, ...]  # subjectAltName DNS names (the CN only when there is no SAN)
    self_signed: bool


def lookup_key(name: str, rtype: str) -> LookupKey:
    return (name.strip().rstrip(".").lower(), rtype.upper())


def _failed(scope: str, name: str, answer: Answer) -> Check | None:
    if answer.failure is None:
        return None
    return Check(scope, name, Status.FAIL, answer.failure)


# -- bounce domain MX ---------------------------------------------------------------------------


def bounce_mx_record(bounce_domain: str, mx_host: str) -> Record:
    return Record(bounce_domain, "MX", f"{BOUNCE_MX_PREFERENCE} {mx_host}")


def check_bounce_mx(scope: str, answer: Answer, bounce_domain: str, mx_host: str) -> Check:
    """The bounce domain's MX names this server, so bounces to VERP return paths come back."""
    name = "bounce-mx"
    failed = _failed(scope, name, answer)
    if failed is not None:
        return failed
    expected = bounce_mx_record(bounce_domain, mx_host)
    hosts = [record.partition(" ")[2] for record in answer.records]
    if mx_host.lower() in hosts:
        return Check(scope, name, Status.PASS, f"MX of {bounce_domain} is {mx_host}")
    if not hosts:
        why = "does not exist" if answer.nxdomain else "has no MX record"
        detail = f"{bounce_domain} {why}: bounces to mailnode's return paths cannot come back"
        return Check(scope, name, Status.FAIL, detail, expected)
    shown = ", ".join("(null MX)" if host == "." else host for host in hosts)
    detail = f"MX of {bounce_domain} points at {shown}, not at this server ({mx_host})"
    return Check(scope, name, Status.FAIL, detail, expected)


# -- DKIM ---------------------------------------------------------------------------------------


def dkim_record(domain: str, key: DkimKey) -> Record:
    # RFC 6376 §3.6.2.1: keys live at <selector>._domainkey.<domain>.
    name = f"{key.selector}._domainkey.{domain}"
    return Record(name, "TXT", dkim_txt_value(key.algorithm, key.public_key_b64))


def tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2) as a dict, names lower case; later tags do not override."""
    found: dict[str, str] = {}
    for part in text.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            found.setdefault(tag.strip().lower(), value.strip())
    return found


def check_dkim(domain: str, answer: Answer, key: DkimKey | None) -> Check:
    """The TXT record at the active selector carries the active key's public half."""
    name = "dkim"
    if key is None:
        detail = f"{domain} has no DKIM key; make one with `mailnode domain rotate-dkim {domain}`"
        return Check(domain, name, Status.FAIL, detail)
    failed = _failed(domain, name, answer)
    if failed is not None:
        return failed
    expected = dkim_record(domain, key)
    published = [tags(text) for text in answer.records]
    published = [t for t in published if "p" in t or t.get("v", "").upper() == "DKIM1"]
    if not published:
        detail = f"no DKIM key at {expected.name}: receivers cannot verify mailnode's signatures"
        return Check(domain, name, Status.FAIL, detail, expected)
    # RFC 6376 §3.6.1: whitespace may fold the base64 of p=; k= defaults to rsa.
    matches = [
        t
        for t in published
        if "".join(t.get("p", "").split()) == key.public_key_b64
        and t.get("k", "rsa").lower() == key.algorithm
    ]
    if not matches:
        revoked = all(not t.get("p") for t in published)
        what = "a revoked key (empty p=)" if revoked else "a different key"
        detail = f"{expected.name} publishes {what}, not the active key: signatures will fail"
        return Check(domain, name, Status.FAIL, detail, expected)
    if len(published) > 1:
        detail = f"{expected.name} has {len(published)} DKIM records; verifiers may pick the wrong one"
        return Check(domain, name, Status.WARN, detail, expected)
    detail = f"{expected.name} publishes the active key ({key.algorithm})"
    return Check(domain, name, Status.PASS, detail)


# -- DMARC --------------------------------------------------------------------------------------


def check_dmarc(domain: str, answer: Answer) -> Check:
    """A DMARC policy record exists at _dmarc.<domain> (RFC 7489 §6.1)."""
    name = "dmarc"
    failed = _failed(domain, name, answer)
    if failed is not None:
        return failed
    expected = Record(f"_dmarc.{domain}", "TXT", dmarc_value(domain))
    # RFC 7489 §6.4: v=DMARC1 must come first; other TXT records at the name are ignored.
    policies = [tags(text) for text in answer.records if text.lstrip().upper().startswith("V=DMARC1")]
    if not policies:
        detail = f"no DMARC record at {expected.name}: receivers get no policy, the owner no reports"
        return Check(domain, name, Status.FAIL, detail, expected)
    if len(policies) > 1:
        # RFC 7489 §6.6.3: more than one record means no policy at all.
        detail = f"{expected.name} has {len(policies)} DMARC records; receivers ignore them all"
        return Check(domain, name, Status.FAIL, detail, expected)
    policy = policies[0].get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        detail = f"the DMARC record at {expected.name} has no valid p= (none, quarantine or reject)"
        return Check(domain, name, Status.FAIL, detail, expected)
    return Check(domain, name, Status.PASS, f"{expected.name} publishes p={policy}")


# -- SPF ----------------------------------------------------------------------------------------


class _SpfOverAnswers(spf.query):  # type: ignore[misc]
    """pyspf's evaluator reading answers already fetched; it notes the lookups it lacks.

    pyspf asks one name at a time as it walks include:, a, mx and redirect=. Missing answers
    count as empty here; the caller fetches what `missing` lists and evaluates again until
    nothing is missing, so the verdict comes from pyspf over real answers only.
    """

    def __init__(self, answers: Mapping[LookupKey, Answer], ip: str, domain: str, helo: str) -> None:
        super().__init__(i=ip, s=f"postmaster@{domain}", h=helo)
        self._answers = answers
        self.missing: set[LookupKey] = set()
        self.failure: str | None = None

    def dns(self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False) -> list[object]:
        key = lookup_key(str(name), qtype)
        answer = self._answers.get(key)
        if answer is None:
            self.missing.add(key)
            return []
        if answer.failure is not None:
            self.failure = answer.failure
            return []
        return [_spf_value(key[1], text) for text in answer.records]


def _spf_value(rtype: str, text: str) -> object:
    """One answer in the shape pyspf's own dnspython driver gives it."""
    if rtype in ("TXT", "SPF"):
        return (text.encode(),)
    if rtype == "MX":
        preference, _, host = text.partition(" ")
        return (int(preference), host)
    return text


def _spf_record(answer: Answer | None) -> list[str]:
    records = answer.records if answer is not None else ()
    return [text for text in records if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")]


def merged_spf(existing: str, mechanisms: Iterable[str]) -> str:
    """`existing` with `mechanisms` added before its final all / redirect= term (RFC 7208 §5.1)."""
    terms = existing.split()
    missing = [m for m in dict.fromkeys(mechanisms) if m.lower() not in (t.lower() for t in terms)]
    end = next(
        (
            i
            for i, t in enumerate(terms)
            if t.lstrip("+-~?").lower() == "all" or t.lower().startswith("redirect=")
        ),
        len(terms),
    )
    return " ".join([*terms[:end], *missing, *terms[end:]])


def _ends_evaluation(term: str) -> bool:
    return term.lstrip("+-~?").lower() == "all" or term.lower().startswith("redirect=")


def check_spf(
    scope: str,
    name: str,
    domain: str,
    *,
    sending_ips: Sequence[str],
    mx_host: str,
    answers: Mapping[LookupKey, Answer],
) -> Check | set[LookupKey]:
    """SPF of `domain` passes for every sending address, or the lookups still needed to tell."""
    txt = answers.get(lookup_key(domain, "TXT"))
    if txt is None:
        return {lookup_key(domain, "TXT")}
    failed = _failed(scope, name, txt)
    if failed is not None:
        return failed
    expected = Record(domain, "TXT", spf_value(sending_ips, mx_host))
    published = _spf_record(txt)
    if not published:
        return Check(scope, name, Status.FAIL, f"{domain} has no SPF record", expected)
    if len(published) > 1:
        # RFC 7208 §4.5: two v=spf1 records make every check a permerror.
        detail = f"{domain} has {len(published)} SPF records (permerror: receivers use none); keep one"
        return Check(scope, name, Status.FAIL, detail, expected)
    if not sending_ips:
        detail = (
            f"{domain} has an SPF record, but this server's public address is unknown: "
            "set [platform] sending_ips to check that it is included"
        )
        return Check(scope, name, Status.WARN, detail)
    return _spf_verdict(scope, name, domain, sending_ips, mx_host, answers, published[0])


def _spf_verdict(
    scope: str,
    name: str,
    domain: str,
    sending_ips: Sequence[str],
    mx_host: str,
    answers: Mapping[LookupKey, Answer],
    published: str,
) -> Check | set[LookupKey]:
    results: dict[str, str] = {}
    missing: set[LookupKey] = set()
    for ip in sending_ips:
        query = _SpfOverAnswers(answers, ip, domain, mx_host)
        result, _code, explanation = query.check()
        if query.failure is not None:
            return Check(scope, name, Status.FAIL, query.failure)
        missing |= query.missing
        results[ip] = result if result != "permerror" else f"permerror: {explanation}"
    if missing:
        return missing
    outside = [ip for ip, result in results.items() if result != "pass"]
    if not outside:
        return Check(scope, name, Status.PASS, f"SPF of {domain} includes {', '.join(sending_ips)}")
    # spf_value with the addresses only: ip4:/ip6: mechanisms, the ones to merge in.
    mechanisms = spf_value(outside, mx_host).split()[1:-1]
    record = Record(domain, "TXT", merged_spf(published, mechanisms))
    shown = ", ".join(f"{ip} (SPF result: {results[ip]})" for ip in outside)
    return Check(scope, name, Status.FAIL, f"SPF of {domain} does not include {shown}", record)


# -- reverse DNS --------------------------------------------------------------------------------


def reverse_name(ip: str) -> str:
    """The PTR owner name of an address (RFC 1035 §3.5, RFC 3596 §2.5)."""
    return ipaddress.ip_address(ip).reverse_pointer


def check_ptr(ip: str, answer: Answer, hostname: str) -> Check:
    """The sending address has a PTR record, ideally naming the greeting hostname."""
    name = "ptr"
    failed = _failed(SERVER, name, answer)
    if failed is not None:
        return failed
    expected = Record(reverse_name(ip), "PTR", hostname)
    if not answer.records:
        detail = (
            f"{ip} has no PTR record; many receivers refuse such mail. "
            f"Ask whoever runs {ip} (the hosting provider) to set it"
        )
        return Check(SERVER, name, Status.FAIL, detail, expected)
    if hostname.lower() not in answer.records:
        detail = f"PTR of {ip} is {', '.join(answer.records)}, not the greeting hostname {hostname}"
        return Check(SERVER, name, Status.WARN, detail, expected)
    return Check(SERVER, name, Status.PASS, f"PTR of {ip} is {hostname}")


def check_forward(ip: str, names: Sequence[str], addresses: Mapping[str, Sequence[Answer]]) -> Check:
    """Forward confirmation: some PTR name of `ip` resolves back to `ip` (FCrDNS)."""
    name = "ptr-forward"
    wanted = ipaddress.ip_address(ip)
    for ptr_name in names[:MAX_PTR_NAMES]:
        for answer in addresses.get(ptr_name, ()):
            failed = _failed(SERVER, name, answer)
            if failed is not None:
                return failed
            if wanted in {ipaddress.ip_address(a) for a in answer.records}:
                return Check(SERVER, name, Status.PASS, f"{ptr_name} resolves back to {ip}")
    rtype = "A" if wanted.version == 4 else "AAAA"
    record = Record(names[0], rtype, ip) if names else None
    detail = f"{' or '.join(names[:MAX_PTR_NAMES])} does not resolve back to {ip}: the PTR is not trusted"
    return Check(SERVER, name, Status.FAIL, detail, record)


# -- greeting hostname --------------------------------------------------------------------------


def hostname_problem(hostname: str) -> str | None:
    """Why `hostname` cannot name this server on the Internet, or None."""
    text = hostname.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return f"the greeting hostname {hostname!r} is an address, not a name"
    if text in _LOCAL_NAMES or text.endswith(".localhost") or "." not in text:
        return f"the greeting hostname is {hostname!r}, which names no server on the Internet"
    return None


def check_hostname(hostname: str, answers: Sequence[Answer], sending_ips: Sequence[str]) -> Check:
    """The name in the greeting and EHLO is public and resolves (to the sending address)."""
    name = "hostname"
    problem = hostname_problem(hostname)
    if problem is not None:
        detail = f"{problem}: set hostname (or [smtp] hostname) to this server's public DNS name"
        return Check(SERVER, name, Status.FAIL, detail)
    for answer in answers:
        failed = _failed(SERVER, name, answer)
        if failed is not None:
            return failed
    found = [ipaddress.ip_address(text) for answer in answers for text in answer.records]
    record = _address_record(hostname, sending_ips)
    if not found:
        how = "" if record else " (an A or AAAA record with this server's public address)"
        detail = f"{hostname} does not resolve; receivers check the greeting name{how}"
        return Check(SERVER, name, Status.FAIL, detail, record)
    shown = ", ".join(str(address) for address in found)
    sending = {ipaddress.ip_address(ip) for ip in sending_ips}
    if sending and not sending & set(found):
        detail = f"{hostname} resolves to {shown}, not to the sending address {', '.join(sending_ips)}"
        return Check(SERVER, name, Status.WARN, detail, record)
    return Check(SERVER, name, Status.PASS, f"{hostname} resolves to {shown}")


def _address_record(hostname: str, sending_ips: Sequence[str]) -> Record | None:
    if not sending_ips:
        return None
    ip = sending_ips[0]
    return Record(hostname, "A" if ipaddress.ip_address(ip).version == 4 else "AAAA", ip)


# -- TLS certificate ----------------------------------------------------------------------------


def certificate_facts(pem: bytes) -> CertificateFacts:
    """The leaf (first) certificate of a PEM chain; ValueError when there is none."""
    leaf = x509.load_pem_x509_certificates(pem)[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        # RFC 6125 §6.4.4: the CN counts only when there is no subjectAltName.
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return CertificateFacts(
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        names=tuple(n.lower() for n in names),
        self_signed=leaf.issuer == leaf.subject,
    )


def name_covered(hostname: str, names: Iterable[str]) -> bool:
    """`hostname` matches a name or a wildcard of exactly one left-most label (RFC 6125 §6.4.3)."""
    host = hostname.rstrip(".").lower()
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and host.count(".") >= 2 and host.partition(".")[2] == name[2:]:
            return True
    return False


def check_certificate(cert_file: str, facts: CertificateFacts | str, hostname: str, now: float) -> Check:
    """`[tls] cert_file` is valid now, not about to expire, and covers the greeting hostname."""
    name = "tls"
    if isinstance(facts, str):
        return Check(SERVER, name, Status.FAIL, f"tls.cert_file {cert_file}: {facts}")
    until = _day(facts.not_after)
    if now < facts.not_before:
        detail = f"{cert_file} is not valid before {_day(facts.not_before)}"
        return Check(SERVER, name, Status.FAIL, detail)
    if now >= facts.not_after:
        detail = f"{cert_file} expired on {until}: clients refuse TLS; renew it"
        return Check(SERVER, name, Status.FAIL, detail)
    if not name_covered(hostname, facts.names):
        detail = f"{cert_file} is for {', '.join(facts.names) or 'no name'}, not the hostname {hostname}"
        return Check(SERVER, name, Status.FAIL, detail)
    days = int((facts.not_after - now) // 86400)
    if days < EXPIRY_WARN_DAYS:
        detail = f"{cert_file} expires on {until}, in {days} days: renew it now"
        return Check(SERVER, name, Status.WARN, detail)
    if facts.self_signed:
        detail = f"{cert_file} is self-signed: submission clients will not trust it"
        return Check(SERVER, name, Status.WARN, detail)
    return Check(SERVER, name, Status.PASS, f"{cert_file} covers {hostname}, valid until {until}")


def check_no_certificate() -> Check:
    detail = (
        "no tls.cert_file: mailnode serves a self-signed development certificate that clients "
        "do not trust; set [tls] cert_file and key_file"
    )
    return Check(SERVER, "tls", Status.WARN, detail)


def _day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")
