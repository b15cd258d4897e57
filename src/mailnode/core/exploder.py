"""The exploder's table: what an SMTP client is told, given what the upstream servers said.

Per recipient mailnode starts the delivery at once and waits a short time for the receiving
server (DESIGN.md, "The exploder's answer to an SMTP client"). Submission clients expect us to
retry, so a slow or temporary upstream answer becomes 250 and the delivery is stored and
forwarded (retried, then bounced). Ingress clients are MTAs that retry themselves, so they get
the upstream's temporary answer and mailnode keeps nothing. Permanent answers always pass
through verbatim.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mailnode.core.outcome import AttemptResult, Decision, FinalReason, Status, decide
from mailnode.core.response import Response
from mailnode.core.retry import RetryPolicy


class Mode(enum.Enum):
    SUBMISSION = "submission"  # port 587/465: the client expects us to retry
    INGRESS = "ingress"  # port 25: the client is an MTA that retries itself


class Fate(enum.Enum):
    """What happens to one delivery after the client got its answer."""

    DELIVERED = "delivered"  # upstream accepted it while the client waited
    STORE_AND_FORWARD = "store_and_forward"  # retry with backoff, bounce on final failure
    BOUNCE = "bounce"  # failed for good after the client got 250: send a DSN
    DROPPED = "dropped"  # the client was given the failure: nothing more to do
    CANCELLED = "cancelled"  # the client went away (RSET, QUIT, disconnect) before the end of DATA


@dataclass(frozen=True, slots=True)
class RcptVerdict:
    reply: Response
    fate: Fate | None  # None: still going, the DATA answer decides


UPSTREAM_TIMEOUT = Response(450, "4.4.7 the receiving server did not answer in time; try again later")
_SAME = " (all recipients)"


def rcpt_reply(mode: Mode, upstream: Response | None) -> RcptVerdict:
    """The client's RCPT reply for one recipient (upstream None: no answer in time)."""
    if upstream is not None and upstream.ok:
        return RcptVerdict(upstream, None)
    if upstream is not None and upstream.permanent:
        return RcptVerdict(upstream, Fate.DROPPED)
    if mode is Mode.SUBMISSION:
        return RcptVerdict(Response(250, "2.1.5 recipient ok; will retry delivery (store & forward)"), None)
    return RcptVerdict(upstream or UPSTREAM_TIMEOUT, Fate.DROPPED)


@dataclass(frozen=True, slots=True)
class DataVerdict:
    reply: Response
    fates: tuple[Fate, ...]  # one per recipient, in the order given


def data_reply(mode: Mode, answers: Sequence[Response | None]) -> DataVerdict:
    """The client's end-of-DATA reply for the accepted recipients' upstream answers.

    An answer of None means no answer in time (or the recipient was already stored and
    forwarded at RCPT). With one recipient the client gets its answer, adjusted by the mode;
    with several, the common answer when they all agree on its first digit, else 250 and the
    failed ones are retried (4xx) or bounced (5xx).
    """
    if not answers:
        raise ValueError("data_reply needs at least one accepted recipient")
    if len(answers) == 1:
        return _single(mode, answers[0])
    classes = {answer.code // 100 if answer is not None else 4 for answer in answers}
    if len(classes) == 1 and None not in answers:
        first = answers[0]
        assert first is not None
        if first.ok:
            return DataVerdict(Response(first.code, first.message + _SAME), (Fate.DELIVERED,) * len(answers))
        if first.permanent or mode is Mode.INGRESS:
            return DataVerdict(Response(first.code, first.message + _SAME), (Fate.DROPPED,) * len(answers))
    if mode is Mode.INGRESS and classes == {4}:
        # No upstream accepted: the client retries the whole message itself.
        reply = next((a for a in answers if a is not None), UPSTREAM_TIMEOUT)
        return DataVerdict(reply, (Fate.DROPPED,) * len(answers))
    fates = tuple(_mixed_fate(answer) for answer in answers)
    return DataVerdict(Response(250, "2.0.0 message accepted; some recipients will be retried"), fates)


def _single(mode: Mode, answer: Response | None) -> DataVerdict:
    if answer is not None and answer.ok:
        return DataVerdict(answer, (Fate.DELIVERED,))
    if answer is not None and answer.permanent:
        return DataVerdict(answer, (Fate.DROPPED,))
    if mode is Mode.SUBMISSION:
        accepted = Response(250, "2.0.0 message accepted; delivery will be retried (store & forward)")
        return DataVerdict(accepted, (Fate.STORE_AND_FORWARD,))
    return DataVerdict(answer or UPSTREAM_TIMEOUT, (Fate.DROPPED,))


def _mixed_fate(answer: Response | None) -> Fate:
    if answer is not None and answer.ok:
        return Fate.DELIVERED
    if answer is not None and answer.permanent:
        return Fate.BOUNCE
    return Fate.STORE_AND_FORWARD


def decide_with_fate(
    fate: Fate,
    result: AttemptResult,
    *,
    retry: RetryPolicy | None,
    bounce_enabled: bool,
    created_at: float,
    now: float,
) -> Decision:
    """The delivery's next state after a cut-through attempt, given the exploder's verdict."""
    if fate is Fate.CANCELLED:
        return Decision(Status.CANCELLED, FinalReason.CANCELLED, None, bounce=False)
    if fate is Fate.DROPPED:
        return Decision(Status.FAILED, FinalReason.RETURNED_TO_CLIENT, None, bounce=False)
    if fate is Fate.BOUNCE:
        retry = None
    elif fate is Fate.DELIVERED:
        retry, bounce_enabled = None, False
    return decide(
        result, retry=retry, bounce_enabled=bounce_enabled, attempts_made=1, created_at=created_at, now=now
    )
