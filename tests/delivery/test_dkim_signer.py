"""The fast DKIM signer: its signatures verify with dkimpy and match dkimpy's and RFC 8463's bytes."""

from __future__ import annotations

import base64
import types

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import parse_tag_value

from mailnode.core.dkim_keys import DkimKeyPair, dkim_txt_value, generate_dkim_key
from mailnode.core.outcome import Status
from mailnode.core.transaction import TransactionRecord
from mailnode.platform.dkim_signer import DkimSigner, sign_message, signs_quickly
from mailnode.router.filters import DeliveryContext, DkimFilter, DkimKey

# What the DKIM filter asks to sign (router/filters.py), some of them absent from the messages.
INCLUDE = [
    b"from",
    b"sender",
    b"reply-to",
    b"subject",
    b"date",
    b"message-id",
    b"to",
    b"cc",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
]

# Folded To and Subject, a non-ASCII (RFC 2047) display name and subject, an 8-bit UTF-8 body.
MESSAGE = (
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.com>\r\n"
    b"To: Alice <alice@example.org>,\r\n"
    b"\tBob <bob@example.org>\r\n"
    b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
    b" =?utf-8?b?IOKAlCBzb21tZXIgc2FsZQ==?=\r\n"
    b"Date: Sat, 23 May 2026 10:00:00 +0000\r\n"
    b"Message-ID: <d1.abc@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"X-Mailer: mailnode\r\n"
    b"\r\n"
    b"<html><body><p>Gr\xc3\xbc\xc3\x9fe, Alice!   Trailing spaces  \r\n"
    b"\t<a href='https://example.com/x'>Shop</a></p></body></html>\r\n"
    b"\r\n"
)
PRESENT = [
    b"from",
    b"subject",
    b"date",
    b"message-id",
    b"to",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
]

# RFC 8463 Appendix A: the example message, Ed25519 key and the signature it must produce.
RFC8463_MESSAGE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game.  Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)
RFC8463_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_BH = b"2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
RFC8463_B = b"/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="


@pytest.fixture(scope="module")
def rsa_key() -> DkimKeyPair:
    return generate_dkim_key("rsa")


@pytest.fixture(scope="module")
def ed_key() -> DkimKeyPair:
    return generate_dkim_key("ed25519")


class _BadSignatureError(Exception):
    pass


class _VerifyKey:
    """PyNaCl's VerifyKey, as dkimpy's Ed25519 verification calls it, made of `cryptography`."""

    def __init__(self, key_b64: bytes, encoder: object = None) -> None:
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64))

    def verify(self, message: bytes, signature: bytes) -> bytes:
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise _BadSignatureError from exc
        return message


@pytest.fixture(autouse=True)
def nacl_for_dkimpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """dkimpy verifies Ed25519 with PyNaCl, which mailnode does not install."""
    nacl = types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=_VerifyKey),
        encoding=types.SimpleNamespace(Base64Encoder=None),
        exceptions=types.SimpleNamespace(ValueError=ValueError, BadSignatureError=_BadSignatureError),
    )
    monkeypatch.setattr(dkim, "nacl", nacl, raising=False)


def _sign(key: DkimKeyPair, message: bytes = MESSAGE, include: list[bytes] = INCLUDE) -> bytes:
    return sign_message(
        message,
        domain="example.com",
        selector="s1",
        private_key_pem=key.private_key_pem,
        algorithm=key.algorithm,
        include_headers=include,
    )


def _verifies(signed: bytes, key: DkimKeyPair) -> bool:
    record = dkim_txt_value(key.algorithm, key.public_key_b64).encode()
    asked: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return record if name == b"s1._domainkey.example.com." else None

    result = bool(dkim.verify(signed, dnsfunc=dnsfunc))
    assert asked == [b"s1._domainkey.example.com."]
    return result


def _tags(signature: bytes) -> dict[bytes, bytes]:
    name, _, value = signature.partition(b":")
    assert name == b"DKIM-Signature"
    return {tag: b"".join(v.split()) for tag, v in parse_tag_value(value).items()}


