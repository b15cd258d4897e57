"""`scripts/bench`: every workload against its reference in one sitting, one table, one JSON file.

Workloads (each against a reference measured in the same run, on the same machine):
  smtp     SMTP submission, 1 KiB and 100 KiB, 20 clients, through `mailnode serve` to a
           loopback sink; references: the same load straight to the sink (the physical
           limit) and Postfix as a loopback relay (scripts/bench_smtp.py)
  latency  cut-through: end-of-DATA reply latency p50/p99 through mailnode minus the same
           straight to the sink, at 1 and 20 clients (1 KiB; the same phases as smtp)
  rest     REST transactions created -> delivered, vs direct SMTP (scripts/bench_rest.py)
  send     one /v1/send batch of 10,000: time to 202 and delivery rate, vs the same messages
           pre-built and sent straight to the sink (scripts/bench_send.py)
  memory   peak RSS with 0, 10,000 and 100,000 deliveries queued (benchlib/memory.py)
  startup  exec -> READY=1 on our own sd_notify socket, vs `python -c pass` and
           `python -c "import mailnode.service"` (benchlib/startup.py)
Everything listens on 127.0.0.1 only; every process started is stopped at the end, on
Ctrl-C and on SIGTERM too; Postfix runs from a temporary directory, never /etc/postfix or port
25. Figures are min / median / max over --runs; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_rest
import bench_send
import bench_smtp

from benchlib.cli import run_benchmark
from benchlib.mailnode import base_config
from benchlib.memory import MIB, MemoryReadings, memory_runs
from benchlib.report import environment, leaf_exceptions, write_report
from benchlib.results import Goal, Row, WorkloadOutcome, document, rows_from_json, table
from benchlib.startup import startup_run
from benchlib.venv import ROOT

WORKLOADS = ("smtp", "latency", "rest", "send", "memory", "startup")
CLIENTS = 20
KIB = 1024


@dataclass(frozen=True)
class Scale:
    """How much of each workload a run does: the full run, or --quick to check the harness."""

    smtp_n: int
    latency_n: int
    rest_n: int
    send_recipients: int
    memory_depths: tuple[int, ...]
    memory_settle: float
    startup_samples: int
    timeout: float


FULL = Scale(500, 100, 2000, 10_000, (0, 10_000, 100_000), 3.0, 3, 900.0)
QUICK = Scale(20, 5, 50, 100, (0, 1_000), 0.5, 1, 300.0)


@dataclass(frozen=True)
class Options:
    workloads: tuple[str, ...]
    runs: int
    quick: bool
    postfix: bool
    json_path: Path
    table_of: Path | None = None  # --table: print an earlier run's table instead of running

    @property
    def scale(self) -> Scale:
        return QUICK if self.quick else FULL


# -- each workload: run its benchmark, turn its runs into rows ---------------------------------


def smtp_rows(runs: Sequence[bench_smtp.SizeRun], with_postfix: bool) -> list[Row]:
    """Throughput per size: mailnode vs Postfix (the goal) and vs straight to the sink."""
    rows = []
    for size in sorted({r.size for r in runs}):
        sized = [r for r in runs if r.size == size]
        figure = f"submission -> sink, {size // KIB} KiB, {CLIENTS} clients"
        mailnode = _values(sized, lambda r: r.mailnode.e2e_rate)
        if with_postfix:
            postfix = _values(sized, lambda r: r.postfix.e2e_rate if r.postfix else None)
            goal = Goal("comparison", at_least=1.0, text=">= 1.0 x Postfix")
            rows.append(Row("smtp", figure, "msg/s", mailnode, "Postfix relay", postfix, "ratio", goal))
        direct = _values(sized, lambda r: r.direct.e2e_rate)
        rows.append(Row("smtp", figure, "msg/s", mailnode, "straight to the sink", direct, "ratio"))
    return rows


def latency_rows(runs: Sequence[bench_smtp.SizeRun]) -> list[Row]:
    """End-of-DATA p50/p99 through mailnode minus straight to the sink, 1 KiB, 1 and 20 clients."""
    small = [r for r in runs if r.size == KIB]
    goal = Goal("comparison", at_most=5.0, text="overhead p50 <= 5 ms")
    rows = []
    for clients, mn, direct in ((1, "mailnode_c1", "direct_c1"), (CLIENTS, "mailnode", "direct")):
        for p in (50, 99):
            rows.append(
                Row(
                    "latency",
                    f"end-of-DATA p{p}, 1 KiB, {clients} client{'s' if clients > 1 else ''}",
                    "ms",
                    _values(small, lambda r, a=mn, p=p: _percentile(getattr(r, a), p)),
                    "straight to the sink",
                    _values(small, lambda r, a=direct, p=p: _percentile(getattr(r, a), p)),
                    "difference",
                    goal if p == 50 else None,
                )
            )
    return rows


def _percentile(phase: bench_smtp.PhaseResult | None, p: int) -> float | None:
    if phase is None:
        return None
    return phase.data_p50_ms if p == 50 else phase.data_p99_ms


def _values(runs: Sequence[Any], figure: Callable[[Any], float | None]) -> tuple[float, ...]:
    """The figure of each run, when every run has it (pairs stay aligned run by run)."""
    values = [figure(r) for r in runs]
    return tuple(v for v in values if v is not None) if all(v is not None for v in values) else ()


async def run_smtp(options: Options, outcomes: dict[str, WorkloadOutcome]) -> None:
    """bench_smtp once for both smtp and latency when both are asked for."""
    scale = options.scale
    wanted = [w for w in ("smtp", "latency") if w in options.workloads]
    throughput = "smtp" in wanted
    smtp_options = bench_smtp.Options(
        n=scale.smtp_n,
        concurrency=CLIENTS,
        runs=options.runs,
        sizes=(KIB, 100 * KIB) if throughput else (KIB,),
        postfix=options.postfix and throughput,
        ingress=False,
        sqlite_synchronous="full",
        log_level="info",
        latency_n=scale.latency_n if "latency" in wanted else 0,
        py_spy=None,
        timeout=scale.timeout,
        json_path=Path(os.devnull),
    )
    runs, summary = await bench_smtp.measure_runs(smtp_options)
    details = {
        "options": _plain(smtp_options),
        "summary": {str(size): _plain(figures) for size, figures in summary.items()},
    }
    if throughput:
        outcomes["smtp"].rows = smtp_rows(runs, smtp_options.postfix)
        outcomes["smtp"].details = details
    if "latency" in wanted:
        outcomes["latency"].rows = latency_rows(runs)
        outcomes["latency"].details = details


async def run_rest(options: Options, outcome: WorkloadOutcome) -> None:
    rest_options = bench_rest.Options(
        n=options.scale.rest_n,
        concurrency=CLIENTS,
        runs=options.runs,
        size=KIB,
        closed_loop=False,
        sqlite_synchronous="full",
        log_level="info",
        timeout=options.scale.timeout,
        json_path=Path(os.devnull),
    )
    runs, summary = await bench_rest.measure_runs(rest_options)
    outcome.rows = [
        Row(
            "rest",
            f"transactions created -> delivered, 1 KiB, {CLIENTS} at once",
            "msg/s",
            tuple(r.mailnode.rate for r in runs),
            "direct SMTP to the sink",
            tuple(r.reference.rate for r in runs),
            "ratio",
            Goal("comparison", at_least=0.5, text=">= 0.5 x direct"),
        )
    ]
    outcome.details = {"options": _plain(rest_options), "summary": _plain(summary)}


async def run_send(options: Options, outcome: WorkloadOutcome) -> None:
    n = options.scale.send_recipients
    send_options = bench_send.Options(
        recipients=n,
        concurrency=CLIENTS,
        runs=options.runs,
        algorithm="rsa",
        references=("smtp",),
        attachment_kib=0,
        dkim_seconds=0.5,
        sqlite_synchronous="full",
        log_level="info",
        timeout=options.scale.timeout,
        json_path=None,
        py_spy=None,
    )
    runs, summary = await bench_send.measure_runs(send_options)
    batch = f"/v1/send batch of {n:,}"
    outcome.rows = [
        Row("send", f"{batch}: time to the 202", "s", tuple(r.seconds_to_202 for r in runs)),
        Row(
            "send",
            f"{batch}: delivered, rendered and DKIM-signed per recipient",
            "msg/s",
            tuple(r.send_rate for r in runs),
            "the same messages pre-built, straight to the sink",
            _values(runs, lambda r: r.smtp_rate),
            "ratio",
        ),
    ]
    outcome.details = {"options": _plain(send_options), "summary": _plain(summary)}


def memory_rows(readings: MemoryReadings) -> list[Row]:
    """Peak RSS at each depth against the same at 0 queued; the goal at the deepest, at rest
    and due; start-up time with the deepest queue against the empty one."""
    deferred = readings.deferred
    base, deepest = min(deferred), max(deferred)
    reference = tuple(r.peak_rss_mib for r in deferred[base])
    goal = Goal("mailnode", at_most=200e6 / MIB, text="<= 200 MB")  # the figures are in MiB
    rows = []
    for depth, runs in sorted(deferred.items()):
        if depth == base:
            continue
        rows.append(
            Row(
                "memory",
                f"peak RSS, {depth:,} deliveries queued (deferred)",
                "MiB",
                tuple(r.peak_rss_mib for r in runs),
                f"the same at {base:,} queued",
                reference,
                "ratio",
                goal if depth == deepest else None,
                note=f"database {runs[-1].database_mib:.0f} MiB",
            )
        )
    if readings.due:
        attempts = min(r.attempts for r in readings.due)
        rows.append(
            Row(
                "memory",
                f"peak RSS, {deepest:,} due, upstream refusing",
                "MiB",
                tuple(r.peak_rss_mib for r in readings.due),
                f"the same at {base:,} queued",
                reference,
                "ratio",
                goal,
                note=f"{attempts:,} attempts deferred",
            )
        )
    rows.append(
        Row(
            "memory",
            f"start-up with {deepest:,} queued: exec -> READY=1",
            "s",
            tuple(r.ready_seconds for r in deferred[deepest]),
            f"the same at {base:,} queued",
            tuple(r.ready_seconds for r in deferred[base]),
            "ratio",
        )
    )
    return rows


async def run_memory(options: Options, outcome: WorkloadOutcome) -> None:
    scale = options.scale
    readings = await memory_runs(scale.memory_depths, options.runs, scale.memory_settle)
    outcome.rows = memory_rows(readings)
    outcome.details = {"settle_seconds": scale.memory_settle, "readings": _plain(readings)}


async def run_startup(options: Options, outcome: WorkloadOutcome) -> None:
    samples = options.scale.startup_samples
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        config = Path(tmp) / "mailnode.toml"
        config.write_text(
            base_config(Path(tmp), "127.0.0.1", "info", "full")
            + '[smtp.submission]\nlisten = "127.0.0.1:0"\n[smtp.ingress]\nlisten = "127.0.0.1:0"\n'
        )
        runs = [await startup_run(config, samples) for _ in range(options.runs)]
    ready = tuple(r.ready for r in runs)
    outcome.rows = [
        Row(
            "startup",
            "exec -> READY=1 (sd_notify)",
            "s",
            ready,
            "`python -c pass`",
            tuple(r.python for r in runs),
            "difference",
        ),
        Row(
            "startup",
            "exec -> READY=1 (sd_notify)",
            "s",
            ready,
            '`python -c "import mailnode.service"`',
            tuple(r.imports for r in runs),
            "difference",
        ),
    ]
    outcome.details = {"samples_per_run": samples, "runs": [_plain(r) for r in runs]}


def _plain(value: Any) -> Any:
    """Dataclasses, paths and tuples as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- the command ---------------------------------------------------------------------------------


