"""The outbound SMTP endpoint: one transaction, one recipient, every reply kept (RFC 5321).

An upstream session runs in two steps so that the SMTP gateway can cut through: envelope()
connects and sends MAIL and RCPT as soon as its client names a recipient, data() sends the
message on the same connection once the client has sent it all, and close() ends the session.
With a ConnectionPool, close() hands a finished connection back (after RSET) instead of QUIT,
and the next session to the same destination starts at MAIL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiosmtplib

from mailnode.core.outcome import AttemptResult, Stage
from mailnode.core.response import Response
from mailnode.errors import DeliveryError
from mailnode.smtp.mx import MxResolver

log = logging.getLogger(__name__)

# Characters that cannot appear inside <...> on a MAIL or RCPT command line (surrogates: bytes
# that were never valid UTF-8).
_UNSAFE_IN_PATH = re.compile("[\x00-\x1f\x7f<>\ud800-\udfff]")


@dataclass(frozen=True)
class SmtpOptions:
    """How to talk to the next hop: names, timeouts (seconds), TLS policy, credentials."""

    helo_hostname: str
    connect_timeout: float = 30.0  # TCP connect and the 220 greeting
    command_timeout: float = 300.0  # each command's reply, the end-of-DATA reply included
    starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    verify_tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    lmtp: bool = False  # RFC 2033: LHLO instead of EHLO; one recipient, so one DATA reply

    def __post_init__(self) -> None:
        name = self.helo_hostname
        if not name or not name.isascii() or any(c.isspace() or not c.isprintable() for c in name):
            raise ValueError(f"helo_hostname must be a non-empty ASCII host name, got {name!r}")
        if self.connect_timeout <= 0 or self.command_timeout <= 0:
            raise ValueError("connect_timeout and command_timeout must be positive (seconds)")
        if self.starttls not in ("opportunistic", "required", "off"):
            raise ValueError(f"starttls must be opportunistic, required or off, not {self.starttls!r}")


@dataclass(frozen=True)
class EnvelopeInfo:
    """What MAIL and RCPT need to know before the message exists."""

    mail_from: str  # "" is the null reverse path <>
    rcpt_to: str
    size: int | None = None  # the SIZE= hint (RFC 1870); None: no SIZE, no local size check
    body_8bit: bool = False  # declare BODY=8BITMIME when the server offers it (RFC 6152)
    smtputf8: bool = False  # the headers need SMTPUTF8 (RFC 6531); non-ASCII addresses always do

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 0:
            raise ValueError(f"size must be a byte count (>= 0) or None, not {self.size}")

    @classmethod
    def for_message(
        cls, mail_from: str, rcpt_to: str, message: bytes, *, smtputf8: bool = False
    ) -> EnvelopeInfo:
        """The envelope of a message already in hand: its exact size and whether it is 8-bit."""
        return cls(mail_from, rcpt_to, len(message), not message.isascii(), smtputf8)


class UpstreamSession(Protocol):
    """One upstream transaction for one recipient: envelope(), then data(), always close()."""

    @property
    def remote_host(self) -> str | None:
        """The peer that gave the answers so far (None before a connection was tried)."""
        ...

    async def envelope(self) -> AttemptResult:
        """Connect, EHLO, STARTTLS, AUTH, MAIL, RCPT; .data is None; never raises on SMTP errors."""
        ...

    async def data(self, message: bytes) -> AttemptResult:
        """Send the message after an accepted envelope; a refused envelope's result otherwise."""
        ...

    async def close(self) -> None:
        """QUIT (or RSET and return it to its pool) if connected and release the socket; idempotent."""
        ...


