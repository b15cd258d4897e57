#!/usr/bin/env python3
"""Benchmark SMTP submission: mailnode between C clients and a loopback sink, against direct and Postfix.

For each message size, each run sends N messages at concurrency C, one SMTP connection per
message, to one SMTP sink (a separate process, see benchlib.sink), three ways:
  direct    aiosmtplib clients straight to the sink, no AUTH (the floor: what the client,
            the sink and loopback TCP cost on their own);
  mailnode  the same clients with AUTH PLAIN (an API key, plaintext allowed on loopback) to
            `mailnode serve`'s submission listener, which relays each message to the sink in
            smarthost mode, cut-through: the client's answer at the end of DATA waits for the
            sink's;
  postfix   the same clients, no AUTH, to Postfix relaying to the sink (installed from Debian
            when missing; run from a temporary config directory on a loopback port, see
            benchlib.postfix). Postfix answers once the message is in its queue on disk.
Then, unless --latency-n 0, the same three with one client at a time: latency without
queueing. With --ingress it also loads mailnode's ingress listener (port 25's role: no AUTH;
a route sends the test domain to the sink; the SPF/DKIM/DMARC checks ask a loopback DNS
server that answers NXDOMAIN, see benchlib.dns) and Postfix with smtp-source, Postfix's own
C load generator, which costs the machine far less CPU than Python clients.

Figures, as min/median/max over the runs, every run measuring all peers in the same sitting:
  msg/s accepted     N / (first connect .. last end-of-DATA reply at the client)
  msg/s end-to-end   N / (first connect .. the sink has all N)
  end-of-DATA ms     p50/p99 of the time the client waits in DATA: the DATA command, the
                     message, and the final reply; for mailnode this includes its wait for
                     the sink's answer (cut-through)
  overhead ms        mailnode p50 - direct p50 in the same run (target: <= 5 ms)
  ratios             mailnode / postfix (end-to-end; target: >= 1.0) and mailnode / direct
Each measured phase follows a short warm-up. A message a server refuses is not retried: it
is reported with its reply code, and the rates count only accepted messages.

Run it with the project's venv (scripts/test creates it; the script re-executes itself under
.venv when started with another Python); as root, so that it can install and run Postfix:
    .venv/bin/python scripts/bench_smtp.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from benchlib.venv import ROOT, reexec_under_project_venv

try:
    import aiosmtplib
    from benchlib import postfix
    from benchlib.cli import add_mailnode_arguments, add_output_arguments, run_benchmark, shared_options
    from benchlib.dns import NxDomainServer, nxdomain_server
    from benchlib.load import CpuMeter, run_workers
    from benchlib.mailnode import MailnodeProcess, base_config, create_api_key, running_mailnode
    from benchlib.messages import rfc822_message
    from benchlib.processes import free_port, spawn
    from benchlib.profiler import profiling
    from benchlib.report import environment, write_report
    from benchlib.sink import SinkProcess, loopback_sink
    from benchlib.stats import Spread, percentile, summarize
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

HOST = "127.0.0.1"
SENDER_DOMAIN = "mailnode.bench"  # the API key's domain: submission allows MAIL FROM only there
MAIL_FROM = f"bench@{SENDER_DOMAIN}"
INGRESS_DOMAIN = "ingress.bench"  # routed by mailnode's ingress to the sink
WARMUP = 100  # messages sent before each measured phase and not counted
CLIENT_TIMEOUT = 30.0  # seconds for each SMTP command of a client
SETTLE_TIMEOUT = 60.0  # seconds for the sink to get what a server accepted


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    runs: int
    sizes: tuple[int, ...]
    postfix: bool
    ingress: bool
    sqlite_synchronous: str
    log_level: str
    latency_n: int
    py_spy: Path | None
    timeout: float
    json_path: Path


@dataclass(frozen=True)
class PhaseResult:
    """One measured phase: N messages sent by C clients."""

    sent: int
    accepted: int
    accept_rate: float  # accepted messages / (first connect .. last end-of-DATA reply)
    e2e_rate: float | None  # accepted messages / (first connect .. last arrival at the sink)
    data_p50_ms: float | None  # None for smtp-source, which reports no timings
    data_p99_ms: float | None
    cpu_ms_per_message: dict[str, float | None]
    failures: dict[str, int] = field(default_factory=dict)  # reply or error -> count
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SizeRun:
    """One size in one run: every peer measured back to back."""

    size: int
    direct: PhaseResult
    mailnode: PhaseResult
    postfix: PhaseResult | None = None
    # One client at a time (--latency-n): end-of-DATA latency without queueing.
    direct_c1: PhaseResult | None = None
    mailnode_c1: PhaseResult | None = None
    postfix_c1: PhaseResult | None = None
    mailnode_ingress: PhaseResult | None = None
    postfix_ingress: PhaseResult | None = None


# -- the peers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a phase sends its messages."""

    name: str
    host: str
    port: int
    recipient_domain: str = "example.net"
    auth: tuple[str, str] | None = None  # AUTH PLAIN user name and password
    cpu_pids: dict[str, int] = field(default_factory=dict)  # server processes to account CPU for
    cpu_trees: dict[str, int] = field(default_factory=dict)  # the same, with the workers they fork


