"""AUTH brute force on submission: one IP guesses, the throttle slows it, then bans it.

A running mailnode with [smtp.auth_throttle] first_delay 0.02 s, max_delay 0.32 s,
ban_after_failures 10 takes 50 wrong passwords from 127.0.0.1 (STARTTLS, then AUTH PLAIN, as
plaintext AUTH on loopback stays off; a new connection whenever the server closes one)
while a client on 127.0.0.2 holds the right key. The delays are real asyncio sleeps in the
server; the client measures each reply with the loop's monotonic clock, from sending AUTH to
reading the answer.

Thresholds (what a user would notice, with room for two busy shared cores):
- failure n (1..10) is a 535 answered no sooner than its delay min(0.02 * 2**(n-1), 0.32) s
  less 5 ms, and no later than that delay plus 0.25 s, so the schedule is the configured one;
- the answers grow: each at least the one before it less 0.05 s, and the ten cost the
  attacker at least 2.2 s in all (0.02 + 0.04 + 0.08 + 0.16 + 6 x 0.32 = 2.22 s);
- every later attempt (40 more wrong ones, then a 51st with the right key) is a 421 that
  closes the connection, each faster than one throttled failure (0.32 s), median under 50 ms;
- the right key from 127.0.0.2 authenticates (235) in under 0.32 s, once while the attacker
  waits out a throttled failure and once while it is banned, and both its messages reach the sink.

Measured on 2 busy shared cores (load 4): failures answered in 22, 42-46, 83-86, 162-163 ms,
then 321-329 ms; 421s in 0.3-8 ms (median 0.4 ms); AUTH from 127.0.0.2 in 2-31 ms; about 3 s.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import ssl
import statistics
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import pytest

from mailnode.smtp.tls import ensure_dev_certificate
from tests.conftest import MailnodeFactory
from tests.smtp_server.conftest import RawClient
from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

HOSTNAME = "mailnode.test"
FIRST_DELAY = 0.02
MAX_DELAY = 0.32
BAN_AFTER = 10
ATTEMPTS = 50
EARLY = 0.005  # a reply may not come sooner than its delay by more than this
LATE = 0.25  # nor later than its delay by more than this (a busy shared machine)
BACKSLIDE = 0.05  # how much shorter a failure's answer may be than the one before it
BANNED_MEDIAN = 0.05
TIMEOUT = 10.0

INVALID = "535 5.7.8 Authentication credentials invalid\r\n"
BANNED = "421 4.7.0 too many failed authentication attempts, try again later\r\n"


def expected_delay(failure: int) -> float:
    """The configured answer delay of the n-th failure in a row (1-based)."""
    return min(FIRST_DELAY * 2.0 ** (failure - 1), MAX_DELAY)


def plain(user: str, password: str) -> str:
    """The RFC 4616 PLAIN response (no authzid), base64."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@dataclass(frozen=True)
class Answer:
    reply: str
    seconds: float


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """The listener's (cert, key): self-signed for the host name and 127.0.0.1."""
    return ensure_dev_certificate(tmp_path / "certificate", HOSTNAME)


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, certificate: tuple[Path, Path]) -> Mailnode:
    cert, key = certificate
    return await mailnode_factory(
        hostname=HOSTNAME,
        tls={"cert_file": str(cert), "key_file": str(key)},
        smtp={
            "auth_throttle": {
                "first_delay_seconds": FIRST_DELAY,
                "max_delay_seconds": MAX_DELAY,
                "ban_after_failures": BAN_AFTER,
                "ban_seconds": 600,
            }
        },
    )


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A client that trusts the listener's certificate and checks it names 127.0.0.1."""
    return ssl.create_default_context(cafile=str(certificate[0]))


def submission_port(node: Mailnode) -> int:
    assert node.service.smtp is not None
    return node.service.smtp.addresses["submission"][1]


async def tls_session(port: int, context: ssl.SSLContext) -> RawClient:
    """A connection from 127.0.0.1 after greeting, EHLO, STARTTLS and EHLO again."""
    client = await RawClient.connect(port)
    try:
        assert (await client.reply()).startswith("220 ")
        await client.command("EHLO attacker.test")
        await client.starttls(context)
        assert (await client.command("EHLO attacker.test")).startswith("250")
    except BaseException:
        await client.close()
        raise
    return client


