#!/usr/bin/env python3
"""Fuzz mailnode's SMTP listeners for longer than the test suite does.

The same sessions and checks as tests/fuzz/test_smtp_fuzz.py (tests/fuzz/smtp_fuzzer.py: bare
LF, NUL bytes, 10 MB lines, pipelined garbage, commands out of order, broken AUTH base64, lone
dots in DATA), against a mailnode Service started in this process with a loopback sink, with
a random seed unless --seed is given. Each session is followed by a probe message that must
reach the sink. At the end: sessions run, peak RSS growth, open sessions, errors logged.
Exit status 1 with hypothesis's smallest failing session when a property breaks.

    .venv/bin/python scripts/fuzz_smtp.py --examples 2000 [--seed 1234]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

from benchlib.venv import ROOT, reexec_under_project_venv

try:
    from hypothesis import given, seed, settings
except ImportError:
    reexec_under_project_venv(__file__)

sys.path.insert(0, str(ROOT))

from tests.fuzz.smtp_fuzzer import (
    FuzzSession,
    Target,
    edge_cases,
    memory_kib,
    memory_peak_reset,
    open_sessions,
    run_session,
    running_target,
    sessions,
    settings_for,
)


class _ErrorCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fuzz(target: Target, examples: int, chosen_seed: int) -> None:
    for session in edge_cases(target.auth_plain):
        run_session(target, session)

    @seed(chosen_seed)
    @settings(**settings_for(examples, print_blob=True))
    @given(sessions(target.auth_plain))
    def malformed_session_then_a_good_one(session: FuzzSession) -> None:
        run_session(target, session)

    malformed_session_then_a_good_one()


async def main(examples: int, chosen_seed: int) -> int:
    errors = _ErrorCount()
    logging.getLogger("mailnode").addHandler(errors)
    logging.getLogger("mailnode").setLevel(logging.ERROR)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd: a warning per bad command
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailnode-fuzz-") as directory:
        async with running_target(Path(directory)) as target:
            memory_peak_reset()
            before = memory_kib("VmRSS")
            try:
                await asyncio.to_thread(fuzz, target, examples, chosen_seed)
            finally:
                growth = memory_kib("VmHWM") - before
                await asyncio.sleep(1.0)  # sessions closing right now
                still_open = open_sessions(target)
                slowest = max(target.closed_after, default=0.0)
                print(
                    f"seed {chosen_seed}: {target.sessions} sessions, {target.probes} probes delivered "
                    f"in {time.monotonic() - started:.1f} s; peak RSS +{growth / 1024:.1f} MiB; "
                    f"slowest close after the last byte {slowest:.2f} s; open sessions {still_open}; "
                    f"errors logged {len(errors.messages)}"
                )
    for message in errors.messages[:20]:
        print("logged:", message)
    return 1 if errors.messages or any(still_open.values()) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="hypothesis examples (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    options = parser.parse_args()
    chosen = options.seed if options.seed is not None else random.randrange(2**32)
    sys.exit(asyncio.run(main(options.examples, chosen)))
