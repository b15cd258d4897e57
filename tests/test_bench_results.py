"""scripts/bench's pure pieces: rows, ratios, goals, the table, bench-results.json, its options.

No benchmark runs here (that is `scripts/bench --quick`): these feed made-up figures through
the code that turns measurements into what a reader sees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_smtp import PhaseResult, SizeRun
from benchlib.memory import DepthReading, MemoryReadings
from benchlib.results import (
    Goal,
    Row,
    WorkloadOutcome,
    cell,
    document,
    number,
    rows_from_json,
    schema_problems,
    signed,
    table,
)
from benchlib.suite import FULL, QUICK, latency_rows, memory_rows, parse_args, smtp_rows

AT_LEAST_POSTFIX = Goal("comparison", at_least=1.0, text=">= 1.0 x Postfix")


def throughput_row(mailnode: tuple[float, ...], postfix: tuple[float, ...]) -> Row:
    return Row(
        "smtp", "submission, 1 KiB", "msg/s", mailnode, "Postfix relay", postfix, "ratio", AT_LEAST_POSTFIX
    )


def test_ratio_is_taken_run_by_run() -> None:
    row = throughput_row((100.0, 300.0), (200.0, 300.0))
    assert row.comparisons() == (0.5, 1.0)  # not median/median: each run's pair shares its machine


def test_difference_is_taken_run_by_run() -> None:
    row = Row("latency", "p50", "ms", (7.0, 9.0), "sink", (1.5, 2.0), "difference")
    assert row.comparisons() == (5.5, 7.0)


@pytest.mark.parametrize(
    ("mailnode", "postfix", "met"),
    [
        ((300.0,), (200.0,), True),
        ((100.0,), (200.0,), False),
        ((300.0, 100.0), (200.0, 200.0), False),  # every run must meet it
        ((), (), None),  # the workload gave no figure
    ],
)
def test_goal_on_the_ratio(mailnode: tuple[float, ...], postfix: tuple[float, ...], met: bool | None) -> None:
    assert throughput_row(mailnode, postfix).goal_met() is met


def test_goal_on_mailnodes_own_figure() -> None:
    goal = Goal("mailnode", at_most=200.0, text="<= 200 MB")
    assert Row("memory", "peak RSS", "MiB", (150.0,), "at 0", (80.0,), "ratio", goal).goal_met() is True
    assert Row("memory", "peak RSS", "MiB", (250.0,), "at 0", (80.0,), "ratio", goal).goal_met() is False


@pytest.mark.parametrize(
    ("value", "text"), [(1487.2, "1487"), (59.34, "59.3"), (5.3, "5.30"), (0.2143, "0.21"), (0.0123, "0.012")]
)
def test_number_keeps_about_three_significant_figures(value: float, text: str) -> None:
    assert number(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(5.3, "+5.30"), (-0.11, "-0.11"), (-0.00001, "0.000"), (0.0, "0.000")]
)
def test_signed_differences_never_show_minus_zero(value: float, text: str) -> None:
    assert signed(value) == text


def test_cell_shows_min_median_max_over_several_runs() -> None:
    assert cell([136.0], "msg/s") == "136 msg/s"
    assert cell([142.0, 133.0, 136.0], "msg/s") == "133 / 136 / 142 msg/s"
    assert cell([], "msg/s") == "—"


def test_table_shows_reference_ratio_and_verdict() -> None:
    rows = [
        throughput_row((136.0,), (371.0,)),
        Row(
            "latency",
            "end-of-DATA p50, 1 client",
            "ms",
            (6.8,),
            "straight to the sink",
            (1.5,),
            "difference",
            Goal("comparison", at_most=5.0, text="overhead p50 <= 5 ms"),
        ),
        Row("send", "time to the 202", "s", (0.6,)),
    ]
    lines = table(rows).splitlines()
    assert lines[0].startswith("| workload | figure | mailnode | reference (same run) |")
    assert lines[2] == (
        "| smtp | submission, 1 KiB | 136 msg/s | Postfix relay: 371 msg/s | 0.37 "
        "| >= 1.0 x Postfix: NOT met |"
    )
    assert "| +5.30 ms | overhead p50 <= 5 ms: NOT met |" in lines[3]
    assert lines[4] == "| send | time to the 202 | 0.60 s | — | — | — |"


def sample_document() -> dict[str, object]:
    rows = [throughput_row((130.0, 140.0), (370.0, 360.0)), Row("send", "time to the 202", "s", (0.6, 0.7))]
    ok = WorkloadOutcome(rows=rows, details={"n": 500}, seconds=12.34)
    failed = WorkloadOutcome(error="mailnode serve exited early", seconds=1.0)
    return document(
        rows,
        command="scripts/bench --runs 2",
        options={"runs": 2},
        environment={"cpus": 2, "python": "3.11.7"},
        workloads={"smtp": ok.as_json(), "memory": failed.as_json()},
    )


def test_bench_results_json_follows_its_schema() -> None:
    doc = json.loads(json.dumps(sample_document()))  # as written to and read from the file
    assert schema_problems(doc) == []
    row = doc["rows"][0]
    assert row["comparison"] == {
        "kind": "ratio",
        "runs": [130.0 / 370.0, 140.0 / 360.0],
        "spread": {"min": 130.0 / 370.0, "median": (130.0 / 370.0 + 140.0 / 360.0) / 2, "max": 140.0 / 360.0},
    }
    assert row["goal"]["met"] is False
    assert doc["workloads"]["memory"] == {"seconds": 1.0, "error": "mailnode serve exited early"}
    assert doc["workloads"]["smtp"] == {"seconds": 12.3, "details": {"n": 500}}


def test_rows_read_back_from_the_json_are_the_rows_measured() -> None:
    doc = json.loads(json.dumps(sample_document()))
    assert rows_from_json(doc) == [
        throughput_row((130.0, 140.0), (370.0, 360.0)),
        Row("send", "time to the 202", "s", (0.6, 0.7)),
    ]


def test_schema_problems_name_what_is_wrong() -> None:
    doc = json.loads(json.dumps(sample_document()))
    doc["schema"] = "something/0"
    del doc["rows"][0]["unit"]
    doc["rows"][1]["mailnode"]["runs"] = ["fast"]
    assert schema_problems(doc) == [
        "schema: expected 'mailnode-bench/1', found 'something/0'",
        "rows[0]: unit: missing",
        "rows[1]: mailnode.runs: expected a list of numbers",
    ]


# -- turning each workload's measurements into rows ---------------------------------------------


def phase(rate: float, p50: float, p99: float) -> PhaseResult:
    return PhaseResult(100, 100, rate, rate, p50, p99, {})


def test_smtp_rows_compare_with_postfix_and_with_the_sink() -> None:
    runs = [SizeRun(1024, direct=phase(600, 7, 10), mailnode=phase(120, 20, 40), postfix=phase(240, 9, 30))]
    postfix_row, direct_row = smtp_rows(runs, with_postfix=True)
    assert (postfix_row.reference, postfix_row.comparisons(), postfix_row.goal_met()) == (
        "Postfix relay",
        (0.5,),
        False,
    )
    assert (direct_row.reference, direct_row.comparisons(), direct_row.goal) == (
        "straight to the sink",
        (0.2,),
        None,
    )


def test_latency_rows_are_overheads_at_one_and_twenty_clients() -> None:
    runs = [
        SizeRun(
            1024,
            direct=phase(600, 7, 10),
            mailnode=phase(120, 20, 40),
            direct_c1=phase(50, 0.5, 1.0),
            mailnode_c1=phase(40, 4.0, 9.0),
        ),
    ]
    rows = latency_rows(runs)
    assert [(r.figure, r.comparisons(), r.goal_met()) for r in rows] == [
        ("end-of-DATA p50, 1 KiB, 1 client", (3.5,), True),
        ("end-of-DATA p99, 1 KiB, 1 client", (8.0,), None),
        ("end-of-DATA p50, 1 KiB, 20 clients", (13.0,), False),
        ("end-of-DATA p99, 1 KiB, 20 clients", (30.0,), None),
    ]


def test_memory_rows_compare_with_the_empty_queue_and_hold_the_goal_at_the_deepest() -> None:
    def reading(queued: int, rss: float, ready: float, attempts: int = 0) -> DepthReading:
        return DepthReading(queued, rss, rss, ready, queued / 1000, attempts)

    deferred = {
        0: [reading(0, 80, 1.0)],
        10_000: [reading(10_000, 82, 1.0)],
        100_000: [reading(100_000, 90, 1.2)],
    }
    rows = memory_rows(MemoryReadings(deferred, due=[reading(100_000, 210, 1.1, attempts=900)]))
    assert [(r.figure, r.mailnode, r.reference_values, r.goal_met()) for r in rows] == [
        ("peak RSS, 10,000 deliveries queued (deferred)", (82,), (80,), None),
        ("peak RSS, 100,000 deliveries queued (deferred)", (90,), (80,), True),
        ("peak RSS, 100,000 due, upstream refusing", (210,), (80,), False),
        ("start-up with 100,000 queued: exec -> READY=1", (1.2,), (1.0,), None),
    ]
    assert rows[2].note == "900 attempts deferred"


# -- the command line -----------------------------------------------------------------------------


def test_options_default_to_every_workload_at_full_scale() -> None:
    options = parse_args([])
    assert options.workloads == ("smtp", "latency", "rest", "send", "memory", "startup")
    assert (options.runs, options.scale, options.json_path.name) == (1, FULL, "bench-results.json")
    assert FULL.memory_depths[-1] == 100_000 and FULL.send_recipients == 10_000


def test_only_and_quick() -> None:
    options = parse_args(
        ["--quick", "--only", "latency,memory", "--only", "smtp", "--runs", "3", "--json", "x.json"]
    )
    assert options.workloads == ("smtp", "latency", "memory")  # in the suite's order
    assert (options.scale, options.runs, options.json_path) == (QUICK, 3, Path("x.json"))


@pytest.mark.parametrize("argv", [["--only", "postfix"], ["--runs", "0"]])
def test_bad_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "scripts/bench: error:" in capsys.readouterr().err
