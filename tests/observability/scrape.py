"""Scraping /metrics the way Prometheus does: over HTTP, read with prometheus-client's parser."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN
from tests.support.mailnode import Mailnode

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: (sample name, labels) → value."""

    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a labelled child not seen yet (nothing counted)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, got), value in self.samples.items() if sample == name and wanted <= got)

    def label_values(self) -> set[str]:
        return {value for (_, labels) in self.samples for _, value in labels}


async def get_metrics(node: Mailnode, token: str | None = ADMIN_TOKEN) -> tuple[int, str, str]:
    """(status, content type, body) of GET /metrics, with `token` as Bearer (None: no header)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with node.http.get(f"{node.url}/metrics", headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(node: Mailnode, token: str | None = ADMIN_TOKEN) -> Scrape:
    status, content_type, text = await get_metrics(node, token)
    assert status == 200, text
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Scrape(samples)


async def scrape_until(
    node: Mailnode, done: Callable[[Scrape], bool], timeout: float = 10.0, token: str = ADMIN_TOKEN
) -> Scrape:
    """Scrape until `done` holds (work the service finishes after its replies), with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(result := await scrape(node, token)):
        assert asyncio.get_running_loop().time() < deadline, "the metrics did not get there in time"
        await asyncio.sleep(0.05)
    return result
