#!/usr/bin/env python3
"""Benchmark DKIM signing on one core: dkimpy's dkim.sign against mailnode's signer.

Three phases sign the same personalised HTML messages (about 4 KiB each, one per recipient,
built with email.policy.SMTP: RFC 2047 display names, quoted-printable body, List-Unsubscribe),
relaxed/relaxed, with the headers the DKIM filter signs (router/filters.py SIGNED_HEADERS):
  reference        dkimpy 1.1.8 `dkim.sign` with an RSA-2048 key (pure-Python RSA, the PEM key
                   parsed on every call)
  signer rsa       mailnode.platform.dkim_signer.sign_message, the same RSA-2048 key
  signer ed25519   the same with an Ed25519 key (RFC 8463)
Each phase signs for --seconds of CPU time in this one thread; the rate is signatures per
CPU second (time.thread_time), so other work on the machine does not lower it, and the
wall-clock rate is shown beside it. The figures are the median (and min-max) over --runs runs.
Before timing, one signature of each RSA kind is checked with `dkim.verify`.

Run it with the project's venv (the script re-executes itself under .venv otherwise):
    .venv/bin/python scripts/bench_dkim.py --runs 3
"""

from __future__ import annotations

import argparse
import email.utils
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from importlib.metadata import version

from benchlib.venv import reexec_under_project_venv

try:
    import dkim

    from mailnode.core.dkim_keys import DkimKeyPair, dkim_txt_value, generate_dkim_key
    from mailnode.platform.dkim_signer import sign_message
    from mailnode.router.filters import SIGNED_HEADERS
except ModuleNotFoundError:
    reexec_under_project_venv(__file__)

DOMAIN = "example.com"
SELECTOR = "bench"
RECIPIENTS = 200  # distinct personalised messages, signed round-robin
_ROW = (
    '<tr><td style="padding:8px;font-family:Arial,sans-serif">{item}</td>'
    '<td style="padding:8px"><a href="https://t.example.com/c/{token}">{price} €</a></td></tr>\n'
)

Signer = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Rate:
    """One phase of one run: signatures per CPU second and per wall-clock second."""

    cpu: float
    wall: float


def personalised_message(index: int, size: int) -> bytes:
    """An HTML newsletter for recipient `index`, padded with table rows to about `size` bytes."""
    message = EmailMessage()
    message["From"] = Address("Jörg's Shop", "news", DOMAIN)
    message["To"] = Address(f"Zoë Recipient {index}", f"user{index}", "example.org")
    message["Subject"] = f"Zoë, your May summary — {index} new offers"
    message["Date"] = email.utils.formatdate(1_779_530_400 + index)
    message["Message-ID"] = f"<d{index:06d}.bench@{DOMAIN}>"
    message["List-Unsubscribe"] = f"<https://t.example.com/u/{index:06d}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    rows = ""
    html = ""
    for row in itertools.count():
        if len(html) >= size - 900:  # leaves room for the headers and quoted-printable growth
            break
        rows += _ROW.format(item=f"Offer {row} for user{index}", token=f"{index:06d}{row:04d}", price=row + 9)
        html = f"<html><body><p>Hello Zoë {index},</p><table>\n{rows}</table></body></html>\n"
    message.set_content(html, subtype="html", cte="quoted-printable")
    return message.as_bytes(policy=policy.SMTP)


def dkimpy_signer(key: DkimKeyPair, include: list[bytes]) -> Signer:
    """The reference: dkimpy's own sign(), as router/filters.py calls it."""

    def sign(message: bytes) -> bytes:
        return bytes(
            dkim.sign(
                message,
                SELECTOR.encode(),
                DOMAIN.encode(),
                key.private_key_pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=include,
            )
        )

    return sign


