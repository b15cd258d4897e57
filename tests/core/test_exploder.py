"""Every row of DESIGN.md's exploder table, for submission and ingress."""

from __future__ import annotations

import pytest

from mailnode.core.exploder import UPSTREAM_TIMEOUT, Fate, Mode, data_reply, decide_with_fate, rcpt_reply
from mailnode.core.outcome import AttemptResult, FinalReason, Status
from mailnode.core.response import Response
from mailnode.core.retry import RetryPolicy

OK = Response(250, "2.1.5 ok")
TEMP = Response(451, "4.3.0 try later")
PERM = Response(550, "5.1.1 no such user")
SUB, ING = Mode.SUBMISSION, Mode.INGRESS


@pytest.mark.parametrize(
    ("mode", "upstream", "code", "fate"),
    [
        (SUB, None, 250, None),  # RCPT: no answer in time → 250, store & forward
        (ING, None, 450, Fate.DROPPED),
        (SUB, TEMP, 250, None),  # RCPT 4xx
        (ING, TEMP, 451, Fate.DROPPED),
        (SUB, PERM, 550, Fate.DROPPED),  # RCPT 5xx: verbatim in both modes
        (ING, PERM, 550, Fate.DROPPED),
        (SUB, OK, 250, None),
        (ING, OK, 250, None),
    ],
)
def test_rcpt_reply(mode: Mode, upstream: Response | None, code: int, fate: Fate | None) -> None:
    verdict = rcpt_reply(mode, upstream)
    assert (verdict.reply.code, verdict.fate) == (code, fate)
    if upstream is not None and (upstream.permanent or mode is ING):
        assert verdict.reply == upstream  # passed through verbatim
    if upstream is None and mode is ING:
        assert verdict.reply == UPSTREAM_TIMEOUT


@pytest.mark.parametrize(
    ("mode", "answer", "reply", "fate"),
    [
        (SUB, None, 250, Fate.STORE_AND_FORWARD),  # DATA: no answer in time
        (ING, None, 450, Fate.DROPPED),
        (SUB, TEMP, 250, Fate.STORE_AND_FORWARD),  # DATA 4xx
        (ING, TEMP, 451, Fate.DROPPED),
        (SUB, PERM, 550, Fate.DROPPED),  # DATA 5xx
        (ING, PERM, 550, Fate.DROPPED),
        (SUB, OK, 250, Fate.DELIVERED),
        (ING, OK, 250, Fate.DELIVERED),
    ],
)
def test_data_reply_single_recipient(mode: Mode, answer: Response | None, reply: int, fate: Fate) -> None:
    verdict = data_reply(mode, [answer])
    assert (verdict.reply.code, verdict.fates) == (reply, (fate,))
    if answer is not None and (answer.ok or answer.permanent or mode is ING):
        assert verdict.reply == answer


@pytest.mark.parametrize("mode", [SUB, ING])
def test_recipients_that_agree_get_the_common_answer(mode: Mode) -> None:
    verdict = data_reply(mode, [OK, Response(250, "2.0.0 queued")])
    assert verdict.reply.code == 250 and verdict.reply.message.startswith("2.1.5 ok")
    assert verdict.fates == (Fate.DELIVERED, Fate.DELIVERED)
    verdict = data_reply(mode, [PERM, Response(554, "5.7.1 spam")])
    assert verdict.reply.code == 550 and verdict.fates == (Fate.DROPPED, Fate.DROPPED)


@pytest.mark.parametrize("mode", [SUB, ING])
def test_mixed_answers_get_250_and_the_failures_are_retried_or_bounced(mode: Mode) -> None:
    verdict = data_reply(mode, [OK, PERM, TEMP, None])
    assert verdict.reply.code == 250
    assert verdict.fates == (Fate.DELIVERED, Fate.BOUNCE, Fate.STORE_AND_FORWARD, Fate.STORE_AND_FORWARD)


def test_all_temporary_ingress_passes_the_failure_to_the_client() -> None:
    verdict = data_reply(ING, [TEMP, None])
    assert verdict.reply == TEMP and verdict.fates == (Fate.DROPPED, Fate.DROPPED)


def test_all_temporary_submission_stores_and_forwards() -> None:
    verdict = data_reply(SUB, [TEMP, TEMP])
    assert verdict.reply.code == 250
    assert verdict.fates == (Fate.STORE_AND_FORWARD, Fate.STORE_AND_FORWARD)


def test_no_recipients_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        data_reply(SUB, [])


DONE = AttemptResult(mail=OK, rcpt=OK, data=Response(250, "2.0.0 queued"))
DATA_TEMP = AttemptResult(mail=OK, rcpt=OK, data=TEMP)
DATA_PERM = AttemptResult(mail=OK, rcpt=OK, data=PERM)
POLICY = RetryPolicy(initial_delay=10, max_attempts=3)


@pytest.mark.parametrize(
    ("fate", "result", "status", "reason", "bounce"),
    [
        (Fate.DELIVERED, DONE, Status.DELIVERED, FinalReason.SUCCESS, False),
        (Fate.DROPPED, DATA_PERM, Status.FAILED, FinalReason.RETURNED_TO_CLIENT, False),
        (Fate.DROPPED, DATA_TEMP, Status.FAILED, FinalReason.RETURNED_TO_CLIENT, False),
        (Fate.CANCELLED, DATA_TEMP, Status.CANCELLED, FinalReason.CANCELLED, False),
        (Fate.BOUNCE, DATA_PERM, Status.FAILED, FinalReason.PERMFAIL, True),
        (Fate.STORE_AND_FORWARD, DATA_TEMP, Status.QUEUED, None, False),
        # Stored and forwarded, and the upstream answered after the client's reply after all:
        (Fate.STORE_AND_FORWARD, DONE, Status.DELIVERED, FinalReason.SUCCESS, False),
        (Fate.STORE_AND_FORWARD, DATA_PERM, Status.FAILED, FinalReason.PERMFAIL, True),
    ],
)
def test_decide_with_fate(
    fate: Fate, result: AttemptResult, status: Status, reason: FinalReason | None, bounce: bool
) -> None:
    decision = decide_with_fate(fate, result, retry=POLICY, bounce_enabled=True, created_at=0, now=1)
    assert (decision.status, decision.final_reason, decision.bounce) == (status, reason, bounce)
    if status is Status.QUEUED:
        assert decision.next_attempt_at == 11
