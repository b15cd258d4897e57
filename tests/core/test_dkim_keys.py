"""DKIM keys, selectors, TXT values and domain names: what a domain owner publishes and types."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.dkim_keys import (
    DomainNameError,
    canonical_domain,
    dkim_txt_value,
    generate_dkim_key,
    new_selector,
    public_key_b64,
    txt_chunks,
    validate_selector,
)
from mailnode.errors import MailnodeError

TODAY = datetime.date(2026, 5, 23)
# RFC 8463 Appendix A.2: the Ed25519 example key, private seed and its published p= value.
RFC8463_SEED = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
RFC8463_PUBLIC = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def test_rsa_key_is_pkcs8_and_p_is_its_subject_public_key_info() -> None:
    pair = generate_dkim_key("rsa")
    assert pair.algorithm == "rsa"
    assert pair.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    private = serialization.load_pem_private_key(pair.private_key_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    public = serialization.load_der_public_key(base64.b64decode(pair.public_key_b64))
    assert public.public_numbers() == private.public_key().public_numbers()


def test_rsa_key_size_is_a_parameter() -> None:
    pair = generate_dkim_key("rsa", rsa_bits=1024)
    private = serialization.load_pem_private_key(pair.private_key_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 1024


def test_ed25519_p_is_the_raw_32_byte_key() -> None:
    pair = generate_dkim_key("ed25519")
    private = serialization.load_pem_private_key(pair.private_key_pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = base64.b64decode(pair.public_key_b64)
    assert len(raw) == 32
    assert raw == private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_ed25519_p_matches_rfc_8463_example() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(RFC8463_SEED))
    assert public_key_b64(key) == RFC8463_PUBLIC


def test_key_pair_repr_hides_the_private_key() -> None:
    pair = generate_dkim_key("ed25519")
    assert "PRIVATE" not in repr(pair)
    assert pair.public_key_b64 in repr(pair)


@pytest.mark.parametrize(("algorithm", "bits"), [("rsa", 512), ("rsa", 8192), ("dsa", 2048)])
def test_refuses_weak_or_unknown_keys(algorithm: str, bits: int) -> None:
    with pytest.raises(ValueError, match=r"rsa_bits|algorithm"):
        generate_dkim_key(algorithm, rsa_bits=bits)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algorithm", "p", "expected"),
    [
        ("rsa", "MIIBIjAN", "v=DKIM1; k=rsa; p=MIIBIjAN"),
        ("ed25519", RFC8463_PUBLIC, f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"),
    ],
)
def test_dkim_txt_value(algorithm: str, p: str, expected: str) -> None:
    assert dkim_txt_value(algorithm, p) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("algorithm", "p"), [("rsa", "abc def"), ("rsa", "abc;d"), ("rsa", ""), ("dsa", "abcd")]
)
def test_dkim_txt_value_refuses_bad_input(algorithm: str, p: str) -> None:
    with pytest.raises(ValueError, match=r"base64|algorithm"):
        dkim_txt_value(algorithm, p)  # type: ignore[arg-type]


def test_rsa_2048_record_needs_two_txt_strings() -> None:
    value = dkim_txt_value("rsa", generate_dkim_key("rsa").public_key_b64)
    chunks = txt_chunks(value)
    assert [len(chunk) for chunk in chunks] == [255, len(value) - 255]
    assert "".join(chunks) == value


@given(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=2000), st.integers(1, 255)
)
def test_txt_chunks_join_back_and_fit(value: str, size: int) -> None:
    chunks = txt_chunks(value, size)
    assert "".join(chunks) == value
    assert all(len(chunk) <= size for chunk in chunks)
    assert all(chunks[:-1])


@pytest.mark.parametrize(("value", "size"), [("é", 255), ("abc", 256), ("abc", 0)])
def test_txt_chunks_refuses(value: str, size: int) -> None:
    with pytest.raises(ValueError, match=r"ASCII|octets"):
        txt_chunks(value, size)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("mailnode", "mailnode"),
        ("S2026", "s2026"),
        ("mail.v1", "mail.v1"),
        ("a-b", "a-b"),
        ("x" * 63, "x" * 63),
    ],
)
def test_valid_selectors(selector: str, expected: str) -> None:
    assert validate_selector(selector) == expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("", "empty"),
        ("mail_node", "letters, digits"),
        ("-mail", "letters, digits"),
        ("mail-", "letters, digits"),
        ("mail..v1", "empty label"),
        ("x" * 64, "longer than 63"),
        ("sélecteur", "letters, digits"),
        ("ab--cd", "reserved"),
        (".".join(["x" * 60] * 4), "too long"),
    ],
)
def test_invalid_selectors(selector: str, message: str) -> None:
    with pytest.raises(DomainNameError, match=message):
        validate_selector(selector)


@pytest.mark.parametrize(
    ("existing", "base", "expected"),
    [
        ([], "mailnode", "mailnode"),
        (["s1"], "mailnode", "mailnode"),
        (["mailnode"], "mailnode", "mailnode-20260523"),
        (["MailNode"], "mailnode", "mailnode-20260523"),
        (["mailnode", "mailnode-20260101"], "mailnode", "mailnode-20260523"),
        (["mailnode", "mailnode-20260523"], "mailnode", "mailnode-20260523-2"),
        (["mailnode", "mailnode-20260523", "mailnode-20260523-2"], "mailnode", "mailnode-20260523-3"),
        (["dkim"], "DKIM", "dkim-20260523"),
        (["mail.v1"], "mail.v1", "mail.v1-20260523"),
    ],
)
def test_new_selector(existing: list[str], base: str, expected: str) -> None:
    assert new_selector(existing, base, today=TODAY) == expected


@given(st.integers(0, 30))
def test_new_selector_is_always_fresh(rotations: int) -> None:
    existing: list[str] = []
    for _ in range(rotations + 1):
        selector = new_selector(existing, today=TODAY)
        assert selector not in existing
        existing.append(selector)


@pytest.mark.parametrize(("existing", "base"), [([], "bad_base"), (["x" * 60], "x" * 60)])
def test_new_selector_refuses_bases_that_cannot_rotate(existing: list[str], base: str) -> None:
    with pytest.raises(DomainNameError):
        new_selector(existing, base, today=TODAY)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.com", "example.com"),
        ("  Example.COM.  ", "example.com"),
        ("mail.a-b.example", "mail.a-b.example"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("例え。jp", "xn--r8jz45g.jp"),  # RFC 3490 §3.1: the ideographic full stop separates labels
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com"),  # full-width EXAMPLE
        ("a1.b2.c3.example", "a1.b2.c3.example"),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),
    ],
)
def test_canonical_domain(name: str, expected: str) -> None:
    assert canonical_domain(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("localhost", "at least two labels, like example.com"),
        ("com.", "at least two labels"),
        ("192.0.2.1", "IP address"),
        ("[192.0.2.1]", "IP address"),
        ("2001:db8::1", "IP address"),
        ("exa_mple.com", "letters, digits"),
        ("exam ple.com", "letters, digits"),
        ("-a.com", "letters, digits"),
        ("a-.com", "letters, digits"),
        ("a..com", "empty label"),
        (".a.com", "empty label"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 63] * 4), "longer than 253"),
        ("faß.de", "IDNA 2003 and IDNA 2008"),
        ("xn--a.com", "not a valid A-label"),
        ("XN--BCHER-KVB.de", "not a valid A-label"),
        ("ab--cd.com", "reserved"),
        ("example.123", "numeric"),
        ("a@b.com", "letters, digits"),
    ],
)
def test_invalid_domains(name: str, message: str) -> None:
    with pytest.raises(DomainNameError, match=message):
        canonical_domain(name)


def test_domain_name_error_is_a_value_error_and_a_mailnode_error() -> None:
    with pytest.raises(DomainNameError) as info:
        canonical_domain("localhost")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MailnodeError)


@given(st.text(max_size=80))
def test_canonical_domain_gives_a_valid_name_or_says_why(name: str) -> None:
    try:
        result = canonical_domain(name)
    except DomainNameError:
        return
    assert result.isascii()
    assert result == result.lower()
    assert canonical_domain(result) == result
    assert len(result) <= 253
    assert all(1 <= len(label) <= 63 for label in result.split("."))
