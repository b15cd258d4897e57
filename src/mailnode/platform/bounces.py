"""The bounce handler: mail to the bounce domain, read as the report it is and recorded.

Platform deliveries leave with a VERP return path (core/verp.py), so a bounce or complaint
comes back on port 25 addressed to it. The ingress router hands such mail to BounceEndpoint,
a local endpoint like capture: the handler checks the address's signature, finds the delivery,
reads the report (core/bounce_report.py) and stores a bounced or complained event with its
suppression in one write. Whatever it cannot attribute is accepted and dropped, never bounced
back: a bounce about a bounce would only add to the noise (RFC 3464 §2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mailnode.core.bounce_report import BounceReport, ReportKind, parse_report
from mailnode.core.events import EventType, NewEvent, bounded, status_blames_recipient
from mailnode.core.outcome import AttemptResult
from mailnode.core.response import Response
from mailnode.core.transaction import TransactionRecord
from mailnode.core.verp import parse_verp
from mailnode.smtp.client import EnvelopeInfo, UpstreamSession
from mailnode.storage.events import EventStore
from mailnode.storage.store import Store

log = logging.getLogger(__name__)

_OK = Response(250, "2.0.0 ok")


class BounceHandler:
    """Attributes an inbound report to its delivery and records what it says."""

    def __init__(
        self,
        store: Store,
        events: EventStore,
        *,
        bounce_domain: str,
        verp_keys: Callable[[], Mapping[str, bytes]],
    ) -> None:
        self._store = store
        self._events = events
        self._bounce_domain = bounce_domain
        self._verp_keys = verp_keys

    async def handle(self, rcpt_to: str, message: bytes) -> Response:
        """Record the report `message` sent to `rcpt_to`; the answer for the reporting server."""
        delivery_id = parse_verp(rcpt_to, self._bounce_domain, self._verp_keys())
        if delivery_id is None:
            log.info("bounce to an address that is not a valid VERP address: ignored")
            return Response(250, "2.0.0 accepted; not a return path of this server, ignored")
        delivery = await self._store.get_transaction(delivery_id)
        if delivery is None or delivery.domain is None:
            log.info("bounce for delivery=%s that is no longer known: ignored", delivery_id)
            return Response(250, "2.0.0 accepted; the delivery is no longer known, ignored")
        # The stdlib parser takes up to ~0.3 s on a hostile 256 KiB report: off the loop.
        report = await asyncio.to_thread(parse_report, message)
        event = _event(report, delivery, self._store.clock())
        if event is None:
            log.info("report for delivery=%s says nothing to record kind=%s", delivery_id, report.kind.name)
            return Response(250, "2.0.0 accepted; nothing to record")
        await self._events.record_for(delivery, event)
        log.info(
            "bounce recorded delivery=%s event=%s permanent=%s", delivery_id, event.type, report.permanent
        )
        return Response(250, f"2.0.0 recorded as {event.type.value}")


def _event(report: BounceReport, delivery: TransactionRecord, now: float) -> NewEvent | None:
    """The event a report makes for its delivery, or None (delays, unknown mail)."""
    if report.kind is ReportKind.BOUNCE:
        kind = EventType.BOUNCED
        data: dict[str, Any] = {
            "permanent": report.permanent,
            "source": "dsn" if report.standard else "heuristic",
        }
        if report.status is not None:  # a 5.7.1 "rejected as spam" says nothing against the address
            data["recipient"] = status_blames_recipient(report.status)
    elif report.kind is ReportKind.COMPLAINT:
        kind = EventType.COMPLAINED
        data = {"feedback_type": report.feedback_type, "source": "arf"}
        if report.user_agent:
            data["reporter"] = bounded(report.user_agent)
    else:
        return None
    for name, value in (("code", report.code), ("status", report.status), ("text", bounded(report.text))):
        if value is not None:
            data[name] = value
    assert delivery.domain is not None
    return NewEvent(
        kind,
        now,
        delivery.domain,
        delivery=delivery.rest_id,
        recipient=delivery.rcpt_to,
        data=data,
    )


class _BounceSession:
    remote_host: str | None = "bounce-handler"

    def __init__(self, handler: BounceHandler, record: TransactionRecord) -> None:
        self._handler, self._record = handler, record

    async def envelope(self) -> AttemptResult:
        return AttemptResult(mail=_OK, rcpt=_OK, remote_host=self.remote_host)

    async def data(self, message: bytes) -> AttemptResult:
        answer = await self._handler.handle(self._record.rcpt_to, message)
        return AttemptResult(_OK, _OK, answer, self.remote_host)

    async def close(self) -> None:
        return None


class BounceEndpoint:
    """The ingress endpoint of the bounce domain: the bounce handler, in process."""

    name = "bounces"

    def __init__(self, handler: BounceHandler) -> None:
        self._handler = handler

    def destination(self, record: TransactionRecord) -> str:
        return "bounces"

    def session(self, record: TransactionRecord, info: EnvelopeInfo) -> UpstreamSession:
        return _BounceSession(self._handler, record)