async def run_workloads(options: Options) -> dict[str, WorkloadOutcome]:
    """Each workload in turn; one that fails is recorded with its error and the rest go on."""
    outcomes = {name: WorkloadOutcome() for name in options.workloads}
    steps: list[tuple[tuple[str, ...], Callable[[], Awaitable[None]]]] = []
    smtp_like = tuple(w for w in ("smtp", "latency") if w in options.workloads)
    if smtp_like:
        steps.append((smtp_like, lambda: run_smtp(options, outcomes)))
    single = {"rest": run_rest, "send": run_send, "memory": run_memory, "startup": run_startup}
    for name, run in single.items():
        if name in options.workloads:
            steps.append(((name,), lambda run=run, name=name: run(options, outcomes[name])))
    for names, step in steps:
        print(f"\n== {' + '.join(names)}", flush=True)
        started = time.monotonic()
        try:
            await step()
        except (RuntimeError, OSError, ExceptionGroup, TimeoutError) as exc:
            message = "; ".join(str(e) for e in leaf_exceptions(exc))
            print(f"{' + '.join(names)} failed: {message}", file=sys.stderr, flush=True)
            for name in names:
                outcomes[name].error = message
        for name in names:
            outcomes[name].seconds = time.monotonic() - started
    return outcomes


async def bench(options: Options) -> None:
    if options.table_of is not None:
        print(table(rows_from_json(json.loads(options.table_of.read_text()))))
        return
    load_before = os.getloadavg()
    started = time.monotonic()
    outcomes = await run_workloads(options)
    rows = [row for outcome in outcomes.values() for row in outcome.rows]
    seconds = time.monotonic() - started
    print(f"\n{table(rows)}")
    for name, outcome in outcomes.items():
        if outcome.error is not None:
            print(f"{name}: FAILED: {outcome.error}")
    env = {**environment(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    print(
        f"\n{options.runs} run(s), {seconds:.0f} s; {env['cpus']} CPUs, Python {env['python']}, "
        f"load average {load_before[0]:.1f} before, {env['loadavg_after'][0]:.1f} after"
    )
    command = shlex.join(["scripts/bench", *sys.argv[1:]])
    doc = document(
        rows,
        command=command,
        options={**_plain(options), "scale": _plain(options.scale), "seconds": round(seconds, 1)},
        environment=env,
        workloads={name: outcome.as_json() for name, outcome in outcomes.items()},
    )
    write_report(options.json_path, doc)
    if any(outcome.error is not None for outcome in outcomes.values()):
        sys.exit(1)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run with small counts (under a minute): checks the harness",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD",
        help=f"run only this workload (repeatable, or comma-separated): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="runs; min/median/max over them (default: %(default)s)"
    )
    parser.add_argument(
        "--no-postfix",
        action="store_true",
        help="skip the Postfix reference (it needs root to install and run)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "bench-results.json",
        help="where to write the figures (default: bench-results.json in the repository)",
    )
    parser.add_argument(
        "--table", type=Path, metavar="PATH", help="print the table of an earlier run's JSON file and exit"
    )
    args = parser.parse_args(argv)
    only = [name.strip() for value in args.only or [] for name in value.split(",") if name.strip()]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        parser.error(f"--only: unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return Options(
        workloads=tuple(w for w in WORKLOADS if not only or w in only),
        runs=args.runs,
        quick=args.quick,
        postfix=not args.no_postfix,
        json_path=args.json,
        table_of=args.table,
    )


def main() -> None:
    run_benchmark("scripts/bench", parse_args, bench)


if __name__ == "__main__":
    main()
