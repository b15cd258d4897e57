"""The DomainStore against real SQLite in tmp_path: domains, DKIM rotation, API keys, templates."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, update

from mailnode.core.dkim_keys import DkimKeyPair, generate_dkim_key
from mailnode.core.outcome import FinalReason, Status
from mailnode.core.transaction import BODY, InlineBlob, NewTransaction
from mailnode.errors import ConflictError, NotFoundError
from mailnode.storage.domains import DomainStore, TemplateRecord, new_template_id
from mailnode.storage.store import Store
from mailnode.storage.tables import batches, blobs, transactions

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # 2027-01-15

    def __call__(self) -> float:
        return self.now


class Listener:
    def __init__(self) -> None:
        self.changes: list[tuple[str, int]] = []

    def changed(self, rest_id: str, version: int) -> None:
        self.changes.append((rest_id, version))

    def queued(self) -> None:
        pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/mailnode.db", clock=Clock())
    yield opened
    await opened.close()


@pytest.fixture
def domains(store: Store) -> DomainStore:
    return DomainStore(store)


@pytest.fixture(scope="module")
def key() -> DkimKeyPair:
    return generate_dkim_key("ed25519")


def clock_of(store: Store) -> Clock:
    assert isinstance(store.clock, Clock)
    return store.clock


async def test_a_domain_is_created_once_with_its_first_key(domains: DomainStore, key: DkimKeyPair) -> None:
    created = await domains.create_domain("example.com", key, "mailnode")
    assert [k.selector for k in created.dkim_keys] == ["mailnode"]
    assert created == await domains.get_domain("example.com")
    assert [d.name for d in await domains.list_domains()] == ["example.com"]
    assert key.private_key_pem.decode() not in repr(created)
    with pytest.raises(ConflictError, match="already exists"):
        await domains.create_domain("example.com", key, "mailnode")
    assert await domains.get_domain("example.org") is None


async def test_rotation_keeps_the_old_key_and_the_newest_signs(
    store: Store, domains: DomainStore, key: DkimKeyPair
) -> None:
    changed: list[str] = []
    domains.on_keys_changed(changed.append)
    await domains.create_domain("example.com", key, "mailnode")
    clock_of(store).now += DAY
    newer = generate_dkim_key("ed25519")
    added = await domains.add_dkim_key("example.com", newer, "mailnode")
    assert added.selector == "mailnode-20270116"
    domain = await domains.get_domain("example.com")
    assert domain is not None
    assert [k.selector for k in domain.dkim_keys] == ["mailnode", "mailnode-20270116"]
    assert await domains.signing_key("example.com") == added == domain.signing_key
    assert (await domains.add_dkim_key("example.com", newer, "mailnode")).selector == "mailnode-20270116-2"

    await domains.remove_dkim_key("example.com", "mailnode")
    await domains.remove_dkim_key("example.com", "mailnode-20270116-2")
    with pytest.raises(ConflictError, match="last DKIM key"):
        await domains.remove_dkim_key("example.com", "mailnode-20270116")
    with pytest.raises(NotFoundError, match="no DKIM key with selector 'mailnode'"):
        await domains.remove_dkim_key("example.com", "mailnode")
    assert (await domains.signing_key("example.com")) == added
    assert await domains.signing_key("example.org") is None
    assert changed == ["example.com"] * 4  # two rotations, two removals; not the refused ones
    await domains.delete_domain("example.com")
    assert changed[-1] == "example.com" and len(changed) == 5


async def test_api_keys_of_a_domain_newest_first_and_deactivation_is_idempotent(
    store: Store, domains: DomainStore, key: DkimKeyPair
) -> None:
    await domains.create_domain("example.com", key, "mailnode")
    with pytest.raises(NotFoundError, match=r"no domain 'example\.org'"):
        await domains.create_api_key(
            "example.org", name="x", prefix="mk_abcde", key_hash="0" * 64, expires_at=None
        )
    first = await domains.create_api_key(
        "example.com", name="one", prefix="mk_aaaaa", key_hash="1" * 64, expires_at=None
    )
    second = await domains.create_api_key(
        "example.com", name="two", prefix="mk_bbbbb", key_hash="2" * 64, expires_at=None
    )
    assert await domains.list_api_keys("example.com") == [second, first]
    assert await store.find_api_key("1" * 64) == first

    deactivated = await domains.deactivate_api_key("example.com", first.id)
    assert deactivated.deactivated_at == clock_of(store).now
    clock_of(store).now += 60
    assert await domains.deactivate_api_key("example.com", first.id) == deactivated
    assert await domains.get_api_key("example.com", first.id) == deactivated
    # A key is found only under its own domain.
    await domains.create_domain("example.org", key, "mailnode")
    assert await domains.get_api_key("example.org", first.id) is None
    with pytest.raises(NotFoundError):
        await domains.deactivate_api_key("example.org", second.id)


async def test_templates_page_with_a_total_and_an_edit_replaces_them(
    store: Store, domains: DomainStore, key: DkimKeyPair
) -> None:
    await domains.create_domain("example.com", key, "mailnode")
    ids = [new_template_id(lambda n, i=i: bytes([i]) * n) for i in range(3)]
    for number, template_id in enumerate(ids):
        await domains.create_template(
            "example.com", template_id, name=f"t{number}", subject="Hi {{ name }}", html="<p>x</p>", text=None
        )
    page, total = await domains.list_templates("example.com", limit=2, offset=1)
    assert ([t.name for t in page], total) == (["t1", "t2"], 3)

    clock_of(store).now += 5

    def rename(current: TemplateRecord) -> TemplateRecord:
        return replace(current, name="renamed", text="plain")

    edited = await domains.update_template("example.com", ids[0], rename)
    assert (edited.name, edited.html, edited.text) == ("renamed", "<p>x</p>", "plain")
    assert edited.updated_at == edited.created_at + 5
    assert await domains.get_template("example.com", ids[0]) == edited

    await domains.create_domain("example.org", key, "mailnode")
    assert await domains.get_template("example.org", ids[0]) is None
    with pytest.raises(NotFoundError):
        await domains.delete_template("example.org", ids[0])
    await domains.delete_template("example.com", ids[0])
    assert await domains.get_template("example.com", ids[0]) is None


async def test_an_edit_that_raises_changes_nothing(domains: DomainStore, key: DkimKeyPair) -> None:
    await domains.create_domain("example.com", key, "mailnode")
    template = await domains.create_template(
        "example.com", "tpl_x", name="t", subject="s", html="<p>x</p>", text=None
    )

    def refuse(current: TemplateRecord) -> TemplateRecord:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await domains.update_template("example.com", "tpl_x", refuse)
    assert await domains.get_template("example.com", "tpl_x") == template


async def test_deleting_a_domain_cancels_its_unsent_deliveries_and_removes_what_it_owned(
    tmp_path: Path, store: Store, domains: DomainStore, key: DkimKeyPair
) -> None:
    listener = Listener()
    store.subscribe(listener)
    await domains.create_domain("example.com", key, "mailnode")
    await domains.create_domain("example.org", key, "mailnode")
    await domains.create_api_key(
        "example.com", name="k", prefix="mk_aaaaa", key_hash="1" * 64, expires_at=None
    )
    await domains.create_template("example.com", "tpl_x", name="t", subject="s", html=None, text="t")
    queued, delivered, other = [
        await batch_delivery(store, d) for d in ("example.com",) * 2 + ("example.org",)
    ]
    await store.write(lambda conn: set_status(conn, delivered, Status.DELIVERED))

    assert await domains.delete_domain("example.com") == 1

    assert await domains.get_domain("example.com") is None
    with sqlite3.connect(tmp_path / "mailnode.db") as db:
        assert db.execute("SELECT count(*) FROM api_keys WHERE domain = 'example.com'").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM templates").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM dkim_keys").fetchone() == (1,)  # example.org's
    after = {rest_id: await store.get_transaction(rest_id) for rest_id in (queued, delivered, other)}
    cancelled = after[queued]
    assert cancelled is not None
    assert (cancelled.status, cancelled.cancelled, cancelled.final_attempt_reason) == (
        Status.CANCELLED,
        True,
        FinalReason.CANCELLED,
    )
    assert [tx.status for tx in (after[delivered], after[other]) if tx] == [Status.DELIVERED, Status.QUEUED]
    assert (queued, cancelled.version) in listener.changes
    with pytest.raises(NotFoundError):
        await domains.delete_domain("example.com")


async def batch_delivery(store: Store, domain: str) -> str:
    """A queued delivery of a new batch of `domain` (BatchStore's job; written by hand here)."""
    record = await store.create_transaction(
        NewTransaction(
            sender="platform",
            mail_from="bounce@bounces.example.net",
            rcpt_to="someone@example.net",
            retry=True,
            bounce=False,
            protocol="HTTP",
            blobs=(InlineBlob(BODY, b"Subject: x\r\n\r\nx\r\n"),),
        )
    )
    await store.write(lambda conn: attach_to_new_batch(conn, record.id, domain))
    return record.rest_id


def attach_to_new_batch(conn: Connection, tx_id: int, domain: str) -> None:
    blob_id = conn.execute(
        insert(blobs).values(stored_length=0, total_length=0, created_at=0)
    ).inserted_primary_key
    batch = conn.execute(
        insert(batches).values(
            public_id=f"b{tx_id}",
            domain=domain,
            content_blob_id=blob_id[0] if blob_id else None,
            recipients=1,
            rejected=[],
            tags=[],
            metadata={},
            created_at=0,
        )
    ).inserted_primary_key
    assert batch is not None
    conn.execute(update(transactions).where(transactions.c.id == tx_id).values(batch_id=batch[0]))


def set_status(conn: Connection, rest_id: str, status: Status) -> None:
    conn.execute(update(transactions).where(transactions.c.rest_id == rest_id).values(status=status.value))
