"""`mailnode stats`: a domain's (or every domain's) event counts, with a sparkline per type."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import click

from mailnode.cli.common import (
    Moment,
    config_option,
    config_path,
    echo_json,
    echo_table,
    fail_cleanly,
    json_option,
    rfc3339,
    run,
    runtime,
    utc_time,
    with_store,
)
from mailnode.config import load_config
from mailnode.core.dkim_keys import canonical_domain
from mailnode.core.events import HOUR, EventType, hour_of
from mailnode.errors import MailnodeError
from mailnode.storage.events import EventStore, StatsBucket

DAY = 24 * HOUR
STEPS = {"hour": HOUR, "day": DAY}
# Buckets one answer may hold, as /v1/domains/{domain}/stats allows: 31 days of hours, a year of days.
MAX_BUCKETS = {"hour": 31 * 24, "day": 366}
DEFAULT_BUCKETS = 24
BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """One bar per value, scaled to the largest; zero is the lowest bar, anything above it higher."""
    top = max(values, default=0)
    if top <= 0:
        return BARS[0] * len(values)
    last = len(BARS) - 1
    return "".join(BARS[0] if v <= 0 else BARS[max(1, math.ceil(v * last / top))] for v in values)


def dense_series(hours: list[StatsBucket], start: int, step: int, buckets: int) -> list[tuple[int, int, int]]:
    """Hourly rows summed into `buckets` buckets of `step` seconds from `start`, zeros included."""
    sums = [[0, 0, 0] for _ in range(buckets)]
    for hour in hours:
        index = (hour_of(hour.start) - start) // step
        if 0 <= index < buckets:
            sums[index][0] += hour.count
            sums[index][1] += hour.unique
            sums[index][2] += hour.machine
    return [(count, unique, machine) for count, unique, machine in sums]


@click.command()
@click.option("--domain", "domain_name", help="One sending domain (default: every domain, summed).")
@click.option("--granularity", type=click.Choice(list(STEPS)), default="hour", show_default=True)
@click.option("--from", "since", type=Moment(), help="Start: 2026-03-01, 2026-03-01T09:00 (UTC) or 7d (ago).")
@click.option("--to", "until", type=Moment(), help="End (excluded), as --from; default: now.")
@json_option
@config_option
@fail_cleanly
def stats(
    domain_name: str | None,
    granularity: str,
    since: float | None,
    until: float | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Counts per event type (accepted, delivered, bounced, opened, ...) with a sparkline each.

    By default the last 24 hours (or days, with --granularity day), the current one included.

    Example: mailnode stats --domain example.com --granularity day --from 14d
    """
    config = load_config(config_path(config_file))
    domain = None if domain_name is None else canonical_domain(domain_name)
    step = STEPS[granularity]
    until = runtime().clock() if until is None else until
    since = (until // step - (DEFAULT_BUCKETS - 1)) * step if since is None else since
    if until <= since:
        raise MailnodeError("--to must be after --from")
    start = int(since // step) * step
    buckets = -(-int(until - start) // step)
    if buckets > MAX_BUCKETS[granularity]:
        raise MailnodeError(
            f"--from: {buckets} {granularity}s is over the limit of {MAX_BUCKETS[granularity]}; "
            "narrow the range or use --granularity day"
        )
    found = run(with_store(config, lambda store: EventStore(store).stats(domain, start, until)))
    series = {kind.value: dense_series(found.get(kind.value, []), start, step, buckets) for kind in EventType}
    if as_json:
        echo_json(_stats_json(domain, granularity, start, until, step, series))
        return
    scope = domain or "all domains"
    click.echo(f"{scope}, per {granularity}, {utc_time(start)} to {utc_time(until)}")
    echo_table(
        ["EVENT", "TOTAL", "UNIQUE", f"PER {granularity.upper()}"],
        [
            [
                kind,
                str(sum(c for c, _, _ in values)),
                str(sum(u for _, u, _ in values)),
                sparkline([c for c, _, _ in values]),
            ]
            for kind, values in series.items()
        ],
    )


def _stats_json(
    domain: str | None,
    granularity: str,
    start: int,
    until: float,
    step: int,
    series: dict[str, list[tuple[int, int, int]]],
) -> dict[str, Any]:
    """The shape /v1/domains/{domain}/stats answers in."""
    return {
        "domain": domain,
        "granularity": granularity,
        "from": rfc3339(start),
        "to": rfc3339(until),
        "series": {
            kind: [
                {"t": rfc3339(start + i * step), "count": count, "unique": unique, "machine": machine}
                for i, (count, unique, machine) in enumerate(values)
            ]
            for kind, values in series.items()
        },
    }
