"""The REST transaction API: uploads, reuse, hanging GET, cancel, and every bad-input answer."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode
from tests.support.sink import Reply, Sink

MESSAGE = b"From: a@example.com\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"
ENVELOPE = {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": "b@example.net"}]}


async def put(node: Mailnode, path: str, data: bytes, content_range: str | None = None):
    headers = node.headers()
    if content_range is not None:
        headers["Content-Range"] = content_range
    async with node.http.put(f"{node.url}{path}", data=data, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def test_body_uploaded_in_ranges_is_delivered(mailnode: Mailnode, sink: Sink) -> None:
    status, created, headers = await mailnode.create(ENVELOPE)
    assert status == 201
    body_uri = created["body"]["blob_status"]["uri"]
    assert "finalized" not in created["body"]["blob_status"]

    status, _, h = await put(mailnode, body_uri, MESSAGE[:10], "bytes 0-9/*")
    assert (status, h["Content-Range"]) == (200, "bytes 0-9/*")
    # A chunk that leaves a gap is refused and says what is stored.
    status, error, h = await put(mailnode, body_uri, MESSAGE[20:30], "bytes 20-29/*")
    assert (status, h["Content-Range"]) == (416, "bytes 0-9/*")
    assert error["error"]["code"] == "range_not_satisfiable"
    # A retried chunk that overlaps what is stored only adds its new tail.
    rest = MESSAGE[5:]
    status, _, h = await put(mailnode, body_uri, rest, f"bytes 5-{len(MESSAGE) - 1}/{len(MESSAGE)}")
    assert (status, h["Content-Range"]) == (200, f"bytes 0-{len(MESSAGE) - 1}/{len(MESSAGE)}")

    (received,) = await sink.wait_for_messages(1)
    assert received.data.endswith(MESSAGE)
    final = await mailnode.wait_final(headers["Location"])
    assert final["body"]["blob_status"]["finalized"] is True


async def test_reused_body_is_stored_once_and_delivered_twice(mailnode: Mailnode, sink: Sink) -> None:
    _, first, _h1 = await mailnode.create({**ENVELOPE, "body": {"inline": MESSAGE.decode()}})
    reuse = {"reuse_uri": first["body"]["blob_status"]["uri"]}
    status, second, _h2 = await mailnode.create(
        {"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": "c@example.net"}], "body": reuse}
    )
    assert status == 201
    assert second["body"]["blob_status"]["finalized"] is True

    messages = await sink.wait_for_messages(2)
    assert {m.rcpt_tos[0] for m in messages} == {"b@example.net", "c@example.net"}
    for message in messages:
        assert message.data.endswith(MESSAGE)
    assert mailnode.rows("SELECT COUNT(*) FROM blobs") == [(1,)]
    assert mailnode.rows("SELECT COUNT(*) FROM transaction_blobs") == [(2,)]


async def test_whole_body_put_then_replay_is_idempotent(mailnode: Mailnode, sink: Sink) -> None:
    _, created, _ = await mailnode.create(ENVELOPE)
    uri = created["body"]["blob_status"]["uri"]
    assert (await put(mailnode, uri, MESSAGE))[0] == 200
    status, _, h = await put(mailnode, uri, MESSAGE)
    assert (status, h["Content-Range"]) == (200, f"bytes 0-{len(MESSAGE) - 1}/{len(MESSAGE)}")
    await sink.wait_for_messages(1)
    assert len(sink.messages) == 1


async def test_hanging_get_waits_for_a_change_and_times_out_with_304(mailnode: Mailnode, sink: Sink) -> None:
    _, created, headers = await mailnode.create(ENVELOPE)  # no body yet: nothing will change
    location, etag = headers["Location"], headers["ETag"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, h = await mailnode.get(location, **{"If-None-Match": etag, "request-timeout": "0.3"})
    assert (status, h["ETag"]) == (304, etag)
    assert loop.time() - started >= 0.3

    # A waiter is woken by the upload (a change), long before its 5 s timeout.
    waiter = asyncio.create_task(mailnode.get(location, **{"If-None-Match": etag, "request-timeout": "5"}))
    await asyncio.sleep(0.05)
    await put(mailnode, created["body"]["blob_status"]["uri"], MESSAGE)
    status, _body, h = await asyncio.wait_for(waiter, 2)
    assert status == 200 and h["ETag"] != etag


async def test_cancel_before_the_body_arrives(mailnode: Mailnode, sink: Sink) -> None:
    _, created, headers = await mailnode.create(ENVELOPE)
    async with mailnode.http.post(
        f"{mailnode.url}{headers['Location']}/cancel", headers=mailnode.headers()
    ) as response:
        assert response.status == 200
        cancelled = await response.json()
    assert cancelled["cancelled"] is True
    assert cancelled["final_attempt_reason"] == "downstream cancelled"
    status, _error, _ = await put(mailnode, created["body"]["blob_status"]["uri"], MESSAGE)
    assert status == 409
    assert sink.transactions == 0


async def test_cancel_after_delivery_keeps_the_outcome(mailnode: Mailnode, sink: Sink) -> None:
    _, _, headers = await mailnode.create({**ENVELOPE, "body": {"inline": MESSAGE.decode()}})
    await mailnode.wait_final(headers["Location"])
    async with mailnode.http.post(
        f"{mailnode.url}{headers['Location']}/cancel", headers=mailnode.headers()
    ) as response:
        body = await response.json()
    assert body["final_attempt_reason"] == "upstream response success"
    assert "cancelled" not in body


BAD_CREATES = [
    ("not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
    ('{"mail_from": {"m": "a@example.com"}, "rcpt_to": []}', "invalid_request", "rcpt_to"),
    (
        '{"mail_from": {"m": "a@example.com"}, "rcpt_to": [{"m": "b@x.net"}, {"m": "c@x.net"}]}',
        "invalid_request",
        "rcpt_to",
    ),
    ('{"rcpt_to": [{"m": "b@example.net"}]}', "invalid_request", "mail_from"),
    ('{"mail_from": {"m": "a@example.com"}}', "invalid_request", "rcpt_to"),
    ('{"mail_from": null, "rcpt_to": [{"m": "b@x.net"}]}', "invalid_request", "mail_from"),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "b@x.net"}], "retry": {}}',
        "invalid_request",
        "retry",
    ),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "b@x.net"}], "colour": 1}',
        "invalid_request",
        "colour",
    ),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "no-at-sign"}]}',
        "invalid_request",
        "rcpt_to[0]",
    ),
    (
        '{"mail_from": {"m": "a%b@x.com"}, "rcpt_to": [{"m": "b@x.net"}]}',
        "invalid_request",
        "mail_from",
    ),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "b@x.net"}], "body": {"inline": 5}}',
        "invalid_request",
        "body.inline",
    ),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "b@x.net"}], "body": {"reuse_uri": "/x"}}',
        "invalid_request",
        "body.reuse_uri",
    ),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "b@x.net"}],'
        ' "body": {"reuse_uri": "/transactions/nope/body"}}',
        "invalid_request",
        "body",
    ),
    (
        '{"mail_from": {"m": "a@x.com"}, "rcpt_to": [{"m": "b@x.net"}], "body": {"message_builder": {}}}',
        "invalid_request",
        "body.message_builder",
    ),
]


@pytest.mark.parametrize(("payload", "code", "field"), BAD_CREATES)
async def test_bad_create_is_refused_and_stores_nothing(
    mailnode: Mailnode, payload: str, code: str, field: str | None
) -> None:
    async with mailnode.http.post(
        f"{mailnode.url}/senders/api/transactions",
        data=payload,
        headers=mailnode.headers(**{"Content-Type": "application/json"}),
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == code
    assert error.get("field") == field
    if field:
        assert error["message"].startswith(f"{field}: ")
    assert mailnode.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
    assert mailnode.rows("SELECT COUNT(*) FROM blobs") == [(0,)]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer mk_wrong", "Basic dXNlcjpwYXNz", "bearer  ", "Token abc"],
)
async def test_every_auth_failure_gets_the_same_401(mailnode: Mailnode, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with mailnode.http.post(
        f"{mailnode.url}/senders/api/transactions",
        json={**ENVELOPE, "body": {"inline": MESSAGE.decode()}},
        headers=headers,
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = await response.json()
    assert body == {
        "error": {
            "code": "unauthorized",
            "message": "missing or invalid credentials; send Authorization: Bearer <API key or admin token>",
        }
    }
    assert mailnode.rows("SELECT COUNT(*) FROM transactions") == [(0,)]


async def test_deactivated_and_expired_keys_fail_like_unknown_ones(mailnode: Mailnode) -> None:
    assert (await mailnode.get("/capture/messages"))[0] == 200
    with sqlite3.connect(mailnode.db_path) as db:
        db.execute("UPDATE api_keys SET deactivated_at = 1")
    status, body, _ = await mailnode.get("/capture/messages")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    with sqlite3.connect(mailnode.db_path) as db:
        db.execute("UPDATE api_keys SET deactivated_at = NULL, expires_at = 1")
    status, _, _ = await mailnode.get("/capture/messages")
    assert status == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/transactions/unknown"),
        ("PUT", "/transactions/unknown/body"),
        ("PUT", "/transactions/unknown/blob/x"),
        ("POST", "/transactions/unknown/cancel"),
        ("POST", "/senders/no-such-profile/transactions"),
    ],
)
async def test_unknown_things_are_404(mailnode: Mailnode, method: str, path: str) -> None:
    async with mailnode.http.request(
        method, f"{mailnode.url}{path}", data=b"x", headers=mailnode.headers()
    ) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] in {"not_found", "unknown_sender"}


async def test_bad_request_timeout_and_content_range(mailnode: Mailnode) -> None:
    _, created, headers = await mailnode.create(ENVELOPE)
    status, error, _ = await mailnode.get(
        headers["Location"], **{"If-None-Match": headers["ETag"], "request-timeout": "abc"}
    )
    assert status == 400 and error["error"]["field"] == "request-timeout"
    status, error, _ = await put(mailnode, created["body"]["blob_status"]["uri"], b"abc", "bytes 0-9/*")
    assert status == 400 and error["error"]["field"] == "Content-Range"


async def test_message_from_the_api_without_date_gets_one(mailnode: Mailnode, sink: Sink) -> None:
    body = "From: a@example.com\r\nSubject: no date\r\n\r\nhi\r\n"
    _, _, _headers = await mailnode.create({**ENVELOPE, "body": {"inline": body}})
    (received,) = await sink.wait_for_messages(1)
    # This hop's trace header stays on top; the added Date and Message-ID follow it.
    assert received.data.startswith(b"Received: ")
    assert b"\r\nDate: " in received.data
    assert b"\r\nMessage-ID: <" in received.data


async def test_message_without_from_is_rejected_not_retried(mailnode: Mailnode, sink: Sink) -> None:
    _, _, headers = await mailnode.create({**ENVELOPE, "body": {"inline": "Subject: x\r\n\r\nhi\r\n"}})
    final = await mailnode.wait_final(headers["Location"])
    assert final["data_response"]["code"] == 550
    assert "From" in final["data_response"]["message"]
    assert final["attempt_count"] == 1
    # The only thing that reaches the sink is the DSN back to the sender.
    (dsn,) = await sink.wait_for_messages(1)
    assert (dsn.mail_from, dsn.rcpt_tos) == ("", ["a@example.com"])


async def test_submission_profile_retries_off_shows_the_tempfail(
    mailnode_factory: MailnodeFactory, sink: Sink
) -> None:
    node = await mailnode_factory(senders={"oneshot": {"retry": False, "bounce": False}})
    sink.queue(Reply(data="451 4.3.0 later"))
    _, _, headers = await node.create({**ENVELOPE, "body": {"inline": MESSAGE.decode()}}, sender="oneshot")
    final = await node.wait_final(headers["Location"])
    assert final["final_attempt_reason"] == "upstream response tempfail, retries off"
    assert final["data_response"] == {"code": 451, "message": "4.3.0 later"}
    assert "retry" not in final and "notification" not in final
