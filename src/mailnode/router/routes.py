"""Ingress routing: which configured route, if any, takes mail for a recipient domain."""

from __future__ import annotations

from collections.abc import Sequence

from mailnode.config import IngressRoute


def match_route(routes: Sequence[IngressRoute], domain: str) -> IngressRoute | None:
    """The first route for `domain` ("example.com", "*.example.com" or "*"), or None.

    "*.example.com" matches subdomains only, as in Postfix's relay_domains with a leading dot.
    """
    domain = domain.lower().rstrip(".")
    for route in routes:
        pattern = route.domain.lower().rstrip(".")
        if pattern == "*" or pattern == domain:
            return route
        if pattern.startswith("*.") and domain.endswith(pattern[1:]):
            return route
    return None
