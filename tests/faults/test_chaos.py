"""The fast variant of scripts/chaos: SIGKILL the real `mailnode serve` while clients submit."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"
CLIENTS = 5
CONCURRENCY = 8


@pytest.mark.slow
async def test_sigkill_under_load_loses_no_accepted_message() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--json", "--duration", "5", "--kill-every", "2", "--min-kills", "3",
        "--clients", str(CLIENTS), "--concurrency", str(CONCURRENCY), "--drain-timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:  # timed out: SIGTERM stops the script and its children
            process.terminate()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    figures = json.loads(stdout)

    assert figures["kills"] >= 3
    assert figures["accepted"] > 0
    assert figures["lost"] == 0, figures["lost_examples"]
    assert figures["delivered"] == figures["accepted"]
    assert figures["duplicates"] <= figures["kills"] * (CONCURRENCY + CLIENTS)
    assert figures["queue_left"].get("queued", 0) == 0
