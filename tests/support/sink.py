"""A scriptable SMTP/LMTP sink on the running loop: records what arrives, answers as told."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HANG = "hang"  # never answer the command (the client must time out)
DROP = "drop"  # close the connection instead of answering


@dataclass
class Reply:
    """What the sink answers in one transaction; None accepts normally, or HANG / DROP."""

    mail: str | None = None  # e.g. "451 4.3.0 try later"
    rcpt: str | None = None
    data: str | None = None


@dataclass
class ReceivedMessage:
    """One accepted message: the envelope and the exact bytes (dot-unstuffed, CRLF endings)."""

    mail_from: str  # "" for the null reverse path <>
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)  # e.g. ["SIZE=120", "BODY=8BITMIME"]
    tls: bool = False  # arrived after STARTTLS
    login: str | None = None  # the AUTH user name, when the client authenticated


@dataclass
class Sink:
    """A running sink. `queue` scripts transactions in order; `reply_for` scripts recipients."""

    host: str
    port: int
    messages: list[ReceivedMessage] = field(default_factory=list)
    transactions: int = 0
    _queued: deque[Reply] = field(default_factory=deque, repr=False)
    _by_recipient: dict[str, Reply] = field(default_factory=dict, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # message or close
    _server: asyncio.Server | None = field(default=None, repr=False)
    _sessions: list[SMTP] = field(default_factory=list, repr=False)

    def queue(self, *replies: Reply) -> None:
        """Script the next transactions (one Reply per MAIL); after them, accept normally."""
        self._queued.extend(replies)

    def reply_for(self, recipient: str, reply: Reply) -> None:
        """Script every transaction to `recipient` (its rcpt and data answers win over queue)."""
        self._by_recipient[recipient.lower()] = reply

    @property
    def open_connections(self) -> int:
        """Client connections not yet closed."""
        return sum(1 for session in self._sessions if session.transport is not None)

    @property
    def open_transactions(self) -> int:
        """Open connections with a transaction under way: MAIL accepted, no RSET or end of DATA yet."""
        return sum(
            1
            for session in self._sessions
            if session.transport is not None
            and session.envelope is not None
            and session.envelope.mail_from is not None
        )

    @property
    def connections(self) -> int:
        """Client connections accepted so far, open or closed."""
        return len(self._sessions)

    def drop_connections(self) -> None:
        """Close every open client connection, as a server does with idle ones; keep listening."""
        for session in self._sessions:
            if session.transport is not None:
                session.transport.close()

    async def wait_for_messages(
        self,
        n: int,
        timeout: float = 10.0,
    ) -> list[ReceivedMessage]:
        """Wait until at least n messages have arrived; AssertionError with what came on timeout."""
        if not await self._wait_until(lambda: len(self.messages) >= n, timeout):
            raise AssertionError(
                f"sink got {len(self.messages)} of {n} messages in {timeout} s: {self.messages!r}"
            )
        return list(self.messages)

    async def wait_disconnected(
        self,
        timeout: float = 10.0,
    ) -> None:
        """Wait until every client connection has ended; AssertionError on timeout."""
        if not await self._wait_until(lambda: self.open_connections == 0, timeout):
            raise AssertionError(f"{self.open_connections} connections still open after {timeout} s")

    async def wait_no_transaction(self, timeout: float = 10.0) -> None:
        """Wait until no transaction is open (ended by DATA, RSET or a close); AssertionError if one is."""
        if not await self._wait_until(lambda: self.open_transactions == 0, timeout):
            raise AssertionError(f"{self.open_transactions} transactions still open after {timeout} s")

    async def wait_open_connections(self, n: int, timeout: float = 10.0) -> None:
        """Wait until at most n client connections are open; AssertionError on timeout."""
        if not await self._wait_until(lambda: self.open_connections <= n, timeout):
            raise AssertionError(f"{self.open_connections} connections still open after {timeout} s, not {n}")

    async def _wait_until(self, condition: Callable[[], bool], seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        return condition()

    async def close(self) -> None:
        """Stop listening, cut every open connection and wait for aiosmtpd's tasks to end."""
        if self._server is not None:
            self._server.close()
        tasks = []
        for session in self._sessions:
            transport = session.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            elif transport is not None:
                transport.close()
            task = session._handler_coroutine  # aiosmtpd's per-connection task (pinned 1.4.6)
            if task is not None:
                task.cancel()
                tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _reply_for(self, recipients: list[str]) -> Reply | None:
        for recipient in recipients:
            reply = self._by_recipient.get(recipient.lower())
            if reply is not None:
                return reply
        return None

    def _record(self, session: Session, envelope: Envelope, recipients: list[str]) -> None:
        mail_from = envelope.mail_from or ""
        auth: Any = session.auth_data  # the LoginPassword our authenticator accepted
        login = auth.login.decode() if session.authenticated else None
        self.messages.append(
            ReceivedMessage(
                "" if mail_from == "<>" else mail_from,
                list(recipients),
                bytes(envelope.original_content or b""),
                list(envelope.mail_options),
                tls=session.ssl is not None,
                login=login,
            )
        )
        self._changed.set()


