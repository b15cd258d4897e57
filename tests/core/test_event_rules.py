"""Which permanent failures suppress the recipient: those about the address, not the message,
the sender's reputation or mailnode itself (a pure decision, no event loop)."""

from __future__ import annotations

import pytest

from mailnode.core.events import (
    EventType,
    SuppressionReason,
    attempt_event,
    blames_recipient,
    status_blames_recipient,
    suppresses,
)
from mailnode.core.outcome import AttemptResult, Decision, FinalReason, Stage, Status
from mailnode.core.response import Response

FAILED = Decision(Status.FAILED, FinalReason.PERMFAIL, None, bounce=False)


@pytest.mark.parametrize(
    ("result", "blamed"),
    [
        (AttemptResult.failed_at(Stage.RCPT, Response(550, "5.1.1 no such user"), "mx.example.org"), True),
        (
            AttemptResult.failed_at(Stage.RCPT, Response(550, "5.2.1 mailbox disabled"), "mx.example.org"),
            True,
        ),
        (AttemptResult.failed_at(Stage.MAIL, Response(550, "5.1.2 example.org has no MX or address")), True),
        (
            AttemptResult.failed_at(
                Stage.MAIL, Response(556, "5.1.10 example.org accepts no mail (null MX)")
            ),
            True,
        ),
        (AttemptResult.failed_at(Stage.RCPT, Response(550, "no such user here"), "mx.example.org"), True),
        (AttemptResult.failed_at(Stage.RCPT, Response(552, "5.2.2 mailbox full"), "mx.example.org"), False),
        (
            AttemptResult.failed_at(Stage.DATA, Response(550, "5.7.1 rejected as spam"), "mx.example.org"),
            False,
        ),
        (AttemptResult.failed_at(Stage.DATA, Response(554, "message refused"), "mx.example.org"), False),
        (
            AttemptResult.failed_at(Stage.DATA, Response(550, "5.6.0 message rejected: line 3 too long")),
            False,
        ),
        (AttemptResult.failed_at(Stage.RCPT, Response(550, "5.4.4 no route to this recipient")), False),
        (AttemptResult.failed_at(Stage.RCPT, Response(550, "refused")), False),  # no server said it
    ],
)
def test_only_a_failure_about_the_address_blames_the_recipient(result: AttemptResult, blamed: bool) -> None:
    assert blames_recipient(result) is blamed
    event = attempt_event(result, FAILED)
    assert event is not None
    kind, data = event
    assert kind is EventType.BOUNCED and data["permanent"] and data["recipient"] is blamed
    assert suppresses(kind, data) is (SuppressionReason.BOUNCED if blamed else None)


@pytest.mark.parametrize(
    ("status", "blamed"),
    [("5.1.1", True), ("5.1.10", True), ("5.2.1", True), ("5.2.2", False), ("5.7.1", False), ("5.1", False)],
)
def test_a_dsn_status_blames_the_recipient_by_its_subject(status: str, blamed: bool) -> None:
    assert status_blames_recipient(status) is blamed


def test_an_event_written_before_the_rule_still_suppresses() -> None:
    assert suppresses(EventType.BOUNCED, {"permanent": True}) is SuppressionReason.BOUNCED
