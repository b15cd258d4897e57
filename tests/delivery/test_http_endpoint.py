"""An ingress route to an HTTP receiver: the application gets the transaction JSON, then the body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
import pytest
from aiohttp import web

from tests.conftest import MailnodeFactory
from tests.support.mailnode import Mailnode

MESSAGE = (
    "From: a@other.test\r\nDate: Mon, 23 Nov 2026 01:00:00 +0000\r\nSubject: to an app\r\n\r\nhi app\r\n"
)


@dataclass
class Receiver:
    """An application that takes mail over HTTP; each answer can be scripted."""

    url: str = ""
    created: list[Any] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    create_status: int = 201
    create_json: dict[str, Any] = field(default_factory=dict)
    body_status: int = 200
    body_json: dict[str, Any] = field(default_factory=dict)

    async def create(self, request: web.Request) -> web.Response:
        self.created.append(await request.json())
        headers = {"Location": f"/inbox/{len(self.created)}"}
        return web.json_response(self.create_json, status=self.create_status, headers=headers)

    async def body(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.json_response(self.body_json, status=self.body_status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app_receiver = Receiver()
    app = web.Application()
    app.router.add_post("/inbox", app_receiver.create)
    app.router.add_put("/inbox/{n}/body", app_receiver.body)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    app_receiver.url = f"http://{host}:{port}/inbox"
    yield app_receiver
    await runner.cleanup()


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory, receiver: Receiver) -> Mailnode:
    return await mailnode_factory(ingress={"routes": [{"domain": "app.test", "endpoint": receiver.url}]})


async def send(node: Mailnode, rcpt: str = "orders@app.test") -> tuple[int, str]:
    assert node.service.smtp is not None
    host, port = node.service.smtp.addresses["ingress"]
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
        try:
            _, reply = await client.sendmail("a@other.test", [rcpt], MESSAGE)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            (refusal,) = exc.recipients
            return refusal.code, refusal.message
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    return 250, reply


async def test_the_application_gets_the_envelope_then_the_message(node: Mailnode, receiver: Receiver) -> None:
    code, reply = await send(node)
    assert (code, reply) == (250, "2.0.0 accepted by the HTTP receiver")
    assert receiver.created == [{"mail_from": {"m": "a@other.test"}, "rcpt_to": [{"m": "orders@app.test"}]}]
    (body,) = receiver.bodies
    assert body.startswith(b"Received: ") and body.endswith(MESSAGE.encode())


async def test_the_applications_own_answer_reaches_the_client(node: Mailnode, receiver: Receiver) -> None:
    receiver.body_json = {"data_response": {"code": 552, "message": "5.2.2 mailbox full"}}
    assert await send(node) == (552, "5.2.2 mailbox full")


@pytest.mark.parametrize(("status", "code"), [(503, 451), (429, 451), (404, 554)])
async def test_http_status_at_create_maps_to_the_rcpt_answer(
    node: Mailnode, receiver: Receiver, status: int, code: int
) -> None:
    receiver.create_status = status
    got, text = await send(node)
    assert got == code
    assert str(status) in text
    assert receiver.bodies == []


async def test_http_refusal_of_the_body_is_permanent(node: Mailnode, receiver: Receiver) -> None:
    receiver.body_status = 403
    code, text = await send(node)
    assert code == 554 and "refused the message (403)" in text
