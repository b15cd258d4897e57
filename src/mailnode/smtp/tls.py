"""TLS for the SMTP listeners: the server context, and a self-signed certificate for development."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailnode.errors import ConfigError

DEV_CERT_NAME = "smtp-dev-cert.pem"
DEV_KEY_NAME = "smtp-dev-key.pem"
DEV_CERT_DAYS = 365
# A certificate this close to expiry is replaced now rather than failing handshakes tomorrow.
_RENEW_BEFORE = datetime.timedelta(days=1)


def server_tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server context for STARTTLS and implicit TLS: TLS 1.2 or newer (RFC 8996, RFC 8314)."""
    for key, path in (("tls.cert_file", cert_file), ("tls.key_file", key_file)):
        if not Path(path).is_file():
            raise ConfigError(f"{key}: no such file: {path}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls.cert_file/tls.key_file: cannot load {cert_file} with {key_file}: {exc}; "
            "both must be PEM, the key unencrypted and matching the certificate"
        ) from None
    return context


def ensure_dev_certificate(
    directory: Path, hostname: str, *, clock: Callable[[], float] = time.time
) -> tuple[Path, Path]:
    """The (cert, key) paths of a self-signed certificate for `hostname`, made once and reused.

    A certificate that is missing, unreadable, about to expire or made for another host name is
    replaced. Clients will not trust it: it is for development only.
    """
    cert_path, key_path = directory / DEV_CERT_NAME, directory / DEV_KEY_NAME
    now = datetime.datetime.fromtimestamp(clock(), datetime.UTC)
    if key_path.is_file() and _still_good(cert_path, hostname, now):
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = _self_signed(key, hostname, now).public_bytes(serialization.Encoding.PEM)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def _still_good(cert_path: Path, hostname: str, now: datetime.datetime) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if certificate.not_valid_after_utc - _RENEW_BEFORE <= now:
        return False
    return hostname.lower() in (name.lower() for name in names.get_values_for_type(x509.DNSName))


def _self_signed(key: ec.EllipticCurvePrivateKey, hostname: str, now: datetime.datetime) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailnode development certificate"),
        ]
    )
    dns_names = dict.fromkeys([hostname, "localhost"])  # ordered, without duplicates
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DEV_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file created with `mode`, then rename: never a half-written key."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
