"""Inbound message authentication for ingress: SPF, DKIM, ARC and DMARC, as Authentication-Results.

SPF is RFC 7208, DKIM RFC 6376, ARC RFC 8617, DMARC RFC 7489; the results header is RFC 8601.
Every DNS lookup goes through mailnode's resolver and ends before one per-message deadline.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Library choice: dkimpy (DKIM and ARC), pyspf (SPF) and authres (the RFC 8601 header) -- the
# libraries the Python mail world uses (authheaders itself wraps these three). authheaders' own
# glue is not used: it runs pyspf on the system resolver with no way to pass another, verifies only
# the first DKIM signature, and reparses its bundled public suffix list on every DMARC alignment.
# DMARC (policy discovery and alignment, RFC 7489 §3.1 and §6.6.3) is the small part written here,
# with publicsuffixlist for organizational domains: it ships the list and never fetches it at run
# time (its updater is a separate command).
import authres
import authres.arc
import authres.dmarc
import dkim
import dkim.util
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.txtbase
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from mailnode.smtp.resolvers import make_resolver

log = logging.getLogger(__name__)

# RFC 6376 §6.1: a verifier MAY limit the number of signatures it tries; each costs a DNS lookup
# and an RSA verification.
MAX_DKIM_SIGNATURES = 5
_DMARC_POLICIES = ("none", "quarantine", "reject")
# What may appear as a property value in the header: an ASCII domain (RFC 8601 §2.7: a value is a
# token). Values that come from the wire and are anything else are left out, never quoted.
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_FIELD_NAME = "Authentication-Results"
# email.feedparser's headerRE, for bytes: a field line, a continuation line, or an mbox From_ line.
_HEADER_LINE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")


@dataclass(frozen=True)
class AuthResults:
    """The outcome of the inbound checks for one message, and the header that records them."""

    spf: str  # pass | fail | softfail | neutral | none | temperror | permerror
    dkim: str  # pass | fail | none | temperror | permerror (pass: some signature verifies)
    arc: str  # pass | fail | none
    dmarc: str  # pass | fail | none | temperror | permerror
    dmarc_policy: str | None  # none | quarantine | reject, when the From domain has a record
    header: tuple[str, str]  # (name, value); the value is one unfolded line


@dataclass(frozen=True)
class _Spf:
    result: str
    identity: str  # "mailfrom" or "helo" (RFC 7208 §2.3)
    domain: str | None


@dataclass(frozen=True)
class _Signature:
    result: str  # pass | fail | temperror | permerror
    domain: str | None
    selector: str | None


@dataclass(frozen=True)
class _Dmarc:
    result: str
    policy: str | None
    from_domain: str | None


@dataclass(frozen=True)
class _DmarcRecord:
    """The parts of a DMARC policy record (RFC 7489 §6.3) that decide a result."""

    policy: str
    subdomain_policy: str
    strict_dkim: bool
    strict_spf: bool


class _TemporaryDnsError(Exception):
    """No answer now: SERVFAIL, timeout, no nameserver reachable, or the deadline has passed."""


class _Dns:
    """The lookups of one check, through one resolver, each bounded by what is left of a deadline."""

    def __init__(self, resolver: dns.resolver.Resolver, deadline: float) -> None:
        self._resolver = resolver
        self._deadline = deadline

    def query(self, name: str, rtype: str) -> list[dns.rdata.Rdata]:
        """The records of `rtype` at `name`; [] when there are none (or the name is no DNS name)."""
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError):  # names from the wire: a miss, not an error
            return []
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _TemporaryDnsError(f"deadline passed before {rtype} {name}")
        try:
            answer = self._resolver.resolve(
                qname, rtype, lifetime=remaining, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:  # timeout, no nameservers, malformed answer
            raise _TemporaryDnsError(f"{rtype} {name}: {exc.__class__.__name__}") from exc
        return list(answer.rrset or ())

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record at `name`, its character-strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(rdata.strings) for rdata in self.query(name, "TXT")]  # type: ignore[attr-defined]


class _DkimKeys:
    """dkimpy's `dnsfunc`, remembering whether the last key lookup failed or found nothing.

    dkimpy reports a DNS timeout as a plain verification failure; RFC 8601 §2.7.1 tells a key that
    could not be fetched now (temperror) from one that does not exist (permerror) and a bad
    signature (fail), so the lookup keeps that distinction here.
    """

    def __init__(self, lookups: _Dns) -> None:
        self._lookups = lookups
        self.outcome = "found"

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = self._lookups.txt(name.decode("ascii"))
        except UnicodeDecodeError:
            records = []
        except _TemporaryDnsError as exc:
            self.outcome = "temperror"
            raise dkim.DnsTimeoutError(str(exc)) from exc
        self.outcome = "found" if records else "missing"
        return records[0] if records else None


class _SpfQuery(spf.query):  # type: ignore[misc]
    """pyspf's evaluator with its lookups through our resolver.

    pyspf takes no resolver: `query.dns` calls the module global `spf.DNSLookup` (the system
    resolver). Patching that global would redirect every user of pyspf in the process, so this
    subclass overrides the one method that calls it and keeps pyspf's per-query cache and its
    void-lookup limit (RFC 7208 §4.6.4). The answer shapes are those of pyspf's dnspython driver.
    """

    def __init__(self, lookups: _Dns, client_ip: str, mail_from: str, helo: str) -> None:
        super().__init__(i=client_ip, s=mail_from, h=helo)
        self._lookups = lookups

    def dns(self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False) -> list[object]:
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        key = (name, qtype)
        if key not in self.cache:
            try:
                self.cache[key] = [_spf_value(r) for r in self._lookups.query(name, qtype)]
            except _TemporaryDnsError as exc:
                raise spf.TempError(f"DNS {exc}") from exc
        result: list[object] = self.cache[key]
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _spf_value(rdata: dns.rdata.Rdata) -> object:
    """One answer in the form pyspf's code expects from its dnspython driver."""
    if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return rdata.address
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if isinstance(rdata, dns.rdtypes.txtbase.TXTBase):  # TXT and type 99 SPF
        return rdata.strings
    if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR):
        return rdata.target.to_text(omit_final_dot=True)
    return None