@dataclass(frozen=True)
class _PoolKey:
    """What must match for a connection to be reused: the peer and all that shaped the conversation."""

    address: str
    port: int
    helo_hostname: str
    lmtp: bool
    starttls: str
    verify_tls: bool
    tls_name: str | None  # the name the certificate was checked against, when it was checked
    username: str | None  # never reuse an authenticated connection for other credentials
    password: str | None = field(repr=False)

    @classmethod
    def of(cls, address: str, port: int, options: SmtpOptions, tls_name: str) -> _PoolKey:
        checked_name = tls_name if options.verify_tls and options.starttls != "off" else None
        return cls(
            address,
            port,
            options.helo_hostname,
            options.lmtp,
            options.starttls,
            options.verify_tls,
            checked_name,
            options.username,
            options.password,
        )


@dataclass
class _Idle:
    """A parked connection: past EHLO, STARTTLS and AUTH, with no transaction open."""

    client: aiosmtplib.SMTP
    transport: asyncio.Transport | None  # the TCP transport under any TLS
    uses: int  # transactions it has carried
    since: float  # the pool's clock when it was parked


class ConnectionPool:
    """Idle upstream connections kept for the next transaction to the same destination.

    Like Postfix's connection cache: a session whose transaction is over sends RSET
    (RFC 5321 §4.1.1.5) and parks its connection here instead of QUIT, and the next session
    with the same key (address, port, and every option that shapes the conversation) starts at
    MAIL, skipping connect, greeting, EHLO, STARTTLS and AUTH. Bounded per destination and in
    total; a connection idle for `idle_seconds` or used `max_uses` times is closed. It runs no
    task of its own: expired connections are swept whenever one is taken or parked, and
    `close()` (the owner calls it at shutdown) QUITs the rest.
    """

    def __init__(
        self,
        max_idle_per_destination: int = 4,
        idle_seconds: float = 30.0,
        max_uses: int = 100,
        *,
        max_idle: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_idle_per_destination, max_uses, max_idle) < 1 or idle_seconds <= 0:
            raise ValueError(
                "max_idle_per_destination, max_uses and max_idle must be at least 1 "
                f"and idle_seconds positive, got {max_idle_per_destination}, {max_uses}, "
                f"{max_idle} and {idle_seconds}"
            )
        self._max_per_destination, self._max_idle = max_idle_per_destination, max_idle
        self._idle_seconds, self._max_uses, self._clock = idle_seconds, max_uses, clock
        self._idle: dict[_PoolKey, list[_Idle]] = {}  # oldest first, as parked
        self._count = 0
        self._closing: set[asyncio.Task[None]] = set()  # QUITs of retired connections
        self._closed = False

    @property
    def idle_connections(self) -> int:
        """Connections parked now, over every destination."""
        return self._count

    async def close(self) -> None:
        """QUIT every idle connection (each bounded by its command timeout); park nothing more."""
        self._closed = True
        for stack in self._idle.values():
            for idle in stack:
                self._retire(idle)
        self._idle.clear()
        self._count = 0
        await asyncio.gather(*self._closing)  # a cancelled close() cancels them: they abort

    def _take(self, key: _PoolKey) -> _Idle | None:
        """The most recently parked connection for `key` that is still open, or None."""
        if self._closed:
            return None
        self._sweep()
        stack = self._idle.get(key)
        while stack:
            idle = stack.pop()
            self._count -= 1
            if not stack:
                del self._idle[key]
            if idle.client.is_connected:
                return idle
            _drop(idle)  # the server closed it while it was idle
        return None

    def _has_room(self, key: _PoolKey, uses: int) -> bool:
        """Would a connection that has carried `uses` transactions be parked under `key`?"""
        parked = len(self._idle.get(key, ()))
        return not self._closed and uses < self._max_uses and parked < self._max_per_destination

    def _park(self, key: _PoolKey, idle: _Idle) -> bool:
        """Keep `idle` for the next session with `key`; False when the caller must close it."""
        if not self._has_room(key, idle.uses):
            return False
        self._sweep()
        if self._count >= self._max_idle:
            self._retire_oldest()
        idle.since = self._clock()
        self._idle.setdefault(key, []).append(idle)
        self._count += 1
        return True

    def _sweep(self) -> None:
        """Retire the connections idle for idle_seconds or longer."""
        deadline = self._clock() - self._idle_seconds
        for key in list(self._idle):
            stack = self._idle[key]
            while stack and stack[0].since <= deadline:
                self._retire(stack.pop(0))
                self._count -= 1
            if not stack:
                del self._idle[key]

    def _retire_oldest(self) -> None:
        key = min(self._idle, key=lambda k: self._idle[k][0].since)
        stack = self._idle[key]
        self._retire(stack.pop(0))
        self._count -= 1
        if not stack:
            del self._idle[key]

    def _retire(self, idle: _Idle) -> None:
        """Close a connection the pool lets go: QUIT in a task the pool owns, as it may take a while."""
        if not idle.client.is_connected:
            _drop(idle)
            return
        task = asyncio.get_running_loop().create_task(_quit_and_drop(idle))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _quit_and_drop(idle: _Idle) -> None:
    try:
        await _quit(idle.client)
    finally:
        _drop(idle)


