"""Config validation: every bad key or value is refused with its path and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mailnode.config import Config, HostPort, config_from_dict, load_config
from mailnode.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_annotated_reference_file_is_exactly_the_defaults() -> None:
    with (ROOT / "etc" / "mailnode.toml").open("rb") as handle:
        assert config_from_dict(tomllib.load(handle)) == Config()


def test_no_file_means_the_developer_default() -> None:
    config = load_config(None)
    assert config.delivery.mode == "capture"
    assert config.http.listen == HostPort("127.0.0.1", 8025)
    assert config.storage.url == "sqlite+aiosqlite:///./mailnode-data/mailnode.db"


def test_values_are_converted_and_profiles_merge_with_the_defaults() -> None:
    config = config_from_dict(
        {
            "delivery": {"mode": "smarthost", "smarthost": "relay.example:2525", "concurrency": 4},
            "dns": {"nameservers": ["127.0.0.1:5353", "[::1]:53"]},
            "retry": {"initial_delay_seconds": 5},
            "senders": {"alerts": {"retry": False}, "api": {"bounce": False}},
        }
    )
    assert config.delivery.smarthost == HostPort("relay.example", 2525)
    assert config.dns.nameservers == (HostPort("127.0.0.1", 5353), HostPort("::1", 53))
    assert config.retry.initial_delay_seconds == 5.0
    assert set(config.senders) == {"api", "submission", "ingress", "bounce", "copy", "platform", "alerts"}
    assert config.retry_policy("alerts") is None
    assert config.senders["api"].bounce is False
    assert config.retry_policy("api") is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"delivry": {}}, "delivry: unknown key"),
        ({"delivery": {"concurency": 3}}, "delivery.concurency: unknown key"),
        ({"delivery": {"port": "25"}}, "delivery.port: expected int, got a string"),
        ({"delivery": {"port": 70000}}, "delivery.port: 1-65535"),
        ({"delivery": {"concurrency": 0}}, "delivery.concurrency: must be at least 1"),
        ({"delivery": {"mode": "pigeon"}}, "delivery.mode: must be one of 'mx', 'smarthost', 'capture'"),
        ({"delivery": {"mode": "smarthost"}}, "delivery.smarthost: required when"),
        ({"http": {"listen": "127.0.0.1:99999"}}, "http.listen: port 99999 is out of range"),
        ({"http": {"listen": "8025"}}, "http.listen: expected host:port"),
        ({"dns": {"nameservers": "127.0.0.1"}}, "dns.nameservers: expected a list"),
        ({"dns": {"nameservers": [53]}}, "dns.nameservers[0]: expected str, got an integer"),
        ({"retry": {"backoff_factor": 0.5}}, "retry.backoff_factor: must be at least 1"),
        ({"retry": {"max_attempts": True}}, "retry.max_attempts: expected int, got a boolean"),
        ({"senders": {"api": {"filters": ["dkim", "spam"]}}}, "senders.api.filters: unknown filter 'spam'"),
        ({"senders": {"api": {"filters": ["router", "dkim"]}}}, "'router' must be the last filter"),
        ({"senders": {"api": 3}}, "senders.api: expected a table"),
        ({"dkim": {"example.com": {"selector": "s1"}}}, "dkim.example.com:"),
        ({"dkim": {"example.com": {"selector": "s", "key_file": "/nonexistent"}}}, "no such file"),
        ({"storage": {"sqlite_synchronous": "off"}}, "storage.sqlite_synchronous: must be one of"),
        (
            {"smtp": {"auth_throttle": {"ban_after_failures": 0}}},
            "smtp.auth_throttle.ban_after_failures: must be at least 1",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_reason(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[delivery\nmode = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