class InboundChecker:
    """Runs SPF, DKIM, ARC and DMARC for messages received on ingress."""

    def __init__(
        self, *, authserv_id: str, nameservers: Sequence[tuple[str, int]] = (), timeout: float = 5.0
    ) -> None:
        # Empty nameservers: the system resolver (/etc/resolv.conf). `timeout` bounds a whole check.
        self.authserv_id = authserv_id
        self._timeout = timeout
        self._resolver = make_resolver(nameservers, kind="sync")
        self._suffixes = _public_suffix_list()  # parsed once (~0.1 s), not on the first message

    async def check(
        self, message: bytes, *, client_ip: str | None, helo: str | None, mail_from: str
    ) -> AuthResults:
        """Authenticate one received message; failures to get answers in time become temperror."""
        # The checks block on DNS and spend CPU on RSA and hashing: a worker thread runs them. The
        # lookups stop at 3/4 of the budget because dnspython sleeps between rounds of retries even
        # when the lifetime is spent (0.1 s after the first, doubling), so the thread normally
        # reports on its own; the outer wait is the backstop for a thread that overruns.
        deadline = time.monotonic() + self._timeout * 0.75
        work = asyncio.to_thread(self._check, message, client_ip, helo, mail_from, deadline)
        try:
            return await asyncio.wait_for(work, self._timeout)
        except TimeoutError:
            log.warning("authentication checks exceeded %.1f s; recorded as temperror", self._timeout)
            return self._results(
                _Spf("temperror", "mailfrom" if mail_from else "helo", None),
                [_Signature("temperror", None, None)],
                "none",  # RFC 8617 has no temperror for arc
                _Dmarc("temperror", None, None),
            )

    def _check(
        self, message: bytes, client_ip: str | None, helo: str | None, mail_from: str, deadline: float
    ) -> AuthResults:
        lookups = _Dns(self._resolver, deadline)
        spf_result = _check_spf(lookups, client_ip, helo, mail_from)
        signatures = _check_dkim(lookups, message)
        arc = _check_arc(lookups, message)
        dmarc = self._check_dmarc(lookups, message, spf_result, signatures)
        return self._results(spf_result, signatures, arc, dmarc)

    def _check_dmarc(
        self, lookups: _Dns, message: bytes, spf_result: _Spf, signatures: list[_Signature]
    ) -> _Dmarc:
        from_domain = _author_domain(message)
        if from_domain is None:
            return _Dmarc("permerror", None, None)  # RFC 7489 §6.6.1: not exactly one author domain
        try:
            found = _find_dmarc_record(lookups, from_domain, self._org_domain)
        except _TemporaryDnsError:
            return _Dmarc("temperror", None, from_domain)
        if found is None:
            return _Dmarc("none", None, from_domain)
        record, at_org_domain = found
        policy = record.subdomain_policy if at_org_domain else record.policy
        spf_pass = [spf_result.domain] if spf_result.result == "pass" and spf_result.domain else []
        dkim_pass = [s.domain for s in signatures if s.result == "pass" and s.domain]
        aligned = any(self._aligned(from_domain, d, record.strict_spf) for d in spf_pass) or any(
            self._aligned(from_domain, d, record.strict_dkim) for d in dkim_pass
        )
        if aligned:
            return _Dmarc("pass", policy, from_domain)
        # A check that could not be answered now might have passed: a policy of reject must not
        # turn a DNS hiccup into a permanent refusal, so the result is temperror (RFC 8601 §2.7.1).
        if spf_result.result == "temperror" or any(s.result == "temperror" for s in signatures):
            return _Dmarc("temperror", policy, from_domain)
        return _Dmarc("fail", policy, from_domain)

    def _org_domain(self, domain: str) -> str:
        """The organizational domain (RFC 7489 §3.2): one label below the public suffix."""
        return self._suffixes.privatesuffix(domain) or domain

    def _aligned(self, from_domain: str, domain: str, strict: bool) -> bool:
        """Identifier alignment (RFC 7489 §3.1): equal (strict) or same organizational domain."""
        domain = domain.rstrip(".").lower()
        if strict:
            return domain == from_domain
        return self._org_domain(domain) == self._org_domain(from_domain)

    def _results(
        self, spf_result: _Spf, signatures: list[_Signature], arc: str, dmarc: _Dmarc
    ) -> AuthResults:
        dkim_result = _summarize_dkim(signatures)
        value = _results_header_value(self.authserv_id, spf_result, signatures, arc, dmarc)
        return AuthResults(
            spf=spf_result.result,
            dkim=dkim_result,
            arc=arc,
            dmarc=dmarc.result,
            dmarc_policy=dmarc.policy,
            header=(_FIELD_NAME, value),
        )