def recipient(index: int, domain: str) -> str:
    return f"user{index}@{domain}"


def mailnode_config(data_dir: Path, sink: SinkProcess, dns: NxDomainServer, options: Options) -> str:
    """TOML for `mailnode serve`: fresh SQLite, every listener on a free loopback port.

    Delivery may hold twice as many connections to the sink as there are clients, so it never
    caps the run; the timeouts are mailnode's defaults for submission, said out loud. DNS (the
    ingress authentication checks) goes to a loopback server that answers NXDOMAIN, so no
    lookup leaves the machine.
    """
    c = options.concurrency
    return (
        base_config(data_dir, HOST, options.log_level, options.sqlite_synchronous)
        + f"""[dns]
nameservers = ["{dns.host}:{dns.port}"]
[delivery]
mode = "smarthost"
smarthost = "{sink.host}:{sink.port}"
concurrency = {2 * c}
per_destination_concurrency = {2 * c}
connect_timeout_seconds = 10
command_timeout_seconds = 30
[retry]
# A failed delivery must surface (as a stray DSN at the sink), not be retried quietly.
max_attempts = 1
[smtp]
hostname = "mailnode.bench"
max_connections = {max(200, 4 * c)}
command_timeout_seconds = 60
[smtp.submission]
listen = "{HOST}:0"
allow_plaintext_auth_on_loopback = true
rcpt_timeout_seconds = 5
data_timeout_seconds = 30
[smtp.ingress]
listen = "{HOST}:0"
[[ingress.routes]]
domain = "{INGRESS_DOMAIN}"
endpoint = "smtp:{sink.host}:{sink.port}"
"""
    )


# -- phases ---------------------------------------------------------------------------------


