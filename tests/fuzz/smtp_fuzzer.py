"""A hypothesis-driven SMTP client that sends malformed sessions to mailnode's real listeners.

Used by tests/fuzz/test_smtp_fuzz.py (a small, derandomized budget) and scripts/fuzz_smtp.py
(as many examples as asked). A session is a list of moves written to one connection, pipelined
unless a move waits for a reply, then an ending (QUIT, half-close, or silence). The properties,
checked for every session:

* every byte the server sends is a well-formed reply: lines of 3 digits, a space or hyphen and
  printable text, each ending in CRLF (RFC 5321 §4.2), a multi-line reply under one code;
* the server closes the connection at the latest the idle timeout (plus slack) after the
  client's last byte: nothing hangs;
* a fresh connection afterwards can send a message that reaches the sink (nothing is wedged);
* (checked by the callers over a whole run) no internal error is logged, memory stays bounded,
  and no session is left open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.sink import Sink, start_sink

ROUTED_DOMAIN = "local.test"
# Short timeouts so that a hang shows within a second or two (and each silent ending costs little).
IDLE_TIMEOUT = 0.5
CLOSE_SLACK = 5.0  # a 10 MB line still being read and discarded when the client falls silent
MAX_MESSAGE_BYTES = 1024 * 1024
CHUNK = 64 * 1024
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([\t\x20-\x7e]*)")
# After a 220 to STARTTLS the client's garbage goes to a TLS handshake; what follows is TLS, not SMTP.
_TLS_READY = re.compile(rb"220 [^\r\n]*TLS[^\r\n]*\r\n")


@dataclass(frozen=True)
class LongLine:
    """`size` bytes of `fill` without a line end inside, sent in chunks (never held whole)."""

    size: int
    fill: bytes
    end: bytes

    def chunks(self) -> Iterator[bytes]:
        block = self.fill * CHUNK
        left = self.size
        while left > 0:
            yield block[: min(left, CHUNK)]
            left -= CHUNK
        yield self.end


@dataclass(frozen=True)
class WaitReply:
    """Stop pipelining: wait (briefly) until the server has answered something more."""


Move = bytes | LongLine | WaitReply


@dataclass(frozen=True)
class FuzzSession:
    listener: str  # "submission" or "ingress"
    moves: tuple[Move, ...]
    ending: str  # "quit", "eof" or "idle"

    def __repr__(self) -> str:  # hypothesis prints the falsifying example with this
        return f"FuzzSession({self.listener!r}, {self.moves!r}, {self.ending!r})"


@dataclass
class Target:
    """A running mailnode and the sink its mail goes to; AUTH PLAIN credentials for submission."""

    node: Mailnode
    sink: Sink
    loop: asyncio.AbstractEventLoop  # where the service runs (the fuzzer runs in another thread)
    auth_plain: bytes
    ports: dict[str, int]
    probes: int = 0
    sessions: int = 0
    closed_after: list[float] = field(default_factory=list)
    durations: list[tuple[float, FuzzSession]] = field(default_factory=list)

    def delivered(self, marker: bytes) -> bool:
        return any(marker in message.data for message in self.sink.messages)


@contextlib.asynccontextmanager
async def running_target(tmp_path: Path) -> AsyncIterator[Target]:
    """mailnode (submission with plaintext AUTH on loopback, ingress for local.test) and a sink."""
    sink = await start_sink()
    try:
        config = make_config(
            tmp_path,
            sink.port,
            smtp={
                "command_timeout_seconds": IDLE_TIMEOUT,
                "max_message_bytes": MAX_MESSAGE_BYTES,
                "max_recipients": 5,
                "submission": {"allow_plaintext_auth_on_loopback": True},
                # Wrong AUTH is part of the input: no delays or bans to slow the fuzzer down.
                "auth_throttle": {"first_delay_seconds": 0, "ban_after_failures": 1_000_000_000},
            },
            ingress={"routes": [{"domain": ROUTED_DOMAIN, "endpoint": f"smtp:127.0.0.1:{sink.port}"}]},
        )
        node = await start_mailnode(config)
        try:
            smtp = node.service.smtp
            assert smtp is not None
            ports = {name: address[1] for name, address in smtp.addresses.items()}
            plain = base64.b64encode(f"\0{node.key_id}\0{node.key}".encode())
            yield Target(node, sink, asyncio.get_running_loop(), plain, ports)
        finally:
            await stop_mailnode(node)
    finally:
        await sink.close()


# -- what a session is made of ----------------------------------------------------------------

_VERBS = [
    b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY",
    b"EXPN", b"HELP", b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5", b"STARTTLS", b"BDAT 10 LAST",
    b"ehlo", b"mail from:", b"rcpt to:", b"Data", b"XCLIENT", b"",
]  # fmt: skip
_ARGUMENTS = [
    b"", b" ", b"client.test", b"<a@example.com>", b"<>", b"<r@local.test>", b"<R@LOCAL.TEST.>",
    b"<@relay.test:r@local.test>", b"<r%elsewhere.test@local.test>", b'<"r@x"@local.test>',
    b"<r@[127.0.0.1]>", b"<a@example.com> SIZE=99999999999", b"<a@example.com> BODY=8BITMIME SMTPUTF8",
    b"<a@example.com> SIZE=-1", b"<\xc3\xa9@local.test>", b"<\xff\xfe@local.test>", b"<a@example.com",
    b"a@example.com>", b"<<>>", b"=", b"*", b"AGFiYwBkZWY=", b"!!!notbase64", b"AA==AA==", b"\x00",
    b"<a\x00b@local.test>", b"<a@b\r.test>", b"\t<a@example.com>\t",
]  # fmt: skip
_ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\x00\r\n", b""]
_DATA_LINES = [
    b".", b"..", b"...", b". ", b" .", b".\n", b".\r", b"\n.", b"\r.", b"\x00.", b".\x00",
    b"Subject: x", b"From: <a@example.com>", b"", b"\xff\xfe\x80", b"=?utf-8?B?////?=", b"--boundary",
]  # fmt: skip
_DATA_ENDS = [b"\r\n.\r\n", b"\r\n.\r\n", b"\n.\n", b"\r\n.\n", b"\n.\r\n", b".\r\n", b"\r\n..\r\n", b""]
_TRANSACTION = {
    "submission": b"EHLO fuzz.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n",
    "ingress": b"EHLO fuzz.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<r@local.test>\r\nDATA\r\n",
}
LONG_SIZES = [513, 1001, 1002, 4096, 70_000, 1_100_000]
TEN_MB = 10 * 1024 * 1024


def _command() -> st.SearchStrategy[bytes]:
    argument = st.sampled_from(_ARGUMENTS) | st.binary(max_size=40)
    return st.builds(
        lambda verb, space, arg, end: verb + space + arg + end,
        st.sampled_from(_VERBS),
        st.sampled_from([b" ", b"", b"  ", b"\t"]),
        argument,
        st.sampled_from(_ENDS),
    )


def _data_block() -> st.SearchStrategy[bytes]:
    line = st.sampled_from(_DATA_LINES) | st.binary(max_size=30)
    newline = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])
    lines = st.lists(st.tuples(line, newline).map(b"".join), max_size=8).map(b"".join)
    return st.builds(lambda body, end: body + end, lines, st.sampled_from(_DATA_ENDS))


def moves(auth_plain: bytes) -> st.SearchStrategy[Move]:
    """One step of a session: a command, garbage, a long line, a DATA block, a sync point."""
    return st.one_of(
        _command(),
        _command(),
        st.binary(min_size=1, max_size=200),
        st.builds(LongLine, st.sampled_from(LONG_SIZES), st.sampled_from([b"A", b".", b"\x00", b" "]),
                  st.sampled_from([b"\r\n", b"\n", b""])),
        _data_block(),
        st.just(b"AUTH PLAIN " + auth_plain + b"\r\n"),
        st.sampled_from(list(_TRANSACTION.values())),
        st.just(WaitReply()),
    )  # fmt: skip


def sessions(auth_plain: bytes) -> st.SearchStrategy[FuzzSession]:
    return st.builds(
        FuzzSession,
        st.sampled_from(["submission", "ingress"]),
        st.lists(moves(auth_plain), min_size=1, max_size=12).map(tuple),
        st.sampled_from(["quit", "eof", "idle"]),
    )


def edge_cases(auth_plain: bytes) -> list[FuzzSession]:
    """Sessions every run includes: the 10 MB lines and the lone-dot cases named in issue 7."""
    auth = b"AUTH PLAIN " + auth_plain + b"\r\n"
    sub, ingress = _TRANSACTION["submission"], _TRANSACTION["ingress"]
    return [
        FuzzSession("ingress", (b"EHLO x\r\n", LongLine(TEN_MB, b"A", b"\r\n"), b"NOOP\r\n"), "quit"),
        FuzzSession("submission", (auth, sub, LongLine(TEN_MB, b"x", b"\r\n"), b".\r\n"), "quit"),
        FuzzSession("ingress", (ingress, LongLine(TEN_MB, b"x", b"")), "idle"),
        FuzzSession("ingress", (ingress, b".\n.\r.\r\n"), "quit"),
        FuzzSession("ingress", (ingress, b"..\r\n.\r\n", b"RSET\r\n"), "quit"),
        FuzzSession("submission", (auth, sub, b"\r\n.\r\n", WaitReply(), sub, b".\r\n"), "eof"),
        FuzzSession("submission", (b"AUTH PLAIN !!!\r\n", b"AUTH LOGIN\r\n", b"%%%\r\n", auth), "quit"),
        FuzzSession("ingress", (b"MAIL FROM:<a@b.test>\r\nDATA\r\nRCPT TO:<r@local.test>\r\n",), "eof"),
        FuzzSession("ingress", (b"EHLO x\nMAIL FROM:<a@b.test>\nRCPT TO:<r@local.test>\nDATA\n",), "idle"),
        FuzzSession("ingress", (b"FOO\rBAR\x00\x1b[2J\r\n", b"\x00\x00\x00\r\n"), "quit"),
    ]


# -- running one session and checking what came back ------------------------------------------


def check_replies(received: bytes) -> list[bytes]:
    """The reply codes in what the server sent; AssertionError naming the first malformed line."""
    match = _TLS_READY.search(received)
    if match is not None:
        received = received[: match.end()]
    lines = received.split(b"\r\n")
    assert lines[-1] == b"", f"the server's output does not end with CRLF: {received[-200:]!r}"
    codes: list[bytes] = []
    pending: bytes | None = None  # the code of an unfinished multi-line reply
    for line in lines[:-1]:
        parsed = _REPLY_LINE.fullmatch(line)
        assert parsed is not None, f"malformed reply line {line[:200]!r}"
        code, separator, _ = parsed.groups()
        assert pending in (None, code), f"a multi-line reply changed its code: {line[:200]!r}"
        pending = code if separator == b"-" else None
        if pending is None:
            codes.append(code)
    assert pending is None, "the last multi-line reply never ended"
    return codes


async def _exchange(port: int, session: FuzzSession) -> tuple[bytes, float]:
    """Send the session; (everything received, seconds from the last byte sent to the close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    received = bytearray()
    grew = asyncio.Event()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(CHUNK):
                received.extend(chunk)
                grew.set()

    reading = asyncio.create_task(read_all())
    try:
        with contextlib.suppress(OSError):  # the server may close first (QUIT, STARTTLS, too long)
            for move in session.moves:
                if reading.done():
                    break
                if isinstance(move, WaitReply):
                    grew.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await grew.wait()
                    continue
                for chunk in move.chunks() if isinstance(move, LongLine) else [move]:
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT + CLOSE_SLACK)
            if session.ending == "quit":
                writer.write(b"QUIT\r\n")
            elif session.ending == "eof" and writer.can_write_eof():
                writer.write_eof()
            await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT + CLOSE_SLACK)
        last_byte = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(reading), IDLE_TIMEOUT + CLOSE_SLACK)
        except TimeoutError:
            raise AssertionError(
                f"the connection was still open {IDLE_TIMEOUT + CLOSE_SLACK} s after the client's "
                f"last byte (idle timeout {IDLE_TIMEOUT} s); received {bytes(received[-300:])!r}"
            ) from None
        return bytes(received), time.monotonic() - last_byte
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _probe(target: Target, listener: str) -> None:
    """A fresh connection sends a well-formed message; it must reach the sink."""
    target.probes += 1
    marker = f"probe-{target.probes}-{secrets.token_hex(4)}".encode()
    if listener == "submission":
        opening = b"EHLO probe.test\r\nAUTH PLAIN " + target.auth_plain + b"\r\n"
        recipient = b"probe@example.net"
    else:
        opening = b"EHLO probe.test\r\n"
        recipient = b"probe@" + ROUTED_DOMAIN.encode()
    envelope = b"MAIL FROM:<probe@example.com>\r\nRCPT TO:<" + recipient + b">\r\nDATA\r\n"
    headers = b"From: <probe@example.com>\r\nMessage-ID: <" + marker + b"@probe.test>\r\n"
    script = opening + envelope + headers + b"Subject: probe\r\n\r\n" + marker + b"\r\n.\r\n"
    received, _ = await _exchange(target.ports[listener], FuzzSession(listener, (script,), "quit"))
    codes = check_replies(received)
    assert codes[-2:] == [b"250", b"221"], f"the probe after a fuzz session was refused: {received!r}"
    deadline = time.monotonic() + 10
    while not target.delivered(marker):
        assert time.monotonic() < deadline, f"probe {marker!r} accepted but never reached the sink"
        await asyncio.sleep(0.01)


def run_session(target: Target, session: FuzzSession) -> None:
    """Run one session and the probe after it (from a thread other than the service's)."""

    async def both() -> None:
        received, closed_after = await _exchange(target.ports[session.listener], session)
        check_replies(received)
        target.closed_after.append(closed_after)
        await _probe(target, session.listener)

    target.sessions += 1
    started = time.monotonic()
    try:
        asyncio.run(both())
    except BaseException as exc:
        exc.add_note(f"session: {session!r}")
        raise
    finally:
        target.durations.append((time.monotonic() - started, session))


def memory_peak_reset() -> None:
    """Start measuring the process's peak RSS afresh (Linux: /proc/self/clear_refs, "5")."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_kib(field_name: str) -> int:
    """VmRSS or VmHWM (the peak since the last reset) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/self/status")


def open_sessions(target: Target) -> dict[str, int]:
    smtp = target.node.service.smtp
    assert smtp is not None
    return smtp.connections


def settings_for(examples: int, **extra: Any) -> dict[str, Any]:
    """Hypothesis settings for a fuzz run: our own timeouts, not hypothesis's deadline."""
    from hypothesis import HealthCheck

    return {
        "max_examples": examples,
        "deadline": None,
        "database": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
        **extra,
    }
