"""The schema, as SQLAlchemy Core tables. Portable: nothing here is SQLite-specific."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# Bumped by every migration; a fresh database is created at this version directly.
SCHEMA_VERSION = 3

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

# One row per running mailnode process; leases name their session.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

# Message bytes, stored once and shared by reference (transaction_blobs rows are the refcount).
blobs = Table(
    "blobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stored_length", Integer, nullable=False, default=0),
    Column("total_length", Integer),  # known once the upload said how long it is
    Column("created_at", Float, nullable=False),
)

# Appended chunks: an upload never rewrites what is already stored.
blob_chunks = Table(
    "blob_chunks",
    metadata,
    Column("blob_id", Integer, ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True),
    Column("offset", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

transactions = Table(
    "transactions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rest_id", String(48), nullable=False, unique=True),
    Column("sender", String(64), nullable=False),
    Column("mail_from", String(512), nullable=False),  # "" is the null reverse path
    Column("rcpt_to", String(512), nullable=False),
    Column("message_builder", JSON),  # the spec, when the body is built by mailnode
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("next_attempt_at", Float),
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("lease_owner", String(32)),
    Column("lease_expires_at", Float),
    Column("final_attempt_reason", String(128)),
    Column("finished_at", Float),
    Column("retry", Boolean, nullable=False),
    Column("bounce", Boolean, nullable=False),
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("client_address", String(64)),
    Column("client_helo", String(255)),
    Column("protocol", String(16), nullable=False),
    Column("api_key_id", Integer),
    # A DSN points at the delivery it reports on; a copy (route copy_to) at the one it copies.
    Column("parent_id", Integer, ForeignKey("transactions.id", ondelete="SET NULL")),
    # A /v1 send's delivery: its batch holds the content, this row the recipient's fields
    # ({"name": ..., "fields": {...}}); the message is rendered when it is attempted.
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="SET NULL")),
    Column("recipient", JSON),
    # The sending domain whose events, stats and suppressions this delivery counts in: a /v1
    # batch's domain, or the domain of the API key that submitted it. NULL: none (no events).
    Column("domain", String(253)),
)
Index("ix_transactions_due", transactions.c.status, transactions.c.next_attempt_at)
Index("ix_transactions_batch", transactions.c.batch_id, transactions.c.status)
Index("ix_transactions_finished", transactions.c.finished_at)

transaction_blobs = Table(
    "transaction_blobs",
    metadata,
    Column(
        "transaction_id",
        Integer,
        ForeignKey("transactions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(128), primary_key=True),  # "body", or a message-builder blob id
    Column("blob_id", Integer, ForeignKey("blobs.id"), nullable=False, index=True),
)

attempts = Table(
    "attempts",
    metadata,
    Column(
        "transaction_id",
        Integer,
        ForeignKey("transactions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("number", Integer, primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("mail_code", Integer),
    Column("mail_message", Text),
    Column("rcpt_code", Integer),
    Column("rcpt_message", Text),
    Column("data_code", Integer),
    Column("data_message", Text),
    Column("remote_host", String(256)),
)

# Messages kept by the capture endpoint for developers to look at; they outlive GC of the
# transaction that produced them.
captures = Table(
    "captures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("transaction_rest_id", String(48), nullable=False, index=True),
    Column("mail_from", String(512), nullable=False),
    Column("rcpt_to", String(512), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("message", LargeBinary, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("domain", String(253)),
    Column("prefix", String(8), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("deactivated_at", Float),
)


# -- the sending platform (/v1) ----------------------------------------------------------------

domains = Table(
    "domains",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(253), nullable=False, unique=True),  # canonical: lower-case A-labels
    Column("created_at", Float, nullable=False),
    # The tracking ceiling and default (core/tracking.py modes): no batch or recipient may ask
    # for more. Off until the domain's owner turns it on: privacy by default.
    Column("tracking_opens", String(16), nullable=False, server_default="off"),
    Column("tracking_links", String(16), nullable=False, server_default="off"),
)

# A domain's DKIM keys: the newest signs; older ones stay published until removed (rotation).
dkim_keys = Table(
    "dkim_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("selector", String(63), nullable=False),
    Column("algorithm", String(16), nullable=False),  # rsa | ed25519
    Column("private_key", LargeBinary, nullable=False),  # PKCS#8 PEM
    Column("public_key", Text, nullable=False),  # base64, as DNS p= wants it
    Column("created_at", Float, nullable=False),
    UniqueConstraint("domain_id", "selector"),
)

templates = Table(
    "templates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("subject", Text, nullable=False),
    Column("html", Text),
    Column("text", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_templates_domain", templates.c.domain_id, templates.c.id)

# One /v1 send. Its content (subject, bodies, attachments, headers) is one blob, stored once
# for all its deliveries.
batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("domain", String(253), nullable=False),
    Column("api_key_id", Integer),
    Column("content_blob_id", Integer, ForeignKey("blobs.id"), nullable=False),
    Column("recipients", Integer, nullable=False),  # accepted: one delivery each
    Column("rejected", JSON, nullable=False),  # [{"email": ..., "reason": ...}]
    Column("tags", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("scheduled_at", Float),
    Column("created_at", Float, nullable=False),
    Column("cancelled_at", Float),
)
Index("ix_batches_created", batches.c.created_at)

# Idempotency-Key: the first answer to a send, replayed for a repeat with the same body.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("api_key_id", Integer, primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_idempotency_created", idempotency_keys.c.created_at)

# Secrets mailnode signs with (VERP return paths, later tracking tokens); rotatable: the
# newest of a purpose signs, every unretired one verifies.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("purpose", String(32), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("secret", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retired_at", Float),
    UniqueConstraint("purpose", "key_id"),
)


# -- the feedback loop: events, stats, suppressions, webhooks ----------------------------------

# Every event, written in the same database transaction as the state change that causes it
# (an outbox): `processed` turns true in the one transaction that counts it in stats_hourly and
# queues its webhook deliveries, so each is counted and fanned out exactly once.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("type", String(16), nullable=False),
    Column("occurred_at", Float, nullable=False),
    Column("domain", String(253), nullable=False),
    Column("batch", String(32)),  # the batch's public id
    Column("delivery", String(48)),  # the delivery's rest id
    Column("recipient", String(512)),  # the address, a pseudonym, or NULL (tracking mode)
    Column("data", JSON, nullable=False),
    Column("processed", Boolean, nullable=False, default=False),
)
Index("ix_events_outbox", events.c.processed, events.c.id)
Index("ix_events_domain_time", events.c.domain, events.c.occurred_at)
Index("ix_events_delivery", events.c.delivery)
Index("ix_events_batch", events.c.batch, events.c.type, events.c.recipient)

# Counts per domain, UTC hour and event type; kept when raw events are pruned.
stats_hourly = Table(
    "stats_hourly",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("hour", Integer, primary_key=True),  # unix time of the hour's start
    Column("type", String(16), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("unique_count", Integer, nullable=False),  # first opens/clicks of a recipient
    Column("machine_count", Integer, nullable=False),  # by link scanners and prefetchers
)

# Addresses a domain no longer sends to: hard bounces, complaints, unsubscribes, by hand.
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("domain", String(253), nullable=False),
    Column("address", String(512), nullable=False),  # lower-cased
    Column("reason", String(16), nullable=False),
    Column("details", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("domain", "address"),
)
Index("ix_suppressions_reason", suppressions.c.domain, suppressions.c.reason, suppressions.c.id)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("domain", String(253), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("secret", String(64), nullable=False),  # signs each POST; shown once at creation
    Column("event_types", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("failing_since", Float),  # the first failure since the last success
    Column("disabled_at", Float),
    Column("disabled_reason", Text),
)

# One event for one webhook: its JSON body, and the attempts at POSTing it so far.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float),
    Column("last_attempt_at", Float),
    Column("last_status", Integer),  # the receiver's HTTP status
    Column("last_error", Text),
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt_at)
Index("ix_webhook_deliveries_webhook", webhook_deliveries.c.webhook_id, webhook_deliveries.c.id)