def _drop(idle: _Idle) -> None:
    idle.client.close()
    if idle.transport is not None:
        idle.transport.abort()


@dataclass
class _Progress:
    """How far one connection got: the step in progress and the replies kept so far."""

    remote_host: str
    tls_name: str
    step: str = "connect"
    stage: Stage = Stage.MAIL
    mail: Response | None = None
    rcpt: Response | None = None
    reusable: bool = False  # past EHLO, STARTTLS and AUTH, and every reply in its place
    failure: Exception | None = None  # what ended the connection, when no reply did

    def result(self, response: Response) -> AttemptResult:
        """The attempt ends with `response` at the current stage."""
        if self.stage is Stage.MAIL:
            return AttemptResult(mail=response, remote_host=self.remote_host)
        if self.stage is Stage.RCPT:
            return AttemptResult(mail=self.mail, rcpt=response, remote_host=self.remote_host)
        return AttemptResult(self.mail, self.rcpt, response, self.remote_host)


class _State(enum.Enum):
    NEW = "new"  # envelope() not called yet
    ENVELOPE = "envelope"  # envelope() running
    READY = "ready"  # MAIL and RCPT accepted; the connection waits for data()
    DATA = "data"  # data() running
    DONE = "done"  # the result is final: a refused envelope, or the DATA answer


