"""What an attempt's answers mean for the delivery: done, retry later, or give up (and bounce)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailnode.core.response import Response
from mailnode.core.retry import GiveUp, RetryPolicy, schedule


class Stage(enum.Enum):
    """The step of an SMTP transaction a response answers."""

    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The upstream answers of one attempt; a later stage is None when it was never reached."""

    mail: Response | None = None
    rcpt: Response | None = None
    data: Response | None = None
    remote_host: str | None = None

    @classmethod
    def failed_at(cls, stage: Stage, response: Response, remote_host: str | None = None) -> AttemptResult:
        """An attempt that ended at `stage` with `response`; earlier stages count as passed."""
        ok = Response(250, "2.0.0 ok (not reached upstream)") if stage is not Stage.MAIL else None
        if stage is Stage.MAIL:
            return cls(mail=response, remote_host=remote_host)
        if stage is Stage.RCPT:
            return cls(mail=ok, rcpt=response, remote_host=remote_host)
        return cls(mail=ok, rcpt=ok, data=response, remote_host=remote_host)

    @property
    def decisive(self) -> tuple[Stage, Response]:
        """The response that decides the attempt: the first failure, else the data answer."""
        for stage, response in ((Stage.MAIL, self.mail), (Stage.RCPT, self.rcpt)):
            if response is None or not response.ok:
                return stage, response or _NO_ANSWER
        return Stage.DATA, self.data or _NO_ANSWER


# An attempt that produced no answer at all (crash, lost lease) counts as temporary.
_NO_ANSWER = Response(451, "4.3.0 no answer recorded for this attempt")


class Status(enum.Enum):
    """Where a delivery is in its life. Transitions are listed in TRANSITIONS."""

    AWAITING_BODY = "awaiting_body"
    QUEUED = "queued"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (Status.DELIVERED, Status.FAILED, Status.CANCELLED)


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.AWAITING_BODY: frozenset({Status.QUEUED, Status.FAILED, Status.CANCELLED}),
    Status.QUEUED: frozenset({Status.QUEUED, Status.DELIVERED, Status.FAILED, Status.CANCELLED}),
    Status.DELIVERED: frozenset(),
    Status.FAILED: frozenset({Status.QUEUED}),  # an operator's `queue retry`
    Status.CANCELLED: frozenset(),
}


def check_transition(old: Status, new: Status) -> None:
    """Raise ValueError for a state change the transition table does not allow."""
    if new not in TRANSITIONS[old]:
        raise ValueError(f"delivery cannot go from {old.value} to {new.value}")


class FinalReason(enum.StrEnum):
    """Why mailnode is done with a delivery (the Koukan `final_attempt_reason` strings)."""

    SUCCESS = "upstream response success"
    PERMFAIL = "upstream response permfail"
    MAIL_PERMFAIL = "upstream mail_response permfail"
    RCPT_PERMFAIL = "upstream rcpt_response permfail"
    TEMPFAIL_NO_RETRY = "upstream response tempfail, retries off"
    MAX_ATTEMPTS = "retry policy max attempts"
    DEADLINE = "retry policy deadline"
    CANCELLED = "downstream cancelled"
    RETURNED_TO_CLIENT = "failure returned to the SMTP client"
    DOWNSTREAM_TIMEOUT = "downstream timeout"


_PERMFAIL_BY_STAGE = {
    Stage.MAIL: FinalReason.MAIL_PERMFAIL,
    Stage.RCPT: FinalReason.RCPT_PERMFAIL,
    Stage.DATA: FinalReason.PERMFAIL,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write after an attempt."""

    status: Status
    final_reason: FinalReason | None
    next_attempt_at: float | None
    bounce: bool  # send a DSN to the sender (the caller still checks for a null reverse path)


def decide(
    result: AttemptResult,
    *,
    retry: RetryPolicy | None,
    bounce_enabled: bool,
    attempts_made: int,
    created_at: float,
    now: float,
) -> Decision:
    """Turn an attempt's answers into the delivery's next state (retry=None: retries off)."""
    stage, response = result.decisive
    if response.ok:
        return Decision(Status.DELIVERED, FinalReason.SUCCESS, None, bounce=False)
    if response.permanent:
        return Decision(Status.FAILED, _PERMFAIL_BY_STAGE[stage], None, bounce=bounce_enabled)
    if retry is None:
        return Decision(Status.FAILED, FinalReason.TEMPFAIL_NO_RETRY, None, bounce=bounce_enabled)
    step = schedule(retry, attempts_made=attempts_made, created_at=created_at, now=now)
    if isinstance(step, GiveUp):
        return Decision(Status.FAILED, FinalReason(step.reason), None, bounce=bounce_enabled)
    return Decision(Status.QUEUED, None, step.at, bounce=False)
