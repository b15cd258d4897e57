#!/usr/bin/env python3
"""Crash test: SIGKILL `mailnode serve` again and again while clients submit; count what got lost.

It runs the real `mailnode serve` (a fresh data directory and config in a temporary
directory) relaying in smarthost mode to a loopback sink (a separate process, see
benchlib.sink) that reports every message it receives. C SMTP clients submit one message per
connection (AUTH PLAIN with an API key, plaintext allowed on loopback) for the whole run; each
message carries a unique Message-ID `<chaos.N@bench.test>` and the same tag in `X-Bench-Id`,
which the sink reports. Every few seconds (--kill-every, with jitter from --seed) mailnode
gets SIGKILL, with no warning and no cleanup, and is started again on the same data directory.
At the end the clients stop, mailnode runs until every accepted message has reached the sink
and no delivery is queued (or --drain-timeout passes), and is stopped with SIGTERM.

Figures:
  accepted     messages whose client got 250 at the end of DATA
  delivered    distinct accepted messages the sink received
  duplicates   extra copies the sink received (any message): a delivery re-run after a kill
               because mailnode died between the sink's 250 and its own commit
  lost         accepted but never delivered; must be 0 (the exit status is 1 otherwise)
  unacknowledged_delivered
               delivered although the client never heard 250 (killed before it could answer)
  bound        kills x (delivery concurrency + clients): the most deliveries a kill can leave
               in flight, so the most duplicates the run may show

Usage (the venv is used automatically):
    scripts/chaos --duration 60 --clients 20 --kill-every 5
    scripts/chaos --duration 5 --clients 5 --kill-every 2 --min-kills 3 --json   (what CI runs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchlib.venv import reexec_under_project_venv

try:
    import aiosmtplib
    from benchlib.dns import nxdomain_server
    from benchlib.mailnode import MailnodeProcess, base_config, create_api_key, start_mailnode
    from benchlib.messages import rfc822_message
    from benchlib.report import environment
    from benchlib.sink import SinkProcess
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

HOST = "127.0.0.1"
SENDER_DOMAIN = "mailnode.bench"  # the API key's domain: submission allows MAIL FROM only there
MAIL_FROM = f"chaos@{SENDER_DOMAIN}"
PHASE = "chaos"
CLIENT_TIMEOUT = 15.0  # seconds for each client's whole SMTP session
START_TIMEOUT = 60.0  # seconds for mailnode to print its addresses after a (re)start


@dataclass(frozen=True)
class Options:
    duration: float
    clients: int
    kill_every: float
    min_kills: int
    size: int
    concurrency: int
    lease_seconds: float
    drain_timeout: float
    sqlite_synchronous: str
    seed: int
    json: bool


@dataclass
class Figures:
    accepted: int
    delivered: int
    duplicates: int
    lost: int
    unacknowledged_delivered: int
    kills: int
    bound: int
    attempted: int
    client_failures: dict[str, int]
    seconds: float
    drain_seconds: float
    queue_left: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)


@dataclass
class Run:
    """What the clients and the killer share."""

    node: MailnodeProcess
    up: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    indices: itertools.count[int] = field(default_factory=itertools.count)
    accepted: set[int] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    time_up: bool = False  # --duration has passed: stop once --min-kills is reached


def mailnode_config(data_dir: Path, sink: SinkProcess, dns_port: int, options: Options) -> str:
    """TOML for `mailnode serve`: short leases and retries, so that a killed process's deliveries
    are taken over within seconds, and never a bounce (max_attempts is high)."""
    return (
        base_config(data_dir, HOST, "warning", options.sqlite_synchronous)
        + f"""[dns]
