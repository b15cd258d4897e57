#!/usr/bin/env python3
"""Benchmark the REST path: HTTP transactions delivered to a loopback SMTP sink, against direct SMTP.

Each run sends the same N messages twice, at the same concurrency C, to one SMTP sink:
  reference  straight to the sink with aiosmtplib, a new SMTP connection for every message
             (connect, EHLO, MAIL, RCPT, DATA, QUIT);
  mailnode   as transactions POSTed to a fresh `mailnode serve`, which delivers them to the sink
             through its output handler in smarthost mode (over its pool of reused connections).
It reports messages/s for both, their ratio (the issue's target: >= 0.5), and per-message
create->delivered latency, as min/median/max over the runs, plus the CPU time each process
spent per message.

Both rates run from the first send until the sink (a separate process, see benchlib.sink) has
all N messages. Latency runs from the start of the POST (or SMTP connect) to the sink's end of
DATA for that message, found by the X-Bench-Id header each message carries. That misses only
mailnode's final commit after the 250, and adds no load to mailnode, as a hanging GET per
transaction would; afterwards a sample of transactions is read back to check that each ended
delivered. By default the client posts as fast as C requests allow (as the issue asks), so
the latency includes time queued behind the backlog; --closed-loop keeps C transactions in
flight end to end, like the reference, which makes latency a per-transaction figure.

Run it with the project's venv (scripts/test creates it; the script re-executes itself under
.venv when started with another Python):
    .venv/bin/python scripts/bench_rest.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib.venv import ROOT, reexec_under_project_venv

try:
    import aiohttp
    import aiosmtplib
    from benchlib.cli import add_mailnode_arguments, add_output_arguments, run_benchmark, shared_options
    from benchlib.load import CpuMeter, run_workers
    from benchlib.mailnode import MailnodeProcess, base_config, create_api_key, running_mailnode
    from benchlib.messages import rfc822_message
    from benchlib.report import environment, print_spreads, write_report
    from benchlib.sink import Arrivals, SinkProcess, loopback_sink
    from benchlib.stats import Spread, percentile, summarize
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

HOST = "127.0.0.1"
MAIL_FROM = "bench@mailnode.bench"
WARMUP = 100  # messages sent before each measured phase and not counted
RETRY_AFTER = 0.2  # seconds before a POST answered 503 ("try again shortly") is sent again


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    runs: int
    size: int
    closed_loop: bool
    sqlite_synchronous: str
    log_level: str
    timeout: float
    json_path: Path


@dataclass(frozen=True)
class PhaseResult:
    """One measured phase: N messages from the first send until the sink had them all."""

    seconds: float
    rate: float  # messages (transactions) per second
    latency_p50_ms: float
    latency_p99_ms: float
    cpu_ms_per_message: dict[str, float | None]  # by process: bench client, sink, mailnode
    accept_rate: float | None = None  # mailnode only: POSTs answered 201 per second
    retried_posts: int = 0  # mailnode only: POSTs answered 503 and sent again


@dataclass(frozen=True)
class RunResult:
    reference: PhaseResult
    mailnode: PhaseResult

    @property
    def ratio(self) -> float:
        return self.mailnode.rate / self.reference.rate


# -- messages -------------------------------------------------------------------------------


def bench_message(tag: str, index: int, size: int) -> bytes:
    """Message `index` of the phase `tag`: the sink knows it by X-Bench-Id "{tag}.{index}"."""
    return rfc822_message(f"{tag}.{index}", MAIL_FROM, recipient(index), size)


def recipient(index: int) -> str:
    return f"user{index}@example.net"


def transaction_json(message: bytes, index: int) -> bytes:
    body = {
        "mail_from": {"m": MAIL_FROM},
        "rcpt_to": [{"m": recipient(index)}],
        "body": {"inline": message.decode("ascii")},
    }
    return json.dumps(body).encode()


# -- measuring ------------------------------------------------------------------------------


def phase_result(
    arrivals: Arrivals, started: float, send_times: dict[int, float], cpu: dict[str, float | None]
) -> PhaseResult:
    if arrivals.duplicates:
        raise RuntimeError(f"the sink got {arrivals.duplicates} messages twice")
    seconds = max(arrivals.times.values()) - started
    latencies = [(arrivals.times[i] - sent) * 1000 for i, sent in send_times.items()]
    return PhaseResult(
        seconds=seconds,
        rate=arrivals.expected / seconds,
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
        cpu_ms_per_message=cpu,
    )


async def reference_phase(sink: SinkProcess, tag: str, n: int, options: Options) -> PhaseResult:
    """Send n messages straight to the sink with aiosmtplib: connect, EHLO, MAIL, RCPT, DATA, QUIT."""
    messages = [bench_message(tag, i, options.size) for i in range(n)]
    arrivals = sink.expect(tag, n)
    send_times: dict[int, float] = {}
    cpu = CpuMeter({"sink": sink.child.pid})

    async def send(index: int) -> None:
        send_times[index] = time.monotonic()
        async with aiosmtplib.SMTP(
            hostname=sink.host, port=sink.port, local_hostname="bench.test", start_tls=False, timeout=30
        ) as smtp:
            await smtp.sendmail(MAIL_FROM, [recipient(index)], messages[index])

    cpu.start()
    started = time.monotonic()
    await run_workers(n, options.concurrency, send)
    await arrivals.complete.wait()
    return phase_result(arrivals, started, send_times, cpu.per_message_ms(n))


async def mailnode_phase(
    sink: SinkProcess, node: MailnodeProcess, key: str, tag: str, n: int, options: Options
) -> PhaseResult:
    """POST n transactions with C requests in flight; done when the sink has every message.

    With --closed-loop a worker posts its next transaction only after the sink got the last
    one, so C transactions are in flight end to end, as in the reference.
    """
    payloads = [transaction_json(bench_message(tag, i, options.size), i) for i in range(n)]
    arrivals = sink.expect(tag, n)
    send_times: dict[int, float] = {}
    locations: list[str] = []
    retried = 0
    cpu = CpuMeter({"sink": sink.child.pid, "mailnode": node.child.pid})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=options.concurrency)
    url = f"{node.url}/senders/api/transactions"
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
    ) as http:

        async def send(index: int) -> None:
            nonlocal retried
            send_times[index] = time.monotonic()
            while True:
                async with http.post(url, data=payloads[index]) as response:
                    text = await response.text()
                    if response.status == 201:
                        locations.append(response.headers["Location"])
                        break
                    if response.status != 503:
                        raise RuntimeError(f"POST answered {response.status}: {text[:300]}")
                retried += 1  # what a client does with 503: wait a moment and send it again
                await asyncio.sleep(RETRY_AFTER)
            if options.closed_loop:
                await arrivals.wait_for(index)

        cpu.start()
        started = time.monotonic()
        await run_workers(n, options.concurrency, send)
        accepted = time.monotonic() - started
        await arrivals.complete.wait()
        result = phase_result(arrivals, started, send_times, cpu.per_message_ms(n))
        await check_final(http, node.url, locations[:: max(1, len(locations) // 20)])
    return PhaseResult(**{**asdict(result), "accept_rate": n / accepted, "retried_posts": retried})


async def check_final(http: aiohttp.ClientSession, base_url: str, locations: list[str]) -> None:
    """Read a sample of transactions back: each must end delivered, with data_response 250."""
    for location in locations:
        tx: dict[str, Any] = {}
        while "final_attempt_reason" not in tx:
            async with http.get(f"{base_url}{location}") as response:
                tx = await response.json()
            if "final_attempt_reason" not in tx:
                await asyncio.sleep(0.05)  # the sink has the message; the outcome is being recorded
        if tx.get("data_response", {}).get("code") != 250:
            raise RuntimeError(f"{location} did not end delivered: {tx}")


# -- one run --------------------------------------------------------------------------------


def mailnode_config(data_dir: Path, sink: SinkProcess, options: Options) -> str:
    """TOML for `mailnode serve`: SQLite in data_dir, HTTP on a free loopback port, the sink as smarthost.

    Delivery concurrency is C, also per destination (every message goes to the one smarthost),
    so mailnode may hold as many SMTP connections as the reference does.
    """
    return (
        base_config(data_dir, HOST, options.log_level, options.sqlite_synchronous)
        + f"""# The SMTP listeners are not measured here; free ports keep two runs from colliding.
