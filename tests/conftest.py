from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.mailnode import Mailnode, make_config, start_mailnode, stop_mailnode
from tests.support.sink import Sink, start_sink

MailnodeFactory = Callable[..., Awaitable[Mailnode]]
# The operator token of `admin_mailnode` (admin routes: /v1/domains and their keys).
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await start_sink()
    yield server
    await server.close()


@pytest.fixture
async def mailnode_factory(tmp_path: Path, sink: Sink) -> AsyncIterator[MailnodeFactory]:
    """Start mailnode services (smarthost → the sink unless overridden); all stopped after."""
    started: list[Mailnode] = []

    async def start(**overrides: Any) -> Mailnode:
        node = await start_mailnode(make_config(tmp_path, sink.port, **overrides))
        started.append(node)
        return node

    yield start
    for node in started:
        await stop_mailnode(node)


@pytest.fixture
async def mailnode(mailnode_factory: MailnodeFactory) -> Mailnode:
    return await mailnode_factory()


@pytest.fixture
async def admin_mailnode(mailnode_factory: MailnodeFactory) -> Mailnode:
    """A mailnode whose admin routes take `Authorization: Bearer ADMIN_TOKEN`."""
    return await mailnode_factory(admin={"token": ADMIN_TOKEN})
