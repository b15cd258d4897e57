"""Domains of the sending platform, their DKIM keys, API keys and templates.

Names given to these methods are canonical (`core.dkim_keys.canonical_domain`); the API and the
CLI canonicalise what people type before they ask.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from sqlalchemy import Connection, Integer, bindparam, delete, func, select, update

from mailnode.core.dkim_keys import DkimAlgorithm, DkimKeyPair, new_selector
from mailnode.core.outcome import FinalReason, Status
from mailnode.core.tracking import TrackingMode, TrackingPolicy
from mailnode.core.transaction import TransactionRecord
from mailnode.errors import ConflictError, NotFoundError
from mailnode.storage.store import LOAD_TRANSACTIONS, ApiKeyRecord, Store, inserted_id, load_rows
from mailnode.storage.tables import api_keys, batches, dkim_keys, domains, templates, transactions, webhooks

TEMPLATE_ID_PREFIX = "tpl_"
_TEMPLATE_ID_BYTES = 16


@dataclass(frozen=True, slots=True)
class DkimKeyRecord:
    """One DKIM key of a domain; the private half stays out of reprs and logs."""

    selector: str
    algorithm: DkimAlgorithm
    public_key_b64: str
    created_at: float
    private_key_pem: bytes = field(repr=False)


OFF = TrackingPolicy(TrackingMode.OFF, TrackingMode.OFF)


@dataclass(frozen=True, slots=True)
class DomainRecord:
    """A sending domain and its DKIM keys, oldest first: the last one signs."""

    name: str
    created_at: float
    dkim_keys: tuple[DkimKeyRecord, ...]
    tracking: TrackingPolicy = OFF

    @property
    def signing_key(self) -> DkimKeyRecord | None:
        return self.dkim_keys[-1] if self.dkim_keys else None


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """A stored template; `id` is its public id (tpl_…)."""

    id: str
    domain: str
    name: str
    subject: str
    html: str | None
    text: str | None
    created_at: float
    updated_at: float


TemplateEdit = Callable[[TemplateRecord], TemplateRecord]


def new_template_id(random_bytes: Callable[[int], bytes]) -> str:
    """A public template id: `tpl_` and 128 random bits, URL-safe."""
    token = base64.urlsafe_b64encode(random_bytes(_TEMPLATE_ID_BYTES)).rstrip(b"=").decode()
    return TEMPLATE_ID_PREFIX + token


class DomainStore:
    """Reads and writes of domains and what belongs to them; each write is one transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.clock = store.clock
        self._key_listeners: list[Callable[[str], None]] = []

    def on_keys_changed(self, listener: Callable[[str], None]) -> None:
        """Call `listener(domain)` after each commit that changes the keys of a domain.

        Caches of signing keys (platform/domain_keys.py) drop the domain's entry at once.
        """
        self._key_listeners.append(listener)

    def _keys_changed(self, domain: str) -> None:
        for listener in self._key_listeners:
            listener(domain)

    # -- domains ---------------------------------------------------------------------------

    async def create_domain(
        self, name: str, key: DkimKeyPair, base_selector: str, tracking: TrackingPolicy = OFF
    ) -> DomainRecord:
        """Store a new domain with its first DKIM key; ConflictError if it exists."""
        now = self.clock()
        return await self._store.write(
            lambda conn: _create_domain(conn, name, key, base_selector, tracking, now)
        )

    async def set_tracking(self, name: str, tracking: TrackingPolicy) -> DomainRecord:
        """Change the domain's tracking ceiling; queued deliveries keep the policy they were sent with."""
        return await self._store.write(lambda conn: _set_tracking(conn, name, tracking))

    async def get_domain(self, name: str) -> DomainRecord | None:
        return await self._store.read(lambda conn: _get_domain(conn, name))

    async def list_domains(self) -> list[DomainRecord]:
        """Every domain, by name."""
        return await self._store.read(_list_domains)

    async def delete_domain(self, name: str) -> int:
        """Delete a domain, its keys and templates; cancel its unsent deliveries (their count)."""
        now = self.clock()

        def committed(records: list[TransactionRecord]) -> None:
            self._store.notify(records, queued=False)
            self._keys_changed(name)

        cancelled = await self._store.write(lambda conn: _delete_domain(conn, name, now), on_commit=committed)
        return len(cancelled)

    # -- DKIM keys -------------------------------------------------------------------------

    async def add_dkim_key(self, domain: str, key: DkimKeyPair, base_selector: str) -> DkimKeyRecord:
        """Rotation: a new key under a new selector signs from now on; older keys stay."""
        now = self.clock()
        return await self._store.write(
            lambda conn: _add_dkim_key(conn, domain, key, base_selector, now),
            on_commit=lambda _: self._keys_changed(domain),
        )

    async def remove_dkim_key(self, domain: str, selector: str) -> None:
        """Retire a key; refused for the domain's last one, which mail is signed with."""
        await self._store.write(
            lambda conn: _remove_dkim_key(conn, domain, selector),
            on_commit=lambda _: self._keys_changed(domain),
        )

    async def signing_key(self, domain: str) -> DkimKeyRecord | None:
        """The newest key of `domain` (the one to sign with), or None: one indexed query."""
        row = await self._store.read(lambda conn: conn.execute(_SIGNING_KEY, {"name": domain}).first())
        return None if row is None else _dkim_record(row)

    # -- API keys --------------------------------------------------------------------------

    async def create_api_key(
        self, domain: str, *, name: str, prefix: str, key_hash: str, expires_at: float | None
    ) -> ApiKeyRecord:
        """Store a key of `domain` by its hash and prefix (the plaintext is never stored)."""
        values = dict(
            name=name,
            domain=domain,
            prefix=prefix,
            key_hash=key_hash,
            created_at=self.clock(),
            expires_at=expires_at,
        )
        return await self._store.write(lambda conn: _create_api_key(conn, values))

    async def list_api_keys(self, domain: str) -> list[ApiKeyRecord]:
        """The keys of `domain`, newest first."""
        return await self._store.read(lambda conn: _list_api_keys(conn, domain))

    async def get_api_key(self, domain: str, key_id: int) -> ApiKeyRecord | None:
        row = await self._store.read(
            lambda conn: conn.execute(_API_KEY, {"name": domain, "key_id": key_id}).first()
        )
        return None if row is None else _api_key_record(row)

    async def deactivate_api_key(self, domain: str, key_id: int) -> ApiKeyRecord:
        """Deactivate for good; a second call returns the key as the first one left it."""
        now = self.clock()
        return await self._store.write(lambda conn: _deactivate_api_key(conn, domain, key_id, now))

    # -- templates -------------------------------------------------------------------------

    async def create_template(
        self,
        domain: str,
        template_id: str,
        *,
        name: str,
        subject: str,
        html: str | None,
        text: str | None,
    ) -> TemplateRecord:
        """Store a template under a public id from `new_template_id`."""
        now = self.clock()
        record = TemplateRecord(template_id, domain, name, subject, html, text, now, now)
        return await self._store.write(lambda conn: _create_template(conn, record))

    async def get_template(self, domain: str, template_id: str) -> TemplateRecord | None:
        row = await self._store.read(
            lambda conn: conn.execute(_TEMPLATE, {"name": domain, "public_id": template_id}).first()
        )
        return None if row is None else _template_record(row)

    async def list_templates(
        self, domain: str, *, limit: int, offset: int
    ) -> tuple[list[TemplateRecord], int]:
        """A page of the domain's templates (oldest first) and how many it has in all."""
        return await self._store.read(lambda conn: _list_templates(conn, domain, limit, offset))

    async def update_template(self, domain: str, template_id: str, edit: TemplateEdit) -> TemplateRecord:
        """Replace a template by `edit(current)` in one transaction, so no edit is lost.

        `edit` may raise to refuse the change; it runs in a database thread and may run twice.
        """
        now = self.clock()
        return await self._store.write(lambda conn: _update_template(conn, domain, template_id, edit, now))

    async def delete_template(self, domain: str, template_id: str) -> None:
        await self._store.write(lambda conn: _delete_template(conn, domain, template_id))


