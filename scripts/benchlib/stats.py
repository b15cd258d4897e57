"""Small statistics for benchmark reports."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

Run = TypeVar("Run")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    """min / median / max of one figure over several runs."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))


def summarize(figures: Mapping[str, Callable[[Run], float | None]], runs: Sequence[Run]) -> dict[str, Spread]:
    """Each figure's min/median/max over the runs; a figure some run lacks (None) is left out."""
    summary: dict[str, Spread] = {}
    for name, figure in figures.items():
        values = [figure(run) for run in runs]
        if values and all(v is not None for v in values):
            summary[name] = Spread.of([float(v) for v in values if v is not None])
    return summary