class _Handler:
    """aiosmtpd hooks for one connection; `current` is the Reply of its open transaction."""

    def __init__(self, sink: Sink, lmtp: bool) -> None:
        self.sink = sink
        self.lmtp = lmtp
        self.current = Reply()

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.sink.transactions += 1
        self.current = self.sink._queued.popleft() if self.sink._queued else Reply()
        status = await _scripted(server, self.current.mail)
        if status is None:
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return "250 2.1.0 OK"
        return status

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink._reply_for([address]) or self.current
        status = await _scripted(server, reply.rcpt)
        if status is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 2.1.5 OK"
        return status

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sink._changed.set()
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.lmtp:
            return await self._data_reply(server, session, envelope, envelope.rcpt_tos)
        # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
        replies = [await self._data_reply(server, session, envelope, [rcpt]) for rcpt in envelope.rcpt_tos]
        return "\r\n".join(replies)

    async def _data_reply(
        self, server: SMTP, session: Session, envelope: Envelope, recipients: list[str]
    ) -> str:
        reply = self.sink._reply_for(recipients) or self.current
        status = await _scripted(server, reply.data)
        if status is None or status.startswith("2"):
            self.sink._record(session, envelope, recipients)
        return status or "250 2.0.0 OK"


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP session, telling the sink when its connection ends."""

    sink: Sink

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.sink._changed.set()


class _SinkLMTP(LMTP, _SinkSMTP):
    pass


def _authenticator(credentials: tuple[str, str]) -> Any:
    """aiosmtpd's authenticator hook accepting one user name and password (PLAIN, LOGIN)."""
    user, password = (value.encode() for value in credentials)

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user, password)
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    return authenticate


async def _scripted(server: SMTP, answer: str | None) -> str | None:
    """The scripted answer; HANG and DROP wait until aiosmtpd cancels the connection's task."""
    if answer not in (HANG, DROP):
        return answer
    if answer == DROP and server.transport is not None:
        server.transport.close()
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    return await never


async def start_sink(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls_context: ssl.SSLContext | None = None,
    lmtp: bool = False,
    data_size_limit: int = 33554432,
    credentials: tuple[str, str] | None = None,
) -> Sink:
    """Start a sink advertising SIZE, 8BITMIME, SMTPUTF8 (and STARTTLS with a tls_context).

    With `credentials` (user, password) it offers AUTH PLAIN/LOGIN, without TLS too (the
    client allows that on loopback), and records the login; AUTH stays optional.
    """
    loop = asyncio.get_running_loop()
    sink = Sink(host, port)
    protocol_class = _SinkLMTP if lmtp else _SinkSMTP

    def make_session() -> SMTP:
        kwargs: dict[str, Any] = {
            "hostname": "sink.test",
            "data_size_limit": data_size_limit,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "tls_context": tls_context,
            "loop": loop,
        }
        if credentials is not None:
            kwargs["authenticator"] = _authenticator(credentials)
            kwargs["auth_require_tls"] = False
        session = protocol_class(_Handler(sink, lmtp), **kwargs)
        session.sink = sink
        sink._sessions.append(session)
        return session

    sink._server = await loop.create_server(make_session, host, port)
    sink.port = sink._server.sockets[0].getsockname()[1]
    return sink
