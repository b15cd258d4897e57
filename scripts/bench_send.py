#!/usr/bin/env python3
"""Benchmark POST /v1/send: one personalised, DKIM-signed batch delivered to a loopback SMTP sink.

Each run starts a fresh `mailnode serve` (SQLite in a temporary directory, smarthost delivery
to the sink, a separate process: see benchlib.sink), creates a domain with a DKIM key of
--algorithm and an API key over the admin API, as an operator does, and measures:
  send       one POST /v1/send of --recipients recipients: a ~4 KiB HTML template with several
             {{ field }}s, per-recipient fields (one name in ten non-ASCII, prices in €, so
             every body is quoted-printable), a personalised subject and one-click unsubscribe
             URL, no text part (mailnode derives it from the HTML). Figures: the time to the 202
             answer, and delivered messages/s from the 202 until the sink has them all
             (mailnode renders, signs and delivers each one), with mailnode's CPU per message.
  smtp ref   the same number of the same messages, built and signed in the benchmark
             beforehand, sent straight to the sink with aiosmtplib over C reused connections:
             the client and sink ceiling.
  rest ref   the same pre-built messages POSTed as REST transactions (/senders/api/transactions)
             to the same mailnode, which signs them with the same domain key (the api profile's
             filters are set to the platform's: dkim, router) and delivers them: mailnode's
             delivery without rendering (but with one POST and one stored body per message).
  dkim       signatures/s of mailnode's signer on one CPU core over the pre-built messages
             (bench_dkim.measure, with a key of --algorithm).
The send's rate is also given as a ratio to each reference run in the same sitting; figures
are min / median / max over --runs runs. Nothing leaves 127.0.0.1.

Run it with the project's venv (the script re-executes itself under .venv otherwise):
    .venv/bin/python scripts/bench_send.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import itertools
import json
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib.venv import reexec_under_project_venv

try:
    import aiohttp
    import aiosmtplib
    from bench_dkim import mailnode_signer, measure
    from benchlib.cli import add_mailnode_arguments, run_benchmark
    from benchlib.load import CpuMeter, run_workers
    from benchlib.mailnode import MailnodeProcess, admin_setup, base_config, running_mailnode
    from benchlib.profiler import profiling
    from benchlib.report import environment, print_spreads, write_report
    from benchlib.sink import SinkProcess, loopback_sink
    from benchlib.stats import Spread, summarize

    from mailnode.core.dkim_keys import generate_dkim_key
    from mailnode.core.platform_message import Attachment, Sender, VisibleHeaders, build_platform_message
    from mailnode.core.templating import compile_content, recipient_context
    from mailnode.router.filters import SIGNED_HEADERS
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

HOST = "127.0.0.1"
DOMAIN = "shop.bench"
SENDER = {"email": f"news@{DOMAIN}", "name": "Bench Shop"}
WARMUP = 200  # recipients of a send (and REST messages) before each measured phase, not counted
PREBUILT = 500  # distinct pre-built reference messages, sent round-robin
ADMIN_TOKEN = "bench-admin-" + secrets.token_hex(16)
SUBJECT = "{{ first_name }}, your {{ plan }} summary from {{ shop }}"
UNSUBSCRIBE = f"https://{DOMAIN}/u/{{{{ token }}}}?list={{{{ plan }}}}"
_ROW = (
    '<tr><td style="padding:8px 12px;font-family:Arial,sans-serif;color:#333333">{title}</td>'
    '<td style="padding:8px 12px;text-align:right"><a href="https://{domain}/p/{sku}?r={{{{ token }}}}">'
    "{{{{ currency }}}} {price}</a></td></tr>\n"
)


@dataclass(frozen=True)
class Options:
    recipients: int
    concurrency: int
    runs: int
    algorithm: str
    references: tuple[str, ...]
    attachment_kib: int
    dkim_seconds: float
    sqlite_synchronous: str
    log_level: str
    timeout: float
    json_path: Path | None
    py_spy: Path | None


@dataclass(frozen=True)
class RunResult:
    seconds_to_202: float
    send_rate: float  # delivered messages/s, from the 202 until the sink had them all
    send_cpu_ms: dict[str, float | None]  # CPU per message by process while delivering
    smtp_rate: float | None
    rest_rate: float | None
    dkim_rate: float  # signatures per CPU second, one core


# -- the batch -------------------------------------------------------------------------------------


def html_template() -> str:
    """About 4 KiB of newsletter HTML with fields in text, attributes and links."""
    rows = "".join(
        _ROW.format(
            title=f"Offer {i}: {{{{ offer_{i % 4} }}}}", domain=DOMAIN, sku=f"sku-{i:04d}", price=i + 9
        )
        for i in range(14)
    )
    return (
        "<html><head><title>{{ shop }}</title><style>td {font-size:14px}</style></head><body>\n"
        '<h1 style="font-family:Arial,sans-serif">Hello {{ first_name }}!</h1>\n'
        "<p>Your <b>{{ plan }}</b> plan in {{ city }} earned you {{ points }} points this month.\n"
        "Here is what we picked for you:</p>\n"
        f'<table cellpadding="0" cellspacing="0" width="100%">\n{rows}</table>\n'
        f'<p><a href="https://{DOMAIN}/account?r={{{{ token }}}}">Your account</a> &middot; '
        f'<a href="https://{DOMAIN}/u/{{{{ token }}}}">Unsubscribe</a></p>\n'
        '<p style="color:#999999">{{ shop }}, 1 Bench Street, {{ city }}</p>\n</body></html>\n'
    )


def recipient(index: int) -> dict[str, Any]:
    name = f"Zoë Müller {index}" if index % 10 == 0 else f"Alice Liddell {index}"
    return {
        "email": f"user{index}@example.net",
        "name": name,
        "fields": {
            "first_name": name.split()[0],
            "plan": ("basic", "pro", "team")[index % 3],
            "city": ("Köln", "Leeds", "Lyon", "Oslo")[index % 4],
            "points": index * 7 % 1000,
            "token": f"t{index:08d}{secrets.token_hex(6)}",
            **{f"offer_{k}": f"item {k} picked for user {index}" for k in range(4)},
        },
    }


def send_body(tag: str, n: int, options: Options) -> dict[str, Any]:
    """The JSON of one send; every message carries X-Bench-Id `<tag>.*` for the sink to count."""
    body: dict[str, Any] = {
        "sender": SENDER,
        "subject": SUBJECT,
        "html": html_template(),
        "recipients": [recipient(i) for i in range(n)],
        "global_fields": {"shop": "Bits & Bobs", "currency": "€"},
        "headers": {"custom": {"X-Bench-Id": f"{tag}.*"}},
        "unsubscribe": {"url_template": UNSUBSCRIBE},
    }
    if options.attachment_kib:
        content = bytes(range(256)) * (options.attachment_kib * 4)
        attachment = {"filename": "Katalog März.pdf", "content_type": "application/pdf"}
        body["attachments"] = [{**attachment, "content": base64.b64encode(content).decode()}]
    return body


def prebuilt_messages(body: dict[str, Any], count: int) -> list[bytes]:
    """`count` messages of the send `body`, rendered and built as mailnode does (unsigned)."""
    compiled = compile_content(body["subject"], body["html"], None, body["unsubscribe"]["url_template"])
    attachments = [
        Attachment(a["filename"], a["content_type"], base64.b64decode(a["content"]))
        for a in body.get("attachments", [])
    ]
    headers = VisibleHeaders(custom=tuple(body["headers"]["custom"].items()))
    sender = Sender(body["sender"]["email"], body["sender"]["name"])
    date = datetime.datetime.now(datetime.UTC)
    messages = []
    for index, rcpt in zip(range(count), itertools.cycle(body["recipients"])):
        context = recipient_context(rcpt["email"], rcpt["name"], rcpt["fields"], body["global_fields"])
        messages.append(
            build_platform_message(
                sender=sender,
                recipient_email=rcpt["email"],
                recipient_name=rcpt["name"],
                rendered=compiled.render(context),
                attachments=attachments,
                headers=headers,
                message_id=f"ref{index}@{DOMAIN}",
                date=date,
            )
        )
    return messages


def with_tag(message: bytes, tag: str) -> bytes:
    """The message with its X-Bench-Id value replaced by `tag`."""
    head, _, rest = message.partition(b"X-Bench-Id: ")
    return head + b"X-Bench-Id: " + tag.encode() + rest[rest.index(b"\r\n") :]


# -- mailnode -------------------------------------------------------------------------------------


def mailnode_config(data_dir: Path, sink: SinkProcess, options: Options) -> str:
    """`mailnode serve` for this run: the sink as smarthost, C deliveries at once (all to it)."""
    return (
        base_config(data_dir, HOST, options.log_level, options.sqlite_synchronous)
        + f"""[smtp.submission]
