"""Envelope addresses: the RFC 5321 mailboxes of MAIL FROM and RCPT TO (with RFC 6531 UTF-8)."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

# RFC 5321 §4.5.3.1.1 / §4.5.3.1.3: 64 octets of local part; a path is at most 256 octets
# including the angle brackets, which leaves 254 for the mailbox.
MAX_LOCAL_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
# RFC 1035 §2.3.4: 253 characters of host name once written in ASCII.
_MAX_DOMAIN_OCTETS = 253

# RFC 5321 §4.1.2 Atom (a Dot-string is atoms joined by "."), widened by RFC 6531 §3.3 to any
# non-ASCII character.
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")
# RFC 5321 §4.1.2 Quoted-string: qtextSMTP or a quoted-pairSMTP ("\" and a printable character).
_QUOTED_STRING = re.compile(r'"((?:[^"\\]|\\[\x20-\x7e])*)"')
# RFC 5321 §4.1.2 sub-domain (after IDNA encoding): Let-dig [Ldh-str], at most 63 octets.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AddressError(ValueError):
    """A string that is not an acceptable envelope mailbox; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    """An envelope mailbox, kept exactly as written (the local part is case-sensitive)."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def domain_ascii(self) -> str:
        """The domain as an ASCII host name: IDNA A-labels, lower-case."""
        return _idna(self.domain)


def parse_address(text: str) -> Address:
    """Parse an envelope mailbox such as "bob@example.com" (no angle brackets)."""
    _check_characters(text)
    if len(text.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise AddressError(f"address is longer than {MAX_ADDRESS_OCTETS} octets (RFC 5321 §4.5.3.1)")
    if text.startswith("@") and ":" in text:
        # RFC 5321 §4.1.2 / Appendix C: source routes are obsolete; we refuse them.
        raise AddressError("source routes (@host:mailbox) are not accepted")
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError("address has no @ (expected local-part@domain)")
    if not local:
        raise AddressError("address has an empty local part")
    if not domain:
        raise AddressError("address has an empty domain")
    _check_local(local)
    _check_domain(domain)
    return Address(local, domain)


def parse_reverse_path(text: str) -> Address | None:
    """Parse a MAIL FROM path; "" is the null reverse path (RFC 5321 §4.5.5) and gives None."""
    return None if text == "" else parse_address(text)


def _check_characters(text: str) -> None:
    if not text:
        raise AddressError("address is empty")
    for char in text:
        # Cs: lone surrogates (undecodable bytes) cannot be written back as UTF-8.
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cs"):
            raise AddressError("address contains whitespace or control characters")


def _check_local(local: str) -> None:
    if len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
        raise AddressError(f"local part is longer than {MAX_LOCAL_OCTETS} octets (RFC 5321 §4.5.3.1.1)")
    quoted = _QUOTED_STRING.fullmatch(local)
    if quoted is not None:
        content = re.sub(r"\\(.)", r"\1", quoted.group(1))
        if "@" in content:
            raise AddressError("quoted local part contains @")
    elif "@" in local:
        raise AddressError("address has more than one @")
    elif not all(_ATOM.fullmatch(atom) for atom in local.split(".")):
        raise AddressError("local part has an empty atom or a character that needs quoting")
    else:
        content = local
    # Bang paths (host!user) and the percent hack (user%host) ask us to relay onwards.
    if "!" in content or "%" in content:
        raise AddressError("bang paths and %-routed addresses are not accepted")


@functools.lru_cache(maxsize=4096)
def _idna(domain: str) -> str:
    return domain.encode("idna").decode("ascii").lower()


# Cached: the recipients of a batch share a handful of domains. (A domain that fails raises,
# and exceptions are not cached.)
@functools.lru_cache(maxsize=4096)
def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        raise AddressError("address literals ([...]) are not accepted; use a domain name")
    if ":" in domain:
        raise AddressError("source routes (@host:mailbox) are not accepted")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressError(
            "domain is not a valid host name (a label is empty, over 63 octets or not valid IDNA)"
        ) from None
    if len(ascii_domain) > _MAX_DOMAIN_OCTETS:
        raise AddressError(f"domain is longer than {_MAX_DOMAIN_OCTETS} octets")
    for label in ascii_domain.split("."):
        if not label:
            raise AddressError("domain has an empty label (two dots in a row or a trailing dot)")
        if not _LABEL.fullmatch(label):
            raise AddressError(f"domain label {label!r} is not a valid host name label")


def sender_domain_allowed(key_domain: str | None, sender_domain: str) -> bool:
    """May a key for `key_domain` send as `sender_domain` (the same domain or a parent of it)?

    A key for mail.example.com may send as example.com; a bare top-level domain ("com") is
    never a sender domain. A key without a domain may send as anyone.
    """
    if not key_domain:
        return True
    key = _ascii(key_domain)
    sender = _ascii(sender_domain)
    if key is None or sender is None:
        return False
    return key == sender or ("." in sender and key.endswith("." + sender))


def _ascii(domain: str) -> str | None:
    try:
        return domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