# -- statements ------------------------------------------------------------------------------

_DOMAIN_ID = select(domains.c.id).where(domains.c.name == bindparam("name"))
_DOMAIN_COLUMNS = (
    domains.c.id,
    domains.c.name,
    domains.c.created_at,
    domains.c.tracking_opens,
    domains.c.tracking_links,
)
_DOMAIN = select(*_DOMAIN_COLUMNS).where(domains.c.name == bindparam("name"))
_KEY_COLUMNS = (
    dkim_keys.c.selector,
    dkim_keys.c.algorithm,
    dkim_keys.c.public_key,
    dkim_keys.c.created_at,
    dkim_keys.c.private_key,
)
_KEYS_OF = (
    select(*_KEY_COLUMNS).where(dkim_keys.c.domain_id == bindparam("domain_id")).order_by(dkim_keys.c.id)
)
_ALL_KEYS = select(dkim_keys.c.domain_id, *_KEY_COLUMNS).order_by(dkim_keys.c.id)
_ALL_DOMAINS = select(*_DOMAIN_COLUMNS).order_by(domains.c.name)
_SIGNING_KEY = (
    select(*_KEY_COLUMNS)
    .join(domains, domains.c.id == dkim_keys.c.domain_id)
    .where(domains.c.name == bindparam("name"))
    .order_by(dkim_keys.c.id.desc())
    .limit(1)
)
_INSERT_DOMAIN = domains.insert()
_INSERT_DKIM_KEY = dkim_keys.insert()
_DELETE_DKIM_KEY = delete(dkim_keys).where(
    dkim_keys.c.domain_id == bindparam("domain_id"), dkim_keys.c.selector == bindparam("selector")
)
_DELETE_DOMAIN = delete(domains).where(domains.c.id == bindparam("domain_id"))
_DELETE_DOMAIN_KEYS = delete(api_keys).where(api_keys.c.domain == bindparam("name"))
# A domain's deliveries that have not been sent: queued (due, waiting for a retry or a
# scheduled time) or still waiting for their body.
_UNSENT_OF_DOMAIN = select(transactions.c.id).where(
    transactions.c.batch_id.in_(select(batches.c.id).where(batches.c.domain == bindparam("name"))),
    transactions.c.status.in_([Status.QUEUED.value, Status.AWAITING_BODY.value]),
)
# The columns Store._cancel sets, for many deliveries at once.
_CANCEL = (
    update(transactions)
    .where(transactions.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=Status.CANCELLED.value,
        cancelled=True,
        final_attempt_reason=FinalReason.CANCELLED.value,
        finished_at=bindparam("now"),
        next_attempt_at=None,
        updated_at=bindparam("now"),
        version=transactions.c.version + 1,
    )
)
_LOAD_BY_IDS = LOAD_TRANSACTIONS.where(transactions.c.id.in_(bindparam("ids", expanding=True)))