listen = "{HOST}:0"
[smtp.ingress]
listen = "{HOST}:0"
[admin]
token = "{ADMIN_TOKEN}"
[platform]
dkim_algorithm = "{options.algorithm}"
max_recipients_per_send = {max(options.recipients, WARMUP)}
[delivery]
mode = "smarthost"
smarthost = "{sink.host}:{sink.port}"
concurrency = {options.concurrency}
per_destination_concurrency = {options.concurrency}
connect_timeout_seconds = 10
command_timeout_seconds = 30
[retry]
# A failed delivery must surface (the batch's counts are checked), not be retried quietly.
max_attempts = 1
# The rest reference goes through the same filters as a /v1 delivery.
[senders.api]
filters = ["dkim", "router"]
bounce = false
"""
    )


async def send_phase(
    http: aiohttp.ClientSession, node: MailnodeProcess, sink: SinkProcess, tag: str, body: dict[str, Any]
) -> tuple[float, float, dict[str, float | None]]:
    """POST the batch; (seconds to the 202, delivered msg/s after it, CPU ms per message)."""
    n = len(body["recipients"])
    arrivals = sink.expect(tag, n)
    payload = json.dumps(body).encode()
    cpu = CpuMeter({"mailnode": node.child.pid, "sink": sink.child.pid})
    cpu.start()
    started = time.monotonic()
    async with http.post(
        f"{node.url}/v1/send", data=payload, headers={"Content-Type": "application/json"}
    ) as response:
        answer = await response.json()
        accepted = time.monotonic()
    if response.status != 202 or answer.get("accepted") != n:
        raise RuntimeError(f"POST /v1/send answered {response.status}: {str(answer)[:300]}")
    await arrivals.complete.wait()
    seconds = max(arrivals.times.values()) - accepted
    cpu_ms = cpu.per_message_ms(n)
    await check_batch(http, node, answer["batch_id"], n)
    return accepted - started, n / seconds, cpu_ms


async def check_batch(http: aiohttp.ClientSession, node: MailnodeProcess, batch_id: str, n: int) -> None:
    """The batch must end with every delivery delivered (the outcome is recorded after the 250)."""
    deadline = time.monotonic() + 60
    while True:
        async with http.get(f"{node.url}/v1/batches/{batch_id}") as response:
            counts = (await response.json())["counts"]
        if counts["delivered"] == n:
            return
        if counts["failed"] or counts["cancelled"] or time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} did not end delivered: {counts}")
        await asyncio.sleep(0.1)


async def rest_phase(
    http: aiohttp.ClientSession,
    node: MailnodeProcess,
    sink: SinkProcess,
    tag: str,
    n: int,
    messages: list[bytes],
    concurrency: int,
) -> float:
    """POST n pre-built messages as transactions, C at once; msg/s until the sink has them all."""
    payloads = [
        json.dumps(
            {
                "mail_from": {"m": SENDER["email"]},
                "rcpt_to": [{"m": f"user{i}@example.net"}],
                "body": {"inline": message.decode("ascii")},
            }
        ).encode()
        for i, message in enumerate(with_tag(m, f"{tag}.*") for m in messages)
    ]
    arrivals = sink.expect(tag, n)
    url = f"{node.url}/senders/api/transactions"

    async def post(index: int) -> None:
        async with http.post(url, data=payloads[index % len(payloads)]) as response:
            if response.status != 201:
                raise RuntimeError(f"POST {url} answered {response.status}: {(await response.text())[:300]}")

    started = time.monotonic()
    await run_workers(n, concurrency, post)
    await arrivals.complete.wait()
    return n / (max(arrivals.times.values()) - started)


# -- references without mailnode --------------------------------------------------------------------


async def smtp_phase(sink: SinkProcess, tag: str, n: int, messages: list[bytes], concurrency: int) -> float:
    """Send n pre-built, signed messages straight to the sink over C reused connections."""
    tagged = [with_tag(m, f"{tag}.*") for m in messages]
    arrivals = sink.expect(tag, n)
    indices = iter(range(n))

    async def worker() -> None:
        async with aiosmtplib.SMTP(
            hostname=sink.host, port=sink.port, local_hostname="bench.test", start_tls=False, timeout=30
        ) as smtp:
            for index in indices:
                await smtp.sendmail(
                    SENDER["email"], [f"user{index}@example.net"], tagged[index % len(tagged)]
                )

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, n)):
            group.create_task(worker())
    await arrivals.complete.wait()
    return n / (max(arrivals.times.values()) - started)


def signed(messages: list[bytes], algorithm: str) -> tuple[list[bytes], Callable[[bytes], bytes]]:
    """The messages DKIM-signed by mailnode's signer with a fresh key, and that signer."""
    key = generate_dkim_key(algorithm)  # type: ignore[arg-type]
    head = messages[0].split(b"\r\n\r\n", 1)[0].lower()
    include = [name for name in SIGNED_HEADERS if b"\r\n" + name + b":" in b"\r\n" + head]
    sign = mailnode_signer(key, include)
    return [sign(message) + message for message in messages], sign


