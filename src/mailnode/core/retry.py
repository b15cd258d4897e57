"""The retry schedule: when the next attempt of a delivery is due, or why there is none."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff bounded by a number of attempts and a deadline since creation."""

    initial_delay: float = 60.0
    backoff_factor: float = 2.0
    max_delay: float = 3600.0
    max_attempts: int = 30
    deadline: float = 5 * 86400.0  # Postfix's maximal_queue_lifetime

    def delay_after(self, attempts_made: int) -> float:
        """Seconds to wait after the attempts_made-th failed attempt (1-based)."""
        exponent = max(attempts_made - 1, 0)
        # Cap the exponent so a large attempt count cannot overflow the float.
        delay = self.initial_delay * self.backoff_factor ** min(exponent, 64)
        return min(delay, self.max_delay)


@dataclass(frozen=True, slots=True)
class NextAttempt:
    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def schedule(
    policy: RetryPolicy, *, attempts_made: int, created_at: float, now: float
) -> NextAttempt | GiveUp:
    """Decide the next attempt after a temporary failure."""
    if attempts_made >= policy.max_attempts:
        return GiveUp("retry policy max attempts")
    at = now + policy.delay_after(attempts_made)
    if at - created_at > policy.deadline:
        return GiveUp("retry policy deadline")
    return NextAttempt(at)