@functools.lru_cache(maxsize=1)
def _public_suffix_list() -> PublicSuffixList:
    """The public suffix list bundled with publicsuffixlist (read-only once parsed)."""
    return PublicSuffixList()


def _check_spf(lookups: _Dns, client_ip: str | None, helo: str | None, mail_from: str) -> _Spf:
    """SPF for the MAIL FROM identity, or the HELO identity for a null sender (RFC 7208 §2.3)."""
    identity = "mailfrom" if mail_from else "helo"
    helo = (helo or "").strip()
    domain = mail_from.rpartition("@")[2] if "@" in mail_from else helo
    domain = domain.rstrip(".").lower()
    if client_ip is None or not _is_ip(client_ip) or not domain:
        return _Spf("none", identity, domain or None)
    try:
        result, _code, _explanation = _SpfQuery(lookups, client_ip, mail_from, helo).check()
    except Exception:  # pyspf turns DNS and record errors into results; anything else is a bug
        log.warning("SPF evaluation failed for %s", domain, exc_info=True)
        result = "permerror"
    return _Spf(str(result), identity, domain)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_dkim(lookups: _Dns, message: bytes) -> list[_Signature]:
    """One result per DKIM-Signature, topmost first, at most MAX_DKIM_SIGNATURES of them."""
    try:
        verifier = dkim.DKIM(message)
    except dkim.DKIMException:
        return []
    fields = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    return [
        _verify_signature(verifier, lookups, index, value)
        for index, value in enumerate(fields[:MAX_DKIM_SIGNATURES])
    ]


