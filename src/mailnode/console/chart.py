"""The overview's chart: grouped bars as plain geometry for an inline SVG (no script, no library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 220
_LEFT = 48  # room for the scale's numbers
_BOTTOM = 24  # room for the day labels
_TOP = 8
_GAP = 0.25  # of a group's width, between groups


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str
    title: str  # shown by the browser on hover: "delivered on 2026-11-23: 12"


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    text: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    baseline: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[Label, ...]


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def bar_chart(days: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]) -> Chart:
    """One group of bars per day, one bar per series, on a shared scale from zero."""
    top = nice_ceiling(max((max(values, default=0) for _, values in series), default=0))
    plot_width = WIDTH - _LEFT
    plot_height = HEIGHT - _BOTTOM - _TOP
    baseline = float(HEIGHT - _BOTTOM)
    group = plot_width / max(len(days), 1)
    bar_width = group * (1 - _GAP) / max(len(series), 1)
    bars = []
    for day_index, day in enumerate(days):
        start = _LEFT + day_index * group + group * _GAP / 2
        for series_index, (name, values) in enumerate(series):
            value = values[day_index]
            height = plot_height * value / top
            bars.append(
                Bar(
                    x=round(start + series_index * bar_width, 1),
                    y=round(baseline - height, 1),
                    width=round(bar_width - 1, 1),
                    height=round(height, 1),
                    series=name,
                    title=f"{name} on {day}: {value}",
                )
            )
    # A middle line only where it falls on a whole number (not at 2.5 of 5).
    marks = (0, top // 2, top) if top % 2 == 0 else (0, top)
    ticks = tuple(Tick(round(baseline - plot_height * mark / top, 1), f"{mark:,}") for mark in marks)
    labels = tuple(Label(round(_LEFT + (i + 0.5) * group, 1), day[5:]) for i, day in enumerate(days))
    return Chart(WIDTH, HEIGHT, _LEFT, baseline, tuple(bars), ticks, labels)
