#!/usr/bin/env python3
"""Benchmark the open-tracking pixel against a bare aiohttp app, and the event ingestion rate.

Each run starts a fresh `mailnode serve` (SQLite in a temporary directory, a separate process),
creates a domain over the admin API as an operator does, mints identified open tokens for R
recipients with the tracking key mailnode keeps in its database, and measures, with the same
load client (this process: aiohttp, C connections, C workers, a browser User-Agent):
  hello      N GETs of /t/o/{token} to a bare aiohttp app with one handler answering "hello"
             (benchlib.hello, its own process, started once): the ceiling of aiohttp itself.
  tracking   N GETs of /t/o/{valid token} to mailnode: verify the token, queue an `opened`
             event, answer the 43-byte GIF. Figures: requests/s, latency, and the ratio to hello
             in the same run (the issue's target: >= 0.5).
  ingestion  from the first pixel request until stats_hourly counts all the opens (the engagement
             recorder's batched writes, then the stats worker): opened events/s into the hourly
             aggregates, and how long after the last answer the counts caught up. Read from the
             database file directly; lost opens and the unique count (R per run) are checked.
The N requests go in --slices slices, alternating between the servers, so that other load on
the machine falls on both alike. Both servers are warmed up first. Figures are min / median /
max over --runs runs, with the CPU each process used per request and how busy each server was
(1.0 = one core, all a single-threaded event loop can give; below it the client held it back).
Nothing leaves 127.0.0.1.

Run it with the project's venv (the script re-executes itself under .venv otherwise):
    .venv/bin/python scripts/bench_tracking.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib.venv import reexec_under_project_venv

try:
    import aiohttp
    from benchlib.cli import add_mailnode_arguments, run_benchmark
    from benchlib.hello import HelloProcess
    from benchlib.load import CpuMeter, run_workers
    from benchlib.mailnode import MailnodeProcess, base_config, running_mailnode
    from benchlib.profiler import profiling
    from benchlib.report import environment, write_report
    from benchlib.stats import Spread, percentile, summarize

    from mailnode.core.tracking import TrackingMode
    from mailnode.core.tracking_tokens import TokenKind, TrackingClaim, mint
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

HOST = "127.0.0.1"
DOMAIN = "shop.bench"
ADMIN_TOKEN = "bench-admin-" + secrets.token_hex(16)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
WARMUP = 2000  # requests to each server before its measured phase, not counted
STALL_SECONDS = 15.0  # no new count for this long after the load: the rest is lost


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    recipients: int
    slices: int
    runs: int
    sqlite_synchronous: str
    log_level: str
    timeout: float
    json_path: Path | None
    py_spy: Path | None


@dataclass
class Load:
    """Requests to one server, added up over slices: each from its first request to its last answer."""

    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU by process, summed

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def cpu_ms_per_request(self, process: str) -> float | None:
        return self.cpu_ms[process] / self.requests if process in self.cpu_ms else None

    def result(self) -> LoadResult:
        cpu = {name: total / self.requests for name, total in self.cpu_ms.items()}
        p50, p99 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 99)
        return LoadResult(self.seconds, self.rate, p50, p99, cpu)


@dataclass(frozen=True)
class LoadResult:
    """N requests with C in flight."""

    seconds: float
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]  # CPU per request by process


@dataclass
class Ingestion:
    """How fast the opens of the pixel slices reached stats_hourly, added up over slices."""

    counted: int = 0  # opens counted (N unless some were lost)
    unique: int = 0  # of which unique (R expected)
    seconds: float = 0.0  # from each slice's first request until its opens were all counted
    catch_up_seconds: float = 0.0  # the longest wait from a slice's last answer until then

    @property
    def rate(self) -> float:
        return self.counted / self.seconds


@dataclass(frozen=True)
class RunResult:
    hello: LoadResult
    tracking: LoadResult
    ingestion: Ingestion

    @property
    def ratio(self) -> float:
        return self.tracking.rate / self.hello.rate


# -- load ---------------------------------------------------------------------------------------


async def load(
    into: Load, url: Callable[[int], str], indices: range, concurrency: int, pids: dict[str, int]
) -> tuple[float, float]:
    """GET url(i) for i in indices, C at once over C kept-alive connections, adding to `into`;
    every answer must be 200. (time of the first request, seconds until the last answer)"""
    failures: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": BROWSER}, timeout=aiohttp.ClientTimeout(total=60)
    ) as http:

        async def get(offset: int) -> None:
            sent = time.monotonic()
            async with http.get(url(indices[offset])) as response:
                await response.read()
                if response.status != 200:
                    failures[response.status] += 1
            into.latencies_ms.append((time.monotonic() - sent) * 1000)

        cpu = CpuMeter(pids)
        cpu.start()
        started = time.monotonic()
        await run_workers(len(indices), concurrency, get)
        seconds = time.monotonic() - started
        into.seconds += seconds
        for name, ms in cpu.per_message_ms(1).items():
            if ms is not None:
                into.cpu_ms[name] = into.cpu_ms.get(name, 0.0) + ms
    if failures:
        raise RuntimeError(f"unexpected answers (status: count): {dict(failures)}")
    into.requests += len(indices)
    return started, seconds


# -- mailnode -------------------------------------------------------------------------------------


def mailnode_config(data_dir: Path, options: Options) -> str:
    return (
        base_config(data_dir, HOST, options.log_level, options.sqlite_synchronous)
        + f"""# The SMTP listeners are not measured here; free ports keep two runs from colliding.