class SmtpSession:
    """An UpstreamSession to one host:port: a smarthost, or one address of an MX host.

    `server_name` is the name the TLS certificate is checked against and that remote_host shows
    (the MX host name when `host` is its address). Line endings are sent as CRLF and a final
    CRLF is added when missing (aiosmtplib does both). With a `pool`, envelope() first tries an
    idle connection to the same host:port with the same options, and close() parks the
    connection there once its transaction is over.
    """

    def __init__(
        self,
        host: str,
        port: int,
        info: EnvelopeInfo,
        options: SmtpOptions,
        *,
        server_name: str | None = None,
        pool: ConnectionPool | None = None,
    ) -> None:
        name = server_name or host
        self.remote_host: str = _remote_host(name, host, port)
        self._host, self._port, self._info, self._options = host, port, info, options
        self._tls_name = host if name.startswith("[") else name
        self._state = _State.NEW
        self._closed = False
        self._result: AttemptResult | None = None  # envelope()'s answer, then data()'s
        self._progress = _Progress(self.remote_host, self._tls_name)
        self._client: aiosmtplib.SMTP | None = None
        self._transport: asyncio.Transport | None = None  # the TCP transport under any TLS
        self._pool, self._key = pool, _PoolKey.of(host, port, options, self._tls_name)
        self._uses = 0  # transactions on the current connection, this one included

    async def __aenter__(self) -> SmtpSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def envelope(self) -> AttemptResult:
        """Go as far as RCPT; the connection stays open only when MAIL and RCPT were accepted."""
        self._expect(_State.NEW, "envelope()")
        if self._closed:
            raise RuntimeError("envelope() after close()")
        self._state = _State.ENVELOPE
        try:
            self._result = await self._envelope()
        except BaseException:
            self._abort()  # cancelled: nobody will send DATA on this connection
            raise
        finally:
            self._state = _State.READY if self._client is not None else _State.DONE
        return self._result

    async def data(self, message: bytes) -> AttemptResult:
        """Send `message` on the envelope's connection; only once, and never after a refusal."""
        if self._state is _State.DONE and self._result is not None:
            return self._result
        self._expect(_State.READY, "data()")
        if self._closed:
            raise RuntimeError("data() after close(): the upstream connection is gone")
        self._state = _State.DATA
        progress = self._progress
        progress.stage, progress.step = Stage.DATA, "DATA"
        # What a second data() call answers if this one is cancelled before the reply.
        self._result = progress.result(Response(451, f"4.3.0 DATA to {self.remote_host} was interrupted"))
        try:
            self._result = await self._data(message)
        except BaseException:
            self._abort()
            raise
        finally:
            self._state = _State.DONE
        return self._result

    async def close(self) -> None:
        """Park or QUIT an idle connection (bounded by command_timeout); always release it."""
        self._closed = True
        try:
            if self._state not in (_State.ENVELOPE, _State.DATA):
                await self._release()
        finally:
            # A running envelope() or data() sees the connection end and returns a 4xx; a
            # connection in the middle of a transaction is never parked.
            self._abort()

    def _expect(self, state: _State, call: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"{call} called while the session is {self._state.value}")

    async def _envelope(self) -> AttemptResult:
        info = self._info
        refusal = _envelope_refusal(info.mail_from, info.rcpt_to)
        if refusal is not None:
            return AttemptResult.failed_at(*refusal, remote_host=self.remote_host)
        idle = self._pool._take(self._key) if self._pool is not None else None
        if idle is not None:
            result = await self._reuse(idle)
            if not self._went_stale(result):
                return result
            log.debug("idle connection to %s had ended (%s); connecting again", self.remote_host, result.mail)
        result = await self._connect_and_send_envelope(self._options)
        retry = self._client is None and not self._closed and self._progress.step == "STARTTLS"
        if retry and self._options.starttls == "opportunistic":
            # Opportunistic TLS must not make mail undeliverable: retry once in plaintext.
            log.info("STARTTLS with %s failed (%s); retrying without TLS", self.remote_host, result.mail)
            plaintext = dataclasses.replace(self._options, starttls="off")
            result = await self._connect_and_send_envelope(plaintext)
        return result

    async def _connect_and_send_envelope(self, options: SmtpOptions) -> AttemptResult:
        """One new connection up to RCPT."""
        self._progress = progress = _Progress(self.remote_host, self._tls_name)
        self._client = client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            local_hostname=options.helo_hostname,
            timeout=options.command_timeout,
            start_tls=False,
            validate_certs=options.verify_tls,
        )
        self._uses = 1
        return await self._converse(progress, self._connect_then_envelope(client, progress, options))

    async def _connect_then_envelope(
        self, client: aiosmtplib.SMTP, progress: _Progress, options: SmtpOptions
    ) -> AttemptResult:
        await client.connect(timeout=options.connect_timeout)
        if isinstance(client.transport, asyncio.Transport):
            self._transport = client.transport
        if self._closed:  # close() ran while we were connecting
            raise aiosmtplib.SMTPServerDisconnected("session closed")
        return await _envelope_commands(client, progress, self._info, options)

    async def _reuse(self, idle: _Idle) -> AttemptResult:
        """MAIL and RCPT on a pooled connection, which is past EHLO, STARTTLS and AUTH already."""
        self._progress = progress = _Progress(self.remote_host, self._tls_name, step="MAIL", reusable=True)
        self._client, self._transport, self._uses = idle.client, idle.transport, idle.uses + 1
        idle.client.timeout = self._options.command_timeout
        return await self._converse(progress, _transaction_commands(idle.client, progress, self._info))

    async def _converse(self, progress: _Progress, commands: Awaitable[AttemptResult]) -> AttemptResult:
        """Run `commands` up to RCPT: every failure becomes a result at the stage where it happened.

        The connection stays open for data() only when MAIL and RCPT were accepted; after a
        refusal it goes back to the pool (or gets its QUIT) at once.
        """
        try:
            result = await commands
        except aiosmtplib.SMTPResponseException as exc:
            result = progress.result(_reply(exc.code, exc.message, progress))
        except (aiosmtplib.SMTPException, OSError) as exc:
            progress.failure = exc
            result = progress.result(_failure(exc, progress))
        else:
            if _accepted(result):
                return result
            await self._release()
        self._abort()
        return result

    def _went_stale(self, result: AttemptResult) -> bool:
        """A reused connection's MAIL met a closed connection or a 421: the server timed it out."""
        progress = self._progress
        if self._closed or progress.step != "MAIL":
            return False
        lost = isinstance(progress.failure, (aiosmtplib.SMTPServerDisconnected, ConnectionError))
        return lost or (result.mail is not None and result.mail.code == 421)

    async def _release(self) -> None:
        """Park the connection in the pool when it will take it, QUIT it otherwise; let it go."""
        client = self._client
        if client is None:
            return
        if not await self._park(client):
            await _quit(client)
        self._abort()

    async def _park(self, client: aiosmtplib.SMTP) -> bool:
        """RSET (RFC 5321 §4.1.1.5) a connection between transactions and hand it to the pool."""
        pool = self._pool
        if pool is None or not self._progress.reusable or not client.is_connected:
            return False
        if not pool._has_room(self._key, self._uses):
            return False
        try:
            reply = await client.execute_command(b"RSET")
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.debug("RSET to %s failed: %s", self.remote_host, exc)
            return False
        if reply.code != 250 or not pool._park(self._key, _Idle(client, self._transport, self._uses, 0.0)):
            return False
        self._client, self._transport = None, None
        return True

    async def _data(self, message: bytes) -> AttemptResult:
        progress, client = self._progress, self._client
        if client is None or not client.is_connected:
            # The server gave up on us while the message was on its way (an idle timeout).
            self._abort()
            return progress.result(Response(451, f"4.4.2 connection to {self.remote_host} lost before DATA"))
        reusable, progress.reusable = progress.reusable, False  # until the DATA reply is in
        try:
            reply = await client.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            code, text = exc.code, exc.message
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._abort()
            return progress.result(_failure(exc, progress))
        else:
            code, text = reply.code, reply.message
        progress.reusable = reusable
        return progress.result(_reply(code, text, progress))

    def _abort(self) -> None:
        """Release the socket now: close() would wait for unsent data a stuck peer never reads."""
        if self._client is not None:
            self._client.close()
        if self._transport is not None:
            self._transport.abort()
        self._client, self._transport = None, None