_API_KEYS_OF = select(api_keys).where(api_keys.c.domain == bindparam("name")).order_by(api_keys.c.id.desc())
_API_KEY = select(api_keys).where(
    api_keys.c.domain == bindparam("name"), api_keys.c.id == bindparam("key_id")
)
_INSERT_API_KEY = api_keys.insert()
_DEACTIVATE = (
    update(api_keys)
    .where(
        api_keys.c.domain == bindparam("domain_name"),
        api_keys.c.id == bindparam("key_id"),
        api_keys.c.deactivated_at.is_(None),
    )
    .values(deactivated_at=bindparam("now"))
)

_TEMPLATE_COLUMNS = (
    templates.c.public_id,
    domains.c.name.label("domain"),
    templates.c.name,
    templates.c.subject,
    templates.c.html,
    templates.c.text,
    templates.c.created_at,
    templates.c.updated_at,
)
_TEMPLATES = select(*_TEMPLATE_COLUMNS).join(domains, domains.c.id == templates.c.domain_id)
_TEMPLATE = _TEMPLATES.where(
    domains.c.name == bindparam("name"), templates.c.public_id == bindparam("public_id")
)
_TEMPLATE_PAGE = (
    _TEMPLATES.where(domains.c.name == bindparam("name"))
    .order_by(templates.c.id)
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
)
_COUNT_TEMPLATES = select(func.count()).where(templates.c.domain_id == bindparam("domain_id"))
_INSERT_TEMPLATE = templates.insert()
# Bind names differ from the columns, which an UPDATE's SET clause takes as its own.
_UPDATE_TEMPLATE = update(templates).where(
    templates.c.domain_id == bindparam("of_domain"), templates.c.public_id == bindparam("of_template")
)
_DELETE_TEMPLATE = delete(templates).where(
    templates.c.domain_id == bindparam("domain_id"), templates.c.public_id == bindparam("public_id")
)


# -- units of work (run in a database thread) -------------------------------------------------


