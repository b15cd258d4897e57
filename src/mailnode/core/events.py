"""Events: what happened to a domain's mail, as plain values, and the rules that make them.

A delivery's state change makes at most one event (`attempt_event`); hard bounces make a
suppression too. Events are stored in the same database transaction as the change (an outbox),
counted per hour and pushed to webhooks; the JSON a webhook receives is `event_json`, signed by
`webhook_signature`.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailnode.core.outcome import AttemptResult, Decision, FinalReason, Stage, Status

HOUR = 3600
# Long enough for any SMTP reply a person needs to read; bounded like everything stored.
MAX_TEXT = 1000


class EventType(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    FAILED = "failed"
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"


class SuppressionReason(enum.StrEnum):
    BOUNCED = "bounced"  # a hard bounce: 5xx during delivery, or a DSN that says so
    COMPLAINED = "complained"  # an ARF complaint (RFC 5965)
    UNSUBSCRIBED = "unsubscribed"  # the recipient used the managed unsubscribe
    MANUAL = "manual"  # added through the API or the CLI


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to store: what, when, for which domain/batch/delivery/recipient, and details."""

    type: EventType
    occurred_at: float
    domain: str
    batch: str | None = None
    delivery: str | None = None
    recipient: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event(NewEvent):
    """A stored event."""

    id: int = 0


def hour_of(timestamp: float) -> int:
    """The start of the UTC hour `timestamp` falls in (stats_hourly's bucket)."""
    return int(timestamp // HOUR) * HOUR


def bounded(text: str | None) -> str | None:
    """`text` cut to MAX_TEXT characters."""
    return None if text is None else text[:MAX_TEXT]


def attempt_event(result: AttemptResult, decision: Decision) -> tuple[EventType, dict[str, Any]] | None:
    """The event an attempt's outcome makes, with its details; None if it makes none."""
    stage, response = result.decisive
    details: dict[str, Any] = {
        "code": response.code,
        "text": bounded(response.message),
        "stage": stage.value,
    }
    if result.remote_host:
        details["remote_host"] = result.remote_host
    if decision.status is Status.DELIVERED:
        return EventType.DELIVERED, details
    if decision.status is Status.QUEUED:
        return EventType.DEFERRED, {**details, "next_attempt_at": decision.next_attempt_at}
    if decision.status is not Status.FAILED:
        return None
    if response.permanent:
        return EventType.BOUNCED, {**details, "permanent": True, "recipient": blames_recipient(result)}
    reason = decision.final_reason or FinalReason.MAX_ATTEMPTS
    return EventType.FAILED, {**details, "reason": reason.value}


# RFC 3463 subjects that are about the address itself: X.1.* addressing (no such user or
# domain, null MX), X.2.* mailbox (disabled) — except a full or size-limited mailbox.
_RECIPIENT_SUBJECTS = ("1", "2")
_NOT_THE_ADDRESS = frozenset({"5.2.2", "5.2.3"})


def blames_recipient(result: AttemptResult) -> bool:
    """Whether a permanent failure is about the recipient's address (so mail to it should
    stop), not about the message, the sender or mailnode itself.

    With an enhanced status, its subject decides (5.1.1 no such user, 5.1.2 no such domain,
    5.1.10 null MX, 5.2.1 disabled: yes; 5.6.0 content, 5.7.1 policy, 5.4.4 no route: no).
    Without one, a refusal of RCPT by the receiving server does.
    """
    stage, response = result.decisive
    status = response.enhanced_status
    if status is not None:
        return status_blames_recipient(status)
    return stage is Stage.RCPT and bool(result.remote_host)


def status_blames_recipient(status: str) -> bool:
    """Whether an RFC 3463 status ("5.1.1") is about the recipient's address."""
    parts = status.split(".")
    return len(parts) == 3 and parts[1] in _RECIPIENT_SUBJECTS and status not in _NOT_THE_ADDRESS


def suppresses(event: EventType, data: Mapping[str, Any]) -> SuppressionReason | None:
    """Whether an event stops further mail to its recipient: hard bounces about the address,
    complaints and unsubscribes."""
    if event is EventType.BOUNCED and data.get("permanent") and data.get("recipient", True):
        return SuppressionReason.BOUNCED
    if event is EventType.COMPLAINED:
        return SuppressionReason.COMPLAINED
    if event is EventType.UNSUBSCRIBED:
        return SuppressionReason.UNSUBSCRIBED
    return None


def rfc3339(timestamp: float) -> str:
    """Unix seconds as RFC 3339 UTC text, as the API shows times."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    spec = "seconds" if timestamp == int(timestamp) else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def event_json(event: Event) -> dict[str, Any]:
    """The JSON an API or a webhook shows for an event."""
    return {
        "id": event.id,
        "type": event.type.value,
        "occurred_at": rfc3339(event.occurred_at),
        "domain": event.domain,
        "batch_id": event.batch,
        "delivery_id": event.delivery,
        "recipient": event.recipient,
        "data": dict(event.data),
    }


def webhook_body(event: Event) -> bytes:
    """A webhook POST's body: the event's JSON, compact."""
    return json.dumps(event_json(event), separators=(",", ":"), sort_keys=True).encode()


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`Mailnode-Signature`: HMAC-SHA256 over "<timestamp>.<body>", as lower-case hex.

    Signing the timestamp with the body lets a receiver refuse replays of an old POST.
    """
    message = str(timestamp).encode("ascii") + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_webhook_signature(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    """Whether `signature` is what `webhook_signature` gives (constant-time)."""
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), signature)
