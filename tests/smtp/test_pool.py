"""Connection reuse: a ConnectionPool shared by upstream sessions, against real aiosmtpd sinks."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import AsyncIterator

import pytest
from tests.support.dns_server import DnsServer
from tests.support.sink import DROP, HANG, Reply, Sink, start_sink

from mailnode.core.outcome import AttemptResult, Stage
from mailnode.smtp.client import (
    ConnectionPool,
    EnvelopeInfo,
    SmtpOptions,
    SmtpSession,
    deliver_via_mx,
    send_message,
)
from mailnode.smtp.mx import MxResolver


def _message(n: int) -> bytes:
    return b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: pooled %d\r\n\r\nbody %d\r\n.dot line\r\n" % (
        n,
        n,
    )


async def _send(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool | None, n: int = 0, rcpt_to: str = "b@dst.test"
) -> AttemptResult:
    return await send_message(
        sink.host,
        sink.port,
        mail_from="a@src.test",
        rcpt_to=rcpt_to,
        message=_message(n),
        options=options,
        pool=pool,
    )


def _session(sink: Sink, options: SmtpOptions, pool: ConnectionPool, n: int = 0) -> SmtpSession:
    info = EnvelopeInfo.for_message("a@src.test", "b@dst.test", _message(n))
    return SmtpSession(sink.host, sink.port, info, options, pool=pool)


def _delivered(result: AttemptResult) -> bool:
    return result.data is not None and result.data.code == 250


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    connections = ConnectionPool()
    yield connections
    await connections.close()


async def test_sequential_deliveries_share_one_connection(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool
) -> None:
    results = [await _send(sink, options, pool, n) for n in range(5)]

    received = await sink.wait_for_messages(5)
    assert all(_delivered(result) for result in results)
    assert [message.data for message in received] == [_message(n) for n in range(5)]
    assert (sink.connections, sink.transactions, pool.idle_connections) == (1, 5, 1)
    assert sink.open_connections == 1

    await pool.close()
    await sink.wait_disconnected(timeout=1.0)
    assert pool.idle_connections == 0


async def test_without_a_pool_every_delivery_connects(sink: Sink, options: SmtpOptions) -> None:
    results = [await _send(sink, options, None, n) for n in range(2)]

    await sink.wait_disconnected(timeout=1.0)
    assert all(_delivered(result) for result in results)
    assert sink.connections == 2


@pytest.mark.parametrize(
    ("refusal", "stage"),
    [
        (Reply(mail="550 5.7.1 sender refused"), Stage.MAIL),
        (Reply(rcpt="550 5.1.1 no such user"), Stage.RCPT),
        (Reply(rcpt="451 4.2.1 greylisted"), Stage.RCPT),
        (Reply(data="554 5.6.0 content refused"), Stage.DATA),
    ],
)
async def test_a_refused_transaction_leaves_the_connection_reusable(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool, refusal: Reply, stage: Stage
) -> None:
    sink.queue(refusal)

    refused = await _send(sink, options, pool, 0)
    assert pool.idle_connections == 1
    accepted = await _send(sink, options, pool, 1)

    assert refused.decisive[0] is stage
    assert not refused.decisive[1].ok
    assert _delivered(accepted)
    [received] = await sink.wait_for_messages(1)
    assert received.data == _message(1)
    assert (sink.connections, sink.transactions) == (1, 2)


async def test_a_refused_rcpt_parks_the_connection_before_close(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool
) -> None:
    """A refused envelope lets its connection go at once, so a concurrent delivery can take it."""
    sink.queue(Reply(rcpt="550 5.1.1 no such user"))
    refused = _session(sink, options, pool)

    envelope = await refused.envelope()
    assert pool.idle_connections == 1
    accepted = await _send(sink, options, pool, 1)
    await refused.close()

    assert envelope.decisive[0] is Stage.RCPT
    assert _delivered(accepted)
    assert sink.connections == 1


@pytest.mark.parametrize("mail_reply", [DROP, "421 4.4.2 sink.test idle for too long, closing"])
async def test_a_connection_the_server_ended_is_replaced_not_reported(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool, mail_reply: str
) -> None:
    """The server timed out the idle connection but the client has not noticed yet: MAIL finds out."""
    first = await _send(sink, options, pool, 0)
    sink.queue(Reply(mail=mail_reply))

    second = await _send(sink, options, pool, 1)

    assert _delivered(first)
    assert _delivered(second)
    assert second.mail is not None
    assert second.mail.code == 250
    received = await sink.wait_for_messages(2)
    assert [message.data for message in received] == [_message(0), _message(1)]
    assert (sink.connections, sink.transactions) == (2, 3)


async def test_an_idle_connection_closed_by_the_server_is_skipped(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool
) -> None:
    await _send(sink, options, pool, 0)
    sink.drop_connections()
    await sink.wait_disconnected(timeout=1.0)

    result = await _send(sink, options, pool, 1)

    assert _delivered(result)
    assert sink.connections == 2
    assert len(await sink.wait_for_messages(2)) == 2


async def test_credentials_and_helo_name_keep_connections_apart(options: SmtpOptions) -> None:
    sink = await start_sink(credentials=("user", "secret"))
    pool = ConnectionPool()
    user = dataclasses.replace(options, username="user", password="secret")
    wrong = dataclasses.replace(user, password="wrong")
    other_helo = dataclasses.replace(options, helo_hostname="other.test")
    try:
        results = [await _send(sink, opts, pool, n) for n, opts in enumerate([user, options, user])]
        assert sink.connections == 2
        refused = await _send(sink, wrong, pool, 3)  # the authenticated connection is not its to take
        assert sink.connections == 3
        results += [await _send(sink, opts, pool, n) for n, opts in [(4, other_helo), (5, options)]]
        received = await sink.wait_for_messages(5)
    finally:
        await pool.close()
        await sink.close()

    assert all(_delivered(result) for result in results)
    assert [message.login for message in received] == ["user", None, "user", None, None]
    assert refused.mail is not None
    assert refused.mail.enhanced_status == "4.7.8"
    assert sink.connections == 4


async def test_pool_close_quits_idle_connections(sink: Sink, options: SmtpOptions) -> None:
    pool = ConnectionPool()
    await _send(sink, options, pool, 0)
    await _send(sink, dataclasses.replace(options, helo_hostname="other.test"), pool, 1)
    assert (pool.idle_connections, sink.open_connections) == (2, 2)

    await pool.close()

    assert pool.idle_connections == 0
    await sink.wait_disconnected(timeout=1.0)
    after = await _send(sink, options, pool, 2)  # a closed pool keeps nothing
    assert _delivered(after)
    assert pool.idle_connections == 0
    await sink.wait_disconnected(timeout=1.0)
    assert sink.connections == 3


async def test_idle_connections_per_destination_are_bounded(sink: Sink, options: SmtpOptions) -> None:
    pool = ConnectionPool(max_idle_per_destination=2)
    sessions = [_session(sink, options, pool, n) for n in range(3)]
    try:
        for session in sessions:
            await session.envelope()  # three transactions at once: three connections
        for n, session in enumerate(sessions):
            assert _delivered(await session.data(_message(n)))
            await session.close()

        assert pool.idle_connections == 2
        await sink.wait_open_connections(2, timeout=1.0)
        results = [await _send(sink, options, pool, n) for n in range(3, 5)]
    finally:
        await pool.close()

    assert all(_delivered(result) for result in results)
    assert sink.connections == 3
    await sink.wait_disconnected(timeout=1.0)


async def test_idle_connections_in_total_are_bounded(sink: Sink, options: SmtpOptions) -> None:
    pool = ConnectionPool(max_idle=1)
    other_helo = dataclasses.replace(options, helo_hostname="other.test")
    try:
        await _send(sink, options, pool, 0)
        await _send(sink, other_helo, pool, 1)  # parking it retires the older one
        assert pool.idle_connections == 1
        await sink.wait_open_connections(1, timeout=1.0)
        await _send(sink, options, pool, 2)
        await _send(sink, other_helo, pool, 3)
    finally:
        await pool.close()

    assert sink.connections == 4
    await sink.wait_disconnected(timeout=1.0)


async def test_connections_idle_too_long_are_closed(sink: Sink, options: SmtpOptions) -> None:
    clock = _Clock()
    pool = ConnectionPool(idle_seconds=30.0, clock=clock)
    try:
        await _send(sink, options, pool, 0)
        clock.now += 29.0
        await _send(sink, options, pool, 1)
        assert sink.connections == 1
        clock.now += 30.0
        result = await _send(sink, options, pool, 2)
        assert sink.connections == 2
        await sink.wait_open_connections(1, timeout=1.0)  # the expired one got its QUIT
    finally:
        await pool.close()

    assert _delivered(result)
    assert pool.idle_connections == 0


async def test_a_connection_carries_at_most_max_uses_transactions(sink: Sink, options: SmtpOptions) -> None:
    pool = ConnectionPool(max_uses=2)
    try:
        results = [await _send(sink, options, pool, n) for n in range(5)]
    finally:
        await pool.close()

    assert all(_delivered(result) for result in results)
    assert sink.connections == 3
    await sink.wait_disconnected(timeout=1.0)


async def test_close_without_data_resets_before_parking(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool
) -> None:
    """An abandoned transaction (the message never came) is reset, so the next MAIL is not nested."""
    abandoned = _session(sink, options, pool)
    envelope = await abandoned.envelope()
    await abandoned.close()
    assert (pool.idle_connections, sink.open_connections, sink.open_transactions) == (1, 1, 0)

    result = await _send(sink, options, pool, 1)

    assert envelope.rcpt is not None
    assert envelope.rcpt.ok
    assert _delivered(result)
    [received] = await sink.wait_for_messages(1)
    assert received.data == _message(1)
    assert sink.connections == 1


@pytest.mark.parametrize("step", ["envelope", "data"])
async def test_a_cancelled_transaction_never_returns_its_connection(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool, step: str
) -> None:
    await _send(sink, options, pool, 0)  # a connection to reuse
    sink.queue(Reply(rcpt=HANG) if step == "envelope" else Reply(data=HANG))
    session = _session(sink, options, pool, 1)

    async def transaction() -> None:
        await session.envelope()
        await session.data(_message(1))

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(transaction(), 0.2)
    started = time.monotonic()
    await session.close()

    assert time.monotonic() - started < 1.0  # no RSET or QUIT into the unanswered command

    assert pool.idle_connections == 0
    await sink.wait_disconnected(timeout=1.0)
    result = await _send(sink, options, pool, 2)
    assert _delivered(result)
    received = await sink.wait_for_messages(2)
    assert [message.data for message in received] == [_message(0), _message(2)]
    assert sink.connections == 2


async def test_close_during_data_does_not_park(
    sink: Sink, options: SmtpOptions, pool: ConnectionPool
) -> None:
    sink.queue(Reply(data=HANG))
    session = _session(sink, options, pool)
    await session.envelope()

    async with asyncio.TaskGroup() as group:
        data = group.create_task(session.data(_message(0)))
        await asyncio.sleep(0)  # data() starts and waits for the server's answer
        started = time.monotonic()
        await session.close()
        assert time.monotonic() - started < 1.0  # command_timeout is 2 s: close() did not wait

    assert data.result().decisive[1].temporary
    assert pool.idle_connections == 0
    await sink.wait_disconnected(timeout=1.0)


async def test_reused_tls_connection_stays_encrypted(
    options: SmtpOptions, server_tls: ssl.SSLContext
) -> None:
    sink = await start_sink(tls_context=server_tls)
    pool = ConnectionPool()
    try:
        results = [await _send(sink, options, pool, n) for n in range(3)]
        received = await sink.wait_for_messages(3)
    finally:
        await pool.close()
        await sink.close()

    assert all(_delivered(result) for result in results)
    assert [message.tls for message in received] == [True, True, True]
    assert sink.connections == 1


async def test_lmtp_connections_are_reused(options: SmtpOptions) -> None:
    sink = await start_sink(lmtp=True)
    sink.reply_for("full@dst.test", Reply(data="452 4.2.2 mailbox full"))
    pool = ConnectionPool()
    lmtp = dataclasses.replace(options, lmtp=True)
    try:
        results = [
            await _send(sink, lmtp, pool, n, rcpt) for n, rcpt in enumerate(["b@dst.test", "full@dst.test"])
        ]
        results.append(await _send(sink, lmtp, pool, 2))
        received = await sink.wait_for_messages(2)
    finally:
        await pool.close()
        await sink.close()

    assert [str(result.data) for result in results] == [
        "250 2.0.0 OK",
        "452 4.2.2 mailbox full",
        "250 2.0.0 OK",
    ]
    assert [message.data for message in received] == [_message(0), _message(2)]
    assert sink.connections == 1


async def test_mx_deliveries_reuse_the_connection_to_the_address(
    dns_server: DnsServer, sink: Sink, options: SmtpOptions, pool: ConnectionPool
) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", sink.host)
    resolver = MxResolver([(dns_server.host, dns_server.port)], timeout=1.0)

    results = [
        await deliver_via_mx(
            resolver,
            "example.test",
            sink.port,
            mail_from="a@src.test",
            rcpt_to=f"r{n}@example.test",
            message=_message(n),
            options=options,
            pool=pool,
        )
        for n in range(3)
    ]

    assert all(_delivered(result) for result in results)
    assert {result.remote_host for result in results} == {f"mx1.example.test[127.0.0.1]:{sink.port}"}
    assert len(await sink.wait_for_messages(3)) == 3
    assert sink.connections == 1


def test_pool_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_idle_per_destination"):
        ConnectionPool(max_idle_per_destination=0)
    with pytest.raises(ValueError, match="idle_seconds"):
        ConnectionPool(idle_seconds=0)
