"""Open-relay checks against a running mailnode's real listeners: nmap's probe and our own list.

tests/smtp_server/test_ingress.py already refuses the percent hack, bang paths, source routes
and quoted local parts with @ on ingress. Added here: nmap's smtp-open-relay script (the probe
people point at mail servers) on both listeners, with a control run against a sink that does
relay so a broken probe cannot pass silently, and the tricks that list lacks: trailing dots,
IP literals, case changes, look-alike and full-width domains, the bounce domain, the null
sender, submission without AUTH.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

ROUTED = "local.test"
BOUNCES = "bounces.mailnode.test"
NMAP_TIMEOUT = 120.0


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, sink: Sink) -> Mailnode:
    return await mailnode_factory(
        platform={"bounce_domain": BOUNCES},
        ingress={"routes": [{"domain": ROUTED, "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
    )


def port(node: Mailnode, listener: str) -> int:
    assert node.service.smtp is not None
    return node.service.smtp.addresses[listener][1]


async def nmap_relay_probe(port: int) -> str:
    """nmap's smtp-open-relay output for 127.0.0.1:port (the + runs it on a port that is not 25)."""
    nmap = shutil.which("nmap")
    assert nmap is not None, "nmap is missing: install the Debian package nmap (scripts/test does)"
    process = await asyncio.create_subprocess_exec(
        nmap, "-Pn", "-n", "-p", str(port), "--host-timeout", "90s", "--script", "+smtp-open-relay",
        "--script-args", "smtp-open-relay.domain=relay-probe.test,smtp-open-relay.ip=127.0.0.1",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), NMAP_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_nmap_finds_the_sink_an_open_relay_so_the_probe_works(sink: Sink) -> None:
    output = await nmap_relay_probe(sink.port)
    assert "Server is an open relay" in output, output


@pytest.mark.parametrize("listener", ["ingress", "submission"])
async def test_nmap_finds_no_open_relay(node: Mailnode, sink: Sink, listener: str) -> None:
    output = await nmap_relay_probe(port(node, listener))

    assert "smtp-open-relay" in output, output  # the script ran
    verdict = (
        "Server isn't an open relay, authentication needed"
        if listener == "submission"
        else ("Server doesn't seem to be an open relay, all tests failed")
    )
    assert verdict in output, output
    assert "is an open relay" not in output
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
    assert sink.transactions == 0


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str | None) -> str:
    """Send a command (None: nothing, to read the greeting) and read its whole reply."""
    if line is not None:
        writer.write(line.encode() + b"\r\n")
    reply = b""
    async with asyncio.timeout(10):
        while True:
            got = await reader.readline()
            assert got, f"closed after {reply!r}"
            reply += got
            if got[3:4] == b" ":
                return reply.decode()


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [
        ("someone@other.test", "user@elsewhere.test."),  # trailing dot
        ("someone@other.test", "USER@ELSEWHERE.TEST"),
        ("someone@other.test", "user@LOCAL.TEST.elsewhere.test"),
        ("someone@other.test", f"user@{ROUTED}elsewhere.test"),  # a look-alike suffix
        ("someone@other.test", "user@[127.0.0.1]"),
        ("someone@other.test", "user@[IPv6:::1]"),
        ("someone@other.test", f'"user@elsewhere.test"@{BOUNCES}'),
        ("someone@other.test", f"user%elsewhere.test@{BOUNCES}"),
        ("someone@other.test", f"@{BOUNCES}:user@elsewhere.test"),
        (
            "someone@other.test",
            "user@\uff45\uff4c\uff53\uff45\uff57\uff48\uff45\uff52\uff45.test",
        ),  # full-width letters
        ("someone@other.test", "user@elsewhere\u3002test"),  # an ideographic full stop
        ("", "user@elsewhere.test"),  # the null sender
        ("", f"user%elsewhere.test@{ROUTED}"),
        ("someone@other.test", f"USER%ELSEWHERE.TEST@{ROUTED.upper()}"),
    ],
)
async def test_relay_tricks_on_ingress_create_nothing(
    node: Mailnode, sink: Sink, sender: str, recipient: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(node, "ingress"))
    try:
        await command(reader, writer, None)
        await command(reader, writer, "EHLO mta.other.test")
        assert (await command(reader, writer, f"MAIL FROM:<{sender}> SMTPUTF8")).startswith("250")
        reply = await command(reader, writer, f"RCPT TO:<{recipient}>")
    finally:
        writer.close()
        await writer.wait_closed()

    assert reply[:1] == "5", reply
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
    assert sink.transactions == 0


async def test_submission_without_auth_relays_nothing(node: Mailnode, sink: Sink) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port(node, "submission"))
    try:
        await command(reader, writer, None)
        await command(reader, writer, "EHLO client.test")
        mail = await command(reader, writer, "MAIL FROM:<someone@other.test>")
        rcpt = await command(reader, writer, "RCPT TO:<user@elsewhere.test>")
    finally:
        writer.close()
        await writer.wait_closed()

    assert mail.startswith("530 5.7.0"), mail
    assert rcpt.startswith("503"), rcpt
    assert node.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