def mailnode_signer(key: DkimKeyPair, include: list[bytes]) -> Signer:
    """mailnode.platform.dkim_signer.sign_message with the same arguments."""

    def sign(message: bytes) -> bytes:
        return sign_message(
            message,
            domain=DOMAIN,
            selector=SELECTOR,
            private_key_pem=key.private_key_pem,
            algorithm=key.algorithm,
            include_headers=include,
        )

    return sign


def check_verifies(sign: Signer, message: bytes, key: DkimKeyPair) -> None:
    """Fail loudly if a signer's output does not verify with dkimpy."""
    record = dkim_txt_value(key.algorithm, key.public_key_b64).encode()
    if not dkim.verify(sign(message) + message, dnsfunc=lambda name, timeout=5: record):
        sys.exit("bench_dkim: a signature did not verify; the figures would mean nothing")


def measure(sign: Signer, messages: list[bytes], seconds: float) -> Rate:
    """Sign round-robin until `seconds` of this thread's CPU time have passed."""
    sign(messages[0])  # warm-up: key caches, imports
    stream = itertools.cycle(messages)
    count = 0
    cpu_start, wall_start = time.thread_time(), time.perf_counter()
    while (cpu := time.thread_time() - cpu_start) < seconds:
        for _ in range(20):
            sign(next(stream))
        count += 20
    return Rate(count / cpu, count / (time.perf_counter() - wall_start))


def main() -> None:
    args = parse_args()
    messages = [personalised_message(index, args.size) for index in range(RECIPIENTS)]
    include = [name for name in SIGNED_HEADERS if name in _header_names(messages[0])]
    rsa_key, ed_key = generate_dkim_key("rsa", rsa_bits=2048), generate_dkim_key("ed25519")
    phases = {
        "dkimpy dkim.sign rsa-2048 (reference)": dkimpy_signer(rsa_key, include),
        "mailnode signer rsa-2048": mailnode_signer(rsa_key, include),
        "mailnode signer ed25519": mailnode_signer(ed_key, include),
    }
    check_verifies(phases["dkimpy dkim.sign rsa-2048 (reference)"], messages[0], rsa_key)
    check_verifies(phases["mailnode signer rsa-2048"], messages[0], rsa_key)
    sizes = sorted(len(message) for message in messages)
    print(
        f"messages: {RECIPIENTS} personalised, {sizes[0]}-{sizes[-1]} bytes; h={b':'.join(include).decode()}"
    )
    versions = ", ".join(f"{name} {version(name)}" for name in ("dkimpy", "cryptography"))
    print(f"Python {sys.version.split()[0]}, {versions}")
    results: dict[str, list[Rate]] = {name: [] for name in phases}
    for run in range(1, args.runs + 1):
        for name, sign in phases.items():
            results[name].append(measure(sign, messages, args.seconds))
        print(f"run {run}/{args.runs} done", file=sys.stderr)
    print_table(results)


def print_table(results: dict[str, list[Rate]]) -> None:
    """Median (min-max) signatures/s per phase and the ratio to the reference."""
    reference = statistics.median(rate.cpu for rate in next(iter(results.values())))
    print(f"{'':40} {'sig/s (CPU, 1 core)':>28} {'sig/s (wall)':>13} {'vs reference':>13}")
    for name, rates in results.items():
        cpu = [rate.cpu for rate in rates]
        median = statistics.median(cpu)
        spread = f"{median:8.0f} ({min(cpu):.0f}-{max(cpu):.0f})"
        wall = statistics.median(rate.wall for rate in rates)
        print(f"{name:40} {spread:>28} {wall:13.0f} {median / reference:12.1f}x")


def _header_names(message: bytes) -> set[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return {line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Run with the project's venv: .venv/bin/python scripts/bench_dkim.py --runs 3",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs; median and min-max over them (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="CPU seconds per phase and run (default: %(default)s)"
    )
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.size < 1024:
        parser.error("--runs must be at least 1, --seconds above 0, --size at least 1024")
    return args


if __name__ == "__main__":
    main()