[smtp.submission]
listen = "{HOST}:0"
[smtp.ingress]
listen = "{HOST}:0"
[admin]
token = "{ADMIN_TOKEN}"
"""
    )


async def create_domain(node: MailnodeProcess) -> None:
    """POST /v1/domains with the admin token, as an operator does."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{node.url}/v1/domains",
            json={"name": DOMAIN},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as response,
    ):
        if response.status != 201:
            raise RuntimeError(f"POST /v1/domains answered {response.status}: {await response.text()}")


def tracking_key(database: Path) -> tuple[str, bytes]:
    """The key mailnode signs tracking tokens with: the newest unretired one."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        row = connection.execute(
            "SELECT key_id, secret FROM signing_keys WHERE purpose = 'tracking' AND retired_at IS NULL "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no tracking key in {database}")
    return str(row[0]), bytes(row[1])


def open_tokens(key: tuple[str, bytes], batch: str, recipients: int) -> list[str]:
    """Identified open tokens for `recipients` recipients of one batch, as the renderer mints them."""
    expires_at = int(time.time()) + 86400
    return [
        mint(
            TrackingClaim(
                TokenKind.OPEN,
                TrackingMode.IDENTIFIED,
                DOMAIN,
                batch,
                f"d{batch}-{i}",
                f"user{i}@example.net",
                None,
                expires_at,
            ),
            *key,
        )
        for i in range(recipients)
    ]


def opened_counts(database: Path) -> tuple[int, int]:
    """(opens counted in stats_hourly, of which unique), read as an operator would."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        counted, unique = connection.execute(
            "SELECT coalesce(sum(count), 0), coalesce(sum(unique_count), 0) FROM stats_hourly "
            "WHERE domain = ? AND type = 'opened'",
            (DOMAIN,),
        ).fetchone()
    return int(counted), int(unique)


async def wait_counted(database: Path, target: int) -> tuple[float, int, int]:
    """Poll until stats_hourly counts `target` opens (or stops growing); (time, counted, unique)."""
    last_change, last = time.monotonic(), (-1, -1)
    while True:
        now = time.monotonic()
        counts = opened_counts(database)
        if counts[0] >= target:
            return now, counts[0], counts[1]
        if counts != last:
            last_change, last = now, counts
        elif now - last_change > STALL_SECONDS:
            return last_change, counts[0], counts[1]
        await asyncio.sleep(0.02)


# -- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pixel:
    """mailnode under test: its process, its database, the tokens pixel requests cycle through."""

    node: MailnodeProcess
    database: Path
    tokens: list[str]


