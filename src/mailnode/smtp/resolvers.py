"""dnspython resolvers on mailnode's configured nameservers (`[dns] nameservers`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from mailnode.errors import ConfigError


@overload
def make_resolver(
    nameservers: Sequence[tuple[str, int]], *, kind: Literal["async"]
) -> dns.asyncresolver.Resolver: ...


@overload
def make_resolver(
    nameservers: Sequence[tuple[str, int]], *, kind: Literal["sync"]
) -> dns.resolver.Resolver: ...


def make_resolver(
    nameservers: Sequence[tuple[str, int]], *, kind: Literal["async", "sync"]
) -> dns.resolver.Resolver | dns.asyncresolver.Resolver:
    """A resolver asking exactly `nameservers` (host, port); none given: the system's."""
    factory = dns.asyncresolver.Resolver if kind == "async" else dns.resolver.Resolver
    if nameservers:
        resolver = factory(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
        return resolver
    try:
        return factory()
    except dns.resolver.NoResolverConfiguration as exc:
        raise ConfigError(
            "dns.nameservers: the system has no usable DNS configuration (/etc/resolv.conf); "
            "set [dns] nameservers"
        ) from exc