def failure_key(exc: BaseException) -> str:
    """What went wrong, short enough to count: the reply code and text, or the error type."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message.splitlines()[0][:60]}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "; ".join(failure_key(e) for e in exc.recipients[:1])
    return f"{type(exc).__name__}: {str(exc)[:60]}"


async def settle(sink_wait: asyncio.Event, timeout: float) -> bool:
    """Wait for the sink to have everything accepted; False after `timeout` seconds."""
    try:
        await asyncio.wait_for(sink_wait.wait(), timeout)
    except TimeoutError:
        return False
    return True


async def client_phase(sink: SinkProcess, target: Target, tag: str, n: int, size: int, c: int) -> PhaseResult:
    """n messages by c concurrent aiosmtplib clients, one connection per message."""
    rcpts = [recipient(i, target.recipient_domain) for i in range(n)]
    messages = [rfc822_message(f"{tag}.{i}", MAIL_FROM, rcpts[i], size) for i in range(n)]
    arrivals = sink.expect(tag, n)
    data_ms: list[float] = []
    accepted_at: list[float] = []
    failures: Counter[str] = Counter()
    cpu = CpuMeter({"sink": sink.child.pid, **target.cpu_pids}, target.cpu_trees)

    async def send(index: int) -> None:
        accepted = False
        try:
            async with aiosmtplib.SMTP(
                hostname=target.host,
                port=target.port,
                local_hostname="client.bench",
                start_tls=False,
                timeout=CLIENT_TIMEOUT,
            ) as smtp:
                await smtp.ehlo()
                if target.auth is not None:
                    await smtp.auth_plain(*target.auth)
                await smtp.mail(MAIL_FROM)
                await smtp.rcpt(rcpts[index])
                data_started = time.monotonic()
                await smtp.data(messages[index])
                accepted_at.append(time.monotonic())
                data_ms.append((accepted_at[-1] - data_started) * 1000)
                accepted = True
        except (aiosmtplib.SMTPException, OSError) as exc:
            failures[("after end of DATA (QUIT): " if accepted else "") + failure_key(exc)] += 1

    cpu.start()
    started = time.monotonic()
    await run_workers(n, c, send)
    cpu_ms = cpu.per_message_ms(len(accepted_at))
    arrivals.expect_only(len(accepted_at))
    notes = []
    if not await settle(arrivals.complete, SETTLE_TIMEOUT):
        notes.append(
            f"{target.name}: the sink got {len(arrivals.times)} of {len(accepted_at)} accepted messages"
        )
    if arrivals.duplicates:
        notes.append(f"{target.name}: the sink got {arrivals.duplicates} messages twice")
    return PhaseResult(
        sent=n,
        accepted=len(accepted_at),
        accept_rate=len(accepted_at) / (max(accepted_at) - started) if accepted_at else 0.0,
        e2e_rate=len(arrivals.times) / (max(arrivals.times.values()) - started) if arrivals.times else None,
        data_p50_ms=percentile(data_ms, 50) if data_ms else None,
        data_p99_ms=percentile(data_ms, 99) if data_ms else None,
        cpu_ms_per_message=cpu_ms,
        failures=dict(failures),
        notes=notes,
    )


async def smtp_source_phase(
    sink: SinkProcess, target: Target, tag: str, n: int, size: int, c: int, workdir: Path
) -> PhaseResult:
    """n copies of one message file by `smtp-source -s c`, one connection per message."""
    message_file = workdir / f"{tag}.eml"
    message = rfc822_message(f"{tag}.*", MAIL_FROM, recipient(0, target.recipient_domain), size)
    message_file.write_bytes(message.replace(b"\r\n", b"\n"))  # smtp-source adds the CRs
    arrivals = sink.expect(tag, n)
    cpu = CpuMeter({"sink": sink.child.pid, **target.cpu_pids}, target.cpu_trees)
    cpu.start()
    started = time.monotonic()
    source = await spawn(
        "smtp-source",
        str(postfix.SBIN / "smtp-source"),
        *("-s", str(c), "-m", str(n), "-F", str(message_file)),
        *("-f", MAIL_FROM, "-t", recipient(0, target.recipient_domain)),
        f"{target.host}:{target.port}",
    )
    try:
        await asyncio.wait_for(source.process.wait(), CLIENT_TIMEOUT + n)
    finally:
        await source.stop()
    accepted_seconds = time.monotonic() - started
    failures = {}
    if source.process.returncode != 0:
        failures[f"smtp-source exit {source.process.returncode}: {''.join(source.stderr_tail)[-200:]}"] = 1
    complete = await settle(arrivals.complete, SETTLE_TIMEOUT)
    notes = [] if complete else [f"{target.name}: the sink got {len(arrivals.times)} of {n}"]
    got = len(arrivals.times)
    return PhaseResult(
        sent=n,
        accepted=n if not failures else got,
        accept_rate=n / accepted_seconds,
        e2e_rate=got / (max(arrivals.times.values()) - started) if got else None,
        data_p50_ms=None,
        data_p99_ms=None,
        cpu_ms_per_message=cpu.per_message_ms(n),
        failures=failures,
        notes=notes,
    )


async def empty_postfix_queue(relay: postfix.PostfixRelay, notes: list[str]) -> None:
    """Between phases: nothing of this phase may be delivered during the next one."""
    left = await relay.wait_queue_empty(timeout=30)
    if left:
        notes.append(f"postfix: {left} messages still queued after 30 s; deleted")
        await relay.drop_queue()


# -- one run --------------------------------------------------------------------------------


@dataclass
class Peers:
    sink: SinkProcess
    node: MailnodeProcess
    key: str
    relay: postfix.PostfixRelay | None
    workdir: Path


async def size_run(peers: Peers, run: int, size: int, options: Options) -> SizeRun:
    """Every peer for one size: warm-up, then the measured phase, one after another."""
    n, c = options.n, options.concurrency
    warmup = min(WARMUP, n)
    sink, node = peers.sink, peers.node
    mn_pid = {"mailnode": node.child.pid}
    direct = Target("direct", sink.host, sink.port)
    submission_host, submission_port = node.smtp["submission"]
    submission = Target(
        "mailnode", submission_host, submission_port, auth=(SENDER_DOMAIN, peers.key), cpu_pids=mn_pid
    )

    async def measure(name: str, phase: Callable[[str, int], Any]) -> PhaseResult:
        await phase(f"r{run}-{size}-{name}-warmup", warmup)
        result: PhaseResult = await phase(f"r{run}-{size}-{name}", n)
        return result

    direct_result = await measure("direct", lambda tag, k: client_phase(sink, direct, tag, k, size, c))
    profile = options.py_spy / f"mailnode-submission-{size}.txt" if options.py_spy and run == 1 else None
    async with profiling(node.child.pid, profile, f"mailnode during the submission phase, {size} B"):
        mailnode_result = await measure(
            "mailnode", lambda tag, k: client_phase(sink, submission, tag, k, size, c)
        )
    result = SizeRun(size, direct_result, mailnode_result)
    relay = peers.relay
    postfix_pid = {"postfix": relay.master.pid} if relay is not None else {}
    if relay is not None:
        via_postfix = Target("postfix", HOST, relay.port, cpu_trees=postfix_pid)

        async def postfix_phase(tag: str, k: int, clients: int = c) -> PhaseResult:
            assert relay is not None
            result = await client_phase(sink, via_postfix, tag, k, size, clients)
            await empty_postfix_queue(relay, result.notes)
            return result

        result = replace(result, postfix=await measure("postfix", postfix_phase))
    if options.latency_n:
        k = options.latency_n
        result = replace(
            result,
            direct_c1=await client_phase(sink, direct, f"r{run}-{size}-direct-c1", k, size, 1),
            mailnode_c1=await client_phase(sink, submission, f"r{run}-{size}-mailnode-c1", k, size, 1),
        )
        if relay is not None:
            result = replace(result, postfix_c1=await postfix_phase(f"r{run}-{size}-postfix-c1", k, 1))
    if options.ingress:
        ingress_host, ingress_port = node.smtp["ingress"]
        ingress = Target("mailnode ingress", ingress_host, ingress_port, INGRESS_DOMAIN, cpu_pids=mn_pid)
        ingress_result = await measure(
            "ingress", lambda tag, k: smtp_source_phase(sink, ingress, tag, k, size, c, peers.workdir)
        )
        result = replace(result, mailnode_ingress=ingress_result)
        if relay is not None:
            source_to_postfix = Target("postfix (smtp-source)", HOST, relay.port, cpu_trees=postfix_pid)

            async def postfix_source_phase(tag: str, k: int) -> PhaseResult:
                assert relay is not None
                result = await smtp_source_phase(sink, source_to_postfix, tag, k, size, c, peers.workdir)
                await empty_postfix_queue(relay, result.notes)
                return result

            result = replace(result, postfix_ingress=await measure("postfix-source", postfix_source_phase))
    return result


async def one_run(
    sink: SinkProcess, relay: postfix.PostfixRelay | None, dns: NxDomainServer, run: int, options: Options
) -> list[SizeRun]:
    """A fresh mailnode (new data directory) for this run, then every size."""
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        config = Path(tmp) / "mailnode.toml"
        config.write_text(mailnode_config(Path(tmp), sink, dns, options))
        key = await create_api_key(config, domain=SENDER_DOMAIN)
        listeners = ("submission", "ingress") if options.ingress else ("submission",)
        async with running_mailnode(config, smtp_listeners=listeners) as node:
            peers = Peers(sink, node, key, relay, Path(tmp))
            results = []
            for size in options.sizes:
                result = await size_run(peers, run, size, options)
                print_size_run(run, result)
                results.append(result)
        levels = ", ".join(f"{count} {level}" for level, count in sorted(node.log_levels.items()))
        print(f"  mailnode's log in run {run}: {levels or 'nothing'}", flush=True)
        if node.problems:
            print("  its last warnings/errors:\n    " + "\n    ".join(list(node.problems)[-5:]), flush=True)
    return results


# -- report ---------------------------------------------------------------------------------


def print_size_run(run: int, r: SizeRun) -> None:
    def rate(p: PhaseResult | None) -> str:
        if p is None:
            return "-"
        e2e = f"{p.e2e_rate:.0f}" if p.e2e_rate is not None else "?"
        return f"{p.accept_rate:.0f}/{e2e}"

    latency = (
        f"end-of-DATA p50 direct {r.direct.data_p50_ms or 0:.1f} ms, "
        f"mailnode {r.mailnode.data_p50_ms or 0:.1f} ms"
    )
    line = f"run {run}, {r.size} B, msg/s accepted/end-to-end: direct {rate(r.direct)}"
    line += f" | mailnode {rate(r.mailnode)}"
    if r.postfix is not None:
        line += f" | postfix {rate(r.postfix)}"
    if r.mailnode_ingress is not None:
        line += f" | smtp-source: mailnode ingress {rate(r.mailnode_ingress)}"
        line += f", postfix {rate(r.postfix_ingress)}" if r.postfix_ingress else ""
    print(f"{line}; {latency}", flush=True)
    for name in [f.name for f in fields(SizeRun) if f.name != "size"]:
        phase: PhaseResult | None = getattr(r, name)
        if phase is None:
            continue
        for failure, count in phase.failures.items():
            print(f"    {name}: {count} x {failure}", flush=True)
        for note in phase.notes:
            print(f"    {note}", flush=True)


def _accepted(p: PhaseResult | None) -> float | None:
    return p.accept_rate if p else None


def _e2e(p: PhaseResult | None) -> float | None:
    return p.e2e_rate if p else None


def _p50(p: PhaseResult | None) -> float | None:
    return p.data_p50_ms if p else None


def _p99(p: PhaseResult | None) -> float | None:
    return p.data_p99_ms if p else None


def _cpu(p: PhaseResult | None, process: str) -> float | None:
    return p.cpu_ms_per_message.get(process) if p else None


FIGURES: dict[str, Callable[[SizeRun], float | None]] = {
    "direct msg/s": lambda r: _e2e(r.direct),
    "mailnode msg/s accepted (client)": lambda r: _accepted(r.mailnode),
    "mailnode msg/s end-to-end": lambda r: _e2e(r.mailnode),
    "postfix msg/s accepted (client)": lambda r: _accepted(r.postfix),
    "postfix msg/s end-to-end": lambda r: _e2e(r.postfix),
    "mailnode / postfix, end-to-end (>= 1.0)": lambda r: _ratio(_e2e(r.mailnode), _e2e(r.postfix)),
    "mailnode / direct": lambda r: _ratio(_e2e(r.mailnode), _e2e(r.direct)),
    "direct end-of-DATA p50 ms": lambda r: _p50(r.direct),
    "direct end-of-DATA p99 ms": lambda r: _p99(r.direct),
    "mailnode end-of-DATA p50 ms": lambda r: _p50(r.mailnode),
    "mailnode end-of-DATA p99 ms": lambda r: _p99(r.mailnode),
    "postfix end-of-DATA p50 ms": lambda r: _p50(r.postfix),
    "postfix end-of-DATA p99 ms": lambda r: _p99(r.postfix),
    "overhead p50 ms, mailnode - direct (<= 5)": lambda r: _difference(_p50(r.mailnode), _p50(r.direct)),
    "C=1: direct end-of-DATA p50 ms": lambda r: _p50(r.direct_c1),
    "C=1: mailnode end-of-DATA p50 ms": lambda r: _p50(r.mailnode_c1),
    "C=1: postfix end-of-DATA p50 ms": lambda r: _p50(r.postfix_c1),
    "C=1: overhead p50 ms, mailnode - direct": lambda r: _difference(_p50(r.mailnode_c1), _p50(r.direct_c1)),
    "CPU ms/msg: mailnode (submission)": lambda r: _cpu(r.mailnode, "mailnode"),
    "CPU ms/msg: postfix (all its processes)": lambda r: _cpu(r.postfix, "postfix"),
    "CPU ms/msg: sink (direct)": lambda r: _cpu(r.direct, "sink"),
    "CPU ms/msg: bench client (direct)": lambda r: _cpu(r.direct, "bench client"),
    "CPU ms/msg: bench client (submission)": lambda r: _cpu(r.mailnode, "bench client"),
    "smtp-source: mailnode ingress msg/s e2e": lambda r: _e2e(r.mailnode_ingress),
    "smtp-source: postfix msg/s e2e": lambda r: _e2e(r.postfix_ingress),
    "smtp-source: ingress / postfix": lambda r: _ratio(_e2e(r.mailnode_ingress), _e2e(r.postfix_ingress)),
    "CPU ms/msg: mailnode (ingress)": lambda r: _cpu(r.mailnode_ingress, "mailnode"),
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def summary_of(results: list[SizeRun], sizes: tuple[int, ...]) -> dict[int, dict[str, Spread]]:
    """Per size, each figure's min/median/max over the runs (figures a run lacks are left out)."""
    return {size: summarize(FIGURES, [r for r in results if r.size == size]) for size in sizes}