@pytest.mark.parametrize("key_name", ["rsa_key", "ed_key"])
def test_signature_verifies_with_dkimpy(key_name: str, request: pytest.FixtureRequest) -> None:
    key: DkimKeyPair = request.getfixturevalue(key_name)
    signature = _sign(key)
    assert signature.endswith(b"\r\n")
    assert all(len(line) <= 78 for line in signature.split(b"\r\n"))  # RFC 5322 §2.1.1
    assert _verifies(signature + MESSAGE, key)


@pytest.mark.parametrize("key_name", ["rsa_key", "ed_key"])
def test_tampered_message_fails(key_name: str, request: pytest.FixtureRequest) -> None:
    key: DkimKeyPair = request.getfixturevalue(key_name)
    signed = _sign(key) + MESSAGE
    assert not _verifies(signed.replace(b"Alice!", b"Alice?"), key)
    assert not _verifies(signed.replace(b"Message-ID: <d1.", b"Message-ID: <d2."), key)


def test_relaxed_canonicalization_survives_refolding_by_a_relay(rsa_key: DkimKeyPair) -> None:
    signed = _sign(rsa_key) + MESSAGE
    refolded = signed.replace(b",\r\n\tBob", b",    Bob").replace(b"Date: Sat", b"Date:   Sat")
    assert _verifies(refolded, rsa_key)


def test_signed_headers_are_those_present_in_the_asked_order(ed_key: DkimKeyPair) -> None:
    tags = _tags(_sign(ed_key))
    assert tags[b"h"].split(b":") == PRESENT
    assert (tags[b"d"], tags[b"s"], tags[b"a"], tags[b"c"]) == (
        b"example.com",
        b"s1",
        b"ed25519-sha256",
        b"relaxed/relaxed",
    )


def test_naming_a_header_twice_seals_it_against_additions(rsa_key: DkimKeyPair) -> None:
    signed = _sign(rsa_key, include=[b"from", b"subject", b"from"]) + MESSAGE
    assert _tags(signed.split(b"\r\nFrom:")[0])[b"h"] == b"from:subject:from"
    assert _verifies(signed, rsa_key)
    # RFC 6376 §5.4.2: another header field may be added; a second From may not.
    assert _verifies(signed.replace(b"\r\n\r\n", b"\r\nX-Added: yes\r\n\r\n", 1), rsa_key)
    assert not _verifies(
        signed.replace(b"\r\n\r\n", b"\r\nFrom: Mallory <m@evil.example>\r\n\r\n", 1), rsa_key
    )


def test_same_bytes_as_dkimpy(rsa_key: DkimKeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dkim, "time", types.SimpleNamespace(time=lambda: 1_779_530_400))
    expected = dkim.sign(
        MESSAGE,
        b"s1",
        b"example.com",
        rsa_key.private_key_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=PRESENT,
    )
    signer = DkimSigner(
        domain="example.com", selector="s1", private_key_pem=rsa_key.private_key_pem, algorithm="rsa"
    )
    assert signer.sign(MESSAGE, INCLUDE, timestamp=1_779_530_400) == expected


def test_reproduces_rfc_8463_example_signature() -> None:
    private_key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(RFC8463_SEED))
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer = DkimSigner(
        domain="football.example.com", selector="brisbane", private_key_pem=pem, algorithm="ed25519"
    )
    include = [b"from", b"to", b"subject", b"date", b"message-id", b"from", b"subject", b"date"]
    tags = _tags(signer.sign(RFC8463_MESSAGE, include, timestamp=1528637909))
    assert (tags[b"bh"], tags[b"b"]) == (RFC8463_BH, RFC8463_B)