def _verify_signature(verifier: dkim.DKIM, lookups: _Dns, index: int, value: bytes) -> _Signature:
    try:
        tags = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return _Signature("permerror", None, None)
    domain, selector = _tag(tags, b"d"), _tag(tags, b"s")
    try:
        dkim.validate_signature_fields(tags)
    except dkim.DKIMException:  # RFC 6376 §6.1.1: missing or malformed tags, expired
        return _Signature("permerror", domain, selector)
    keys = _DkimKeys(lookups)
    try:
        verified = verifier.verify(idx=index, dnsfunc=keys)
    except dkim.ValidationError:  # the fields are valid, so: the body hash does not match
        return _Signature("fail", domain, selector)
    except dkim.DKIMException:  # malformed key record, canonicalization or message
        return _Signature("permerror", domain, selector)
    except Exception:  # dkimpy fails in other ways on some malformed input: count it as such
        log.warning("DKIM verification of signature %d failed unexpectedly", index, exc_info=True)
        return _Signature("permerror", domain, selector)
    if verified:
        return _Signature("pass", domain, selector)
    if keys.outcome == "temperror":
        return _Signature("temperror", domain, selector)
    if keys.outcome == "missing":  # RFC 6376 §6.1.2: no key record is a PERMFAIL
        return _Signature("permerror", domain, selector)
    return _Signature("fail", domain, selector)


def _tag(tags: dict[bytes, bytes], name: bytes) -> str | None:
    value = tags.get(name, b"").decode("ascii", "replace").strip().rstrip(".").lower()
    return value or None


def _summarize_dkim(signatures: list[_Signature]) -> str:
    """pass when any signature verifies, aligned or not (DMARC judges alignment); else the worst."""
    results = {s.result for s in signatures}
    for result in ("pass", "temperror", "fail", "permerror"):
        if result in results:
            return result
    return "none"


def _check_arc(lookups: _Dns, message: bytes) -> str:
    """The ARC chain validation status (RFC 8617 §5.2): pass, fail or none."""
    try:
        status, _sets, _reason = dkim.ARC(message).verify(dnsfunc=_DkimKeys(lookups))
    except dkim.DKIMException:
        return "fail"
    except Exception:
        log.warning("ARC validation failed unexpectedly", exc_info=True)
        return "fail"
    if status is None:  # an earlier sealer reported cv=fail: the chain is terminated
        return "fail"
    text = status.decode("ascii")
    return text if text in ("pass", "fail", "none") else "fail"


def _author_domain(message: bytes) -> str | None:
    """The RFC5322.From domain, when there is exactly one From field with one address."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    fields = headers.get_all("From") or []
    if len(fields) != 1:
        return None
    addresses = [a for _name, a in email.utils.getaddresses([str(fields[0])]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].rstrip(".").lower()
    return domain if _DOMAIN.match(domain) else None


def _find_dmarc_record(
    lookups: _Dns, from_domain: str, org_domain: Callable[[str], str]
) -> tuple[_DmarcRecord, bool] | None:
    """Policy discovery (RFC 7489 §6.6.3): the From domain's record, else its organization's.

    Returns the record and whether it came from the organizational domain.
    """
    record = _parse_dmarc_records(lookups.txt(f"_dmarc.{from_domain}"))
    if record is not None:
        return record, False
    organization = org_domain(from_domain)
    if organization == from_domain:
        return None
    record = _parse_dmarc_records(lookups.txt(f"_dmarc.{organization}"))
    return (record, True) if record is not None else None


def _parse_dmarc_records(texts: list[bytes]) -> _DmarcRecord | None:
    """The one DMARC record among a name's TXT records, or None (RFC 7489 §6.6.3 steps 3-6)."""
    candidates = [t for t in texts if re.match(rb"\s*v\s*=\s*DMARC1\s*(;|$)", t)]
    if len(candidates) != 1:
        return None  # none, or several: no DMARC processing
    tags: dict[str, str] = {}
    for part in candidates[0].decode("ascii", "replace").split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    policy = tags.get("p")
    if policy not in _DMARC_POLICIES:
        # Step 6: without a valid p, a record with a reporting address acts as p=none.
        if "rua" not in tags:
            return None
        policy = "none"
    subdomain_policy = tags.get("sp")
    return _DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain_policy if subdomain_policy in _DMARC_POLICIES else policy,
        strict_dkim=tags.get("adkim") == "s",
        strict_spf=tags.get("aspf") == "s",
    )