class MxSession:
    """An UpstreamSession to a recipient domain: its destinations are tried inside envelope().

    The next destination is tried after a connection failure or a 4xx before any RCPT answer;
    data() goes to the connection that gave the RCPT answer. A `pool` is keyed by the address
    each destination's session connects to.
    """

    def __init__(
        self,
        resolver: MxResolver,
        domain: str,
        port: int,
        info: EnvelopeInfo,
        options: SmtpOptions,
        *,
        pool: ConnectionPool | None = None,
    ) -> None:
        self._resolver, self._domain, self._port = resolver, domain, port
        self._info, self._options, self._pool = info, options, pool
        self._current: SmtpSession | None = None
        self._result: AttemptResult | None = None
        self._closed = False

    @property
    def remote_host(self) -> str | None:
        return self._current.remote_host if self._current is not None else None

    async def __aenter__(self) -> MxSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def envelope(self) -> AttemptResult:
        """Resolve the domain and try its destinations in order until one gives a decisive answer."""
        if self._result is not None or self._closed:
            raise RuntimeError("envelope() is called once, before close()")
        self._result = AttemptResult.failed_at(
            Stage.MAIL, Response(451, f"4.4.3 no address for {self._domain}")
        )
        try:
            destinations = await self._resolver.resolve(self._domain)
        except DeliveryError as exc:
            self._result = AttemptResult.failed_at(Stage.MAIL, exc.response)
            return self._result
        for destination in destinations:
            if self._closed:
                break
            self._current = SmtpSession(
                destination.address,
                self._port,
                self._info,
                self._options,
                server_name=destination.host,
                pool=self._pool,
            )
            self._result = await self._current.envelope()
            if not _try_next_destination(self._result):
                break
        return self._result

    async def data(self, message: bytes) -> AttemptResult:
        """Send `message` to the destination that answered RCPT."""
        if self._result is None:
            raise RuntimeError("data() called before envelope()")
        if self._current is None:
            return self._result  # no destination was ever reached
        return await self._current.data(message)

    async def close(self) -> None:
        """End the connection to the current destination (the others are closed already)."""
        self._closed = True
        if self._current is not None:
            await self._current.close()


