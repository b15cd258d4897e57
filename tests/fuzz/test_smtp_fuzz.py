"""Malformed SMTP sessions against the real submission and ingress listeners of a running Service.

The fuzzer (tests/fuzz/smtp_fuzzer.py) checks each session's replies, that the connection
closes within the idle timeout after the client's last byte, and that a fresh connection then
delivers a message. This test adds what holds over the whole run. The budget is fixed and
the examples derandomized, so CI runs the same sessions every time; scripts/fuzz_smtp.py runs
more, with a random seed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings

from tests.fuzz.smtp_fuzzer import (
    IDLE_TIMEOUT,
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

EXAMPLES = 40
# The sessions stream 10 MB lines; the listeners read at most aiosmtpd's line limit at a time
# and discard the rest. Measured: about 11 MiB of growth (hypothesis, the client's buffers). A
# listener that kept one 10 MB line (it would join it too) would pass 28 MiB.
MAX_PEAK_GROWTH_KIB = 28 * 1024


def fuzz(target: Target, examples: int) -> None:
    for session in edge_cases(target.auth_plain):
        run_session(target, session)

    @settings(**settings_for(examples, derandomize=True))
    @given(sessions(target.auth_plain))
    def malformed_session_then_a_good_one(session: object) -> None:
        run_session(target, session)  # type: ignore[arg-type]

    malformed_session_then_a_good_one()


async def test_malformed_sessions_never_break_the_listeners(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with running_target(tmp_path) as target:
        memory_peak_reset()
        before = memory_kib("VmRSS")

        await asyncio.to_thread(fuzz, target, EXAMPLES)

        growth = memory_kib("VmHWM") - before
        async with asyncio.timeout(IDLE_TIMEOUT + 5):
            while any(open_sessions(target).values()):  # noqa: ASYNC110 - no event for a closed session
                await asyncio.sleep(0.02)

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
    assert target.sessions >= EXAMPLES
    assert target.probes == target.sessions
    assert growth < MAX_PEAK_GROWTH_KIB, f"peak RSS grew by {growth} KiB"
