"""What a reload (SIGHUP) applies at once and what waits for a restart, as a pure function."""

from __future__ import annotations

from mailnode.config import Config, HostPort, IngressRoute, config_from_dict
from mailnode.reload import LIVE, changed_keys, plan_reload

RUNNING = config_from_dict(
    {"ingress": {"routes": [{"domain": "a.test"}]}, "http": {"listen": "127.0.0.1:8025"}}
)


def test_an_unchanged_file_changes_nothing() -> None:
    result = plan_reload(RUNNING, RUNNING)
    assert (result.applied, result.needs_restart) == ((), ())
    assert result.config is RUNNING
    assert result.summary() == "config reloaded: nothing changed"


def test_routes_limits_and_the_log_level_apply_and_listeners_wait_for_a_restart() -> None:
    wanted = config_from_dict(
        {
            "log_level": "debug",
            "ingress": {"routes": [{"domain": "a.test"}, {"domain": "b.test"}]},
            "smtp": {
                "max_recipients": 5,
                "submission": {"listen": "127.0.0.1:2588", "rcpt_timeout_seconds": 1},
            },
            "http": {"listen": "127.0.0.1:9000"},
            "retry": {"max_attempts": 3},
        }
    )
    result = plan_reload(RUNNING, wanted)
    assert result.applied == (
        "log_level",
        "retry.max_attempts",
        "smtp.max_recipients",
        "smtp.submission.rcpt_timeout_seconds",
        "ingress.routes",
    )
    assert result.needs_restart == ("http.listen", "smtp.submission.listen")
    config = result.config
    assert config.log_level == "debug"
    assert config.ingress.routes == (IngressRoute("a.test"), IngressRoute("b.test"))
    assert config.smtp.max_recipients == 5 and config.smtp.submission.rcpt_timeout_seconds == 1.0
    assert config.retry.max_attempts == 3
    # What needs a restart keeps running as it was.
    assert config.http.listen == HostPort("127.0.0.1", 8025)
    assert config.smtp.submission.listen == RUNNING.smtp.submission.listen
    assert result.summary() == (
        "config reloaded: applied=log_level,retry.max_attempts,smtp.max_recipients,"
        "smtp.submission.rcpt_timeout_seconds,ingress.routes needs_restart=http.listen,smtp.submission.listen"
    )


def test_a_changed_secret_is_named_never_shown() -> None:
    secret = "s" * 40
    result = plan_reload(RUNNING, config_from_dict({"admin": {"token": secret}}))
    assert "admin.token" in result.needs_restart
    assert secret not in result.summary()
    assert result.config.admin_token() == ""


def test_every_live_key_names_a_real_setting() -> None:
    """A typo in LIVE would silently make a key restart-only; each must walk to a field."""
    for key in LIVE:
        value: object = Config()
        for name in key.split("."):
            value = getattr(value, name)


def test_lists_and_maps_of_entries_compare_whole() -> None:
    wanted = config_from_dict({"senders": {"alerts": {"retry": False}}})
    assert list(changed_keys(Config(), wanted)) == ["senders"]