# -- one run -------------------------------------------------------------------------------------


async def one_run(sink: SinkProcess, run: int, options: Options) -> RunResult:
    n = options.recipients
    reference_messages = prebuilt_messages(send_body("ref", PREBUILT, options), min(n, PREBUILT))
    signed_messages, sign = signed(reference_messages, options.algorithm)
    dkim_rate = measure(sign, reference_messages, options.dkim_seconds).cpu
    smtp_rate = None
    if "smtp" in options.references:
        await smtp_phase(sink, f"r{run}-smtp-warmup", min(WARMUP, n), signed_messages, options.concurrency)
        smtp_rate = await smtp_phase(sink, f"r{run}-smtp", n, signed_messages, options.concurrency)
    rest_rate = None
    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        config = Path(tmp) / "mailnode.toml"
        config.write_text(mailnode_config(Path(tmp), sink, options))
        async with running_mailnode(config) as node, aiohttp.ClientSession() as admin_http:
            key = await admin_setup(admin_http, node.url, ADMIN_TOKEN, DOMAIN, options.algorithm)
            connector = aiohttp.TCPConnector(limit=options.concurrency)
            async with aiohttp.ClientSession(
                connector=connector,
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=120),
            ) as http:
                warmup = send_body(f"r{run}-send-warmup", min(WARMUP, n), options)
                await send_phase(http, node, sink, f"r{run}-send-warmup", warmup)
                tag = f"r{run}-send"
                profile = options.py_spy / "mailnode-send.txt" if options.py_spy and run == 1 else None
                async with profiling(node.child.pid, profile, "mailnode during the send"):
                    seconds_to_202, send_rate, cpu_ms = await send_phase(
                        http, node, sink, tag, send_body(tag, n, options)
                    )
                if "rest" in options.references:
                    await rest_phase(
                        http,
                        node,
                        sink,
                        f"r{run}-rest-warmup",
                        min(WARMUP, n),
                        reference_messages,
                        options.concurrency,
                    )
                    rest_rate = await rest_phase(
                        http, node, sink, f"r{run}-rest", n, reference_messages, options.concurrency
                    )
    return RunResult(seconds_to_202, send_rate, cpu_ms, smtp_rate, rest_rate, dkim_rate)