def print_summary(summary: dict[int, dict[str, Spread]], options: Options) -> None:
    print(
        f"\nN={options.n} C={options.concurrency}, {options.runs} runs, one connection per message; "
        f"sqlite_synchronous={options.sqlite_synchronous}, log_level={options.log_level}"
    )
    names = [name for name in FIGURES if any(name in figures for figures in summary.values())]
    width = max(len(name) for name in names)
    header = "".join(f" | {f'{size} B: min / median / max':>26}" for size in summary)
    print(f"{'':{width}}{header}")
    for name in names:
        digits = 2 if " / " in name or "CPU" in name else 0 if "msg/s" in name else 1
        cells = ""
        for figures in summary.values():
            spread = figures.get(name)
            cell = (
                "-"
                if spread is None
                else f"{spread.min:.{digits}f} / {spread.median:.{digits}f} / {spread.max:.{digits}f}"
            )
            cells += f" | {cell:>26}"
        print(f"{name:{width}}{cells}")


def write_json(
    path: Path, options: Options, results: list[SizeRun], summary: dict[int, dict[str, Spread]]
) -> None:
    document = {
        "benchmark": "bench_smtp",
        "options": {
            **asdict(options),
            "json_path": str(options.json_path),
            "py_spy": str(options.py_spy) if options.py_spy else None,
        },
        "environment": environment(),
        "runs": [asdict(r) for r in results],
        "summary": {
            str(size): {name: asdict(spread) for name, spread in figures.items()}
            for size, figures in summary.items()
        },
    }
    write_report(path, document)