def _domain_id(conn: Connection, name: str) -> int:
    domain_id = conn.execute(_DOMAIN_ID, {"name": name}).scalar()
    if domain_id is None:
        raise NotFoundError(f"no domain {name!r}; list them with GET /v1/domains or `mailnode domain list`")
    return int(domain_id)


def _create_domain(
    conn: Connection, name: str, key: DkimKeyPair, base_selector: str, tracking: TrackingPolicy, now: float
) -> DomainRecord:
    if conn.execute(_DOMAIN_ID, {"name": name}).scalar() is not None:
        raise ConflictError(f"domain {name!r} already exists")
    values = {"name": name, "created_at": now, **_tracking_columns(tracking)}
    domain_id = inserted_id(conn.execute(_INSERT_DOMAIN, values))
    record = _insert_dkim_key(conn, domain_id, key, new_selector((), base_selector, today=_day(now)), now)
    return DomainRecord(name, now, (record,), tracking)


def _set_tracking(conn: Connection, name: str, tracking: TrackingPolicy) -> DomainRecord:
    conn.execute(
        update(domains).where(domains.c.id == _domain_id(conn, name)).values(**_tracking_columns(tracking))
    )
    found = _get_domain(conn, name)
    assert found is not None
    return found


def _tracking_columns(tracking: TrackingPolicy) -> dict[str, str]:
    return {"tracking_opens": tracking.opens.value, "tracking_links": tracking.links.value}


def _tracking(row: Any) -> TrackingPolicy:
    return TrackingPolicy(TrackingMode(row.tracking_opens), TrackingMode(row.tracking_links))


def _get_domain(conn: Connection, name: str) -> DomainRecord | None:
    row = conn.execute(_DOMAIN, {"name": name}).first()
    if row is None:
        return None
    keys = tuple(_dkim_record(key) for key in conn.execute(_KEYS_OF, {"domain_id": row.id}))
    return DomainRecord(row.name, row.created_at, keys, _tracking(row))


def _list_domains(conn: Connection) -> list[DomainRecord]:
    keys: dict[int, list[DkimKeyRecord]] = {}
    for row in conn.execute(_ALL_KEYS):
        keys.setdefault(row.domain_id, []).append(_dkim_record(row))
    return [
        DomainRecord(row.name, row.created_at, tuple(keys.get(row.id, ())), _tracking(row))
        for row in conn.execute(_ALL_DOMAINS)
    ]


def _delete_domain(conn: Connection, name: str, now: float) -> list[TransactionRecord]:
    domain_id = _domain_id(conn, name)
    ids = list(conn.execute(_UNSENT_OF_DOMAIN, {"name": name}).scalars())
    if ids:
        conn.execute(_CANCEL, {"ids": ids, "now": now})
    conn.execute(_DELETE_DOMAIN_KEYS, {"name": name})
    # Its webhooks go too (their deliveries by cascade): a domain created again later under
    # the same name must not inherit receivers. Events, stats and suppressions stay on record.
    conn.execute(delete(webhooks).where(webhooks.c.domain == name))
    # dkim_keys and templates go with the row (ON DELETE CASCADE; foreign keys are on).
    conn.execute(_DELETE_DOMAIN, {"domain_id": domain_id})
    return [record for _, record in load_rows(conn, _LOAD_BY_IDS, ids=ids)] if ids else []


def _add_dkim_key(
    conn: Connection, domain: str, key: DkimKeyPair, base_selector: str, now: float
) -> DkimKeyRecord:
    domain_id = _domain_id(conn, domain)
    existing = [row.selector for row in conn.execute(_KEYS_OF, {"domain_id": domain_id})]
    selector = new_selector(existing, base_selector, today=_day(now))
    return _insert_dkim_key(conn, domain_id, key, selector, now)


def _insert_dkim_key(
    conn: Connection, domain_id: int, key: DkimKeyPair, selector: str, now: float
) -> DkimKeyRecord:
    conn.execute(
        _INSERT_DKIM_KEY,
        {
            "domain_id": domain_id,
            "selector": selector,
            "algorithm": key.algorithm,
            "private_key": key.private_key_pem,
            "public_key": key.public_key_b64,
            "created_at": now,
        },
    )
    return DkimKeyRecord(selector, key.algorithm, key.public_key_b64, now, key.private_key_pem)


