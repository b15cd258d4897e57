"""Console sessions expire and stay bounded; the chart's scale (pure code, no event loop)."""

from __future__ import annotations

import itertools

import pytest

from mailnode.console.chart import bar_chart, nice_ceiling
from mailnode.console.sessions import IDLE_SECONDS, MAX_AGE_SECONDS, MAX_SESSIONS, Sessions, same_token


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def counting_bytes() -> object:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def test_a_session_ends_after_being_idle_and_after_its_maximum_age() -> None:
    clock = Clock()
    sessions = Sessions(clock, counting_bytes())
    idle_id, _ = sessions.start()
    busy_id, busy = sessions.start()
    assert idle_id != busy_id and busy.csrf not in (idle_id, busy_id)

    for _ in range(int(MAX_AGE_SECONDS // (IDLE_SECONDS / 2))):
        clock.now += IDLE_SECONDS / 2
        assert sessions.find(busy_id) is busy  # each request starts its idle time again
    assert sessions.find(idle_id) is None
    clock.now += IDLE_SECONDS / 2 + 1
    assert sessions.find(busy_id) is None  # past its maximum age, however busy


def test_sessions_are_bounded_and_logout_forgets() -> None:
    sessions = Sessions(Clock(), counting_bytes())
    first, _ = sessions.start()
    ids = [sessions.start()[0] for _ in range(MAX_SESSIONS)]
    assert len(sessions) == MAX_SESSIONS and sessions.find(first) is None
    sessions.end(ids[-1])
    assert sessions.find(ids[-1]) is None and sessions.find(ids[0]) is not None


@pytest.mark.parametrize(
    ("given", "expected", "same"), [("a" * 43, "a" * 43, True), ("a" * 43, "b" * 43, False), ("", "a", False)]
)
def test_tokens_compare_in_constant_time(given: str, expected: str, same: bool) -> None:
    assert same_token(given, expected) is same


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20), (450, 500), (501, 1000)]
)
def test_the_scale_ends_on_a_round_number(value: int, ceiling: int) -> None:
    assert nice_ceiling(value) == ceiling


def test_bars_stand_on_the_baseline_in_proportion() -> None:
    chart = bar_chart(["2026-11-22", "2026-11-23"], [("delivered", [10, 5]), ("bounced", [0, 2])])
    bars = {(bar.series, bar.title.split(" on ")[1].split(":")[0]): bar for bar in chart.bars}
    full = bars[("delivered", "2026-11-22")]
    assert full.y + full.height == chart.baseline and full.y == chart.ticks[-1].y
    assert bars[("delivered", "2026-11-23")].height == pytest.approx(full.height / 2, abs=0.1)
    assert bars[("bounced", "2026-11-22")].height == 0
    assert [tick.label for tick in chart.ticks] == ["0", "5", "10"]
    assert [label.text for label in chart.labels] == ["11-22", "11-23"]
