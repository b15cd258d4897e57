"""TLS material: the development certificate is made once, reused, and replaced when stale."""

from __future__ import annotations

import datetime
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from mailnode.errors import ConfigError
from mailnode.smtp.tls import DEV_CERT_DAYS, ensure_dev_certificate, server_tls_context

NOW = 1_800_000_000.0


def names(cert_path: Path) -> tuple[list[str], list[str]]:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def test_a_development_certificate_is_made_with_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = ensure_dev_certificate(tmp_path / "tls", "mx.example.test", clock=lambda: NOW)

    assert names(cert_path) == (["mx.example.test", "localhost"], ["127.0.0.1"])
    assert key_path.stat().st_mode & 0o777 == 0o600
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert certificate.not_valid_after_utc == datetime.datetime.fromtimestamp(
        NOW, datetime.UTC
    ) + datetime.timedelta(days=DEV_CERT_DAYS)
    assert server_tls_context(cert_path, key_path).minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_certificate_is_reused_while_it_is_good(tmp_path: Path) -> None:
    first = ensure_dev_certificate(tmp_path, "localhost", clock=lambda: NOW)
    before = [path.read_bytes() for path in first]

    again = ensure_dev_certificate(tmp_path, "localhost", clock=lambda: NOW + 86400 * 300)

    assert again == first
    assert [path.read_bytes() for path in again] == before


@pytest.mark.parametrize(
    ("hostname", "later", "damage"),
    [
        ("localhost", DEV_CERT_DAYS * 86400.0, False),  # expired (or about to)
        ("mx.other.test", 0.0, False),  # made for another host name
        ("localhost", 0.0, True),  # unreadable
    ],
)
def test_a_stale_certificate_is_replaced(tmp_path: Path, hostname: str, later: float, damage: bool) -> None:
    cert_path, _ = ensure_dev_certificate(tmp_path, "localhost", clock=lambda: NOW)
    before = cert_path.read_bytes()
    if damage:
        cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")

    new_cert, new_key = ensure_dev_certificate(tmp_path, hostname, clock=lambda: NOW + later)

    assert new_cert.read_bytes() != before
    assert hostname in names(new_cert)[0]
    server_tls_context(new_cert, new_key)  # the new key matches the new certificate


def test_the_real_clock_is_the_default(tmp_path: Path) -> None:
    cert_path, _ = ensure_dev_certificate(tmp_path, "localhost")
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())

    assert certificate.not_valid_before_utc.timestamp() <= time.time()


def test_unusable_files_are_a_config_error_naming_the_keys(tmp_path: Path) -> None:
    cert_path, key_path = ensure_dev_certificate(tmp_path / "a", "localhost", clock=lambda: NOW)
    _, other_key = ensure_dev_certificate(tmp_path / "b", "localhost", clock=lambda: NOW)

    with pytest.raises(ConfigError, match=r"^tls\.cert_file: no such file: .*missing\.pem$"):
        server_tls_context(tmp_path / "missing.pem", key_path)
    with pytest.raises(ConfigError, match=r"^tls\.cert_file/tls\.key_file: cannot load .* matching"):
        server_tls_context(cert_path, other_key)
    with pytest.raises(ConfigError, match=r"^tls\.key_file: no such file: "):
        server_tls_context(cert_path, tmp_path / "nothing")