async def send_message(
    host: str,
    port: int,
    *,
    mail_from: str,
    rcpt_to: str,
    message: bytes,
    options: SmtpOptions,
    smtputf8: bool | None = None,
    server_name: str | None = None,
    pool: ConnectionPool | None = None,
) -> AttemptResult:
    """Deliver `message` to one recipient over one connection to host:port; never raises on SMTP.

    `server_name` and `pool` are as for SmtpSession. `smtputf8=True` marks a message whose
    headers need SMTPUTF8 (RFC 6531); non-ASCII addresses need it in any case.
    """
    info = EnvelopeInfo.for_message(mail_from, rcpt_to, message, smtputf8=bool(smtputf8))
    session = SmtpSession(host, port, info, options, server_name=server_name, pool=pool)
    return await _deliver(session, message)


async def deliver_via_mx(
    resolver: MxResolver,
    domain: str,
    port: int,
    *,
    mail_from: str,
    rcpt_to: str,
    message: bytes,
    options: SmtpOptions,
    smtputf8: bool | None = None,
    pool: ConnectionPool | None = None,
) -> AttemptResult:
    """Resolve `domain` and try its destinations in order until one gives a decisive answer."""
    info = EnvelopeInfo.for_message(mail_from, rcpt_to, message, smtputf8=bool(smtputf8))
    return await _deliver(MxSession(resolver, domain, port, info, options, pool=pool), message)


async def _deliver(session: UpstreamSession, message: bytes) -> AttemptResult:
    """A whole transaction at once: the envelope, the message if it was accepted, then close."""
    try:
        result = await session.envelope()
        if _accepted(result):
            result = await session.data(message)
        return result
    finally:
        await session.close()


def _accepted(result: AttemptResult) -> bool:
    """MAIL and RCPT were both accepted: the connection waits for DATA."""
    return result.mail is not None and result.mail.ok and result.rcpt is not None and result.rcpt.ok


def _try_next_destination(result: AttemptResult) -> bool:
    """Move on only after a 4xx before any RCPT answer: connect, greeting, EHLO, TLS or MAIL."""
    return result.rcpt is None and result.mail is not None and result.mail.temporary


async def _envelope_commands(
    client: aiosmtplib.SMTP, progress: _Progress, info: EnvelopeInfo, options: SmtpOptions
) -> AttemptResult:
    """EHLO, STARTTLS and AUTH as configured, then MAIL and RCPT; a refusal ends it early."""
    await _hello(client, progress, options)
    refusal = await _start_tls(client, progress, options) or await _login(client, progress, options)
    if refusal is not None:
        return progress.result(refusal)
    progress.reusable = True
    return await _transaction_commands(client, progress, info)


