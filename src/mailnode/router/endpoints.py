"""Endpoints: the last hop of a delivery (SMTP via MX, a relay, LMTP, or the local capture store).

An endpoint opens an UpstreamSession per attempt: envelope() first (MAIL and RCPT), data()
once the message exists. The stored path calls both back to back; the SMTP exploder calls
envelope() while the client is still at RCPT (cut-through).
"""

from __future__ import annotations

from typing import Protocol

from mailnode.config import Config, HostPort
from mailnode.core.address import AddressError, parse_address
from mailnode.core.outcome import AttemptResult, Stage
from mailnode.core.response import Response, permanent
from mailnode.core.transaction import TransactionRecord
from mailnode.router.http_endpoint import HttpEndpoint
from mailnode.smtp.client import (
    ConnectionPool,
    EnvelopeInfo,
    MxSession,
    SmtpOptions,
    SmtpSession,
    UpstreamSession,
)
from mailnode.smtp.mx import MxResolver
from mailnode.storage.store import Store

_OK = Response(250, "2.0.0 ok")


class Endpoint(Protocol):
    name: str

    def destination(self, record: TransactionRecord) -> str:
        """The key per-destination concurrency limits are counted under."""
        ...

    def session(self, record: TransactionRecord, info: EnvelopeInfo) -> UpstreamSession: ...


class _FailedSession:
    """A session that ends before it starts (a recipient no endpoint can take)."""

    remote_host: str | None = None

    def __init__(self, result: AttemptResult) -> None:
        self._result = result

    async def envelope(self) -> AttemptResult:
        return self._result

    async def data(self, message: bytes) -> AttemptResult:
        return self._result

    async def close(self) -> None:
        return None


class _CaptureSession:
    remote_host: str | None = "capture"

    def __init__(self, store: Store, record: TransactionRecord) -> None:
        self._store, self._record = store, record

    async def envelope(self) -> AttemptResult:
        return AttemptResult(mail=_OK, rcpt=_OK, remote_host="capture")

    async def data(self, message: bytes) -> AttemptResult:
        record = self._record
        capture_id = await self._store.add_capture(record.rest_id, record.mail_from, record.rcpt_to, message)
        return AttemptResult(_OK, _OK, Response(250, f"2.0.0 captured as message {capture_id}"), "capture")

    async def close(self) -> None:
        return None


class CaptureEndpoint:
    """Keeps the message in the database for people to look at; nothing leaves the machine."""

    name = "capture"

    def __init__(self, store: Store) -> None:
        self._store = store

    def destination(self, record: TransactionRecord) -> str:
        return "capture"

    def session(self, record: TransactionRecord, info: EnvelopeInfo) -> UpstreamSession:
        return _CaptureSession(self._store, record)


class RelayEndpoint:
    """Everything to one SMTP or LMTP server (a smarthost, or an ingress route's mailbox server).

    With a `pool` (which the endpoint owns and closes), sessions reuse idle connections.
    """

    def __init__(
        self, name: str, host: str, port: int, options: SmtpOptions, pool: ConnectionPool | None = None
    ) -> None:
        self.name = name
        self._host, self._port, self._options, self._pool = host, port, options, pool

    def destination(self, record: TransactionRecord) -> str:
        return f"{self._host}:{self._port}"

    def session(self, record: TransactionRecord, info: EnvelopeInfo) -> UpstreamSession:
        return SmtpSession(self._host, self._port, info, self._options, pool=self._pool)

    async def close(self) -> None:
        """QUIT the idle connections."""
        if self._pool is not None:
            await self._pool.close()


class MxEndpoint:
    """Direct delivery to the recipient domain's MX hosts, in preference order.

    With a `pool` (which the endpoint owns and closes), sessions reuse idle connections to an
    MX address, whichever domain they were opened for.
    """

    name = "mx"

    def __init__(
        self, resolver: MxResolver, port: int, options: SmtpOptions, pool: ConnectionPool | None = None
    ) -> None:
        self._resolver, self._port, self._options, self._pool = resolver, port, options, pool

    def destination(self, record: TransactionRecord) -> str:
        return record.rcpt_to.rpartition("@")[2].lower()

    def session(self, record: TransactionRecord, info: EnvelopeInfo) -> UpstreamSession:
        try:
            domain = parse_address(record.rcpt_to).domain_ascii
        except AddressError as exc:
            refusal = permanent(f"bad recipient address: {exc}", "5.1.3")
            return _FailedSession(AttemptResult.failed_at(Stage.RCPT, refusal))
        return MxSession(self._resolver, domain, self._port, info, self._options, pool=self._pool)

    async def close(self) -> None:
        """QUIT the idle connections."""
        if self._pool is not None:
            await self._pool.close()


def smtp_options(config: Config, *, authenticate: bool = False, lmtp: bool = False) -> SmtpOptions:
    delivery = config.delivery
    return SmtpOptions(
        helo_hostname=config.hostname,
        connect_timeout=delivery.connect_timeout_seconds,
        command_timeout=delivery.command_timeout_seconds,
        starttls="off" if lmtp else delivery.starttls,
        username=delivery.smarthost_username if authenticate else None,
        password=delivery.smarthost_password if authenticate else None,
        lmtp=lmtp,
    )


def connection_pool(config: Config) -> ConnectionPool:
    """Idle connections for one endpoint: no more than its deliveries could use at once."""
    delivery = config.delivery
    return ConnectionPool(
        max_idle_per_destination=delivery.per_destination_concurrency, max_idle=delivery.concurrency
    )


def build_endpoint(config: Config, store: Store, resolver: MxResolver) -> Endpoint:
    """The endpoint `[delivery] mode` asks for."""
    delivery = config.delivery
    if delivery.mode == "capture":
        return CaptureEndpoint(store)
    if delivery.mode == "smarthost":
        assert delivery.smarthost is not None  # checked by the config loader
        host, port = delivery.smarthost.host, delivery.smarthost.port
        options = smtp_options(config, authenticate=True)
        return RelayEndpoint("smarthost", host, port, options, connection_pool(config))
    return MxEndpoint(resolver, delivery.port, smtp_options(config), connection_pool(config))


def endpoint_from_spec(spec: str, config: Config, store: Store) -> Endpoint:
    """An ingress route's endpoint: "capture", "smtp:host:port", "lmtp:host:port" or a URL."""
    if spec == "capture":
        return CaptureEndpoint(store)
    if spec.startswith(("http://", "https://")):
        return HttpEndpoint(spec, timeout=config.delivery.command_timeout_seconds)
    kind, _, target = spec.partition(":")
    address = HostPort.parse(target)
    options = smtp_options(config, lmtp=kind == "lmtp")
    return RelayEndpoint(spec, address.host, address.port, options, connection_pool(config))
