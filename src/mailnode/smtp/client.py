"""The outbound SMTP endpoint: one connection, one recipient, every reply kept (RFC 5321)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

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


@dataclass
class _Progress:
    """How far one connection got: the step in progress and the replies kept so far."""

    remote_host: str
    tls_name: str
    step: str = "connect"
    stage: Stage = Stage.MAIL
    mail: Response | None = None
    rcpt: Response | None = None

    def result(self, response: Response) -> AttemptResult:
        """The attempt ends with `response` at the current stage."""
        if self.stage is Stage.MAIL:
            return AttemptResult(mail=response, remote_host=self.remote_host)
        if self.stage is Stage.RCPT:
            return AttemptResult(mail=self.mail, rcpt=response, remote_host=self.remote_host)
        return AttemptResult(self.mail, self.rcpt, response, self.remote_host)


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
) -> AttemptResult:
    """Deliver `message` to one recipient over one connection to host:port; never raises on SMTP.

    `server_name` is the name the TLS certificate is checked against and that remote_host shows
    (the MX host name when `host` is its address). `smtputf8=True` marks a message whose
    headers need SMTPUTF8 (RFC 6531); non-ASCII addresses need it in any case. Line endings
    are sent as CRLF and a final CRLF is added when missing (aiosmtplib does both).
    """
    name = server_name or host
    refusal = _envelope_refusal(mail_from, rcpt_to)
    if refusal is not None:
        return AttemptResult.failed_at(*refusal, remote_host=_remote_host(name, host, port))
    envelope = _Envelope(mail_from, rcpt_to, message, headers_need_utf8=bool(smtputf8))
    result, progress = await _attempt(host, port, name, envelope, options)
    if progress.step == "STARTTLS" and options.starttls == "opportunistic":
        # Opportunistic TLS must not make mail undeliverable: retry once in plaintext.
        log.info("STARTTLS with %s failed (%s); retrying without TLS", progress.remote_host, result.mail)
        plaintext = dataclasses.replace(options, starttls="off")
        result, _ = await _attempt(host, port, name, envelope, plaintext)
    return result


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
) -> AttemptResult:
    """Resolve `domain` and try its destinations in order until one gives a decisive answer."""
    try:
        destinations = await resolver.resolve(domain)
    except DeliveryError as exc:
        return AttemptResult.failed_at(Stage.MAIL, exc.response)
    result = AttemptResult.failed_at(Stage.MAIL, Response(451, f"4.4.3 no address for {domain}"))
    for destination in destinations:
        result = await send_message(
            destination.address,
            port,
            mail_from=mail_from,
            rcpt_to=rcpt_to,
            message=message,
            options=options,
            smtputf8=smtputf8,
            server_name=destination.host,
        )
        if not _try_next_destination(result):
            break
    return result


def _try_next_destination(result: AttemptResult) -> bool:
    """Move on only after a 4xx before any RCPT answer: connect, greeting, EHLO, TLS or MAIL."""
    return result.rcpt is None and result.mail is not None and result.mail.temporary


@dataclass(frozen=True)
class _Envelope:
    mail_from: str
    rcpt_to: str
    message: bytes
    headers_need_utf8: bool


async def _attempt(
    host: str, port: int, name: str, envelope: _Envelope, options: SmtpOptions
) -> tuple[AttemptResult, _Progress]:
    """One connection: every failure becomes a result at the stage where it happened."""
    tls_name = host if name.startswith("[") else name
    progress = _Progress(_remote_host(name, host, port), tls_name)
    client = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        local_hostname=options.helo_hostname,
        timeout=options.command_timeout,
        start_tls=False,
        validate_certs=options.verify_tls,
    )
    raw_transport: asyncio.BaseTransport | None = None
    try:
        await client.connect(timeout=options.connect_timeout)
        raw_transport = client.transport
        return await _transaction(client, progress, envelope, options), progress
    except aiosmtplib.SMTPResponseException as exc:
        return progress.result(_reply(exc.code, exc.message, progress)), progress
    except (aiosmtplib.SMTPException, OSError) as exc:
        return progress.result(_failure(exc, progress)), progress
    finally:
        client.close()
        if isinstance(raw_transport, asyncio.Transport):
            # close() waits for unsent data; a peer that stopped reading must not keep the socket.
            raw_transport.abort()


async def _transaction(
    client: aiosmtplib.SMTP, progress: _Progress, envelope: _Envelope, options: SmtpOptions
) -> AttemptResult:
    mail_from, rcpt_to, message = envelope.mail_from, envelope.rcpt_to, envelope.message
    await _hello(client, progress, options)
    refusal = await _start_tls(client, progress, options) or await _login(client, progress, options)
    params: list[bytes] = []
    if refusal is None:
        addresses_need_utf8 = not (mail_from.isascii() and rcpt_to.isascii())
        params, refusal = _mail_parameters(
            client, progress, message, addresses_need_utf8, envelope.headers_need_utf8
        )
    if refusal is not None:
        await _quit(client)
        return progress.result(refusal)
    encoding = "utf-8" if b"SMTPUTF8" in params else "ascii"

    progress.step = "MAIL"
    mail = await _command(client, progress, b"MAIL", b"FROM:" + _path(mail_from, encoding), *params)
    progress.mail = mail
    if not mail.ok:
        await _quit(client)
        return progress.result(mail)
    progress.stage, progress.step = Stage.RCPT, "RCPT"
    rcpt = await _command(client, progress, b"RCPT", b"TO:" + _path(rcpt_to, encoding))
    progress.rcpt = rcpt
    if not rcpt.ok:
        await _quit(client)
        return progress.result(rcpt)

    progress.stage, progress.step = Stage.DATA, "DATA"
    try:
        reply = await client.data(message)
        data = _reply(reply.code, reply.message, progress)
    except aiosmtplib.SMTPDataError as exc:
        data = _reply(exc.code, exc.message, progress)
    await _quit(client)
    return progress.result(data)


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
    client: aiosmtplib.SMTP,
    progress: _Progress,
    message: bytes,
    addresses_need_utf8: bool,
    headers_need_utf8: bool,
) -> tuple[list[bytes], Response | None]:
    """The MAIL parameters the server advertised and the message needs, or a local refusal."""
    params: list[bytes] = []
    if client.supports_extension("size"):
        limit = client.esmtp_extensions["size"]
        if limit.isdigit() and 0 < int(limit) < len(message):
            # RFC 1870: don't send what the server has already said it won't take.
            text = f"5.3.4 message larger than the server's limit ({len(message)} > {limit} bytes"
            return params, Response(552, f"{text} at {progress.remote_host})")
        params.append(b"SIZE=%d" % len(message))
    if not message.isascii() and client.supports_extension("8bitmime"):
        params.append(b"BODY=8BITMIME")  # RFC 6152; without 8BITMIME the bytes go as they are
    if addresses_need_utf8 or headers_need_utf8:
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
    reply = await client.execute_command(*args)
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