[smtp.submission]
listen = "{HOST}:0"
[smtp.ingress]
listen = "{HOST}:0"
[delivery]
mode = "smarthost"
smarthost = "{sink.host}:{sink.port}"
concurrency = {options.concurrency}
per_destination_concurrency = {options.concurrency}
connect_timeout_seconds = 10
command_timeout_seconds = 30
[retry]
# A failed delivery must surface (the read-back check reports it), not be retried quietly.
max_attempts = 1
"""
    )


async def one_run(sink: SinkProcess, run: int, options: Options) -> RunResult:
    """Reference first, then mailnode (fresh data directory), each after a short warm-up."""
    warmup = min(WARMUP, options.n)
    await reference_phase(sink, f"r{run}-ref-warmup", warmup, options)
    reference = await reference_phase(sink, f"r{run}-ref", options.n, options)
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp:
        config = Path(tmp) / "mailnode.toml"
        config.write_text(mailnode_config(Path(tmp), sink, options))
        key = await create_api_key(config)
        async with running_mailnode(config) as node:
            await mailnode_phase(sink, node, key, f"r{run}-mn-warmup", warmup, options)
            measured = await mailnode_phase(sink, node, key, f"r{run}-mn", options.n, options)
    return RunResult(reference, measured)


# -- report ---------------------------------------------------------------------------------


def print_run(run: int, result: RunResult) -> None:
    ref, mn = result.reference, result.mailnode
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in mn.cpu_ms_per_message.items() if ms is not None)
    ref_cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in ref.cpu_ms_per_message.items() if ms is not None)
    print(
        f"run {run}: reference {ref.rate:7.0f} msg/s | mailnode {mn.rate:6.0f} tx/s "
        f"(POSTs accepted at {mn.accept_rate or 0:.0f}/s) | ratio {result.ratio:.2f} | "
        f"create->delivered p50 {mn.latency_p50_ms:.0f} ms p99 {mn.latency_p99_ms:.0f} ms",
        flush=True,
    )
    if mn.retried_posts:
        print(f"       {mn.retried_posts} POSTs were answered 503 and sent again", flush=True)
    print(f"       CPU ms per message: reference [{ref_cpu}]; mailnode [{cpu}]", flush=True)


def summary_of(results: list[RunResult]) -> dict[str, Spread]:
    figures: dict[str, Callable[[RunResult], float | None]] = {
        "reference msg/s": lambda r: r.reference.rate,
        "mailnode tx/s": lambda r: r.mailnode.rate,
        "ratio (target >= 0.5)": lambda r: r.ratio,
        "mailnode POST accept/s": lambda r: r.mailnode.accept_rate or 0.0,
        "mailnode POSTs answered 503": lambda r: r.mailnode.retried_posts,
        "mailnode p50 ms": lambda r: r.mailnode.latency_p50_ms,
        "mailnode p99 ms": lambda r: r.mailnode.latency_p99_ms,
        "reference p50 ms": lambda r: r.reference.latency_p50_ms,
        "reference p99 ms": lambda r: r.reference.latency_p99_ms,
    }
    for phase in ("reference", "mailnode"):
        for process in ("bench client", "sink", "mailnode"):
            figures[f"{phase}: {process} CPU ms/msg"] = lambda r, phase=phase, process=process: getattr(
                r, phase
            ).cpu_ms_per_message.get(process)
    return summarize(figures, results)


def print_summary(summary: dict[str, Spread], options: Options) -> None:
    mode = "closed loop" if options.closed_loop else "flood"
    print(
        f"\nN={options.n} C={options.concurrency} size={options.size} B, {options.runs} runs, {mode}, "
        f"sqlite_synchronous={options.sqlite_synchronous}, log_level={options.log_level}"
    )
    if not options.closed_loop:
        print(
            "(flood: mailnode latency includes waiting behind the backlog whenever POSTs are accepted "
            "faster than delivered; --closed-loop measures it with C transactions in flight)"
        )
    print_spreads(summary)


def write_json(path: Path, options: Options, results: list[RunResult], summary: dict[str, Spread]) -> None:
    document = {
        "benchmark": "bench_rest",
        "options": {**asdict(options), "json_path": str(options.json_path)},
        # bench_rest's report has no "uncommitted" list; keep its fields as they were.
        "environment": {k: v for k, v in environment().items() if k != "uncommitted"},
        "runs": [{**asdict(r), "ratio": r.ratio} for r in results],
        "summary": {name: asdict(spread) for name, spread in summary.items()},
    }
    write_report(path, document)


# -- main -----------------------------------------------------------------------------------


async def measure_runs(options: Options) -> tuple[list[RunResult], dict[str, Spread]]:
    """Every run, each printed as it ends; the results and their summary."""
    results: list[RunResult] = []
    advice = "use a smaller --n or --runs, or a larger --timeout"
    async with loopback_sink(options.timeout, advice, HOST) as sink:
        for run in range(1, options.runs + 1):
            result = await one_run(sink, run, options)
            print_run(run, result)
            results.append(result)
    return results, summary_of(results)


async def bench(options: Options) -> None:
    results, summary = await measure_runs(options)
    print_summary(summary, options)
    write_json(options.json_path, options, results, summary)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Run with the project's venv: .venv/bin/python scripts/bench_rest.py --runs 3",
    )
    parser.add_argument("--n", type=int, default=2000, help="messages per phase (default: %(default)s)")
    parser.add_argument(
        "--concurrency", "-c", type=int, default=20, help="messages in flight (default: %(default)s)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs; min/median/max over them (default: %(default)s)"
    )
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes (default: %(default)s)")
    parser.add_argument(
        "--closed-loop",
        action="store_true",
        help="post the next transaction only after the sink got the previous one "
        "(C transactions in flight end to end); default: post as fast as C requests allow",
    )
    add_mailnode_arguments(parser)
    add_output_arguments(parser, timeout=600.0, json_path=ROOT / "bench-results.json")
    args = parser.parse_args(argv)
    for name in ("n", "concurrency", "runs", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return Options(
        n=args.n,
        concurrency=args.concurrency,
        runs=args.runs,
        size=args.size,
        closed_loop=args.closed_loop,
        **shared_options(args),
    )


if __name__ == "__main__":
    run_benchmark("bench_rest", parse_args, bench)
