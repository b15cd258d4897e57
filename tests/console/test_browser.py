"""End to end in headless Chromium: log in, send a message, find it, open it in the capture view.

A screenshot of each page goes to test-artifacts/console/; any console error, log error or
uncaught exception in any page fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ADMIN_TOKEN
from tests.console.chromium import chromium
from tests.support.mailnode import Mailnode
from tests.support.platform import create_domain

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
RECIPIENT = "browser-test@example.net"
SUBJECT = "Hello from the browser test"
MESSAGE = (
    "From: Console Test <me@example.com>\r\n"
    f"To: <{RECIPIENT}>\r\n"
    f"Subject: {SUBJECT}\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/alternative; boundary="b"\r\n'
    "\r\n"
    "--b\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "Plain words.\r\n"
    "--b\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    '<h1 style="color:#2456c8">Rendered words</h1><p>in a sandboxed frame</p>\r\n'
    "--b--\r\n"
)


async def test_log_in_send_find_and_open_the_message_in_a_real_browser(
    node: Mailnode, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await create_domain(node, "example.com")  # something on the domains page
    ui = f"{node.url}/ui"
    async with chromium(tmp_path / "chromium-profile") as browser:
        page = await browser.new_page()

        await page.goto(f"{ui}/")
        assert (await page.url()).startswith(f"{ui}/login?next=")
        await page.screenshot(ARTIFACTS / "01-login.png")
        await page.act(
            f"document.querySelector('input[name=token]').value = {json.dumps(ADMIN_TOKEN)};"
            "document.querySelector('form[action$=\"/login\"]').submit()"
        )
        assert await page.url() == f"{ui}/"
        assert "Queue health" in await page.text()
        await page.screenshot(ARTIFACTS / "02-overview.png")

        status, _, _ = await node.create(
            {"mail_from": {"m": "me@example.com"}, "rcpt_to": [{"m": RECIPIENT}], "body": {"inline": MESSAGE}}
        )
        assert status == 201
        await node.wait_rows("SELECT count(*) FROM captures", [(1,)])

        await page.goto(f"{ui}/messages")
        await page.act(
            f"document.querySelector('input[name=recipient]').value = {json.dumps('browser-test')};"
            "document.querySelector('form.search').submit()"
        )
        assert "recipient=browser-test" in await page.url()
        assert RECIPIENT in await page.text()
        await page.screenshot(ARTIFACTS / "03-messages.png")

        await page.act("document.querySelector('table.list tbody a').click()")
        text = await page.text()
        assert f"Delivery to {RECIPIENT}" in text and "250 2.0.0 captured as message" in text
        assert f"Subject\t{SUBJECT}" in text
        await page.screenshot(ARTIFACTS / "04-message.png")

        await page.act(
            "[...document.querySelectorAll('a')].find(a => a.textContent.includes('captured')).click()"
        )
        assert SUBJECT in await page.text()
        assert "in a sandboxed frame" in await page.frame_html("/html", "Rendered words")
        await page.screenshot(ARTIFACTS / "05-capture.png")

        for number, name in enumerate(("captures", "queue", "domains", "suppressions", "webhooks"), start=6):
            await page.goto(f"{ui}/{name}")
            assert await page.url() == f"{ui}/{name}"
            await page.screenshot(ARTIFACTS / f"{number:02d}-{name}.png")
        await page.goto(f"{ui}/domains/example.com")
        assert "_domainkey.example.com" in await page.text()
        await page.screenshot(ARTIFACTS / "11-domain.png")

        assert page.all_errors == []
