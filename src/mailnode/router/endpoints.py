"""Endpoints: the last hop of a delivery (SMTP via MX or smarthost, or the local capture store)."""

from __future__ import annotations

from typing import Protocol

from mailnode.config import Config
from mailnode.core.address import AddressError, parse_address
from mailnode.core.outcome import AttemptResult, Stage
from mailnode.core.response import Response, permanent
from mailnode.core.transaction import TransactionRecord
from mailnode.smtp.client import SmtpOptions, deliver_via_mx, send_message
from mailnode.smtp.mx import MxResolver
from mailnode.storage.store import Store

_OK = Response(250, "2.0.0 ok")


class Endpoint(Protocol):
    name: str

    def destination(self, record: TransactionRecord) -> str:
        """The key that per-destination concurrency limits are counted under."""
        ...

    async def deliver(self, record: TransactionRecord, message: bytes) -> AttemptResult: ...


class CaptureEndpoint:
    """Keeps the message in the database for people to look at; nothing leaves the machine."""

    name = "capture"

    def __init__(self, store: Store) -> None:
        self._store = store

    def destination(self, record: TransactionRecord) -> str:
        return "capture"

    async def deliver(self, record: TransactionRecord, message: bytes) -> AttemptResult:
        capture_id = await self._store.add_capture(record.rest_id, record.mail_from, record.rcpt_to, message)
        return AttemptResult(
            mail=_OK,
            rcpt=_OK,
            data=Response(250, f"2.0.0 captured as message {capture_id}"),
            remote_host="capture",
        )


class SmarthostEndpoint:
    """Everything to one relay host (optionally with AUTH)."""

    name = "smarthost"

    def __init__(self, host: str, port: int, options: SmtpOptions) -> None:
        self._host, self._port, self._options = host, port, options

    def destination(self, record: TransactionRecord) -> str:
        return f"{self._host}:{self._port}"

    async def deliver(self, record: TransactionRecord, message: bytes) -> AttemptResult:
        return await send_message(
            self._host,
            self._port,
            mail_from=record.mail_from,
            rcpt_to=record.rcpt_to,
            message=message,
            options=self._options,
        )


class MxEndpoint:
    """Direct delivery to the recipient domain's MX hosts, in preference order."""

    name = "mx"

    def __init__(self, resolver: MxResolver, port: int, options: SmtpOptions) -> None:
        self._resolver, self._port, self._options = resolver, port, options

    def destination(self, record: TransactionRecord) -> str:
        return record.rcpt_to.rpartition("@")[2].lower()

    async def deliver(self, record: TransactionRecord, message: bytes) -> AttemptResult:
        try:
            domain = parse_address(record.rcpt_to).domain_ascii
        except AddressError as exc:
            return AttemptResult.failed_at(Stage.RCPT, permanent(f"bad recipient address: {exc}", "5.1.3"))
        return await deliver_via_mx(
            self._resolver,
            domain,
            self._port,
            mail_from=record.mail_from,
            rcpt_to=record.rcpt_to,
            message=message,
            options=self._options,
        )


def smtp_options(config: Config) -> SmtpOptions:
    delivery = config.delivery
    return SmtpOptions(
        helo_hostname=config.hostname,
        connect_timeout=delivery.connect_timeout_seconds,
        command_timeout=delivery.command_timeout_seconds,
        starttls=delivery.starttls,
        username=delivery.smarthost_username,
        password=delivery.smarthost_password,
    )


def build_endpoint(config: Config, store: Store, resolver: MxResolver) -> Endpoint:
    """The endpoint `[delivery] mode` asks for."""
    delivery = config.delivery
    if delivery.mode == "capture":
        return CaptureEndpoint(store)
    if delivery.mode == "smarthost":
        assert delivery.smarthost is not None  # checked by the config loader
        return SmarthostEndpoint(delivery.smarthost.host, delivery.smarthost.port, smtp_options(config))
    return MxEndpoint(resolver, delivery.port, smtp_options(config))