async def _transaction_commands(
    client: aiosmtplib.SMTP, progress: _Progress, info: EnvelopeInfo
) -> AttemptResult:
    """MAIL and RCPT with the parameters the message needs; a local refusal sends neither."""
    params, refusal = _mail_parameters(client, progress, info)
    if refusal is not None:
        return progress.result(refusal)
    encoding = "utf-8" if b"SMTPUTF8" in params else "ascii"

    progress.step = "MAIL"
    mail_from = b"FROM:" + _path(info.mail_from, encoding)
    progress.mail = await _command(client, progress, b"MAIL", mail_from, *params)
    if not progress.mail.ok:
        return progress.result(progress.mail)
    progress.stage, progress.step = Stage.RCPT, "RCPT"
    progress.rcpt = await _command(client, progress, b"RCPT", b"TO:" + _path(info.rcpt_to, encoding))
    return progress.result(progress.rcpt)


async def _hello(client: aiosmtplib.SMTP, progress: _Progress, options: SmtpOptions) -> None:
    """EHLO (LHLO for LMTP), falling back to HELO when the server does not know EHLO."""
    if options.lmtp:
        progress.step = "LHLO"
        reply = await client.execute_command(b"LHLO", options.helo_hostname.encode("ascii"))
        if reply.code != 250:
            raise aiosmtplib.SMTPHeloError(reply.code, reply.message)
        client.last_ehlo_response = reply  # parses the extensions as for EHLO
        return
    progress.step = "EHLO"
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        # RFC 5321 §3.2: a server without extensions answers EHLO with 5xx; HELO works there.
        if exc.code < 500 or not client.is_connected:
            raise
        progress.step = "HELO"
        await client.helo()


async def _start_tls(client: aiosmtplib.SMTP, progress: _Progress, options: SmtpOptions) -> Response | None:
    """STARTTLS per the policy (RFC 3207); a refusal when TLS is required but not offered."""
    if options.starttls == "off":
        return None
    if not client.supports_extension("starttls"):
        if options.starttls == "required":
            return Response(451, f"4.7.4 TLS is required but {progress.remote_host} does not offer it")
        return None
    progress.step = "STARTTLS"
    await client.starttls(server_hostname=progress.tls_name, validate_certs=options.verify_tls)
    # RFC 3207 §4.2: forget what the server said before TLS and ask again.
    await _hello(client, progress, options)
    return None


async def _login(client: aiosmtplib.SMTP, progress: _Progress, options: SmtpOptions) -> Response | None:
    """AUTH when credentials are configured; never in plaintext except to a loopback address."""
    if options.username is None:
        return None
    encrypted = client.get_transport_info("sslcontext") is not None
    if not encrypted and not _is_loopback(client.get_transport_info("peername")):
        return Response(451, f"4.7.4 not sending credentials to {progress.remote_host} without TLS")
    if not client.supports_extension("auth"):
        return Response(451, f"4.7.4 {progress.remote_host} does not offer AUTH")
    progress.step = "AUTH"
    try:
        await client.login(options.username, options.password or "")
    except aiosmtplib.SMTPAuthenticationError as exc:
        # Wrong credentials are the operator's to fix, not the sender's failure: retry later.
        text = _clean(exc.message)
        return Response(451, f"4.7.8 authentication with {progress.remote_host} failed: {exc.code} {text}")
    return None


def _mail_parameters(
    client: aiosmtplib.SMTP, progress: _Progress, info: EnvelopeInfo
) -> tuple[list[bytes], Response | None]:
    """The MAIL parameters the server advertised and the message needs, or a local refusal."""
    params: list[bytes] = []
    if info.size is not None and client.supports_extension("size"):
        limit = client.esmtp_extensions["size"]
        if limit.isdigit() and 0 < int(limit) < info.size:
            # RFC 1870: don't send what the server has already said it won't take.
            text = f"5.3.4 message larger than the server's limit ({info.size} > {limit} bytes"
            return params, Response(552, f"{text} at {progress.remote_host})")
        params.append(b"SIZE=%d" % info.size)
    if info.body_8bit and client.supports_extension("8bitmime"):
        params.append(b"BODY=8BITMIME")  # RFC 6152; without 8BITMIME the bytes go as they are
    addresses_need_utf8 = not (info.mail_from.isascii() and info.rcpt_to.isascii())
    if addresses_need_utf8 or info.smtputf8:
        if not client.supports_extension("smtputf8"):
            # RFC 6531 has no downgrade: without SMTPUTF8 the message cannot go there at all.
            if addresses_need_utf8:
                text = "5.6.7 non-ASCII addresses need SMTPUTF8, which"
                return params, Response(553, f"{text} {progress.remote_host} does not support")
            text = "5.6.9 a message with UTF-8 headers needs SMTPUTF8, which"
            return params, Response(554, f"{text} {progress.remote_host} does not support")
        params.append(b"SMTPUTF8")
    return params, None


