"""Message-builder bodies over the REST API: inline parts, uploaded and reused attachment blobs."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from tests.support.mailnode import Mailnode
from tests.support.sink import Sink

# Every byte value, CR and LF included: an attachment must come back exactly.
ATTACHMENT = b"%PDF-1.7\r\n" + bytes(range(256)) * 40 + b"\r\n%%EOF"


def headers(subject: str) -> list[Any]:
    return [
        ["From", [{"display_name": "Alice Example", "address": "alice@example.com"}]],
        ["To", [{"address": "bob@example.net"}]],
        ["Subject", subject],
        ["Date", {"unix_secs": 1700000000}],
    ]


TEXT_BODY = [
    {"content_type": "text/plain", "content": {"inline": "Hello Bob,\nyour invoice is attached.\n"}},
    {"content_type": "text/html", "content": {"inline": "<p>Hello Bob, your <b>invoice</b>.</p>"}},
]


def builder_tx(spec: dict[str, Any], rcpt: str = "bob@example.net") -> dict[str, Any]:
    return {
        "mail_from": {"m": "alice@example.com"},
        "rcpt_to": [{"m": rcpt}],
        "body": {"message_builder": spec},
    }


def attachment_spec(content: dict[str, str]) -> dict[str, Any]:
    return {
        "headers": headers("Invoice 42"),
        "text_body": TEXT_BODY,
        "file_attachments": [
            {"content_type": "application/pdf", "content": content, "filename": "invoice-42.pdf"}
        ],
    }


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: Any) -> str:
    return part.get_content().replace("\r\n", "\n")


def attachment_of(data: bytes) -> EmailMessage:
    message = parse(data)
    assert message.get_content_type() == "multipart/mixed"
    _body, attachment = message.iter_parts()
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "invoice-42.pdf"
    return attachment


async def put(node: Mailnode, path: str, data: bytes) -> tuple[int, Any, Any]:
    async with node.http.put(f"{node.url}{path}", data=data, headers=node.headers()) as response:
        return response.status, await response.json(), response.headers


async def test_inline_text_and_html_parts_are_built_and_delivered(mailnode: Mailnode, sink: Sink) -> None:
    spec = {"headers": headers("Hello from the builder"), "text_body": TEXT_BODY}
    status, created, response_headers = await mailnode.create(builder_tx(spec))
    assert status == 201
    assert created["body"] == {"message_builder": {"blob_status": {}}}

    (received,) = await sink.wait_for_messages(1)
    assert received.mail_from == "alice@example.com"
    assert received.rcpt_tos == ["bob@example.net"]
    message = parse(received.data)
    assert "by mailnode.test" in message["Received"]
    assert message["Subject"] == "Hello from the builder"
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Alice Example", "alice@example.com")
    assert message["Date"].datetime.timestamp() == 1700000000
    assert message["Message-ID"]  # added by the validation filter
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert text_of(plain) == "Hello Bob,\nyour invoice is attached.\n"
    assert html.get_content_type() == "text/html"
    assert text_of(html) == "<p>Hello Bob, your <b>invoice</b>.</p>\n"

    final = await mailnode.wait_final(response_headers["Location"])
    assert final["final_attempt_reason"] == "upstream response success"


async def test_uploaded_attachment_is_delivered_byte_for_byte(mailnode: Mailnode, sink: Sink) -> None:
    status, created, response_headers = await mailnode.create(
        builder_tx(attachment_spec({"create_id": "att1"}))
    )
    assert status == 201
    location = response_headers["Location"]
    upload = created["body"]["message_builder"]["blob_status"]["att1"]
    assert upload == {"uri": f"{location}/blob/att1"}  # no "finalized": still to come
    assert created["status"] == "awaiting_body"
    assert mailnode.rows("SELECT status FROM transactions") == [("awaiting_body",)]

    status, _, put_headers = await put(mailnode, upload["uri"], ATTACHMENT)
    assert status == 200
    assert put_headers["Content-Range"] == f"bytes 0-{len(ATTACHMENT) - 1}/{len(ATTACHMENT)}"

    (received,) = await sink.wait_for_messages(1)
    assert attachment_of(received.data).get_content() == ATTACHMENT
    final = await mailnode.wait_final(location)
    assert final["final_attempt_reason"] == "upstream response success"
    assert final["body"]["message_builder"]["blob_status"]["att1"]["finalized"] is True


async def test_reused_attachment_is_delivered_again_and_stored_once(mailnode: Mailnode, sink: Sink) -> None:
    _, created, _ = await mailnode.create(builder_tx(attachment_spec({"create_id": "att1"})))
    blob_uri = created["body"]["message_builder"]["blob_status"]["att1"]["uri"]
    assert (await put(mailnode, blob_uri, ATTACHMENT))[0] == 200

    status, second, _ = await mailnode.create(
        builder_tx(attachment_spec({"reuse_uri": blob_uri}), rcpt="carol@example.net")
    )
    assert status == 201
    assert second["body"]["message_builder"]["blob_status"]["att1"]["finalized"] is True

    messages = await sink.wait_for_messages(2)
    assert sorted(m.rcpt_tos[0] for m in messages) == ["bob@example.net", "carol@example.net"]
    for message in messages:
        assert attachment_of(message.data).get_content() == ATTACHMENT
    assert mailnode.rows("SELECT COUNT(*) FROM blobs") == [(1,)]
    assert mailnode.rows("SELECT COUNT(*), COUNT(DISTINCT blob_id) FROM transaction_blobs") == [(2, 1)]
    assert mailnode.rows("SELECT SUM(LENGTH(data)) FROM blob_chunks") == [(len(ATTACHMENT),)]


async def test_reusing_a_blob_not_uploaded_yet_is_refused(mailnode: Mailnode) -> None:
    _, created, _ = await mailnode.create(builder_tx(attachment_spec({"create_id": "att1"})))
    blob_uri = created["body"]["message_builder"]["blob_status"]["att1"]["uri"]

    status, error, _ = await mailnode.create(builder_tx(attachment_spec({"reuse_uri": blob_uri})))

    assert status == 400
    assert error["error"]["field"] == "body"
    assert "not completely uploaded" in error["error"]["message"]
    assert mailnode.rows("SELECT COUNT(*) FROM transactions") == [(1,)]


def _spec_with(**changes: Any) -> dict[str, Any]:
    return {"headers": headers("bad"), "text_body": TEXT_BODY, **changes}


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (
            _spec_with(text_body=[{"content_type": "image/png", "content": {"inline": "x"}}]),
            "message_builder.text_body[0].content_type",
        ),
        (
            _spec_with(headers=[["From", [{"address": "no-at-sign"}]]]),
            "message_builder.headers[0][1][0].address",
        ),
        (
            _spec_with(
                file_attachments=[
                    {"content_type": "application/pdf", "content": {"create_id": "a", "x": "y"}}
                ]
            ),
            "message_builder.file_attachments[0].content.x",
        ),
        (_spec_with(colour="blue"), "message_builder.colour"),
    ],
)
async def test_a_spec_error_is_refused_naming_its_path(
    mailnode: Mailnode, spec: dict[str, Any], path: str
) -> None:
    status, error, _ = await mailnode.create(builder_tx(spec))

    assert status == 400
    assert error["error"]["code"] == "invalid_request"
    assert error["error"]["field"] == "body.message_builder"
    assert f"{path}: " in error["error"]["message"]
    assert mailnode.rows("SELECT COUNT(*) FROM transactions") == [(0,)]
    assert mailnode.rows("SELECT COUNT(*) FROM blobs") == [(0,)]