def _remove_dkim_key(conn: Connection, domain: str, selector: str) -> None:
    domain_id = _domain_id(conn, domain)
    selectors = [row.selector for row in conn.execute(_KEYS_OF, {"domain_id": domain_id})]
    if selector not in selectors:
        raise NotFoundError(f"domain {domain!r} has no DKIM key with selector {selector!r}")
    if len(selectors) == 1:
        raise ConflictError(
            f"selector {selector!r} is the last DKIM key of {domain!r}, which its mail is signed with; "
            "rotate first (a new key), publish its DNS record, then remove this one"
        )
    conn.execute(_DELETE_DKIM_KEY, {"domain_id": domain_id, "selector": selector})


def _create_api_key(conn: Connection, values: dict[str, Any]) -> ApiKeyRecord:
    _domain_id(conn, values["domain"])
    key_id = inserted_id(conn.execute(_INSERT_API_KEY, values))
    return ApiKeyRecord(id=key_id, deactivated_at=None, **values)


def _list_api_keys(conn: Connection, domain: str) -> list[ApiKeyRecord]:
    _domain_id(conn, domain)
    return [_api_key_record(row) for row in conn.execute(_API_KEYS_OF, {"name": domain})]


def _deactivate_api_key(conn: Connection, domain: str, key_id: int, now: float) -> ApiKeyRecord:
    conn.execute(_DEACTIVATE, {"domain_name": domain, "key_id": key_id, "now": now})
    row = conn.execute(_API_KEY, {"name": domain, "key_id": key_id}).first()
    if row is None:
        raise NotFoundError(f"domain {domain!r} has no API key {key_id}")
    return _api_key_record(row)


def _create_template(conn: Connection, record: TemplateRecord) -> TemplateRecord:
    conn.execute(
        _INSERT_TEMPLATE,
        {
            "public_id": record.id,
            "domain_id": _domain_id(conn, record.domain),
            "name": record.name,
            "subject": record.subject,
            "html": record.html,
            "text": record.text,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        },
    )
    return record


def _list_templates(
    conn: Connection, domain: str, limit: int, offset: int
) -> tuple[list[TemplateRecord], int]:
    domain_id = _domain_id(conn, domain)
    total = conn.execute(_COUNT_TEMPLATES, {"domain_id": domain_id}).scalar_one()
    rows = conn.execute(_TEMPLATE_PAGE, {"name": domain, "limit": limit, "offset": offset})
    return [_template_record(row) for row in rows], int(total)


def _update_template(
    conn: Connection, domain: str, template_id: str, edit: TemplateEdit, now: float
) -> TemplateRecord:
    domain_id = _domain_id(conn, domain)
    row = conn.execute(_TEMPLATE, {"name": domain, "public_id": template_id}).first()
    if row is None:
        raise NotFoundError(f"domain {domain!r} has no template {template_id!r}")
    current = _template_record(row)
    edited = replace(
        edit(current), id=current.id, domain=domain, created_at=current.created_at, updated_at=now
    )
    conn.execute(
        _UPDATE_TEMPLATE,
        {
            "of_domain": domain_id,
            "of_template": template_id,
            "name": edited.name,
            "subject": edited.subject,
            "html": edited.html,
            "text": edited.text,
            "updated_at": now,
        },
    )
    return edited


def _delete_template(conn: Connection, domain: str, template_id: str) -> None:
    domain_id = _domain_id(conn, domain)
    result = conn.execute(_DELETE_TEMPLATE, {"domain_id": domain_id, "public_id": template_id})
    if result.rowcount == 0:
        raise NotFoundError(f"domain {domain!r} has no template {template_id!r}")


# -- records from rows ------------------------------------------------------------------------


def _day(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date()


def _dkim_record(row: Any) -> DkimKeyRecord:
    return DkimKeyRecord(
        selector=row.selector,
        algorithm=cast(DkimAlgorithm, row.algorithm),
        public_key_b64=row.public_key,
        created_at=row.created_at,
        private_key_pem=bytes(row.private_key),
    )


def _api_key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        domain=row.domain,
        prefix=row.prefix,
        key_hash=row.key_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        deactivated_at=row.deactivated_at,
    )


def _template_record(row: Any) -> TemplateRecord:
    return TemplateRecord(
        id=row.public_id,
        domain=row.domain,
        name=row.name,
        subject=row.subject,
        html=row.html,
        text=row.text,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
