from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import ADMIN_TOKEN, MailnodeFactory
from tests.console.support import Browser
from tests.support.mailnode import Mailnode

# Failed logins are slowed down (and then refused) by [smtp.auth_throttle]; short here.
THROTTLE = {"first_delay_seconds": 0.2, "max_delay_seconds": 0.4, "ban_after_failures": 3}


@pytest.fixture
async def node(mailnode_factory: MailnodeFactory) -> Mailnode:
    """A mailnode whose mail goes to the capture store, with an admin token for the console."""
    return await mailnode_factory(
        admin={"token": ADMIN_TOKEN},
        delivery={"mode": "capture"},
        smtp={"auth_throttle": THROTTLE},
    )


@pytest.fixture
async def browser(node: Mailnode) -> AsyncIterator[Browser]:
    client = Browser(node.url)
    yield client
    await client.close()


@pytest.fixture
async def logged_in(browser: Browser) -> Browser:
    page = await browser.login()
    assert page.status == 303, page.text
    return browser