def _results_header_value(
    authserv_id: str, spf_result: _Spf, signatures: list[_Signature], arc: str, dmarc: _Dmarc
) -> str:
    """The Authentication-Results value (RFC 8601 §2.2): one resinfo per method and signature."""
    # RFC 8601 §2.7.2: smtp.mailfrom carries the domain (no local part), smtp.helo the HELO name.
    identity = _safe(spf_result.domain)
    clauses: list[authres.core.AuthenticationResult] = [
        authres.SPFAuthenticationResult(
            result=spf_result.result,
            smtp_mailfrom=identity if spf_result.identity == "mailfrom" else None,
            smtp_helo=identity if spf_result.identity == "helo" else None,
        )
    ]
    for signature in signatures or [_Signature("none", None, None)]:
        clauses.append(
            authres.DKIMAuthenticationResult(
                result=signature.result,
                header_d=_safe(signature.domain),
                header_s=_safe(signature.selector),
            )
        )
    clauses.append(authres.arc.ARCAuthenticationResult(result=arc))
    clauses.append(
        authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result,
            result_comment=f"p={dmarc.policy}" if dmarc.policy else None,
            header_from=_safe(dmarc.from_domain),
        )
    )
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=clauses)
    return str(header.header_value())


def _safe(value: str | None) -> str | None:
    return value if value and _DOMAIN.match(value) else None


def strip_forged_results(message: bytes, authserv_id: str) -> bytes:
    """Remove Authentication-Results fields that carry our authserv-id (RFC 8601 §5).

    Only the header section is looked at; every other byte is kept as it was.
    """
    ours = authserv_id.strip().lower()
    kept: list[bytes] = []
    fields, body = _split_fields(message)
    for field in fields:
        if not (field[:22].lower() == b"authentication-results" and _authserv_id(field) == ours):
            kept.append(field)
    return b"".join(kept) + body


def _split_fields(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields as raw bytes (each with its folded lines, RFC 5322 §2.2.3), and the rest.

    Where the header section ends follows the stdlib parser (email.feedparser), so the fields seen
    here are the ones a reader built on it would see.
    """
    fields: list[bytes] = []
    position = 0
    for line in message.splitlines(keepends=True):
        if line in (b"\r\n", b"\n", b"\r") or not _HEADER_LINE.match(line):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        position += len(line)
    return fields, message[position:]


def _authserv_id(field: bytes) -> str | None:
    """The authserv-id of one raw Authentication-Results field, as the stdlib parser reads it."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(field)
    items = parsed.items()
    if len(items) != 1 or items[0][0].strip().lower() != _FIELD_NAME.lower():
        return None
    # RFC 8601 §2.2: the authserv-id is the first value, after optional CFWS.
    token = re.match(r'"([^"]*)"|[^\s;()]+', _skip_cfws(str(items[0][1])))
    if token is None:
        return None
    return (token.group(1) if token.group(1) is not None else token.group(0)).strip().lower()


def _skip_cfws(value: str) -> str:
    """`value` without its leading whitespace and comments (RFC 5322 §3.2.2: comments nest)."""
    depth, escaped = 0, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif depth and char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
        elif depth and char == ")":
            depth -= 1
        elif not depth and char not in " \t\r\n":
            return value[index:]
    return ""
