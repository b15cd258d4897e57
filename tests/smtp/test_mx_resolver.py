"""MxResolver and deliver_via_mx against the loopback DNS server and sinks."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from tests.support.dns_server import DnsServer
from tests.support.sink import Reply, Sink

from mailnode.core.outcome import Stage
from mailnode.errors import PermanentDeliveryError, TransientDeliveryError
from mailnode.smtp.client import SmtpOptions, deliver_via_mx
from mailnode.smtp.mx import Destination, MxResolver

MESSAGE = b"Subject: mx\r\n\r\nhello\r\n"


def _resolver(server: DnsServer, rng: random.Random | None = None) -> MxResolver:
    return MxResolver([(server.host, server.port)], timeout=1.0, rng=rng)


async def test_mx_sorted_by_preference_with_a_then_aaaa(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx1.example.test", "AAAA", "::1")
    dns_server.add("mx2.example.test", "A", "127.0.0.1")
    dns_server.add("mx2.example.test", "A", "127.0.0.2")  # shared with mx1: tried once

    destinations = await _resolver(dns_server).resolve("Example.TEST.")

    assert destinations == [
        Destination("mx1.example.test", "127.0.0.2"),
        Destination("mx1.example.test", "::1"),
        Destination("mx2.example.test", "127.0.0.1"),
    ]


async def test_equal_preferences_are_shuffled(dns_server: DnsServer) -> None:
    for name, address in (("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")):
        dns_server.add("example.test", "MX", f"10 {name}.example.test.")
        dns_server.add(f"{name}.example.test", "A", address)
    resolver = _resolver(dns_server, random.Random(7))

    orders = {tuple(d.host[0] for d in await resolver.resolve("example.test")) for _ in range(12)}

    assert len(orders) > 1  # RFC 5321 §5.1: spread the load over equal MX hosts


async def test_null_mx_is_permanent(dns_server: DnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")

    with pytest.raises(PermanentDeliveryError) as error:
        await _resolver(dns_server).resolve("nomail.test")

    assert error.value.response.code == 556
    assert error.value.response.enhanced_status == "5.1.10"
    assert "null MX" in error.value.response.message


async def test_nxdomain_is_permanent(dns_server: DnsServer) -> None:
    with pytest.raises(PermanentDeliveryError) as error:
        await _resolver(dns_server).resolve("missing.test")

    assert (error.value.response.code, error.value.response.enhanced_status) == (550, "5.1.2")


async def test_servfail_is_temporary(dns_server: DnsServer) -> None:
    dns_server.add("broken.test", "MX", "10 mx.broken.test.")
    dns_server.servfail("broken.test")

    with pytest.raises(TransientDeliveryError) as error:
        await _resolver(dns_server).resolve("broken.test")

    assert error.value.response.code == 451
    assert error.value.response.enhanced_status == "4.4.3"


async def test_silent_nameserver_times_out_temporarily() -> None:
    loop = asyncio.get_running_loop()
    silent, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0))
    port = silent.get_extra_info("sockname")[1]
    try:
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError, match=r"^451 4\.4\.3 "):
            await MxResolver([("127.0.0.1", port)], timeout=0.3).resolve("example.test")
        assert time.monotonic() - started < 0.8
    finally:
        silent.close()


async def test_no_mx_falls_back_to_the_domain_address(dns_server: DnsServer) -> None:
    dns_server.add("plain.test", "A", "127.0.0.1")

    destinations = await _resolver(dns_server).resolve("plain.test")

    assert destinations == [Destination("plain.test", "127.0.0.1")]
    assert ("plain.test", "MX") in dns_server.queries


async def test_no_mx_and_no_address_is_permanent(dns_server: DnsServer) -> None:
    dns_server.add("textonly.test", "TXT", "v=spf1 -all")

    with pytest.raises(PermanentDeliveryError, match="no MX or address"):
        await _resolver(dns_server).resolve("textonly.test")


async def test_mx_hosts_without_addresses_are_temporary(dns_server: DnsServer) -> None:
    dns_server.add("dangling.test", "MX", "10 gone.dangling.test.")

    with pytest.raises(TransientDeliveryError, match="no address for MX hosts"):
        await _resolver(dns_server).resolve("dangling.test")


async def test_failed_host_lookup_is_skipped(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 bad.example.test.")
    dns_server.add("example.test", "MX", "20 good.example.test.")
    dns_server.add("bad.example.test", "A", "127.0.0.3")
    dns_server.servfail("bad.example.test")
    dns_server.add("good.example.test", "A", "127.0.0.1")

    destinations = await _resolver(dns_server).resolve("example.test")

    assert destinations == [Destination("good.example.test", "127.0.0.1")]


@pytest.mark.parametrize(("literal", "address"), [("[127.0.0.1]", "127.0.0.1"), ("[IPv6:::1]", "::1")])
async def test_address_literal_needs_no_dns(dns_server: DnsServer, literal: str, address: str) -> None:
    destinations = await _resolver(dns_server).resolve(literal)

    assert destinations == [Destination(literal.lower(), address)]
    assert dns_server.queries == []


@pytest.mark.parametrize("domain", ["[not-an-ip]", "a..b.test", ""])
async def test_invalid_domains_are_permanent(dns_server: DnsServer, domain: str) -> None:
    with pytest.raises(PermanentDeliveryError):
        await _resolver(dns_server).resolve(domain)


async def test_deliver_falls_back_to_the_next_mx(
    dns_server: DnsServer, sink: Sink, options: SmtpOptions
) -> None:
    """MX 10 at 127.0.0.2 refuses (nothing listens there on the sink's port); MX 20 delivers."""
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.1")

    result = await deliver_via_mx(
        _resolver(dns_server), "example.test", sink.port,
        mail_from="a@src.test", rcpt_to="b@example.test", message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.data is not None
    assert result.data.ok
    assert result.remote_host == f"mx2.example.test[127.0.0.1]:{sink.port}"
    [received] = await sink.wait_for_messages(1)
    assert received.rcpt_tos == ["b@example.test"]
    assert received.data == MESSAGE


async def _two_mx(dns_server: DnsServer, first: Sink, second: Sink) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", first.host)
    dns_server.add("mx2.example.test", "A", second.host)


@pytest.mark.parametrize(
    ("first_reply", "moves_on"),
    [
        (Reply(mail="421 4.3.2 shutting down"), True),
        (Reply(mail="550 5.7.1 you are blocked"), False),
        (Reply(rcpt="451 4.2.1 greylisted"), False),
        (Reply(rcpt="550 5.1.1 no such user"), False),
    ],
)
async def test_deliver_moves_on_only_before_rcpt_on_4xx(
    dns_server: DnsServer,
    sink_pair: tuple[Sink, Sink],
    options: SmtpOptions,
    first_reply: Reply,
    moves_on: bool,
) -> None:
    first, second = sink_pair
    await _two_mx(dns_server, first, second)
    first.queue(first_reply)

    result = await deliver_via_mx(
        _resolver(dns_server), "example.test", first.port,
        mail_from="a@src.test", rcpt_to="b@example.test", message=MESSAGE, options=options,
    )  # fmt: skip

    assert (second.transactions == 1) is moves_on
    assert (result.data is not None and result.data.ok) is moves_on
    if not moves_on:
        assert result.remote_host == f"mx1.example.test[127.0.0.1]:{first.port}"


async def test_deliver_returns_the_last_temporary_failure(
    dns_server: DnsServer, sink_pair: tuple[Sink, Sink], options: SmtpOptions
) -> None:
    first, second = sink_pair
    await _two_mx(dns_server, first, second)
    first.queue(Reply(mail="451 4.3.0 first busy"))
    second.queue(Reply(mail="452 4.3.1 second full"))

    result = await deliver_via_mx(
        _resolver(dns_server), "example.test", first.port,
        mail_from="a@src.test", rcpt_to="b@example.test", message=MESSAGE, options=options,
    )  # fmt: skip

    assert result.decisive[0] is Stage.MAIL
    assert result.mail is not None
    assert str(result.mail) == "452 4.3.1 second full"


async def test_deliver_turns_resolver_errors_into_results(
    dns_server: DnsServer, options: SmtpOptions
) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    dns_server.add("broken.test", "MX", "10 mx.broken.test.")
    dns_server.servfail("broken.test")
    resolver = _resolver(dns_server)

    null_mx = await deliver_via_mx(
        resolver,
        "nomail.test",
        25,
        mail_from="",
        rcpt_to="b@x.test",
        message=MESSAGE,
        options=options,
    )
    servfail = await deliver_via_mx(
        resolver,
        "broken.test",
        25,
        mail_from="",
        rcpt_to="b@x.test",
        message=MESSAGE,
        options=options,
    )

    assert null_mx.decisive == (Stage.MAIL, null_mx.mail)
    assert null_mx.mail is not None
    assert null_mx.mail.code == 556
    assert servfail.mail is not None
    assert servfail.mail.temporary
