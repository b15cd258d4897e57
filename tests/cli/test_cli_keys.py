"""`mailnode key revoke`, `mailnode signing-key …`, --json on the older commands, and --help."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailnode.cli import cli
from mailnode.platform.keys import verify_api_key
from mailnode.storage.batches import TRACKING_KEYS, VERP_KEYS, BatchStore, SigningKeyring
from tests.cli.seed import NOW, Setup, make_setup, one_line_error

SECRET = bytes(range(32))  # what the tests' Runtime.random_bytes gives


def create_key(setup: Setup) -> str:
    result = setup.run("key", "create", "--name", "billing")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def key_works(setup: Setup, key: str) -> bool:
    async def verify() -> bool:
        store = await setup.store()
        try:
            return await verify_api_key(store, key, NOW) is not None
        finally:
            await store.close()

    return asyncio.run(verify())


def test_key_revoke_stops_the_key(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    key = create_key(setup)
    assert key_works(setup, key)
    result = setup.run("key", "revoke", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"key 1 ({key[:8]}…, billing) deactivated 2026-05-28 20:26:40 UTC\n"
    assert not key_works(setup, key)
    assert [k["state"] for k in setup.json("key", "list")] == ["deactivated"]


def test_key_revoke_json_keeps_the_first_time(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    create_key(setup)
    first = setup.json("key", "revoke", "1")
    assert first["state"] == "deactivated" and first["deactivated_at"] == "2026-05-28T20:26:40Z"
    setup.clock.now += 60
    assert setup.json("key", "revoke", "1")["deactivated_at"] == "2026-05-28T20:26:40Z"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["7"], 1, "no API key 7; `mailnode key list` shows them"),
        (["seven"], 2, "'seven' is not a valid integer"),
    ],
)
def test_key_revoke_refuses_in_one_line(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    one_line_error(make_setup(tmp_path).run("key", "revoke", *args), code, says)


def test_key_create_json(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    made = setup.json("key", "create", "--name", "app", "--expires-in-days", "2")
    assert made["name"] == "app" and made["domain"] is None
    assert made["expires_at"] == "2026-05-30T20:26:40Z"
    assert made["prefix"] == made["key"][:8]
    assert key_works(setup, made["key"])


# -- signing keys ------------------------------------------------------------------------------


def keyring(setup: Setup, purpose: str) -> SigningKeyring:
    """The keys of `purpose` as `mailnode serve` loads them at start."""

    async def load() -> SigningKeyring:
        store = await setup.store()
        try:
            return await BatchStore(store).signing_keyring(
                purpose, lambda: b"first-key-made-by-the-service!!!"
            )
        finally:
            await store.close()

    return asyncio.run(load())


def test_signing_key_rotate_adds_a_key_that_signs_while_the_old_one_verifies(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    before = keyring(setup, TRACKING_KEYS)
    assert before.current_id == "k1"
    result = setup.run("signing-key", "rotate", "tracking")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "new tracking key k2 for open, click and unsubscribe links",
        "it signs once `mailnode serve` reloads (kill -HUP, systemctl reload mailnode) or restarts; "
        "the older keys keep verifying",
    ]
    after = keyring(setup, TRACKING_KEYS)
    assert after.current_id == "k2" and after.current == SECRET
    assert after.keys["k1"] == before.keys["k1"]
    assert keyring(setup, VERP_KEYS).current_id == "k1"  # the other purpose is untouched

    listed = setup.run("signing-key", "list")
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["PURPOSE", "KEY", "CREATED", "STATE"],
        ["tracking", "k1", "2026-05-28", "20:26:40", "UTC", "verifies"],
        ["tracking", "k2", "2026-05-28", "20:26:40", "UTC", "signs"],
        ["verp", "k1", "2026-05-28", "20:26:40", "UTC", "signs"],
    ]
    for shown in (result.stdout, listed.stdout, setup.run("signing-key", "list", "--json").stdout):
        for secret in (SECRET, before.keys["k1"]):
            assert secret.hex() not in shown
            assert base64.b64encode(secret).decode()[:20] not in shown
            assert base64.urlsafe_b64encode(secret).decode()[:20] not in shown


def test_signing_key_json(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    made = setup.json("signing-key", "rotate", "verp")
    assert made == {
        "purpose": "verp",
        "key_id": "k1",
        "state": "signs",
        "created_at": "2026-05-28T20:26:40Z",
        "retired_at": None,
    }
    setup.clock.now += 1
    setup.json("signing-key", "rotate", "verp")
    assert [(k["key_id"], k["state"]) for k in setup.json("signing-key", "list")] == [
        ("k1", "verifies"),
        ("k2", "signs"),
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["rotate", "dkim"], "'dkim' is not one of 'verp', 'tracking'"),
        (["rotate"], "Missing argument '{verp|tracking}'. Choose from: verp, tracking"),
    ],
)
def test_signing_key_refuses_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    setup = make_setup(tmp_path)
    one_line_error(setup.run("signing-key", *args), 2, says)
    assert setup.json("signing-key", "list") == []


# -- --json on the older commands ----------------------------------------------------------------


def test_send_and_capture_show_json(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    sent = setup.json(
        "send", "--from", "me@example.com", "--to", "a@example.org", "--to", "b@example.org",
        "--subject", "Hi", "--text", "Hello",
    )  # fmt: skip
    assert [(item["rcpt_to"], item["status"]) for item in sent] == [
        ("a@example.org", "queued"),
        ("b@example.org", "queued"),
    ]
    assert [item["id"] for item in setup.json("queue", "list")["items"]] == [item["id"] for item in sent]

    async def capture() -> int:
        store = await setup.store()
        try:
            return await store.add_capture(
                sent[0]["id"], "me@example.com", "a@example.org", b"Subject: Hi\r\n\r\n\xff"
            )
        finally:
            await store.close()

    capture_id = asyncio.run(capture())
    shown = setup.json("capture", "show", str(capture_id))
    assert shown["transaction_rest_id"] == sent[0]["id"]
    assert shown["message"] == "Subject: Hi\r\n\r\n\ufffd"
    one_line_error(setup.run("capture", "show", "99"), 1, "no captured message 99")


def test_domain_rotate_dkim_and_delete_json(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    assert setup.run("domain", "create", "example.com", "--dkim-algorithm", "ed25519").exit_code == 0
    rotated = setup.json("domain", "rotate-dkim", "example.com", "--dkim-algorithm", "ed25519")
    assert rotated["domain"] == "example.com" and rotated["algorithm"] == "ed25519"
    assert rotated["publish"]["name"] == f"{rotated['selector']}._domainkey.example.com"
    assert rotated["publish"]["value"].startswith("v=DKIM1; k=ed25519; p=")
    deleted = setup.json("domain", "delete", "example.com", "--yes")
    assert deleted == {"domain": "example.com", "deleted": True, "cancelled": 0}
    assert setup.json("domain", "list") == []


# -- help ----------------------------------------------------------------------------------------


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*path, name))
        if isinstance(command, click.Group):
            found += commands(command, (*path, name))
    return found


@pytest.mark.parametrize("path", commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], env={"MAILNODE_CONFIG": None})
    assert result.exit_code == 0, result.output
    assert "Example: mailnode " + path[0] in result.stdout


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    one_line_error(setup.run("frobnicate"), 2, "mailnode: No such command 'frobnicate'")
    line = one_line_error(setup.run("queue", "list", "--colour"), 2, "No such option '--colour'")
    assert line.startswith("mailnode queue list: ")
