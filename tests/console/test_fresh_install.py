"""Must-show 1 of issue 6: `mailnode init && mailnode serve` prints the console's URL, the console
opens with the admin token the config holds, and `mailnode send` shows up in the capture view."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.console.support import Browser
from tests.support.process import run_cli

pytestmark = pytest.mark.slow
SUBJECT = "Hello from a fresh install"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """`mailnode init` in tmp_path (its listeners moved to free ports), then `mailnode serve`;
    the console URL it printed and the admin token of its config."""
    assert (await run_cli("init", cwd=tmp_path)).code == 0
    config = tmp_path / "mailnode.toml"
    text = re.sub(r'listen = "127\.0\.0\.1:\d+"', 'listen = "127.0.0.1:0"', config.read_text())
    config.write_text(text)
    token = tomllib.loads(text)["admin"]["token"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailnode", "serve", "--config", str(config),
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        console = ""
        async with asyncio.timeout(30):
            while not console:
                line = (await process.stderr.readline()).decode()
                assert line, f"mailnode serve exited with {await process.wait()}"
                if line.strip().startswith("console:"):
                    console = line.split()[1]
        drain = asyncio.create_task(process.stderr.read())
        yield console, token
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await process.wait() == 0
        if drain is not None:
            await drain


async def test_init_serve_send_and_the_message_is_in_the_capture_view(
    served: tuple[str, str], tmp_path: Path
) -> None:
    console, token = served
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ui/", console)
    browser = Browser(console.removesuffix("/ui/"))
    try:
        assert (await browser.login(token)).status == 303
        assert SUBJECT not in (await browser.get("/ui/captures")).text

        sent = await run_cli(
            "send", "--config", "mailnode.toml", "--from", "me@example.com", "--to", "you@example.org",
            "--subject", SUBJECT, "--text", "It works.", cwd=tmp_path,
        )  # fmt: skip
        assert sent.code == 0, sent.stderr
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10  # [delivery] poll_interval_seconds (1 s) picks it up
        while SUBJECT not in (page := await browser.get("/ui/captures")).text:
            assert loop.time() < deadline, "the message sent did not show in the capture view"
            await asyncio.sleep(0.1)
        opened = await browser.get(re.search(r'href="(/ui/captures/\d+)"', page.text).group(1) + "?tab=text")
        assert "It works." in opened.text and "you@example.org" in opened.text
    finally:
        await browser.close()
