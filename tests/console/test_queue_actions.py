"""Retry and cancel from the console change the deliveries in the database; forged forms do not."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.console.conftest import THROTTLE
from tests.console.support import Browser
from tests.support.mailnode import Mailnode
from tests.support.sink import Reply, Sink

HOUR = 3600


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    """Mail to the sink; a deferred delivery waits an hour for its next attempt."""
    return await mailnode_factory(
        admin={"token": ADMIN_TOKEN},
        smtp={"auth_throttle": THROTTLE},
        retry={"initial_delay_seconds": HOUR, "max_delay_seconds": HOUR},
    )


async def deliver(node: Mailnode, rcpt: str) -> str:
    message = f"From: me@example.com\r\nSubject: to {rcpt}\r\n\r\nhi\r\n"
    status, _, headers = await node.create(
        {"mail_from": {"m": "me@example.com"}, "rcpt_to": [{"m": rcpt}], "body": {"inline": message}}
    )
    assert status == 201
    return str(headers["Location"].rsplit("/", 1)[1])


async def deferred(node: Mailnode, rest_id: str) -> None:
    """Until the first attempt is over and the next one is an hour away."""
    await node.wait_rows(
        "SELECT status, attempt_count, next_attempt_at > strftime('%s', 'now') + 1800 FROM transactions"
        f" WHERE rest_id = '{rest_id}'",
        [("queued", 1, 1)],
    )


def state(node: Mailnode, rest_id: str) -> tuple[str, int, float | None]:
    ((status, attempts, next_at),) = node.rows(
        "SELECT status, attempt_count, next_attempt_at FROM transactions WHERE rest_id = ?", rest_id
    )
    return status, attempts, next_at


async def test_retry_makes_a_deferred_delivery_go_now_and_a_forged_form_changes_nothing(
    node: Mailnode, sink: Sink, logged_in: Browser
) -> None:
    sink.reply_for("later@example.org", Reply(rcpt="451 4.2.0 mailbox busy"))
    rest_id = await deliver(node, "later@example.org")
    await deferred(node, rest_id)
    before = state(node, rest_id)

    forged = await logged_in.post(f"/ui/queue/{rest_id}/retry", {"csrf": "forged", "back": "/ui/queue"})
    assert forged.status == 403
    assert state(node, rest_id) == before

    queue = await logged_in.get("/ui/queue")
    assert f'action="/ui/queue/{rest_id}/retry"' in queue.text
    sink.reply_for("later@example.org", Reply())  # the receiver takes it now
    answer = await logged_in.post(f"/ui/queue/{rest_id}/retry", {"csrf": queue.csrf, "back": "/ui/queue"})
    assert answer.status == 303 and answer.headers["Location"] == "/ui/queue?done=retried"
    await node.wait_rows(
        f"SELECT status, attempt_count FROM transactions WHERE rest_id = '{rest_id}'", [("delivered", 2)]
    )
    shown = await logged_in.get(answer.headers["Location"])
    assert "The delivery is due now" in shown.text


async def test_retry_queues_a_failed_delivery_for_one_more_attempt(
    node: Mailnode, sink: Sink, logged_in: Browser
) -> None:
    sink.reply_for("gone@example.org", Reply(rcpt="550 5.1.1 no such user"))
    rest_id = await deliver(node, "gone@example.org")
    await node.wait_rows(f"SELECT status FROM transactions WHERE rest_id = '{rest_id}'", [("failed",)])
    failed = await logged_in.get("/ui/queue?view=failed")
    assert "550 5.1.1 no such user" in failed.text

    sink.reply_for("gone@example.org", Reply())
    answer = await logged_in.post(
        f"/ui/queue/{rest_id}/retry", {"csrf": failed.csrf, "back": "/ui/queue?view=failed"}
    )
    assert answer.status == 303 and answer.headers["Location"] == "/ui/queue?view=failed&done=retried"
    await node.wait_rows(
        f"SELECT status, attempt_count, final_attempt_reason FROM transactions WHERE rest_id = '{rest_id}'",
        [("delivered", 2, "upstream response success")],
    )
    again = await logged_in.post(f"/ui/queue/{rest_id}/retry", {"csrf": failed.csrf})
    assert again.status == 409 and "only queued and failed ones can be retried" in again.text
    assert (await logged_in.post("/ui/queue/nope/retry", {"csrf": failed.csrf})).status == 404


async def test_cancel_ends_a_queued_delivery(node: Mailnode, sink: Sink, logged_in: Browser) -> None:
    sink.reply_for("later@example.org", Reply(rcpt="451 4.2.0 mailbox busy"))
    rest_id = await deliver(node, "later@example.org")
    await deferred(node, rest_id)
    page = await logged_in.get(f"/ui/messages/{rest_id}")
    assert f'action="/ui/queue/{rest_id}/cancel"' in page.text

    assert (await logged_in.post(f"/ui/queue/{rest_id}/cancel", {"csrf": ""})).status == 403
    assert state(node, rest_id)[0] == "queued"
    answer = await logged_in.post(
        f"/ui/queue/{rest_id}/cancel", {"csrf": page.csrf, "back": f"/ui/messages/{rest_id}"}
    )
    assert answer.status == 303 and answer.headers["Location"] == f"/ui/messages/{rest_id}?done=cancelled"
    assert node.rows("SELECT status, final_attempt_reason FROM transactions WHERE rest_id = ?", rest_id) == [
        ("cancelled", "downstream cancelled")
    ]


async def test_an_action_without_a_session_is_refused(node: Mailnode, sink: Sink, browser: Browser) -> None:
    sink.reply_for("later@example.org", Reply(rcpt="451 4.2.0 mailbox busy"))
    rest_id = await deliver(node, "later@example.org")
    await deferred(node, rest_id)
    before = state(node, rest_id)
    answer = await browser.post(f"/ui/queue/{rest_id}/cancel", {"csrf": "x"})
    assert answer.status == 403 and "Log in again" in answer.text
    assert state(node, rest_id) == before