nameservers = ["{HOST}:{dns_port}"]
[delivery]
mode = "smarthost"
smarthost = "{sink.host}:{sink.port}"
concurrency = {options.concurrency}
per_destination_concurrency = {options.concurrency}
connect_timeout_seconds = 5
command_timeout_seconds = 10
lease_seconds = {options.lease_seconds}
poll_interval_seconds = 0.2
[retry]
initial_delay_seconds = 0.5
backoff_factor = 1.5
max_delay_seconds = 2
max_attempts = 1000
[smtp]
max_connections = {max(200, 4 * options.clients)}
command_timeout_seconds = 30
[smtp.submission]
listen = "{HOST}:0"
allow_plaintext_auth_on_loopback = true
rcpt_timeout_seconds = 2
data_timeout_seconds = 5
[smtp.ingress]
listen = "{HOST}:0"
"""
    )


async def client(run: Run, key: str, size: int) -> None:
    """Submit one message per connection until told to stop; wait while mailnode is down."""
    while not run.stop.is_set():
        await run.up.wait()
        index = next(run.indices)
        tag = f"{PHASE}.{index}"
        rcpt = f"user{index}@sink.bench"
        host, port = run.node.smtp["submission"]
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                async with aiosmtplib.SMTP(
                    hostname=host, port=port, local_hostname="client.bench", start_tls=False, timeout=10
                ) as smtp:
                    await smtp.ehlo()
                    await smtp.auth_plain(SENDER_DOMAIN, key)
                    await smtp.sendmail(MAIL_FROM, [rcpt], rfc822_message(tag, MAIL_FROM, rcpt, size))
                    run.accepted.add(index)  # 250 at the end of DATA: whatever QUIT does
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            run.failures[_failure_key(exc)] += 1
            await asyncio.sleep(0.05)  # mailnode is probably down: don't spin


def _failure_key(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message.splitlines()[0][:50]}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "; ".join(_failure_key(e) for e in exc.recipients[:1])
    return type(exc).__name__


async def killer(run: Run, config: Path, options: Options, rng: random.Random) -> None:
    """SIGKILL mailnode every kill_every seconds (±50 % jitter) of uptime and start it again."""
    while not run.stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(options.kill_every * rng.uniform(0.5, 1.5)):
                await run.stop.wait()
        if run.stop.is_set():
            return
        run.up.clear()
        run.node.child.process.send_signal(signal.SIGKILL)
        await run.node.child.stop()  # reaps it
        run.kills += 1
        run.node = await start_mailnode(config, START_TIMEOUT, smtp_listeners=("submission",))
        run.up.set()
        if run.time_up and run.kills >= options.min_kills:
            run.stop.set()


async def drain(arrived: dict[int, float], accepted: set[int], db: Path, timeout: float) -> float:
    """Seconds until every accepted message reached the sink and no delivery is queued any
    more (polled; gives up after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if accepted <= arrived.keys() and queue_left(db).get("queued", 0) == 0:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def queue_left(db: Path) -> dict[str, int]:
    """Deliveries by status, read from the database (WAL: beside a running mailnode too)."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT status, COUNT(*) FROM transactions GROUP BY status").fetchall()
    return {status: count for status, count in rows}


async def chaos(options: Options) -> Figures:
    rng = random.Random(options.seed)
    sink = await SinkProcess.start(HOST)
    try:
        async with nxdomain_server(HOST) as dns:
            with tempfile.TemporaryDirectory(prefix="mailnode-chaos-") as tmp:
                config = Path(tmp) / "mailnode.toml"
                config.write_text(mailnode_config(Path(tmp), sink, dns.port, options))
                key = await create_api_key(config, name="chaos", domain=SENDER_DOMAIN)
                figures = await _run(options, config, sink, key, rng)
                figures.queue_left = queue_left(Path(tmp) / "mailnode.db")
                return figures
    finally:
        await sink.stop()


async def _run(options: Options, config: Path, sink: SinkProcess, key: str, rng: random.Random) -> Figures:
    arrivals = sink.expect(PHASE, sys.maxsize)  # the count is known at the end
    node = await start_mailnode(config, START_TIMEOUT, smtp_listeners=("submission",))
    run = Run(node)
    run.up.set()
    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(options.clients):
                group.create_task(client(run, key, options.size))
            group.create_task(killer(run, config, options, rng))
            await asyncio.sleep(options.duration)
            run.time_up = True
            if run.kills >= options.min_kills:
                run.stop.set()
            await run.stop.wait()  # else the killer sets it after the last kill it owes
        seconds = time.monotonic() - started
        db = config.parent / "mailnode.db"
        drain_seconds = await drain(arrivals.times, run.accepted, db, options.drain_timeout)
    finally:
        await run.node.child.stop()
    attempted = next(run.indices)
    delivered = run.accepted & arrivals.times.keys()
    lost = sorted(run.accepted - delivered)
    return Figures(
        accepted=len(run.accepted),
        delivered=len(delivered),
        duplicates=arrivals.duplicates,
        lost=len(lost),
        unacknowledged_delivered=len(arrivals.times.keys() - run.accepted),
        kills=run.kills,
        bound=run.kills * (options.concurrency + options.clients),
        attempted=attempted,
        client_failures=dict(run.failures.most_common()),
        seconds=round(seconds, 1),
        drain_seconds=round(drain_seconds, 1),
        lost_examples=[f"<{PHASE}.{i}@bench.test>" for i in lost[:10]],
    )


def print_figures(figures: Figures, options: Options) -> None:
    print(
        f"mailnode chaos: {options.clients} clients for {figures.seconds} s, "
        f"SIGKILL every ~{options.kill_every} s ({figures.kills} kills)"
    )
    rows = [
        ("accepted (250)", figures.accepted),
        ("delivered", figures.delivered),
        ("duplicates", f"{figures.duplicates} (bound {figures.bound})"),
        ("lost", figures.lost),
        ("delivered, never acknowledged", figures.unacknowledged_delivered),
        ("drain after the load", f"{figures.drain_seconds} s"),
        ("deliveries in the database", ", ".join(f"{k} {v}" for k, v in figures.queue_left.items())),
    ]
    for name, value in rows:
        print(f"  {name:<31} {value}")
    failures = ", ".join(f"{k}: {v}" for k, v in figures.client_failures.items()) or "none"
    print(f"  client failures ({figures.attempted - figures.accepted} of {figures.attempted}): {failures}")
    if figures.lost:
        print(f"  LOST: {', '.join(figures.lost_examples)}")


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    parser.add_argument(
        "--clients", type=int, default=20, help="concurrent SMTP clients (default: %(default)s)"
    )
    parser.add_argument(
        "--kill-every", type=float, default=5.0, help="seconds of uptime between kills (default: %(default)s)"
    )
    parser.add_argument(
        "--min-kills",
        type=int,
        default=0,
        help="go on past --duration until this many kills (default: %(default)s)",
    )
    parser.add_argument("--size", type=int, default=1024, help="message bytes (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="mailnode's [delivery] concurrency (default: %(default)s)"
    )
    parser.add_argument(
        "--lease-seconds", type=float, default=3.0, help="mailnode's [delivery] lease (default: %(default)s)"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the queue (default: %(default)s)",
    )
    parser.add_argument("--sqlite-synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill jitter (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.kill_every <= 0 or args.concurrency < 1:
        parser.error("--duration and --kill-every must be positive, --clients and --concurrency at least 1")
    return Options(
        duration=args.duration,
        clients=args.clients,
        kill_every=args.kill_every,
        min_kills=args.min_kills,
        size=args.size,
        concurrency=args.concurrency,
        lease_seconds=args.lease_seconds,
        drain_timeout=args.drain_timeout,
        sqlite_synchronous=args.sqlite_synchronous,
        seed=args.seed,
        json=args.json,
    )


def main() -> None:
    options = parse_args()

    async def main_async() -> Figures:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await chaos(options)

    try:
        figures = asyncio.run(main_async())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted; every process the run started is stopped")
    except (RuntimeError, OSError) as exc:
        sys.exit(f"chaos: {exc}")
    if options.json:
        print(json.dumps({**asdict(figures), "options": asdict(options), "environment": environment()}))
    else:
        print_figures(figures, options)
    sys.exit(1 if figures.lost else 0)


if __name__ == "__main__":
    main()