# -- report ------------------------------------------------------------------------------------------


def print_run(run: int, r: RunResult) -> None:
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in r.send_cpu_ms.items() if ms is not None)
    refs = "".join(
        f" | {name} ref {rate:5.0f} msg/s (x{r.send_rate / rate:.2f})"
        for name, rate in (("smtp", r.smtp_rate), ("rest", r.rest_rate))
        if rate is not None
    )
    print(
        f"run {run}: 202 after {r.seconds_to_202 * 1000:.0f} ms | send {r.send_rate:5.0f} msg/s{refs} | "
        f"DKIM {r.dkim_rate:.0f} sig/s | CPU ms/msg [{cpu}]",
        flush=True,
    )


def summary_of(results: list[RunResult]) -> dict[str, Spread]:
    figures: dict[str, Callable[[RunResult], float | None]] = {
        "send: time to 202 (ms)": lambda r: r.seconds_to_202 * 1000,
        "send: delivered msg/s": lambda r: r.send_rate,
        "send: mailnode CPU ms/msg": lambda r: r.send_cpu_ms.get("mailnode"),
        "send: sink CPU ms/msg": lambda r: r.send_cpu_ms.get("sink"),
        "smtp ref: msg/s": lambda r: r.smtp_rate,
        "ratio send / smtp ref": lambda r: r.send_rate / r.smtp_rate if r.smtp_rate else None,
        "rest ref: msg/s": lambda r: r.rest_rate,
        "ratio send / rest ref": lambda r: r.send_rate / r.rest_rate if r.rest_rate else None,
        "DKIM sig/s (1 core)": lambda r: r.dkim_rate,
    }
    return summarize(figures, results)


