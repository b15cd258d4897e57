"""`mailnode queue list|show|retry|cancel|purge` on a real database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.cli.seed import NOW, Setup, one_line_error, seeded


def statuses(setup: Setup) -> dict[str, str]:
    return dict(setup.rows("SELECT rest_id, status FROM transactions"))


def test_list_shows_every_delivery_with_its_state_and_last_answer(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    result = setup.run("queue", "list")
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "TRIES", "NEXT", "AGE", "FROM", "TO", "LAST", "ANSWER"]
    by_id = {line.split()[0]: line for line in lines}
    assert list(by_id) == [ids[name] for name in ("delivered", "failed", "deferred", "fresh", "other")]
    assert by_id[ids["deferred"]].split()[1:5] == ["deferred", "1", "due", "2h"]  # due 1 min after it
    assert "RCPT 451 4.2.1 mailbox busy" in by_id[ids["deferred"]]
    assert "RCPT 550 5.1.1 no such user" in by_id[ids["failed"]]
    assert by_id[ids["fresh"]].split()[1:5] == ["queued", "0", "due", "1m"]
    assert result.stderr.strip() == "5 of 5 deliveries"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--status", "deferred"], ["deferred"]),
        (["--status", "failed", "--status", "delivered"], ["delivered", "failed"]),
        (["--status", "queued"], ["deferred", "fresh", "other"]),
        (["--domain", "Other.Example"], ["other"]),
        (["--recipient", "@example.net"], ["delivered", "failed", "other"]),
        (["--recipient", "BUSY@example.org"], ["deferred"]),
        (["--older-than", "2h"], ["delivered", "failed", "deferred"]),
        (["--older-than", "2h", "--status", "queued", "--domain", "example.com"], ["deferred"]),
    ],
)
def test_list_filters(tmp_path: Path, filters: list[str], expected: list[str]) -> None:
    setup, ids = seeded(tmp_path)
    found = setup.json("queue", "list", *filters)
    assert [item["id"] for item in found["items"]] == [ids[name] for name in expected]
    assert found["total"] == len(expected)


def test_list_json_has_the_deciding_answer(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    found = setup.json("queue", "list", "--status", "deferred")
    (item,) = found["items"]
    assert item["id"] == ids["deferred"]
    assert item["status"] == "queued" and item["deferred"] is True
    assert item["attempts"] == 1
    assert item["last_answer"] == {"stage": "rcpt", "code": 451, "message": "4.2.1 mailbox busy"}
    assert item["created_at"] == "2026-05-28T17:56:40Z"


def test_list_limit_says_how_many_there_are(tmp_path: Path) -> None:
    setup, _ = seeded(tmp_path)
    result = setup.run("queue", "list", "--limit", "2")
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.strip() == "2 of 5 deliveries"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--status", "stuck"], 2, "'stuck' is not one of"),
        (["--older-than", "2 hours"], 2, "not a duration like 90s"),
        (["--recipient", "nobody"], 1, "--recipient 'nobody'"),
        (["--limit", "0"], 2, "--limit"),
    ],
)
def test_list_refuses_bad_filters_in_one_line(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    setup, _ = seeded(tmp_path)
    line = one_line_error(setup.run("queue", "list", *args), code, says)
    assert line.startswith("mailnode")


def test_show_prints_attempts_with_upstream_answers_and_events(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    result = setup.run("queue", "show", ids["deferred"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"id:       {ids['deferred']}" in text
    assert "status:   deferred" in text
    assert "#1  2026-05-28 17:56:40 UTC via mx.example.org" in text
    assert "      MAIL  250 2.1.0 ok" in text
    assert "      RCPT  451 4.2.1 mailbox busy" in text
    events = text.split("events (2):")[1].splitlines()[1:]
    assert [line.split()[3] for line in events] == ["accepted", "deferred"]
    assert "code=451 text=4.2.1 mailbox busy" in events[1]


def test_show_json(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    shown = setup.json("queue", "show", ids["failed"])
    assert shown["status"] == "failed"
    assert shown["final_reason"] == "upstream rcpt_response permfail"
    (attempt,) = shown["attempts"]
    assert attempt["answers"]["rcpt"] == {"code": 550, "message": "5.1.1 no such user"}
    assert attempt["answers"]["data"] is None
    assert attempt["remote_host"] == "mx.example.org"
    assert [e["type"] for e in shown["events"]] == ["accepted", "bounced"]


def test_show_an_unknown_delivery_is_one_line(tmp_path: Path) -> None:
    setup, _ = seeded(tmp_path)
    one_line_error(setup.run("queue", "show", "nope"), 1, "no delivery 'nope'", "mailnode queue list")


def test_retry_makes_a_deferred_delivery_due_now_and_a_failed_one_queued(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    result = setup.run("queue", "retry", ids["deferred"], ids["failed"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{ids['deferred']}  busy@example.org  due now",
        f"{ids['failed']}  gone@example.net  due now",
    ]
    rows = setup.rows(
        "SELECT status, next_attempt_at, final_attempt_reason, finished_at FROM transactions"
        " WHERE rest_id IN (?, ?)",
        ids["deferred"],
        ids["failed"],
    )
    assert rows == [("queued", NOW, None, None)] * 2

    async def claim() -> set[str]:
        store = await setup.store()
        try:
            return {r.rest_id for r in await store.claim_due("service", limit=10, lease_seconds=60)}
        finally:
            await store.close()

    # What the running service does at its next poll: both are picked up, with the fresh ones.
    assert {ids["deferred"], ids["failed"]} <= asyncio.run(claim())


def test_retry_by_filter_json(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    retried = setup.json("queue", "retry", "--status", "failed")
    assert [(r["id"], r["status"]) for r in retried] == [(ids["failed"], "queued")]
    assert statuses(setup)[ids["failed"]] == "queued"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        ([], 1, "nothing to retry: give delivery ids"),
        (["{delivered}"], 1, "is delivered: only queued and failed ones can be retried"),
        (["nope"], 1, "no delivery 'nope'"),
        (["--status", "delivered"], 1, "--status delivered: this command takes only failed, queued"),
        (["{fresh}", "--domain", "example.com"], 1, "ids or filters to retry, not both"),
    ],
)
def test_retry_refuses_in_one_line(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    setup, ids = seeded(tmp_path)
    before = statuses(setup)
    one_line_error(setup.run("queue", "retry", *[a.format(**ids) for a in args]), code, says)
    assert statuses(setup) == before


def test_cancel_by_id_as_the_rest_cancel_does(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    result = setup.run("queue", "cancel", ids["deferred"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{ids['deferred']}  busy@example.org  cancelled\n"
    assert setup.rows(
        "SELECT status, cancelled, final_attempt_reason, next_attempt_at FROM transactions WHERE rest_id = ?",
        ids["deferred"],
    ) == [("cancelled", 1, "downstream cancelled", None)]


def test_cancel_a_finished_delivery_is_refused(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    one_line_error(setup.run("queue", "cancel", ids["delivered"]), 1, "is delivered: only unfinished ones")
    assert statuses(setup)[ids["delivered"]] == "delivered"


def test_cancel_by_filter_asks_first(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    before = statuses(setup)
    declined = setup.run("queue", "cancel", "--domain", "example.com", stdin="n\n")
    assert declined.exit_code == 1
    assert "Cancel 2 deliveries?" in declined.stderr
    assert statuses(setup) == before

    accepted = setup.run("queue", "cancel", "--domain", "example.com", "--json", stdin="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert {item["id"] for item in json.loads(accepted.stdout)} == {ids["deferred"], ids["fresh"]}
    after = statuses(setup)
    assert after[ids["deferred"]] == after[ids["fresh"]] == "cancelled"
    assert after[ids["other"]] == "queued" and after[ids["delivered"]] == "delivered"


def test_cancel_refuses_finished_statuses_in_one_line(tmp_path: Path) -> None:
    setup, _ = seeded(tmp_path)
    one_line_error(
        setup.run("queue", "cancel", "--status", "failed", "--yes"),
        1,
        "--status failed: this command takes only awaiting_body, queued",
    )


def test_purge_deletes_finished_deliveries_after_asking(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    declined = setup.run("queue", "purge", stdin="n\n")
    assert declined.exit_code == 1
    assert "Delete 2 finished deliveries for good?" in declined.stderr
    assert len(setup.rows("SELECT * FROM transactions")) == 5

    result = setup.run("queue", "purge", stdin="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted 2 deliveries\n"
    assert set(statuses(setup)) == {ids["deferred"], ids["fresh"], ids["other"]}
    # Their attempts go with them; the deferred one keeps its own.
    assert setup.rows("SELECT transaction_id FROM attempts") == setup.rows(
        "SELECT id FROM transactions WHERE rest_id = ?", ids["deferred"]
    )
    # Bodies nobody uses any more are gone too.
    assert setup.rows("SELECT count(*) FROM blobs") == [(3,)]


def test_purge_with_filters_json(tmp_path: Path) -> None:
    setup, ids = seeded(tmp_path)
    assert setup.json("queue", "purge", "--status", "failed", "--yes") == {"deleted": 1}
    assert ids["failed"] not in statuses(setup)
    assert setup.json("queue", "purge", "--status", "failed", "--yes") == {"deleted": 0}


def test_purge_refuses_unfinished_statuses(tmp_path: Path) -> None:
    setup, _ = seeded(tmp_path)
    one_line_error(
        setup.run("queue", "purge", "--status", "deferred", "--yes"), 1, "deferred deliveries are queued"
    )
    one_line_error(setup.run("queue", "purge", "--status", "queued", "--yes"), 1, "takes only cancelled")
    assert len(setup.rows("SELECT * FROM transactions")) == 5