class Attacker:
    """Guesses passwords from 127.0.0.1, reconnecting whenever the server hangs up."""

    def __init__(self, port: int, context: ssl.SSLContext, user: str) -> None:
        self.port, self.context, self.user = port, context, user
        self.answers: list[Answer] = []
        self.throttled = asyncio.Event()  # a failure is being delayed by max_delay
        self.banned = asyncio.Event()

    async def run(self, passwords: list[str]) -> None:
        loop = asyncio.get_running_loop()
        client: RawClient | None = None
        try:
            for password in passwords:
                if client is None:
                    client = await tls_session(self.port, self.context)
                if len(self.answers) >= 5:  # the 6th failure onwards waits max_delay
                    self.throttled.set()
                started = loop.time()
                reply = await client.command(f"AUTH PLAIN {plain(self.user, password)}")
                self.answers.append(Answer(reply, loop.time() - started))
                if reply.startswith("421"):
                    self.banned.set()
                    assert await client.closed() == b"", "a banned client is disconnected"
                    await client.close()
                    client = None
        finally:
            if client is not None:
                await client.close()


async def send_from_elsewhere(node: Mailnode, context: ssl.SSLContext, tag: str) -> tuple[int, float]:
    """AUTH with the right key from 127.0.0.2, then send a message: (AUTH code, seconds AUTH took)."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=submission_port(node),
        source_address=("127.0.0.2", 0),
        tls_context=context,
        start_tls=True,
        timeout=TIMEOUT,
    )
    async with client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.login(str(node.key_id), node.key)
        took = loop.time() - started
        message = (
            "From: user@sender.test\r\nTo: friend@example.net\r\nSubject: still here\r\n"
            f"Message-ID: <{tag}@sender.test>\r\n\r\nsent while 127.0.0.1 was {tag}\r\n"
        )
        refused, _ = await client.sendmail("user@sender.test", ["friend@example.net"], message)
        assert refused == {}
    return response.code, took


async def test_wrong_passwords_are_answered_ever_slower_then_banned_while_others_still_send(
    node: Mailnode, client_tls: ssl.SSLContext, sink: Sink
) -> None:
    attacker = Attacker(submission_port(node), client_tls, str(node.key_id))
    wrong = [f"mk_wrong-guess-{n:02d}" for n in range(ATTEMPTS)]

    async def meanwhile() -> list[tuple[int, float]]:
        async with asyncio.timeout(TIMEOUT):
            await attacker.throttled.wait()
        during_throttle = await send_from_elsewhere(node, client_tls, "throttled")
        async with asyncio.timeout(TIMEOUT):
            await attacker.banned.wait()
        return [during_throttle, await send_from_elsewhere(node, client_tls, "banned")]

    async with asyncio.timeout(60), asyncio.TaskGroup() as group:
        group.create_task(attacker.run([*wrong, node.key]))  # then the right key, too late
        others = group.create_task(meanwhile())

    answers = attacker.answers
    failures, after_ban = answers[:BAN_AFTER], answers[BAN_AFTER:]
    figures = [f"{answer.reply[:3]} {answer.seconds * 1000:.1f} ms" for answer in answers]
    assert len(answers) == ATTEMPTS + 1
    assert [answer.reply for answer in failures] == [INVALID] * BAN_AFTER, figures
    assert [answer.reply for answer in after_ban] == [BANNED] * (ATTEMPTS + 1 - BAN_AFTER), figures
    for n, answer in enumerate(failures, start=1):
        delay = expected_delay(n)
        assert delay - EARLY <= answer.seconds <= delay + LATE, (n, figures)
    for before, after in itertools.pairwise(failures):
        assert after.seconds >= before.seconds - BACKSLIDE, figures
    assert (
        sum(answer.seconds for answer in failures)
        >= sum(map(expected_delay, range(1, BAN_AFTER + 1))) - EARLY
    ), figures
    assert max(answer.seconds for answer in after_ban) < MAX_DELAY, figures
    assert statistics.median(answer.seconds for answer in after_ban) < BANNED_MEDIAN, figures

    for code, took in others.result():
        assert code == 235
        assert took < MAX_DELAY, f"AUTH from 127.0.0.2 took {took * 1000:.1f} ms"
    received = await sink.wait_for_messages(2)
    assert sorted(message.data.split(b"sent while 127.0.0.1 was ")[1] for message in received) == [
        b"banned\r\n",
        b"throttled\r\n",
    ]
