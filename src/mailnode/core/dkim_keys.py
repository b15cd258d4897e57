"""DKIM keys and the names they live under: key pairs, selectors, TXT values, domain names."""

from __future__ import annotations

import base64
import datetime
import encodings.idna
import functools
import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailnode.errors import MailnodeError

DkimAlgorithm = Literal["rsa", "ed25519"]
ALGORITHMS: tuple[DkimAlgorithm, ...] = ("rsa", "ed25519")

# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048.
# RFC 6376 §3.3.3: verifiers need only handle keys up to 2048 bits; beyond 4096 few do.
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 4096
DEFAULT_SELECTOR = "mailnode"
# RFC 1035 §3.3: a TXT record is a sequence of <character-string>s of at most 255 octets each.
TXT_STRING_OCTETS = 255
# RFC 1035 §2.3.4: 63 octets per label, 253 characters for a name written without its final dot.
_MAX_LABEL = 63
_MAX_NAME = 253
# RFC 5321 §4.1.2 sub-domain after IDNA encoding: Let-dig [Ldh-str].
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# RFC 3490 §3.1: the ideographic and full-width full stops separate labels like ".".
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
# IDNA 2003 (the stdlib codec) maps these away, IDNA 2008 / UTS #46 keeps them: "faß.de" would
# name a different domain than the one a browser or a registrar means (RFC 5895, UTS #46 §4.1.1).
_DEVIATIONS = {"\u00df": "ß", "\u03c2": "ς", "\u200c": "ZWNJ", "\u200d": "ZWJ"}


class DomainNameError(MailnodeError, ValueError):
    """A domain name or selector that cannot be used in DNS; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class DkimKeyPair:
    """A new DKIM key: the private half for signing, the public half for the DNS record."""

    algorithm: DkimAlgorithm
    private_key_pem: bytes = field(repr=False)  # never in logs or tracebacks
    public_key_b64: str


def generate_dkim_key(algorithm: DkimAlgorithm, *, rsa_bits: int = 2048) -> DkimKeyPair:
    """A fresh key pair; the private key is unencrypted PKCS#8 PEM."""
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        if not MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
            raise ValueError(f"rsa_bits must be between {MIN_RSA_BITS} and {MAX_RSA_BITS}, got {rsa_bits}")
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    elif algorithm == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"DKIM algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return DkimKeyPair(algorithm, pem, public_key_b64(private_key))


