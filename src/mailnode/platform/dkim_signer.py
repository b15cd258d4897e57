"""DKIM signing (RFC 6376) with dkimpy's canonicalisation and a `cryptography` private key.

`dkim.sign()` spends 85 % of its time in pure-Python RSA (two 1024-bit `pow()` calls,
about 8 ms for a 2048-bit key) and parses the PEM key again on every call; its Ed25519 needs
PyNaCl. Here dkimpy still parses the message, canonicalises body and headers, selects the
header instances, lays out and folds the DKIM-Signature field; only the key is parsed once by
`cryptography` and signs in OpenSSL, several times faster (scripts/bench_dkim.py).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from collections.abc import Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

from mailnode.core.dkim_keys import MIN_RSA_BITS, canonical_domain, validate_selector

# RFC 6376 §3.5 a= tags; RFC 8301 §3.1: rsa-sha1 MUST NOT be used for signing.
SIGNATURE_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_HEADER_NAME = b"DKIM-Signature"
# dkimpy's placeholder for b=: 60 characters push b= onto a line of its own, so folding the
# field again around the real signature leaves every line before it as it was hashed.
_PLACEHOLDER = b"0" * 60
_KEY_CACHE_SIZE = 64


class DkimSigner:
    """Signs messages for one domain and selector with a private key parsed once."""

    def __init__(self, *, domain: str, selector: str, private_key_pem: bytes, algorithm: str) -> None:
        if algorithm not in SIGNATURE_ALGORITHMS:
            raise ValueError(f"DKIM algorithm must be rsa or ed25519, got {algorithm!r}")
        # RFC 6376 §3.5: d= holds A-labels; the domain is also the DNS owner of the key record.
        self.domain = canonical_domain(domain).encode("ascii")
        self.selector = validate_selector(selector).encode("ascii")
        self.algorithm = algorithm
        self._key = _load_key(private_key_pem, algorithm, self.domain.decode())
        # Ed25519 signs in ~0.05 ms and RSA-2048 in ~0.8 ms (scripts/bench_dkim.py); RSA-3072
        # takes ~2.5 ms and RSA-4096 ~6 ms.
        self.quick = not isinstance(self._key, rsa.RSAPrivateKey) or self._key.key_size <= 2048

    def sign(
        self, message: bytes, include_headers: Sequence[bytes], *, timestamp: int | None = None
    ) -> bytes:
        """The `DKIM-Signature: …\\r\\n` field to prepend (relaxed/relaxed).

        `h=` names, in order, those of `include_headers` the message has; a name listed
        twice signs a second instance or seals its absence (RFC 6376 §5.4.2).
        """
        try:
            headers, body = dkim.rfc822_parse(message)
        except (dkim.DKIMException, IndexError) as exc:
            # IndexError: a folded continuation line before any header field.
            raise ValueError(f"cannot DKIM-sign the message, its header is malformed: {exc!r}") from exc
        include = _present(include_headers, headers)
        fields = self._fields(_RELAXED.canonicalize_body(body), include, timestamp)
        return _HEADER_NAME + b": " + self._signed_value(fields, headers, include)

    def _fields(
        self, canonical_body: bytes, include: tuple[bytes, ...], timestamp: int | None
    ) -> list[tuple[bytes, bytes]]:
        """The tags in dkimpy's order (RFC 6376 §3.5), b= still the placeholder."""
        body_hash = base64.b64encode(hashlib.sha256(canonical_body).digest())
        signed_at = int(time.time()) if timestamp is None else timestamp
        return [
            (b"v", b"1"),
            (b"a", SIGNATURE_ALGORITHMS[self.algorithm]),
            (b"c", _RELAXED.to_c_value()),
            (b"d", self.domain),
            (b"i", b"@" + self.domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector),
            (b"t", str(signed_at).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", body_hash),
            (b"b", _PLACEHOLDER),
        ]

    def _signed_value(
        self, fields: list[tuple[bytes, bytes]], headers: list[list[bytes]], include: tuple[bytes, ...]
    ) -> bytes:
        """dkimpy's DomainSigner.gen_header with the signature made by `cryptography`."""
        unsigned = dkim.fold(_join(fields), namelen=len(_HEADER_NAME))
        # RFC 6376 §3.7: the signature field is hashed last, with an empty b= and no final CRLF.
        signature_field = (_HEADER_NAME, b" " + dkim.RE_BTAG.sub(b"\\1", unsigned))
        digest = hashlib.sha256()
        dkim.hash_headers(
            digest, _RELAXED, _RELAXED.canonicalize_headers(headers), list(include), signature_field, None
        )
        fields[-1] = (b"b", base64.b64encode(self._sign_digest(digest.digest())))
        return bytes(dkim.fold(_join(fields) + b"\r\n", namelen=len(_HEADER_NAME)))

    def _sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over the SHA-256 of the canonical data.
            return self._key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        # RFC 8463 §3: PureEdDSA signs the SHA-256 hash itself, not the canonical data.
        return self._key.sign(digest)


def sign_message(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_key_pem: bytes,
    algorithm: str,
    include_headers: Sequence[bytes],
    timestamp: int | None = None,
) -> bytes:
    """Drop-in for `dkim.sign(..., canonicalize=(b"relaxed", b"relaxed"))`; keys are parsed once."""
    signer = _signer(domain, selector, private_key_pem, algorithm)
    return signer.sign(message, include_headers, timestamp=timestamp)


def signs_quickly(*, domain: str, selector: str, private_key_pem: bytes, algorithm: str) -> bool:
    """Whether a signature with this key takes under a millisecond of CPU, so that a thread
    hop would cost more than it spares the event loop (False for a key that does not load:
    signing it reports why)."""
    try:
        return _signer(domain, selector, private_key_pem, algorithm).quick
    except ValueError:
        return False


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _signer(domain: str, selector: str, private_key_pem: bytes, algorithm: str) -> DkimSigner:
    return DkimSigner(domain=domain, selector=selector, private_key_pem=private_key_pem, algorithm=algorithm)


def _load_key(pem: bytes, algorithm: str, domain: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"DKIM key for {domain} is not an unencrypted PEM private key (PKCS#8 or PKCS#1): {exc}"
        ) from exc
    if algorithm == "rsa" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            # RFC 8301 §3.2: receivers ignore signatures by shorter keys.
            raise ValueError(f"DKIM key for {domain} has {key.key_size} bits; RSA keys need {MIN_RSA_BITS}+")
        return key
    if algorithm == "ed25519" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"DKIM key for {domain} is not an {algorithm} private key")


def _present(include_headers: Sequence[bytes], headers: list[list[bytes]]) -> tuple[bytes, ...]:
    names = {name.lower() for name, _ in headers}
    include = tuple(name.lower() for name in include_headers if name.lower() in names)
    # RFC 6376 §5.4: the From field MUST be signed.
    if b"from" not in include:
        raise ValueError("cannot DKIM-sign a message without a From header field (RFC 6376 §5.4)")
    # RFC 6376 §5.4.1: fields that relays add or change (Received, Return-Path, …) must not be signed.
    refused = sorted(set(include) & set(dkim.DKIM.SHOULD_NOT))
    if refused:
        raise ValueError(f"DKIM must not sign {b', '.join(refused).decode()}: relays add or change them")
    return include


def _join(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(tag + b"=" + value for tag, value in fields)
