"""`mailnode suppression …` and `mailnode stats` on a real database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailnode.cli.stats import sparkline
from mailnode.core.events import EventType, NewEvent
from mailnode.storage.events import EventStore
from tests.cli.seed import HOUR, NOW, Setup, make_setup, one_line_error


def with_domain(tmp_path: Path, *names: str) -> Setup:
    setup = make_setup(tmp_path)
    for name in names:
        result = setup.run("domain", "create", name, "--dkim-algorithm", "ed25519")
        assert result.exit_code == 0, result.output
    return setup


# -- suppressions ------------------------------------------------------------------------------


def test_suppression_add_list_remove(tmp_path: Path) -> None:
    setup = with_domain(tmp_path, "example.com")
    added = setup.run(
        "suppression", "add", "Someone@Example.org", "other@example.org", "--domain", "example.com"
    )
    assert added.exit_code == 0, added.output
    assert added.stdout.splitlines() == [
        "suppressed someone@example.org for example.com (manual)",
        "suppressed other@example.org for example.com (manual)",
    ]
    again = setup.run(
        "suppression", "add", "someone@example.org", "--domain", "example.com", "--reason", "bounced"
    )
    assert again.stdout == "someone@example.org was already suppressed for example.com (manual)\n"

    listed = setup.run("suppression", "list", "--domain", "example.com")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ADDRESS", "REASON", "SINCE", "DETAILS"]
    assert [row.split()[:2] for row in rows] == [
        ["someone@example.org", "manual"],
        ["other@example.org", "manual"],
    ]
    assert "source=cli" in rows[0]

    removed = setup.run("suppression", "remove", "someone@example.org", "--domain", "example.com")
    assert removed.stdout == "someone@example.org may receive mail from example.com again\n"
    assert setup.rows("SELECT domain, address FROM suppressions") == [("example.com", "other@example.org")]


def test_suppressions_stop_a_send_to_the_address(tmp_path: Path) -> None:
    setup = with_domain(tmp_path, "example.com")
    setup.run("suppression", "add", "gone@example.org", "--domain", "example.com")

    async def suppressed() -> set[str]:
        store = await setup.store()
        try:
            return await EventStore(store).suppressed("example.com", ["GONE@example.org", "here@example.org"])
        finally:
            await store.close()

    assert asyncio.run(suppressed()) == {"gone@example.org"}


def test_suppression_json(tmp_path: Path) -> None:
    setup = with_domain(tmp_path, "example.com")
    added = setup.json(
        "suppression", "add", "a@example.org", "--domain", "example.com", "--reason", "complained"
    )
    assert added == [
        {
            "domain": "example.com",
            "address": "a@example.org",
            "reason": "complained",
            "details": {"source": "cli"},
            "created_at": "2026-05-28T20:26:40Z",
            "added": True,
        }
    ]
    listed = setup.json("suppression", "list", "--domain", "example.com", "--reason", "complained")
    assert [item["address"] for item in listed] == ["a@example.org"]
    assert setup.json("suppression", "list", "--domain", "example.com", "--reason", "bounced") == []
    assert setup.json("suppression", "remove", "a@example.org", "--domain", "example.com") == {
        "domain": "example.com",
        "removed": ["a@example.org"],
    }


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (
            ["remove", "x@example.org", "--domain", "example.com"],
            1,
            "x@example.org is not suppressed for example.com",
        ),
        (["add", "x@example.org", "--domain", "nowhere.example"], 1, "no domain 'nowhere.example'"),
        (["add", "not-an-address", "--domain", "example.com"], 1, "'not-an-address' is not an email address"),
        (["add", "x@example.org"], 2, "Missing option '--domain'"),
        (
            ["add", "x@example.org", "--domain", "example.com", "--reason", "spite"],
            2,
            "'spite' is not one of",
        ),
        (["list", "--domain", "example.com", "--limit", "0"], 2, "--limit"),
    ],
)
def test_suppression_refuses_in_one_line(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    setup = with_domain(tmp_path, "example.com")
    one_line_error(setup.run("suppression", *args), code, says)
    assert setup.rows("SELECT count(*) FROM suppressions") == [(0,)]


# -- stats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ([], ""),
        ([0, 0, 0], "▁▁▁"),
        ([0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█"),
        ([0, 1, 100], "▁▂█"),  # anything above zero shows above the floor
        ([5, 5], "██"),
    ],
)
def test_sparkline(values: list[int], line: str) -> None:
    assert sparkline(values) == line


def record_events(setup: Setup, events: list[NewEvent]) -> None:
    async def record() -> None:
        store = await setup.store()
        try:
            await EventStore(store).record(events)
            await EventStore(store).process_outbox()
        finally:
            await store.close()

    asyncio.run(record())


START = 1_779_926_400.0  # 2026-05-28 00:00 UTC, a day start; NOW is 20:26:40 that day


def delivered(domain: str, hours_in: float, count: int = 1) -> list[NewEvent]:
    return [NewEvent(EventType.DELIVERED, START + hours_in * HOUR, domain, recipient="x@example.org")] * count


def test_stats_table_and_sparkline_per_event_type(tmp_path: Path) -> None:
    setup = with_domain(tmp_path, "example.com")
    record_events(
        setup,
        delivered("example.com", 0.5, 2)
        + delivered("example.com", 2.5, 4)
        + delivered("other.example", 1.5, 9)  # another domain's: not counted for example.com
        + [NewEvent(EventType.BOUNCED, START + 3.2 * HOUR, "example.com", recipient="y@example.org")],
    )
    result = setup.run("stats", "--domain", "example.com", "--from", "2026-05-28", "--to", "2026-05-28T04:00")
    assert result.exit_code == 0, result.output
    title, header, *rows = result.stdout.splitlines()
    assert title == "example.com, per hour, 2026-05-28 00:00:00 UTC to 2026-05-28 04:00:00 UTC"
    assert header.split() == ["EVENT", "TOTAL", "UNIQUE", "PER", "HOUR"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert list(table) == [kind.value for kind in EventType]
    assert table["delivered"] == ["6", "0", "▅▁█▁"]
    assert table["bounced"] == ["1", "0", "▁▁▁█"]
    assert table["opened"] == ["0", "0", "▁▁▁▁"]

    everyone = setup.json("stats", "--from", "2026-05-28", "--to", "2026-05-28T04:00")
    assert [point["count"] for point in everyone["series"]["delivered"]] == [2, 9, 4, 0]


def test_stats_json_by_day(tmp_path: Path) -> None:
    setup = with_domain(tmp_path, "example.com")
    record_events(setup, delivered("example.com", -20, 3) + delivered("example.com", 5, 1))
    found = setup.json("stats", "--domain", "example.com", "--granularity", "day", "--from", "2d")
    assert found["domain"] == "example.com" and found["granularity"] == "day"
    assert found["from"] == "2026-05-26T00:00:00Z" and found["to"] == "2026-05-28T20:26:40Z"
    assert found["series"]["delivered"] == [
        {"t": "2026-05-26T00:00:00Z", "count": 0, "unique": 0, "machine": 0},
        {"t": "2026-05-27T00:00:00Z", "count": 3, "unique": 0, "machine": 0},
        {"t": "2026-05-28T00:00:00Z", "count": 1, "unique": 0, "machine": 0},
    ]


def test_stats_defaults_to_the_last_24_hours(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    found = setup.json("stats")
    assert found["from"] == "2026-05-27T21:00:00Z" and found["to"] == "2026-05-28T20:26:40Z"
    assert len(found["series"]["accepted"]) == 24
    assert NOW == START + 20 * HOUR + 26 * 60 + 40


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--from", "2026-05-28", "--to", "2026-05-27"], 1, "--to must be after --from"),
        (["--from", "60d"], 1, "1441 hours is over the limit of 744"),
        (["--granularity", "week"], 2, "'week' is not one of 'hour', 'day'"),
        (["--from", "yesterday"], 2, "'yesterday' is not a time like 2026-03-01"),
    ],
)
def test_stats_refuses_in_one_line(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    one_line_error(make_setup(tmp_path).run("stats", *args), code, says)
