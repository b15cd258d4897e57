from __future__ import annotations

import pytest

from mailnode.config import IngressRoute
from mailnode.router.routes import match_route

ROUTES = (
    IngressRoute("example.com", "smtp:127.0.0.1:2526"),
    IngressRoute("*.example.org", "lmtp:/run/lmtp"),
)


@pytest.mark.parametrize(
    ("domain", "endpoint"),
    [
        ("example.com", "smtp:127.0.0.1:2526"),
        ("EXAMPLE.COM.", "smtp:127.0.0.1:2526"),
        ("mail.example.com", None),  # an exact route does not cover subdomains
        ("lists.example.org", "lmtp:/run/lmtp"),
        ("a.b.example.org", "lmtp:/run/lmtp"),
        ("example.org", None),  # a wildcard covers subdomains only
        ("badexample.org", None),
        ("elsewhere.net", None),
    ],
)
def test_first_matching_route(domain: str, endpoint: str | None) -> None:
    route = match_route(ROUTES, domain)
    assert (route.endpoint if route else None) == endpoint


def test_star_matches_everything() -> None:
    assert match_route((IngressRoute("*", "capture"),), "anything.test") is not None