async def pixel_slice(
    pixel: Pixel, indices: range, loaded: Load, ingestion: Ingestion, concurrency: int
) -> None:
    """Pixel requests, then the wait until stats_hourly has counted every open they made."""
    before, before_unique = opened_counts(pixel.database)
    tokens, url = pixel.tokens, f"{pixel.node.url}/t/o/"
    pids = {"mailnode": pixel.node.child.pid}
    started, seconds = await load(loaded, lambda i: url + tokens[i % len(tokens)], indices, concurrency, pids)
    done, counted, unique = await wait_counted(pixel.database, before + len(indices))
    ingestion.counted += counted - before
    ingestion.unique += unique - before_unique
    ingestion.seconds += done - started
    ingestion.catch_up_seconds = max(ingestion.catch_up_seconds, done - started - seconds)


async def measure(
    hello: HelloProcess, pixel: Pixel, n: int, slices: int, concurrency: int
) -> tuple[Load, Load, Ingestion]:
    """n requests to each server in alternating slices: load from elsewhere on the machine then
    falls on both alike, and the ratio of their rates holds up."""
    hello_load, pixel_load, ingestion = Load(), Load(), Ingestion()
    url, pids = f"{hello.url}/t/o/", {"hello": hello.child.pid}
    size = -(-n // slices)
    for start in range(0, n, size):
        indices = range(start, min(start + size, n))
        await load(hello_load, lambda i: f"{url}token{i}", indices, concurrency, pids)
        await pixel_slice(pixel, indices, pixel_load, ingestion, concurrency)
    return hello_load, pixel_load, ingestion


async def one_run(hello: HelloProcess, run: int, options: Options) -> RunResult:
    """A fresh mailnode and its domain; a warm-up of both servers, then the measured slices."""
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        config = Path(tmp) / "mailnode.toml"
        config.write_text(mailnode_config(Path(tmp), options))
        database = Path(tmp) / "mailnode.db"
        async with running_mailnode(config) as node:
            await create_domain(node)
            key = tracking_key(database)
            warmup = Pixel(node, database, open_tokens(key, f"warmup{run}", options.recipients))
            await measure(hello, warmup, WARMUP, 1, options.concurrency)
            pixel = Pixel(node, database, open_tokens(key, f"run{run}", options.recipients))
            profile = options.py_spy / "mailnode-tracking.txt" if options.py_spy and run == 1 else None
            async with profiling(node.child.pid, profile, "mailnode during the pixel load and ingestion"):
                measured = await measure(hello, pixel, options.n, options.slices, options.concurrency)
            if node.problems:
                print("mailnode warned:\n  " + "\n  ".join(node.problems), file=sys.stderr)
    hello_load, pixel_load, ingestion = measured
    return RunResult(hello_load.result(), pixel_load.result(), ingestion)


# -- report ---------------------------------------------------------------------------------------


def print_run(run: int, r: RunResult, options: Options) -> None:
    lost = options.n - r.ingestion.counted
    print(
        f"run {run}: hello {r.hello.rate:6.0f} req/s | tracking {r.tracking.rate:6.0f} req/s | "
        f"ratio {r.ratio:.2f} | ingestion {r.ingestion.rate:6.0f} opens/s "
        f"(counted {r.ingestion.catch_up_seconds:.2f} s after the last answer; {r.ingestion.unique} unique"
        f"{f'; {lost} LOST' if lost else ''})",
        flush=True,
    )


def busy(result: LoadResult, process: str) -> float | None:
    """CPU seconds the process used per second of the load."""
    ms = result.cpu_ms.get(process)
    return None if ms is None else ms * result.rate / 1000


def summary_of(results: list[RunResult]) -> dict[str, Spread]:
    figures: dict[str, Callable[[RunResult], float | None]] = {
        "hello req/s": lambda r: r.hello.rate,
        "tracking /t/o req/s": lambda r: r.tracking.rate,
        "ratio tracking / hello (target >= 0.5)": lambda r: r.ratio,
        "ingestion opens/s into stats_hourly": lambda r: r.ingestion.rate,
        "counted s after the last answer": lambda r: r.ingestion.catch_up_seconds,
        "hello p50 ms": lambda r: r.hello.p50_ms,
        "hello p99 ms": lambda r: r.hello.p99_ms,
        "tracking p50 ms": lambda r: r.tracking.p50_ms,
        "tracking p99 ms": lambda r: r.tracking.p99_ms,
        "hello: server busy (cores)": lambda r: busy(r.hello, "hello"),
        "tracking: mailnode busy (cores)": lambda r: busy(r.tracking, "mailnode"),
        "hello: server CPU ms/req": lambda r: r.hello.cpu_ms.get("hello"),
        "tracking: mailnode CPU ms/req": lambda r: r.tracking.cpu_ms.get("mailnode"),
        "hello: bench client CPU ms/req": lambda r: r.hello.cpu_ms.get("bench client"),
        "tracking: bench client CPU ms/req": lambda r: r.tracking.cpu_ms.get("bench client"),
    }
    return summarize(figures, results)


def print_summary(summary: dict[str, Spread], results: list[RunResult], options: Options) -> None:
    print(
        f"\nN={options.n} C={options.concurrency} R={options.recipients} recipients, "
        f"{options.slices} slices, {options.runs} runs, "
        f"sqlite_synchronous={options.sqlite_synchronous}, log_level={options.log_level}"
    )
    width = max(len(name) for name in summary)
    print(f"{'':{width}}  {'min':>9} {'median':>9} {'max':>9}")
    for name, spread in summary.items():
        digits = 0 if "/s" in name else 2
        print(
            f"{name:{width}}  {spread.min:9.{digits}f} {spread.median:9.{digits}f} {spread.max:9.{digits}f}"
        )
    lost = [options.n - r.ingestion.counted for r in results]
    wrong_unique = [r for r in results if r.ingestion.unique != min(options.recipients, options.n)]
    print(f"opens lost per run: {lost}; runs with a wrong unique count: {len(wrong_unique)}")


async def bench(options: Options) -> None:
    hello = await HelloProcess.start(HOST)
    results: list[RunResult] = []
    try:
        async with asyncio.timeout(options.timeout):
            for run in range(1, options.runs + 1):
                result = await one_run(hello, run, options)
                print_run(run, result, options)
                results.append(result)
    except TimeoutError:
        raise RuntimeError(
            f"not done after --timeout {options.timeout:.0f} s; use a smaller --n or --runs"
        ) from None
    finally:
        await hello.stop()
    summary = summary_of(results)
    print_summary(summary, results, options)
    if options.json_path is not None:
        document = {
            "benchmark": "bench_tracking",
            "options": {**asdict(options), "json_path": str(options.json_path)},
            "environment": environment(),
            "runs": [{**asdict(r), "ratio": r.ratio} for r in results],
            "summary": {name: asdict(spread) for name, spread in summary.items()},
        }
        write_report(options.json_path, document)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Run with the project's venv: .venv/bin/python scripts/bench_tracking.py --runs 3",
    )
    parser.add_argument("--n", type=int, default=20_000, help="requests per phase (default: %(default)s)")
    parser.add_argument(
        "--concurrency", "-c", type=int, default=50, help="requests in flight (default: %(default)s)"
    )
    parser.add_argument(
        "--recipients",
        "-r",
        type=int,
        default=1000,
        help="distinct recipients the pixel requests cycle through (default: %(default)s)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=5,
        help="alternate between the servers this many times per run (default: %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs; min/median/max over them (default: %(default)s)"
    )
    add_mailnode_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="give up after this many seconds (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile mailnode with py-spy during run 1's measured pixel load and ingestion; collapsed "
        "stacks go to DIR (flamegraph.pl input) and a summary is printed",
    )
    args = parser.parse_args(argv)
    for name in ("n", "concurrency", "recipients", "slices", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return Options(
        n=args.n,
        concurrency=args.concurrency,
        recipients=args.recipients,
        slices=args.slices,
        runs=args.runs,
        sqlite_synchronous=args.sqlite_synchronous,
        log_level=args.log_level,
        timeout=args.timeout,
        json_path=args.json,
        py_spy=args.py_spy,
    )


if __name__ == "__main__":
    run_benchmark("bench_tracking", parse_args, bench)
