from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.dns_server import DnsServer, start_dns_server


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = await start_dns_server()
    yield server
    await server.close()