def test_pkcs1_pem_keys_work(rsa_key: DkimKeyPair) -> None:
    private_key = serialization.load_pem_private_key(rsa_key.private_key_pem, password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    pkcs1 = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    signature = sign_message(
        MESSAGE,
        domain="example.com",
        selector="s1",
        private_key_pem=pkcs1,
        algorithm="rsa",
        include_headers=INCLUDE,
    )
    assert _verifies(signature + MESSAGE, rsa_key)


@pytest.mark.parametrize(
    ("message", "include", "error"),
    [
        (MESSAGE.replace(b"From:", b"X-From:"), INCLUDE, "without a From header"),
        (MESSAGE, [b"to", b"subject"], "without a From header"),
        (b"Received: by relay\r\n" + MESSAGE, [*INCLUDE, b"received"], "must not sign received"),
        (b" folded first\r\n" + MESSAGE, INCLUDE, "header is malformed"),
        (b"From: a@example.com\r\nbad header line\r\n\r\nbody\r\n", INCLUDE, "header is malformed"),
    ],
)
def test_unsignable_messages_are_value_errors(
    message: bytes, include: list[bytes], error: str, ed_key: DkimKeyPair
) -> None:
    with pytest.raises(ValueError, match=error):
        _sign(ed_key, message, include)


def _encrypted_pem(key: DkimKeyPair) -> bytes:
    private_key = serialization.load_pem_private_key(key.private_key_pem, password=None)
    assert isinstance(private_key, ed25519.Ed25519PrivateKey)
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def test_unusable_keys_are_value_errors(rsa_key: DkimKeyPair, ed_key: DkimKeyPair) -> None:
    small = generate_dkim_key("rsa", rsa_bits=1024).private_key_pem
    cases = [
        (b"not a key", "rsa", "not an unencrypted PEM private key"),
        (_encrypted_pem(ed_key), "ed25519", "not an unencrypted PEM private key"),
        (rsa_key.private_key_pem, "ed25519", "not an ed25519 private key"),
        (ed_key.private_key_pem, "rsa", "not an rsa private key"),
        (rsa_key.private_key_pem, "rsa-sha1", "must be rsa or ed25519"),
    ]
    for pem, algorithm, error in cases:
        with pytest.raises(ValueError, match=error):
            DkimSigner(domain="example.com", selector="s1", private_key_pem=pem, algorithm=algorithm)
    # A 1024-bit key still signs (RFC 8301 §3.2 allows it); the domain and selector are checked.
    DkimSigner(domain="example.com", selector="s1", private_key_pem=small, algorithm="rsa")
    with pytest.raises(ValueError, match="two labels"):
        DkimSigner(domain="localhost", selector="s1", private_key_pem=small, algorithm="rsa")
    with pytest.raises(ValueError, match="letters, digits"):
        DkimSigner(domain="example.com", selector="s_1", private_key_pem=small, algorithm="rsa")


def test_keys_that_sign_in_under_a_millisecond_sign_on_the_event_loop(
    rsa_key: DkimKeyPair, ed_key: DkimKeyPair
) -> None:
    def quick(pem: bytes, algorithm: str) -> bool:
        return signs_quickly(domain="example.com", selector="s1", private_key_pem=pem, algorithm=algorithm)

    assert quick(rsa_key.private_key_pem, "rsa")
    assert quick(ed_key.private_key_pem, "ed25519")
    assert not quick(generate_dkim_key("rsa", rsa_bits=3072).private_key_pem, "rsa")
    assert not quick(b"not a key", "rsa")  # signing it (in a thread) says what is wrong


@pytest.mark.parametrize("bits", [2048, 3072])
async def test_the_dkim_filter_signs_on_the_loop_or_in_a_thread_alike(bits: int) -> None:
    key = generate_dkim_key("rsa", rsa_bits=bits)
    dkim_filter = DkimFilter({"example.com": DkimKey("example.com", "s1", key.private_key_pem)})
    record = TransactionRecord(
        1, "tx1", "submission", "joerg@example.com", "alice@example.org", Status.QUEUED, 2,
        0.0, 0.0, 0.0, 1, None, False, True, True, "ESMTPA", None, None, None, None, (), None,
    )  # fmt: skip
    delivery = DeliveryContext(record, MESSAGE)
    await dkim_filter(delivery)
    assert delivery.message.startswith(b"DKIM-Signature: ")
    assert _verifies(delivery.message, key)