def print_summary(summary: dict[str, Spread], options: Options) -> None:
    attachment = f", {options.attachment_kib} KiB attachment" if options.attachment_kib else ""
    print(
        f"\nN={options.recipients} C={options.concurrency} DKIM {options.algorithm}{attachment}, "
        f"{options.runs} runs, sqlite_synchronous={options.sqlite_synchronous}, log_level={options.log_level}"
    )
    print_spreads(summary)


async def measure_runs(options: Options) -> tuple[list[RunResult], dict[str, Spread]]:
    """Every run, each printed as it ends; the results and their summary."""
    sample = prebuilt_messages(send_body("sample", 1, options), 1)[0]
    print(f"one message: {len(sample)} bytes unsigned, from {len(html_template())} bytes of HTML template")
    results: list[RunResult] = []
    advice = "use fewer --recipients or --runs, or a larger --timeout"
    async with loopback_sink(options.timeout, advice, HOST) as sink:
        for run in range(1, options.runs + 1):
            result = await one_run(sink, run, options)
            print_run(run, result)
            results.append(result)
    return results, summary_of(results)


async def bench(options: Options) -> None:
    results, summary = await measure_runs(options)
    print_summary(summary, options)
    if options.json_path is not None:
        document = {
            "benchmark": "bench_send",
            "options": {**asdict(options), "json_path": str(options.json_path)},
            "environment": environment(),
            "runs": [asdict(r) for r in results],
            "summary": {name: asdict(spread) for name, spread in summary.items()},
        }
        write_report(options.json_path, document)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Run with the project's venv: .venv/bin/python scripts/bench_send.py --runs 3",
    )
    parser.add_argument(
        "--recipients", "-n", type=int, default=10_000, help="recipients of the send (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=20,
        help="deliveries (and reference sends) at once (default: %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs; min/median/max over them (default: %(default)s)"
    )
    parser.add_argument(
        "--algorithm",
        choices=["rsa", "ed25519"],
        default="rsa",
        help="the domain's DKIM key (default: %(default)s)",
    )
    parser.add_argument(
        "--reference",
        choices=["smtp", "rest", "both", "none"],
        default="both",
        help="reference runs to compare the send with (default: %(default)s)",
    )
    parser.add_argument(
        "--attachment-kib", type=int, default=0, help="attach a file of this size to the send (default: none)"
    )
    parser.add_argument(
        "--dkim-seconds",
        type=float,
        default=2.0,
        help="CPU seconds of the DKIM measurement per run (default: %(default)s)",
    )
    add_mailnode_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="give up after this many seconds (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile mailnode with py-spy during run 1's measured send; collapsed stacks go to DIR "
        "(flamegraph.pl input) and a summary is printed",
    )
    args = parser.parse_args(argv)
    for name in ("recipients", "concurrency", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.attachment_kib < 0 or args.dkim_seconds <= 0:
        parser.error("--attachment-kib must be at least 0 and --dkim-seconds above 0")
    references = {"both": ("smtp", "rest"), "none": ()}.get(args.reference, (args.reference,))
    return Options(
        recipients=args.recipients,
        concurrency=args.concurrency,
        runs=args.runs,
        algorithm=args.algorithm,
        references=references,
        attachment_kib=args.attachment_kib,
        dkim_seconds=args.dkim_seconds,
        sqlite_synchronous=args.sqlite_synchronous,
        log_level=args.log_level,
        timeout=args.timeout,
        json_path=args.json,
        py_spy=args.py_spy,
    )


if __name__ == "__main__":
    run_benchmark("bench_send", parse_args, bench)
