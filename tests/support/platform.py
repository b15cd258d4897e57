"""Setting up the sending platform the way an operator does: over the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dkim

from tests.conftest import ADMIN_TOKEN
from tests.support.mailnode import Mailnode


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Domain:
    name: str
    key: str  # a plaintext API key of the domain
    key_id: int
    dns: list[dict[str, str]]

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}

    def dkim_dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's DNS hook: the TXT records GET /v1/domains/{d}/dns says to publish."""
        wanted = name.decode().rstrip(".").lower()
        for record in self.dns:
            if record["type"] == "TXT" and record["name"].rstrip(".").lower() == wanted:
                return record["value"].encode()
        return None

    def verify(self, message: bytes) -> bool:
        """Does the message's DKIM signature verify against the published key?"""
        return bool(dkim.verify(message, dnsfunc=self.dkim_dns))


async def create_domain(node: Mailnode, name: str, **options: Any) -> Domain:
    """POST /v1/domains, then an API key, then read the DNS records to publish."""
    async with node.http.post(
        f"{node.url}/v1/domains", json={"name": name, **options}, headers=admin_headers()
    ) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    canonical = created["name"]
    async with node.http.post(
        f"{node.url}/v1/domains/{canonical}/keys", json={"name": "tests"}, headers=admin_headers()
    ) as response:
        assert response.status == 201, await response.text()
        key = await response.json()
    async with node.http.get(f"{node.url}/v1/domains/{canonical}/dns", headers=admin_headers()) as response:
        assert response.status == 200, await response.text()
        dns = (await response.json())["records"]
    return Domain(canonical, key["key"], key["id"], dns)


async def send(node: Mailnode, domain: Domain, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    """POST /v1/send with the domain's key; (status, JSON answer)."""
    async with node.http.post(
        f"{node.url}/v1/send", json=body, headers=domain.headers(**headers)
    ) as response:
        return response.status, await response.json()
