"""Config validation: every bad key or value is refused with its path and the reason."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from mailnode.config import Config, DeliveryConfig, HostPort, config_from_dict, load_config
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


def test_every_problem_of_a_file_is_named_at_once(tmp_path: Path) -> None:
    """Must-show 2 of issue 6: a typo'd key, a wrong type and a port out of range, all named."""
    path = tmp_path / "mailnode.toml"
    path.write_text(
        '[delivery]\nconcurency = 4\nport = "25"\n[http]\nlisten = "127.0.0.1:70000"\n'
        '[[ingress.routes]]\ndomain = "a.example"\nendpoint = "smtp:x"\n'
        '[[ingress.routes]]\ndomain = "b example"\n'
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert error.value.problems == (
        "delivery.concurency: unknown key (known keys: " + _known(DeliveryConfig) + ")",
        "delivery.port: expected int, got a string",
        "http.listen: port 70000 is out of range 0-65535",
        "ingress.routes[0].endpoint: expected host:port, got 'x' (expected smtp:host:port; "
        "unix sockets are not supported yet)",
        'ingress.routes[1].domain: expected a domain ("example.com"), a wildcard ("*.example.com"), or "*"',
    )


def _known(cls: type) -> str:
    return ", ".join(sorted(f.name for f in dataclasses.fields(cls)))


TOKEN = "t" * 32


@pytest.mark.parametrize(
    ("toml", "environ", "expected"),
    [
        (f'[admin]\ntoken = "{TOKEN}"\n', {}, TOKEN),
        ("", {"MAILNODE_ADMIN_TOKEN": TOKEN}, TOKEN),
        ('[admin]\ntoken_file = "{dir}/token"\n', {}, TOKEN),
        ("", {}, ""),
    ],
    ids=["in the file", "from the environment", "from token_file", "none"],
)
def test_the_admin_token_comes_from_one_of_three_places(
    tmp_path: Path, toml: str, environ: dict[str, str], expected: str
) -> None:
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    path = tmp_path / "mailnode.toml"
    path.write_text(toml.format(dir=tmp_path))
    assert load_config(path, environ=environ).admin_token() == expected


def test_a_smarthost_password_comes_from_its_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret\n")
    path = tmp_path / "mailnode.toml"
    path.write_text(f'[delivery]\nsmarthost_password_file = "{tmp_path}/password"\n')
    assert load_config(path, environ={}).delivery.smarthost_password == "s3cret"
    path.write_text("")
    environ = {"MAILNODE_DELIVERY_SMARTHOST_PASSWORD": "from-env"}
    assert load_config(path, environ=environ).delivery.smarthost_password == "from-env"
    assert load_config(None, environ=environ).delivery.smarthost_password == "from-env"


@pytest.mark.parametrize(
    ("toml", "environ", "problem"),
    [
        (
            f'[admin]\ntoken = "{TOKEN}"\n',
            {"MAILNODE_ADMIN_TOKEN": TOKEN},
            "admin.token: given in admin.token and $MAILNODE_ADMIN_TOKEN; keep one",
        ),
        (
            f'[admin]\ntoken = "{TOKEN}"\ntoken_file = "{{dir}}/token"\n',
            {},
            "admin.token: given in admin.token and admin.token_file; keep one",
        ),
        ('[admin]\ntoken_file = "{dir}/missing"\n', {}, "admin.token_file: cannot read {dir}/missing: "),
        ('[admin]\ntoken_file = "{dir}/empty"\n', {}, "admin.token_file: {dir}/empty is empty"),
        ("", {"MAILNODE_ADMIN_TOKEN": "short"}, "admin.token: too short to be secret"),
    ],
)
def test_a_secret_given_twice_or_unreadable_is_refused(
    tmp_path: Path, toml: str, environ: dict[str, str], problem: str
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "empty").write_text("\n")
    path = tmp_path / "mailnode.toml"
    path.write_text(toml.format(dir=tmp_path))
    with pytest.raises(ConfigError) as error:
        load_config(path, environ=environ)
    assert len(error.value.problems) == 1
    assert error.value.problems[0].startswith(problem.format(dir=tmp_path))


def test_tests_building_configs_do_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILNODE_ADMIN_TOKEN", TOKEN)
    assert config_from_dict({}).admin_token() == ""
    assert load_config(None).admin_token() == TOKEN  # the process does


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert config_from_dict({"http": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8", "::1"]}})
    with pytest.raises(
        ConfigError, match=r"http.trusted_proxies: 'proxy.lan' is not an IP address or network"
    ):
        config_from_dict({"http": {"trusted_proxies": ["proxy.lan"]}})