def public_key_b64(private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The `p=` value of the DKIM record for a private key."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        # RFC 6376 §3.6.1: the DER SubjectPublicKeyInfo, as `openssl rsa -pubout` writes it.
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        # RFC 8463 §4.2: the bare 32-byte Ed25519 public key, no ASN.1 wrapping.
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return base64.b64encode(raw).decode("ascii")


def dkim_txt_value(algorithm: DkimAlgorithm, public_key_b64: str) -> str:
    """The TXT value published at `<selector>._domainkey.<domain>` (RFC 6376 §3.6.1)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"DKIM algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", public_key_b64):
        raise ValueError("public key must be base64 text without whitespace")
    return f"v=DKIM1; k={algorithm}; p={public_key_b64}"


def txt_chunks(value: str, size: int = TXT_STRING_OCTETS) -> list[str]:
    """Split a TXT value into strings of at most `size` octets; DKIM joins them back (RFC 6376 §3.6.2.2)."""
    if not value.isascii():
        raise ValueError("TXT value must be ASCII")
    if not 1 <= size <= TXT_STRING_OCTETS:
        raise ValueError(f"TXT strings hold 1 to {TXT_STRING_OCTETS} octets, got {size}")
    return [value[start : start + size] for start in range(0, len(value), size)] or [""]


def validate_selector(selector: str) -> str:
    """The selector in lower case, if it is one or more LDH labels (RFC 6376 §3.1)."""
    text = selector.strip().lower()
    if not text:
        raise DomainNameError("DKIM selector is empty; use a name like mailnode or s2026")
    for label in text.split("."):
        _check_ldh_label(label, f"DKIM selector {selector!r}")
    # Room for "._domainkey." and a short domain within the 253 characters of a name.
    if len(text) > _MAX_NAME - len("._domainkey.a.bc"):
        raise DomainNameError(f"DKIM selector {selector!r} is too long for a DNS name")
    return text


def new_selector(existing: Collection[str], base: str = DEFAULT_SELECTOR, *, today: datetime.date) -> str:
    """A selector not in `existing`: `base` first, then `base-YYYYMMDD`, `-2`, `-3` … for rotations.

    `existing` should hold every selector the domain has used, retired ones included:
    resolvers may still cache a retired key's record, so reusing its name breaks signatures.
    """
    base = validate_selector(base)
    taken = {name.lower() for name in existing}
    candidates = [base, f"{base}-{today:%Y%m%d}"]
    candidates += (f"{candidates[1]}-{n}" for n in range(2, len(taken) + 3))
    chosen = next(name for name in candidates if name not in taken)
    return validate_selector(chosen)


# Cached: a batch signs thousands of VERP addresses on one bounce domain.
@functools.lru_cache(maxsize=1024)
def canonical_domain(name: str) -> str:
    """The domain in lower-case A-labels without a final dot; raises DomainNameError."""
    text = name.strip().lower()
    text = text.removesuffix(".")
    if not text:
        raise DomainNameError("domain name is empty; expected a name like example.com")
    if _is_ip_literal(text):
        raise DomainNameError(f"{name!r} is an IP address; expected a domain name like example.com")
    labels = [_a_label(label, name) for label in _DOTS.split(text)]
    if len(labels) < 2:
        raise DomainNameError(f"domain {name!r} needs at least two labels, like example.com")
    ascii_name = ".".join(labels)
    if len(ascii_name) > _MAX_NAME:
        raise DomainNameError(f"domain {name!r} is longer than {_MAX_NAME} characters (RFC 1035 §2.3.4)")
    if labels[-1].isdigit():
        # RFC 3696 §2: a top-level domain is never all-numeric.
        raise DomainNameError(f"domain {name!r} ends in a numeric label; expected a name like example.com")
    return ascii_name


def _is_ip_literal(text: str) -> bool:
    if text.startswith("[") and text.endswith("]"):
        return True  # RFC 5321 §4.1.3 address literal
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _a_label(label: str, name: str) -> str:
    """One label as an LDH A-label; `name` is the whole input, for the error message."""
    if not label:
        raise DomainNameError(f"domain {name!r} has an empty label (two dots in a row, or a leading dot)")
    if label.isascii():
        _check_ldh_label(label, f"domain {name!r}")
        return label
    deviations = [_DEVIATIONS[char] for char in label if char in _DEVIATIONS]
    if deviations:
        raise DomainNameError(
            f"domain {name!r} contains {', '.join(deviations)}, which IDNA 2003 and IDNA 2008 turn into "
            "different domains; write that label in its A-label (xn--…) form"
        )
    try:
        encoded = encodings.idna.ToASCII(label).decode("ascii")
    except UnicodeError as exc:
        raise DomainNameError(f"domain {name!r}: label {label!r} is not a valid IDN label ({exc})") from exc
    _check_ldh_label(encoded, f"domain {name!r}")
    return encoded


def _check_ldh_label(label: str, what: str) -> None:
    if not label:
        raise DomainNameError(f"{what} has an empty label (two dots in a row, or a leading dot)")
    if len(label) > _MAX_LABEL:
        raise DomainNameError(f"{what}: label {label[:20]!r}… is longer than {_MAX_LABEL} characters")
    if not _LDH_LABEL.fullmatch(label):
        raise DomainNameError(
            f"{what}: label {label!r} may hold only letters, digits and inner hyphens (RFC 5321 §4.1.2)"
        )
    if label[2:4] == "--":
        _check_reserved_label(label, what)


def _check_reserved_label(label: str, what: str) -> None:
    # RFC 5891 §4.2.3.1: "--" in positions 3 and 4 is reserved; only "xn--" (an A-label) is defined,
    # and an A-label must decode and encode back to itself (RFC 5891 §5.4).
    if label.startswith("xn--"):
        try:
            if encodings.idna.ToASCII(encodings.idna.ToUnicode(label)).decode("ascii") == label:
                return
        except UnicodeError:
            pass
        raise DomainNameError(f"{what}: label {label!r} is not a valid A-label (bad Punycode)")
    raise DomainNameError(f"{what}: label {label!r} has '--' in positions 3-4, reserved for IDNA A-labels")