# -- main -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def postfix_relay(sink: SinkProcess, options: Options) -> AsyncIterator[postfix.PostfixRelay | None]:
    """Postfix relaying to the sink for the whole benchmark (None with --no-postfix); stopped at the end."""
    if not options.postfix:
        yield None
        return
    await postfix.ensure_installed()
    relay = await postfix.PostfixRelay.start(free_port(), (sink.host, sink.port), options.concurrency)
    print(f"postfix {relay.version} relaying 127.0.0.1:{relay.port} -> {sink.host}:{sink.port}", flush=True)
    try:
        yield relay
        counts = {status: relay.log_count(f"status={status}") for status in ("sent", "deferred", "bounced")}
        print("postfix's log: " + ", ".join(f"{n} {status}" for status, n in counts.items()), flush=True)
    finally:
        await relay.stop()


async def measure_runs(options: Options) -> tuple[list[SizeRun], dict[int, dict[str, Spread]]]:
    """Every run, each size printed as it ends; the results and their summary by size."""
    if options.py_spy is not None:
        options.py_spy.mkdir(parents=True, exist_ok=True)
    results: list[SizeRun] = []
    advice = "use a smaller --n or --runs, or a larger --timeout"
    async with (
        loopback_sink(options.timeout, advice, HOST) as sink,
        nxdomain_server(HOST) as dns,
        postfix_relay(sink, options) as relay,
    ):
        for run in range(1, options.runs + 1):
            results += await one_run(sink, relay, dns, run, options)
        print(f"mailnode asked the loopback DNS server {dns.queries} questions", flush=True)
    return results, summary_of(results, options.sizes)


