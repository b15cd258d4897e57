"""Captured messages like Mailpit shows them, hostile content kept inert, and paging."""

from __future__ import annotations

import re

from tests.console.support import Browser
from tests.support.mailnode import Mailnode

HOSTILE = "<script>alert(1)</script>"
MESSAGE = (
    "From: me@example.com\r\n"
    f"Subject: {HOSTILE} =?utf-8?q?caf=C3=A9?=\r\n"
    "X-Tag: one\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/alternative; boundary="b"\r\n'
    "\r\n"
    "--b\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    f"plain words {HOSTILE}\r\n"
    "--b\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    f'<p class="hello">rich words</p>{HOSTILE}<img src="https://tracker.example/pixel.gif">\r\n'
    "--b--\r\n"
)


async def capture(node: Mailnode, rcpt: str = "you@example.net", message: str = MESSAGE) -> tuple[str, int]:
    """Send a message over the REST API; wait for the capture store to keep it."""
    status, tx, _ = await node.create(
        {"mail_from": {"m": "me@example.com"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": message}}
    )
    assert status == 201, tx
    await node.wait_rows(f"SELECT count(*) FROM captures WHERE rcpt_to = '{rcpt}'", [(1,)])
    ((rest_id, capture_id),) = node.rows(
        "SELECT transaction_rest_id, id FROM captures WHERE rcpt_to = ?", rcpt
    )
    return rest_id, capture_id


def assert_inert(html: str) -> None:
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


async def test_captured_messages_are_listed_and_shown_as_html_text_source_and_headers(
    node: Mailnode, logged_in: Browser
) -> None:
    _, capture_id = await capture(node)
    listing = await logged_in.get("/ui/captures")
    assert f'href="/ui/captures/{capture_id}"' in listing.text and "café" in listing.text
    assert_inert(listing.text)

    html_tab = await logged_in.get(f"/ui/captures/{capture_id}")
    assert_inert(html_tab.text)
    (frame,) = re.findall(r"<iframe[^>]*>", html_tab.text)
    assert re.search(r"\ssandbox[\s>]", frame) and "allow-" not in frame
    assert f'src="/ui/captures/{capture_id}/html"' in frame

    text_tab = await logged_in.get(f"/ui/captures/{capture_id}?tab=text")
    assert "plain words" in text_tab.text and "<iframe" not in text_tab.text
    assert_inert(text_tab.text)
    source = await logged_in.get(f"/ui/captures/{capture_id}?tab=source")
    assert "Content-Type: multipart/alternative" in source.text
    assert_inert(source.text)
    headers = await logged_in.get(f"/ui/captures/{capture_id}?tab=headers")
    assert "<th>X-Tag</th><td>one</td>" in headers.text
    assert_inert(headers.text)
    assert (await logged_in.get(f"/ui/captures/{capture_id}?tab=evil")).status == 400
    assert (await logged_in.get("/ui/captures/999")).status == 404


async def test_the_html_is_served_sandboxed_with_nothing_remote(node: Mailnode, logged_in: Browser) -> None:
    _, capture_id = await capture(node)
    frame = await logged_in.get(f"/ui/captures/{capture_id}/html")
    assert frame.status == 200 and '<p class="hello">rich words</p>' in frame.text
    csp = [part.strip() for part in frame.headers["Content-Security-Policy"].split(";")]
    assert csp[0] == "sandbox"  # no token: no scripts, forms, popups or top navigation
    assert "default-src 'none'" in csp and "img-src data:" in csp and "frame-ancestors 'self'" in csp
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    raw = await logged_in.get(f"/ui/captures/{capture_id}/raw")
    assert raw.headers["Content-Type"].startswith("text/plain")
    assert raw.text.startswith("Received: from") and raw.text.endswith(MESSAGE)  # as delivered


async def test_a_message_sent_with_its_body_shows_its_headers_and_its_capture(
    node: Mailnode, logged_in: Browser
) -> None:
    rest_id, capture_id = await capture(node)
    page = await logged_in.get(f"/ui/messages/{rest_id}")
    headers = page.text.split("<h2>Headers</h2>", 1)[1]
    assert "<th>X-Tag</th><td>one</td>" in headers and "café" in headers
    assert "the stored body" in headers
    assert_inert(page.text)
    assert "250 2.0.0 captured as message" in page.text
    assert f'href="/ui/captures/{capture_id}"' in page.text


async def test_hostile_addresses_and_answers_are_escaped_everywhere(
    node: Mailnode, logged_in: Browser
) -> None:
    rcpt = '"<b>x</b>"@example.net'
    status, tx, headers = await node.create(
        {"mail_from": {"m": "me@example.com"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": MESSAGE}}
    )
    assert status == 201, tx  # a quoted local part may hold markup: it must show as text
    await node.wait_rows("SELECT count(*) FROM captures", [(1,)])
    for path in (
        "/ui/messages",
        "/ui/captures",
        "/ui/messages?recipient=%3Cb%3E",
        "/ui/messages/" + headers["Location"].rsplit("/", 1)[1],
    ):
        page = await logged_in.get(path)
        assert page.status == 200, path
        assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text, path
    search = await logged_in.get(f"/ui/messages?recipient={HOSTILE}")
    assert_inert(search.text)


async def test_lists_are_paged_by_cursor(node: Mailnode, logged_in: Browser) -> None:
    for number in range(55):
        status, _, _ = await node.create(
            {
                "mail_from": {"m": "me@example.com"},
                "rcpt_to": [{"m": f"r{number:02d}@example.net"}],
                "body": {"inline": "From: me@example.com\r\nSubject: s\r\n\r\nhi\r\n"},
            }
        )
        assert status == 201
    await node.wait_rows("SELECT count(*) FROM captures", [(55,)])
    for path in ("/ui/messages", "/ui/captures"):
        first = await logged_in.get(path)
        shown = re.findall(r"r(\d\d)@example\.net", first.text)
        assert len(set(shown)) == 50 and max(shown) == "54"  # newest first
        older = re.search(r'href="([^"]*before=\d+)">older', first.text)
        assert older is not None, path
        second = await logged_in.get(older.group(1).replace("&amp;", "&"))
        rest = set(re.findall(r"r(\d\d)@example\.net", second.text))
        assert rest == {"00", "01", "02", "03", "04"}, path
        assert "older" not in second.text.split("</table>")[-1]
