"""The SMTP listeners: submission (587), submission over implicit TLS (465) and ingress (25).

Each connection is an aiosmtpd `SMTP` protocol object served by `loop.create_server` on
mailnode's own loop. aiosmtpd does the protocol (line reading, DATA with dot-unstuffing and the
size limit, STARTTLS); mailnode decides: who may AUTH, which senders and recipients are allowed,
and what the exploder answers at RCPT and at the end of DATA.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import ipaddress
import itertools
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, TLSSetupException

from mailnode.config import Config, HostPort
from mailnode.core.address import AddressError, parse_address, parse_reverse_path, sender_domain_allowed
from mailnode.core.exploder import Mode
from mailnode.core.response import Response
from mailnode.errors import ConfigError, MailnodeError
from mailnode.metrics import ListenerMetrics, Metrics
from mailnode.router.exploder import DownstreamTransaction, Exploder, SmtpClient
from mailnode.router.routes import match_route
from mailnode.smtp.auth import AuthThrottle, ThrottleSettings, authenticate
from mailnode.smtp.peer import CHECK_UNAVAILABLE, FCRDNS_FAILED, HELO_FAILED, DnsUnavailable, PeerChecker
from mailnode.storage.events import EventStore
from mailnode.storage.store import ApiKeyRecord, Store
from mailnode.tasks import TaskSet

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

IDENT = "ESMTP mailnode"
INTERNAL_ERROR = "451 4.3.0 internal error, try again later"
TOO_MANY_CONNECTIONS = b"421 4.7.0 too many connections, try again later\r\n"
IDLE_TIMEOUT = b"421 4.4.2 idle for too long, closing connection\r\n"
SHUTTING_DOWN = b"421 4.3.2 service shutting down, try again later\r\n"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_UNAVAILABLE = "503 5.5.1 AUTH is not available on this port"
AUTH_TEMPORARY_FAILURE = "454 4.7.0 temporary authentication failure, try again later"
AUTH_BANNED = "421 4.7.0 too many failed authentication attempts, try again later"
RELAYING_DENIED = "550 5.7.1 relaying denied"
# Characters a reply must never carry: controls other than tab, DEL, C1 controls, surrogates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
TOO_MANY_RECIPIENTS = "452 4.5.3 too many recipients"
# A client may try this many times max_recipients RCPTs per transaction (refused ones
# included): each one creates a delivery, so refused recipients must be bounded too.
RCPT_ATTEMPTS_FACTOR = 2

# RFC 3463 codes for aiosmtpd's own fixed replies, which carry none ("503 Error: need MAIL command").
_DEFAULT_STATUS = {
    "220": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "553": "5.1.3",
    "554": "5.5.0",
    "555": "5.5.4",
}


class _Reply(str):
    """A reply mailnode composed or relays from upstream: sent exactly as it is."""

    __slots__ = ()


def _reply(response: Response) -> _Reply:
    """An SMTP reply, multi-line when the text has several lines (RFC 5321 §4.2.1)."""
    lines = response.message.splitlines() or [""]
    code = response.code
    last = f"{code} {lines[-1]}".rstrip()
    return _Reply("".join(f"{code}-{line}\r\n" for line in lines[:-1]) + last)


@dataclass
class _Listener:
    """One listening socket and the policy its sessions follow."""

    name: str
    mode: Mode
    listen: HostPort
    starttls: ssl.SSLContext | None  # offered with STARTTLS (None on 465: TLS from the start)
    tls_on_connect: ssl.SSLContext | None
    plaintext_auth: bool  # AUTH without TLS from loopback peers (development)
    owner: SmtpListeners
    sessions: set[_Session] = field(default_factory=set)
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    server: asyncio.AbstractServer | None = None
    metrics: ListenerMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = self.owner.metrics.listener(self.name)


class SmtpListeners:
    """The running SMTP listeners; owns their servers, sessions and cleanup tasks."""

    def __init__(
        self,
        config: Config,
        *,
        exploder: Exploder,
        store: Store,
        clock: Callable[[], float],
        throttle: ThrottleSettings,
        sleep: Sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.exploder = exploder
        self.store = store
        self.events = EventStore(store)
        self.clock = clock
        self.sleep = sleep
        self.throttle = AuthThrottle(throttle, clock)
        ingress = config.smtp.ingress
        self.peer_checker: PeerChecker | None = None
        if ingress.require_fcrdns or ingress.require_helo_match:
            nameservers = [(ns.host, ns.port or 53) for ns in config.dns.nameservers]
            self.peer_checker = PeerChecker(nameservers, timeout=config.dns.timeout_seconds)
        self.addresses: dict[str, tuple[str, int]] = {}
        self._listeners: list[_Listener] = []
        self._tasks = TaskSet("smtp")

    @classmethod
    async def start(
        cls,
        config: Config,
        *,
        exploder: Exploder,
        store: Store,
        tls_context: ssl.SSLContext | None,
        clock: Callable[[], float] = time.time,
        throttle: ThrottleSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> SmtpListeners:
        """Listen on every enabled [smtp.*] address; on failure nothing is left listening."""
        throttle = throttle or config.smtp.auth_throttle
        self = cls(
            config,
            exploder=exploder,
            store=store,
            clock=clock,
            throttle=throttle,
            sleep=sleep,
            metrics=metrics,
        )
        try:
            for listener in self._plan(tls_context):
                await self._listen(listener)
        except BaseException:
            await self.close()
            raise
        return self

    def _plan(self, tls_context: ssl.SSLContext | None) -> list[_Listener]:
        smtp = self.config.smtp
        listeners = []
        if smtp.submission.enabled:
            listen = smtp.submission.listen
            loopback_auth = smtp.submission.allow_plaintext_auth_on_loopback and listen.is_loopback
            listeners.append(
                _Listener("submission", Mode.SUBMISSION, listen, tls_context, None, loopback_auth, self)
            )
        if smtp.submission_tls.enabled:
            if tls_context is None:
                raise ConfigError("smtp.submission_tls: implicit TLS needs a certificate ([tls] cert_file)")
            listen = smtp.submission_tls.listen
            listeners.append(
                _Listener("submission_tls", Mode.SUBMISSION, listen, None, tls_context, False, self)
            )
        if smtp.ingress.enabled:
            listen = smtp.ingress.listen
            listeners.append(_Listener("ingress", Mode.INGRESS, listen, tls_context, None, False, self))
        return listeners

    async def _listen(self, listener: _Listener) -> None:
        loop = asyncio.get_running_loop()
        listen = listener.listen
        try:
            listener.server = await loop.create_server(
                lambda: _Session(listener),
                listen.host,
                listen.port,
                ssl=listener.tls_on_connect,
                ssl_handshake_timeout=(
                    self.config.smtp.command_timeout_seconds if listener.tls_on_connect else None
                ),
            )
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise MailnodeError(
                f"smtp.{listener.name}.listen: cannot listen on {listen}: {reason}; "
                f"stop what uses it or choose another [smtp.{listener.name}] listen address"
            ) from None
        self._listeners.append(listener)
        host, port = listener.server.sockets[0].getsockname()[:2]
        self.addresses[listener.name] = (host, port)
        log.info("smtp %s listening on %s:%d", listener.name, host, port)

    @property
    def connections(self) -> dict[str, int]:
        """Open client connections per listener."""
        return {listener.name: len(listener.sessions) for listener in self._listeners}

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Run a cleanup task that close() waits for."""
        self._tasks.spawn(coroutine, name)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, tell every client 421, abort open transactions; at most about twice `grace`."""
        for listener in self._listeners:
            assert listener.server is not None
            listener.server.close()
        sessions = [session for listener in self._listeners for session in listener.sessions]
        for session in sessions:
            session.shut_down()
        handlers = {task for session in sessions if (task := session.handler_task) is not None}
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=grace)
            for session in sessions:
                session.abort_connection()
            for task in late:
                task.cancel()
            await asyncio.wait(handlers)
        await self._tasks.stop(grace)
        for listener in self._listeners:
            assert listener.server is not None
            await listener.server.wait_closed()
        self._listeners.clear()


class _SessionState(Session):
    # aiosmtpd 1.4.6 sets this deprecated property after every successful AUTH, and its setter
    # logs a warning each time; a plain attribute keeps the log clean.
    login_data: Any = None


class _Session(SMTP):
    """One client connection (aiosmtpd's protocol object) and its open transaction."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        self.name = f"{listener.name}-{next(listener.numbers)}"
        self.api_key: ApiKeyRecord | None = None
        self.transaction: DownstreamTransaction | None = None
        self.transactions = 0
        self.peer_refusal: str | None = None  # the peer checks' answer, once made (per session)
        self.peer_checked_helo: str | None = None
        self.rcpt_attempts = 0
        self._busy = 0
        self._held_lines: list[bytes] = []
        self._greeted = False
        self._refused = False
        # aiosmtpd keeps these limits in one dict shared by every session (its EHLO adds to
        # them); a dict per session keeps one client's EHLOs from changing another's limits.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        owner = listener.owner
        smtp = owner.config.smtp
        super().__init__(
            _HANDLER,
            data_size_limit=smtp.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=owner.config.smtp_hostname,
            ident=IDENT,
            tls_context=listener.starttls,
            timeout=smtp.command_timeout_seconds,
            auth_require_tls=False,  # mailnode decides (smtp_AUTH below): 465 is TLS without STARTTLS
            loop=asyncio.get_running_loop(),
        )

    def __dir__(self) -> list[str]:
        # aiosmtpd's __init__ finds the smtp_* and auth_* methods with dir() and
        # inspect.getmembers() on every connection, and getmembers reads every attribute,
        # properties included: about a third of a connection's set-up. Naming only those
        # methods here is what it looks for, for a fraction of the cost.
        return list(_SESSION_METHODS)

    # -- what the handler asks ---------------------------------------------------------------

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._handler_coroutine

    @property
    def tls(self) -> bool:
        """The session is encrypted (after STARTTLS, or from the first byte on 465)."""
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    @property
    def peer_ip(self) -> str | None:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    @property
    def offers_auth(self) -> bool:
        listener = self.listener
        if listener.mode is not Mode.SUBMISSION:
            return False
        return self.tls or (listener.plaintext_auth and _is_loopback(self.peer_ip))

    def client(self) -> SmtpClient:
        assert self.session is not None
        key = self.api_key
        return SmtpClient(
            address=self.peer_ip,
            helo=self.session.host_name,
            tls=self.tls,
            api_key_id=key.id if key is not None else None,
            domain=key.domain if key is not None else None,
            esmtp=self.session.extended_smtp,
        )

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Waiting on mailnode (the exploder, an AUTH delay), not on the client: no idle timeout."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1

    async def abort_transaction(self, reason: str) -> None:
        transaction, self.transaction = self.transaction, None
        if transaction is None:
            return
        log.info("smtp session=%s tx=%d aborted (%s)", self.name, self.transactions, reason)
        try:
            await transaction.abort()
        except Exception:
            log.exception("smtp session=%s aborting a transaction failed", self.name)

    # -- connection lifecycle ----------------------------------------------------------------

    def _create_session(self) -> Session:
        return _SessionState(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # the TLS layer after STARTTLS, same connection
            super().connection_made(transport)
            return
        sessions = self.listener.sessions
        if len(sessions) >= self.listener.owner.config.smtp.max_connections:
            self._refused = True
            log.warning("smtp %s refused a connection: max_connections reached", self.listener.name)
            assert isinstance(transport, asyncio.WriteTransport)
            self.listener.metrics.reply(TOO_MANY_CONNECTIONS)
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        sessions.add(self)
        self.listener.metrics.session.inc()
        super().connection_made(transport)
        log.debug("smtp session=%s connected peer=%s", self.name, self.peer_ip)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.listener.sessions.discard(self)
        handler = self._handler_coroutine
        super().connection_lost(error)  # cancels the handler task
        log.debug("smtp session=%s closed", self.name)
        if self.transaction is not None:
            self.listener.owner.spawn(self._abort_after(handler), f"smtp-abort-{self.name}")

    async def _abort_after(self, handler: asyncio.Task[None] | None) -> None:
        if handler is not None:
            await asyncio.wait([handler])  # let a cancelled RCPT or DATA wait unwind first
        await self.abort_transaction("disconnected")

    def data_received(self, data: bytes) -> None:
        # Idle means no bytes from the client (RFC 5321 §4.5.3.2.6: a DATA block timeout),
        # so a large message that keeps arriving is not cut off.
        if not self._refused:
            self._reset_timeout()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        if self._busy:
            self._reset_timeout()
            return
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            log.info("smtp session=%s idle timeout", self.name)
            self.listener.metrics.reply(IDLE_TIMEOUT)
            transport.write(IDLE_TIMEOUT)
            super()._timeout_cb()  # type: ignore[no-untyped-call]

    def shut_down(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            self.listener.metrics.reply(SHUTTING_DOWN)
            transport.write(SHUTTING_DOWN)
            transport.close()

    def abort_connection(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()

    # -- replies -------------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not isinstance(status, _Reply) and self._greeted:
            status = self._with_enhanced_status(status)
        self._greeted = True
        if isinstance(status, str):
            status = _printable_reply(status)
        self.listener.metrics.reply(status)
        line = status.encode() if isinstance(status, str) else status
        if line[3:4] == b"-" and b"\n" not in line:
            # One line of a multi-line reply pushed line by line (EHLO's): held back, so that
            # the whole reply goes out in one write, not in a segment per line.
            self._held_lines.append(line)
            return
        if self._held_lines:
            line = b"\r\n".join([*self._held_lines, line])
            self._held_lines.clear()
        await super().push(line)

    def _with_enhanced_status(self, text: str) -> str:
        """aiosmtpd's own reply, with an RFC 3463 code (and mailnode's wording for 552)."""
        code, _, rest = text.partition(" ")
        if code == "552":  # aiosmtpd's two size refusals: SIZE= too big, or DATA too big
            return f"552 5.3.4 message exceeds the size limit of {self.data_size_limit} bytes"
        status = _DEFAULT_STATUS.get(code)
        if status is None or Response(int(code), rest).enhanced_status:
            return text
        return f"{code} {status} {rest.removeprefix('Error: ')}"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("smtp session=%s TLS handshake failed: %s", self.name, error.__cause__)
        else:
            log.error("smtp session=%s internal error", self.name, exc_info=error)
        return _Reply(INTERNAL_ERROR)

    # -- commands aiosmtpd implements, with mailnode's policy in front -------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's parser (email's get_angle_addr) silently drops a source route
        # (<@relay:user@host>), which mailnode must see to refuse it; keep the path as written.
        return split_path(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.listener.mode is not Mode.SUBMISSION:
            await self.push(_Reply(AUTH_UNAVAILABLE))
            return
        if not self.offers_auth:
            await self.push(_Reply(AUTH_NEEDS_TLS))
            return
        if self.listener.owner.throttle.banned(_throttle_key(self.peer_ip)):
            await self.push(_Reply(AUTH_BANNED))
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_AUTH(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls:
            await self.push(_Reply("503 5.5.1 TLS is already active"))
            return
        if not arg and self.tls_context is not None:
            # RFC 3207 §4.2: both sides forget everything said before TLS.
            await self.abort_transaction("STARTTLS")
            self.api_key = None
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        await super().smtp_DATA(arg)
        if self.envelope is not envelope and self.transaction is not None:
            # aiosmtpd discarded the message (over the size limit, or a line too long) and
            # answered; the transaction ends with it, the session goes on.
            await self.abort_transaction("message refused")


class _Handler:
    """aiosmtpd's hooks; per-connection state lives on the `_Session` passed as `server`."""

    def __dir__(self) -> list[str]:
        # As _Session.__dir__: what aiosmtpd looks for on every connection, and no more.
        return list(_HANDLER_METHODS)

    async def handle_EHLO(
        self, server: _Session, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        await server.abort_transaction("EHLO")  # RFC 5321 §4.1.4: EHLO resets like RSET
        session.host_name = hostname
        smtp = server.listener.owner.config.smtp
        lines = [server.hostname, f"SIZE {smtp.max_message_bytes}", "8BITMIME", "SMTPUTF8", "PIPELINING"]
        lines.append("ENHANCEDSTATUSCODES")
        if server.tls_context is not None and not server.tls:
            lines.append("STARTTLS")
        if server.offers_auth:
            lines.append("AUTH PLAIN LOGIN")
        last = len(lines) - 1
        # One reply, so one write: clients that read a reply per segment (nmap's smtp library)
        # fall one reply behind when the lines of a multi-line reply arrive apart.
        return [_Reply("\r\n".join(f"250{' ' if i == last else '-'}{line}" for i, line in enumerate(lines)))]

    async def handle_HELO(self, server: _Session, session: Session, envelope: Envelope, hostname: str) -> str:
        await server.abort_transaction("HELO")
        session.host_name = hostname
        return _Reply(f"250 {server.hostname}")

    async def handle_RSET(self, server: _Session, session: Session, envelope: Envelope) -> str:
        await server.abort_transaction("RSET")
        return _Reply("250 2.0.0 OK")

    async def handle_QUIT(self, server: _Session, session: Session, envelope: Envelope) -> str:
        await server.abort_transaction("QUIT")
        return _Reply(f"221 2.0.0 {server.hostname} closing connection")

    async def handle_MAIL(
        self, server: _Session, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        listener = server.listener
        key = server.api_key
        if listener.mode is Mode.SUBMISSION and key is None:
            return _Reply(AUTH_REQUIRED)
        if not envelope.smtp_utf8 and not address.isascii():
            return _Reply("553 5.6.7 a non-ASCII address needs MAIL FROM:<...> SMTPUTF8 (RFC 6531)")
        if listener.mode is Mode.INGRESS and listener.owner.peer_checker is not None:
            with server.busy():
                refusal = await _check_peer(server, listener.owner.peer_checker)
            if refusal is not None:
                return _Reply(refusal)
        try:
            sender = parse_reverse_path("" if address == "<>" else address)
        except AddressError as exc:
            return _Reply(f"501 5.1.7 bad sender address: {exc}")
        if sender is not None and key is not None and not sender_domain_allowed(key.domain, sender.domain):
            return _Reply(
                f"550 5.7.1 sender domain {sender.domain} is not allowed for this key (domain {key.domain})"
            )
        await server.abort_transaction("new MAIL")  # aiosmtpd refuses a nested MAIL; a guard only
        server.transaction = listener.owner.exploder.begin(
            mode=listener.mode,
            mail_from="" if sender is None else str(sender),
            client=server.client(),
            body_8bit="BODY=8BITMIME" in options,
            smtputf8=envelope.smtp_utf8,
        )
        server.transactions += 1
        server.rcpt_attempts = 0
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        log.debug("smtp session=%s tx=%d mail from=<%s>", server.name, server.transactions, sender or "")
        return _Reply("250 2.1.0 sender ok")

    async def handle_RCPT(
        self, server: _Session, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        transaction = server.transaction
        assert transaction is not None  # aiosmtpd answers RCPT before a successful MAIL itself
        listener = server.listener
        limit = listener.owner.config.smtp.max_recipients
        # RFC 5321 §4.5.3.1.10: 452 tells the client to send the rest in another transaction.
        if len(envelope.rcpt_tos) >= limit or server.rcpt_attempts >= RCPT_ATTEMPTS_FACTOR * limit:
            return _Reply(TOO_MANY_RECIPIENTS)
        if not envelope.smtp_utf8 and not address.isascii():
            return _Reply("553 5.6.7 a non-ASCII address needs MAIL FROM:<...> SMTPUTF8 (RFC 6531)")
        try:
            recipient = parse_address(address)
        except AddressError as exc:
            if listener.mode is Mode.INGRESS and _asks_to_relay(address):
                return _Reply(RELAYING_DENIED)
            return _Reply(f"501 5.1.3 bad recipient address: {exc}")
        if listener.mode is Mode.INGRESS and not _routed(listener, recipient.domain_ascii):
            return _Reply(RELAYING_DENIED)
        server.rcpt_attempts += 1
        key = server.api_key
        if key is not None and key.domain is not None:
            try:
                with server.busy():
                    suppressed = await listener.owner.events.suppressed(key.domain, [str(recipient)])
            except MailnodeError:
                log.exception("smtp session=%s checking the suppression list failed", server.name)
                return _Reply(INTERNAL_ERROR)
            if suppressed:
                return _Reply(
                    f"550 5.1.1 <{recipient}> is on the suppression list of {key.domain} "
                    "(an earlier hard bounce, complaint or unsubscribe); remove it there to send again"
                )
        with server.busy():
            response = await transaction.add_recipient(str(recipient))
        if response.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return _reply(response)

    async def handle_DATA(self, server: _Session, session: Session, envelope: Envelope) -> str:
        transaction = server.transaction
        assert transaction is not None  # aiosmtpd answers DATA before an accepted RCPT itself
        message = envelope.original_content or b""
        try:
            with server.busy():
                response = await transaction.finish(message)
        except Exception:
            log.exception("smtp session=%s finishing a transaction failed", server.name)
            await server.abort_transaction("internal error")
            return _Reply(INTERNAL_ERROR)
        server.transaction = None
        log.info(
            "smtp session=%s tx=%d message bytes=%d rcpts=%d reply=%d",
            server.name,
            server.transactions,
            len(message),
            len(envelope.rcpt_tos),
            response.code,
        )
        return _reply(response)

    # AUTH mechanisms (RFC 4616 PLAIN, and LOGIN); they replace aiosmtpd's built-in ones.

    async def auth_PLAIN(self, server: _Session, args: list[str]) -> AuthResult:
        blob = await _first_response(server, args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push(_Reply("501 5.5.2 expected authzid NUL user NUL password (RFC 4616)"))
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid != login:  # acting as someone else is not supported
            login = b""
        return await self._check(server, login, password)

    async def auth_LOGIN(self, server: _Session, args: list[str]) -> AuthResult:
        login = await _first_response(server, args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def _check(self, server: _Session, login: bytes, password: bytes) -> AuthResult:
        owner = server.listener.owner
        client = _throttle_key(server.peer_ip)
        try:
            record = await authenticate(owner.store, login.decode(), password.decode(), owner.clock())
        except UnicodeDecodeError:
            record = None
        except MailnodeError:
            log.exception("smtp session=%s could not check credentials", server.name)
            return AuthResult(success=False, handled=False, message=_Reply(AUTH_TEMPORARY_FAILURE))
        if record is None:
            delay = owner.throttle.failed(client)
            log.info("smtp session=%s auth failed; answering in %.1f s", server.name, delay)
            with server.busy():
                await owner.sleep(delay)
            return AuthResult(success=False, handled=False, message=_Reply(AUTH_INVALID))
        owner.throttle.succeeded(client)
        server.api_key = record
        log.debug("smtp session=%s authenticated key=%d", server.name, record.id)
        return AuthResult(success=True, auth_data=record.id)


_SESSION_METHODS = tuple(name for name in dir(_Session) if name.startswith(("smtp_", "auth_")))
_HANDLER_METHODS = tuple(name for name in dir(_Handler) if name.startswith(("handle_", "auth_")))
_HANDLER = _Handler()


async def _check_peer(server: _Session, checker: PeerChecker) -> str | None:
    """The refusal for a client that fails [smtp.ingress]'s DNS policies, made once per HELO."""
    helo = server.session.host_name if server.session else None
    if server.peer_checked_helo == helo and helo is not None:
        return server.peer_refusal
    ingress = server.listener.owner.config.smtp.ingress
    ip = server.peer_ip
    refusal = None
    try:
        if ip is None:
            refusal = FCRDNS_FAILED if ingress.require_fcrdns else HELO_FAILED
        elif ingress.require_fcrdns and await checker.fcrdns(ip) is None:
            refusal = FCRDNS_FAILED
        elif ingress.require_helo_match and not (helo and await checker.helo_resolves_to(helo, ip)):
            refusal = HELO_FAILED
    except DnsUnavailable:
        return CHECK_UNAVAILABLE  # not cached: the next MAIL asks again
    server.peer_checked_helo, server.peer_refusal = helo, refusal
    if refusal is not None:
        log.info("smtp session=%s refused by peer checks: %s", server.name, refusal)
    return refusal


def _printable_reply(text: str) -> str:
    """A reply that may quote the client (aiosmtpd's "command ... not recognized"), made safe.

    RFC 5321 §4.2: reply text is printable; a CR, NUL or escape sequence echoed back would
    break the client's framing or its terminal, and a lone surrogate (from undecodable bytes)
    would not even encode.
    """
    return "\r\n".join(_UNPRINTABLE.sub("?", line) for line in text.split("\r\n"))


def split_path(arg: str) -> tuple[str | None, str | None]:
    """Split a MAIL/RCPT argument into the path as written and its parameters.

    "<a@b> SIZE=9" gives ("a@b", "SIZE=9"); "<>" gives "<>"; an unclosed "<" gives (None, None).
    """
    text = arg.strip()
    if not text.startswith("<"):
        path, _, rest = text.partition(" ")
        return path, rest.strip()
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return text[1:i] or "<>", text[i + 1 :].strip()
    return None, None


def _asks_to_relay(address: str) -> bool:
    """Open-relay tricks: %-hack, bang path, source route, a second @ (in quotes or not)."""
    return "%" in address or "!" in address or address.startswith("@") or address.count("@") > 1


def _routed(listener: _Listener, domain: str) -> bool:
    """Whether port 25 takes mail for `domain`: a route's, or the bounce domain (bounces)."""
    config = listener.owner.config
    if domain.lower().rstrip(".") == config.bounce_domain.lower():
        return True
    return match_route(config.ingress.routes, domain) is not None


async def _first_response(server: _Session, args: list[str], challenge: str) -> bytes | None:
    """The client's first SASL response: inline (AUTH X <base64>) or after a 334 challenge.

    None when the exchange is over already: the client cancelled with "*", or sent bad base64
    (both answered here or by aiosmtpd).
    """
    if len(args) == 1:
        response: object = await server.challenge_auth(challenge)
    else:
        response = _b64decode(args[1])
        if response is None:
            await server.push(_Reply("501 5.5.2 cannot decode the base64 argument"))
            return None
    return response if isinstance(response, bytes) else None


def _b64decode(text: str) -> bytes | None:
    if text == "=":  # RFC 4954 §4: an empty initial response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_loopback(text: str | None) -> bool:
    address = _ip(text)
    return address is not None and address.is_loopback


def _throttle_key(text: str | None) -> str:
    """Failed AUTH is counted per IPv4 address and per IPv6 /64 (one host's usual allocation)."""
    address = _ip(text)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address) if address is not None else (text or "")