async def _command(client: aiosmtplib.SMTP, progress: _Progress, *args: bytes) -> Response:
    # A command still waiting for its reply leaves the connection out of step: not reusable.
    reusable, progress.reusable = progress.reusable, False
    reply = await client.execute_command(*args)
    progress.reusable = reusable
    return _reply(reply.code, reply.message, progress)


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT politely; the answers that matter are already in hand, so a failure here is moot."""
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.debug("QUIT failed: %s", exc)


def _reply(code: int, message: str, progress: _Progress) -> Response:
    """A server reply as a Response; a malformed or out-of-place code becomes a 4xx of ours."""
    text = _clean(message)
    if 200 <= code <= 599 and code // 100 != 3:
        return Response(code, text)
    progress.reusable = False  # out of step with the server: RSET's reply could be anything's
    unexpected = f"4.5.0 unexpected reply to {progress.step} from {progress.remote_host}"
    return Response(451, f"{unexpected}: {code} {text}".rstrip())


def _failure(exc: Exception, progress: _Progress) -> Response:
    """A connection-level failure (no reply to relay) as a temporary Response."""
    remote, step = progress.remote_host, progress.step
    if isinstance(exc, TimeoutError):
        if step != "connect":
            return Response(451, f"4.4.2 timeout waiting for {step} reply from {remote}")
        if isinstance(exc.__cause__, aiosmtplib.SMTPTimeoutError):
            return Response(451, f"4.4.2 timeout waiting for the greeting from {remote}")
        return Response(451, f"4.4.1 timeout connecting to {remote}")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        cause = exc.__cause__
        if isinstance(cause, ConnectionRefusedError):
            return Response(451, f"4.4.1 connection refused by {remote}")
        if isinstance(cause, aiosmtplib.SMTPServerDisconnected):
            return Response(451, f"4.4.2 {remote} closed the connection before its greeting")
        return Response(451, f"4.4.1 cannot connect to {remote}: {cause or exc}")
    if step == "STARTTLS":
        return Response(451, f"4.7.5 TLS negotiation with {remote} failed: {exc}")
    if isinstance(exc, ConnectionError):
        return Response(451, f"4.4.2 connection to {remote} lost during {step}")
    return Response(451, f"4.4.0 {step} with {remote} failed: {exc}")


def _envelope_refusal(mail_from: str, rcpt_to: str) -> tuple[Stage, Response] | None:
    if _UNSAFE_IN_PATH.search(mail_from):
        return Stage.MAIL, Response(553, f"5.1.7 invalid sender address {mail_from!r}")
    if not rcpt_to or _UNSAFE_IN_PATH.search(rcpt_to):
        return Stage.RCPT, Response(553, f"5.1.3 invalid recipient address {rcpt_to!r}")
    return None


def _path(address: str, encoding: str) -> bytes:
    """An RFC 5321 §4.1.2 path; "" is the null reverse path <>."""
    return b"<" + address.encode(encoding) + b">"


def _clean(text: str) -> str:
    """Server text decoded with surrogateescape, made safe to store and relay."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_loopback(peername: object) -> bool:
    if not isinstance(peername, tuple) or not peername:
        return False
    try:
        return ipaddress.ip_address(str(peername[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


def _remote_host(name: str, address: str, port: int) -> str:
    """How an attempt names its peer: mx1.example.com[192.0.2.1]:25, or [192.0.2.1]:25."""
    if name in (address, f"[{address}]"):
        return f"[{address}]:{port}"
    return f"{name}[{address}]:{port}"
