"""Fixtures for the SMTP client and MX tests: sinks, a DNS server, TLS material, raw peers."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.dns_server import DnsServer, start_dns_server
from tests.support.sink import Sink, start_sink

from mailnode.smtp.client import SmtpOptions

ScriptedPeer = Callable[[list[bytes]], Awaitable[int]]


@pytest.fixture
def options() -> SmtpOptions:
    return SmtpOptions(helo_hostname="client.test", connect_timeout=2.0, command_timeout=2.0)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await start_sink()
    yield server
    await server.close()


@pytest.fixture
async def sink_pair(sink: Sink) -> AsyncIterator[tuple[Sink, Sink]]:
    """A second sink on 127.0.0.2 with the same port as `sink` on 127.0.0.1 (two MX hosts)."""
    second = await start_sink("127.0.0.2", sink.port)
    yield sink, second
    await second.close()


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for sink.test / 127.0.0.1 (EC keys: fast to make)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("sink.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    return context


@pytest.fixture
async def scripted_peer() -> AsyncIterator[ScriptedPeer]:
    """Start raw SMTP peers: the first line is the greeting, then one reply per line received.

    When the script runs out the peer closes the connection. Returns the port.
    """
    servers: list[asyncio.Server] = []
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(script: list[bytes]) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections[task] = writer
            try:
                for reply in script:
                    writer.write(reply)
                    await writer.drain()
                    if not await reader.readline():
                        break
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
    for writer in connections.values():
        writer.transport.abort()  # not cancel(): on 3.11 a cancelled stream handler logs an error
    await asyncio.gather(*connections)
    for server in servers:
        await server.wait_closed()