async def bench(options: Options) -> None:
    results, summary = await measure_runs(options)
    print_summary(summary, options)
    write_json(options.json_path, options, results, summary)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(__doc__.split("\n\n", 1)[1] if __doc__ else None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=500, help="messages per phase (default: %(default)s)")
    parser.add_argument(
        "--concurrency", "-c", type=int, default=20, help="concurrent clients (default: %(default)s)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs; min/median/max over them (default: %(default)s)"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1024, 102400],
        metavar="BYTES",
        help="message sizes (default: %(default)s)",
    )
    parser.add_argument(
        "--no-postfix", action="store_true", help="skip the Postfix peer (it needs root to install and run)"
    )
    parser.add_argument(
        "--ingress",
        action="store_true",
        help="also load mailnode's ingress listener and Postfix with smtp-source (no AUTH)",
    )
    add_mailnode_arguments(parser)
    parser.add_argument(
        "--latency-n",
        type=int,
        default=100,
        metavar="N",
        help="per size and run, also send N messages with one client at a time to direct, mailnode "
        "and postfix: end-of-DATA latency without queueing (default: %(default)s; 0: skip)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile mailnode with py-spy during run 1's submission phases (warm-up included); "
        "collapsed stacks go to DIR (flamegraph.pl input) and a summary is printed",
    )
    add_output_arguments(parser, timeout=900.0, json_path=ROOT / "bench-smtp-results.json")
    args = parser.parse_args(argv)
    for name in ("n", "concurrency", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if any(size < 200 for size in args.sizes):
        parser.error("--sizes: each size must be at least 200 bytes (the headers alone take about 200)")
    return Options(
        n=args.n,
        concurrency=args.concurrency,
        runs=args.runs,
        sizes=tuple(args.sizes),
        postfix=not args.no_postfix,
        ingress=args.ingress,
        latency_n=max(0, args.latency_n),
        py_spy=args.py_spy,
        **shared_options(args),
    )


if __name__ == "__main__":
    run_benchmark("bench_smtp", parse_args, bench)
