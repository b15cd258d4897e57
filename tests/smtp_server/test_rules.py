"""The listeners' pure rules: the AUTH throttle's table, sender domains per key, path splitting."""

from __future__ import annotations

import pytest

from mailnode.core.address import sender_domain_allowed
from mailnode.smtp.auth import AuthThrottle, ThrottleSettings
from mailnode.smtp.server import split_path

SETTINGS = ThrottleSettings(
    first_delay_seconds=0.5,
    max_delay_seconds=3.0,
    ban_after_failures=4,
    ban_seconds=60.0,
    forget_after_seconds=100.0,
    max_clients=2,
)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_maximum_then_the_client_is_banned_for_a_while() -> None:
    clock = Clock()
    throttle = AuthThrottle(SETTINGS, clock)

    delays = [throttle.failed("192.0.2.1") for _ in range(4)]

    assert delays == [0.5, 1.0, 2.0, 3.0]
    assert throttle.banned("192.0.2.1")
    assert not throttle.banned("192.0.2.2")
    clock.now += 59
    assert throttle.banned("192.0.2.1")
    clock.now += 1
    assert not throttle.banned("192.0.2.1")


def test_a_quiet_client_starts_again_from_the_first_delay() -> None:
    clock = Clock()
    throttle = AuthThrottle(SETTINGS, clock)
    throttle.failed("192.0.2.1")
    throttle.failed("192.0.2.1")

    clock.now += SETTINGS.forget_after_seconds

    assert throttle.failed("192.0.2.1") == SETTINGS.first_delay_seconds


def test_the_table_is_bounded_and_forgets_the_longest_idle_client_first() -> None:
    clock = Clock()
    throttle = AuthThrottle(SETTINGS, clock)
    throttle.failed("192.0.2.1")
    throttle.failed("192.0.2.2")
    throttle.failed("192.0.2.1")

    throttle.failed("192.0.2.3")  # over max_clients = 2: 192.0.2.2 goes

    assert throttle.failed("192.0.2.1") == 2.0
    assert throttle.failed("192.0.2.2") == SETTINGS.first_delay_seconds


@pytest.mark.parametrize(
    ("key_domain", "sender_domain", "allowed"),
    [
        (None, "anything.test", True),
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("mail.example.com", "example.com", True),
        ("a.b.example.com", "example.com", True),
        ("example.com", "mail.example.com", False),
        ("example.com", "com", False),
        ("example.com", "badexample.com", False),
        ("mail.example.com", "ample.com", False),
        ("bücher.example", "xn--bcher-kva.example", True),
        ("example.com", "bad..domain", False),
    ],
)
def test_sender_domains_a_key_may_use(key_domain: str | None, sender_domain: str, allowed: bool) -> None:
    assert sender_domain_allowed(key_domain, sender_domain) is allowed


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("<a@b.test>", ("a@b.test", "")),
        ("<a@b.test> SIZE=9 BODY=8BITMIME", ("a@b.test", "SIZE=9 BODY=8BITMIME")),
        ("  <a@b.test>  ", ("a@b.test", "")),
        ("<>", ("<>", "")),
        ("<> SIZE=9", ("<>", "SIZE=9")),
        ("a@b.test SIZE=9", ("a@b.test", "SIZE=9")),
        ("<@relay.test:a@b.test>", ("@relay.test:a@b.test", "")),
        ('<"a>b"@x.test>', ('"a>b"@x.test', "")),
        ('<"a\\"> "@x.test>', ('"a\\"> "@x.test', "")),
        ("<a@b.test", (None, None)),
    ],
)
def test_split_path_keeps_the_path_as_written(argument: str, expected: tuple[str | None, str | None]) -> None:
    assert split_path(argument) == expected
