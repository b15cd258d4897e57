"""`mailnode queue`: look at deliveries, retry, cancel and purge them, straight in the database.

The running service notices a change at its next poll ([delivery] poll_interval_seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import click

from mailnode.cli.common import (
    Duration,
    ago,
    config_option,
    config_path,
    echo_json,
    echo_table,
    fail_cleanly,
    json_option,
    rfc3339,
    run,
    runtime,
    utc_time,
    with_store,
)
from mailnode.config import load_config
from mailnode.core.address import AddressError, parse_address
from mailnode.core.dkim_keys import canonical_domain
from mailnode.core.events import Event, event_json
from mailnode.core.outcome import AttemptResult, Status
from mailnode.core.transaction import AttemptRecord, TransactionRecord
from mailnode.errors import ConflictError, MailnodeError, NotFoundError
from mailnode.storage.events import EventQuery, EventStore
from mailnode.storage.store import QueueQuery, Store

DEFERRED = "deferred"  # not a Status: queued after at least one attempt
STATUS_NAMES = [status.value for status in Status] + [DEFERRED]
PAGE = 500  # deliveries read at a time by retry, cancel (and purge counts)
EVENTS_SHOWN = 1000

RETRYABLE = {Status.QUEUED, Status.FAILED}
CANCELLABLE = {Status.AWAITING_BODY, Status.QUEUED}
FINISHED = {status for status in Status if status.final}


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose deliveries, shared by list, retry, cancel and purge."""
    for option in reversed(
        [
            click.option(
                "--status",
                "statuses",
                multiple=True,
                type=click.Choice(STATUS_NAMES),
                help="Only these (repeatable); deferred = queued after a failed attempt.",
            ),
            click.option("--domain", help="Only the sending domain's deliveries."),
            click.option(
                "--recipient", metavar="ADDRESS", help="Only to this address, or to a domain: @example.org."
            ),
            click.option("--older-than", type=Duration(), help="Only created longer ago: 30m, 2h, 3d, 1w."),
        ]
    ):
        fn = option(fn)
    return fn


def _query(
    statuses: tuple[str, ...],
    domain: str | None,
    recipient: str | None,
    older_than: float | None,
    *,
    allowed: set[Status] | None = None,
) -> QueueQuery:
    """The filters as a QueueQuery; with `allowed`, a --status outside it is an error."""
    chosen = frozenset(Status(name) for name in statuses if name != DEFERRED)
    deferred = DEFERRED in statuses
    if allowed is not None:
        refused = sorted(status.value for status in chosen - allowed)
        if refused:
            names = ", ".join(sorted(status.value for status in allowed))
            raise MailnodeError(f"--status {refused[0]}: this command takes only {names} deliveries")
        if deferred and Status.QUEUED not in allowed:
            raise MailnodeError("--status deferred: deferred deliveries are queued, not finished")
        if not statuses:
            chosen = frozenset(allowed)
    return QueueQuery(
        statuses=chosen,
        deferred=deferred,
        domain=None if domain is None else canonical_domain(domain),
        recipient=None if recipient is None else _recipient(recipient),
        created_before=None if older_than is None else runtime().clock() - older_than,
    )


def _recipient(text: str) -> str:
    text = text.strip()
    if text.startswith("@"):
        return "@" + canonical_domain(text[1:])
    try:
        return str(parse_address(text))
    except AddressError as exc:
        raise MailnodeError(f"--recipient {text!r}: {exc}; give an address or @domain") from None


@click.group()
def queue() -> None:
    """Deliveries waiting, finished or failed: list, show, retry, cancel, purge.

    Example: mailnode queue list --status deferred --domain example.com --older-than 2h
    """


@queue.command("list")
@_filters
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@config_option
@fail_cleanly
def queue_list(
    statuses: tuple[str, ...],
    domain: str | None,
    recipient: str | None,
    older_than: float | None,
    limit: int,
    as_json: bool,
    config_file: str | None,
) -> None:
    """List deliveries, oldest first, with their last upstream answer.

    Example: mailnode queue list --status deferred --recipient @example.org --older-than 2h
    """
    config = load_config(config_path(config_file))
    query = dataclasses.replace(_query(statuses, domain, recipient, older_than), limit=limit)

    async def read(store: Store) -> tuple[list[TransactionRecord], int]:
        return await store.list_deliveries(query), await store.count_deliveries(query)

    records, total = run(with_store(config, read))
    if as_json:
        echo_json({"items": [delivery_json(r) for r in records], "total": total})
        return
    now = runtime().clock()
    echo_table(
        ["ID", "STATUS", "TRIES", "NEXT", "AGE", "FROM", "TO", "LAST ANSWER"],
        [
            [
                r.rest_id,
                _status(r),
                str(r.attempt_count),
                _next(r, now),
                ago(now - r.created_at),
                r.mail_from or "<>",
                r.rcpt_to,
                _last_answer(r.latest_attempt),
            ]
            for r in records
        ],
    )
    click.echo(f"{len(records)} of {_deliveries(total)}", err=True)


@queue.command("show")
@click.argument("delivery_id")
@json_option
@config_option
@fail_cleanly
def queue_show(delivery_id: str, as_json: bool, config_file: str | None) -> None:
    """Show one delivery: its attempts with the upstream answers, and its events.

    Example: mailnode queue show 3q2vXk9bT1aM
    """
    config = load_config(config_path(config_file))
    record, attempts, events = run(with_store(config, lambda store: _story(store, delivery_id)))
    if as_json:
        echo_json(
            {
                **delivery_json(record),
                "attempts": [_attempt_json(a) for a in attempts],
                "events": [event_json(e) for e in events],
            }
        )
        return
    _echo_story(record, attempts, events)


async def _story(store: Store, rest_id: str) -> tuple[TransactionRecord, list[AttemptRecord], list[Event]]:
    record = await store.get_transaction(rest_id)
    if record is None:
        raise NotFoundError(f"no delivery {rest_id!r}; `mailnode queue list` shows them")
    attempts = await store.attempts(record.id)
    events: list[Event] = []
    if record.domain is not None:
        query = EventQuery(record.domain, delivery=rest_id, limit=EVENTS_SHOWN)
        events = await EventStore(store).events(query)
    return record, attempts, events


def _echo_story(record: TransactionRecord, attempts: list[AttemptRecord], events: list[Event]) -> None:
    fields = [
        ("id", record.rest_id),
        ("status", _status(record)),
        ("from", record.mail_from or "<>"),
        ("to", record.rcpt_to),
        ("domain", record.domain or "-"),
        ("sender", f"{record.sender} ({record.protocol})"),
        ("created", utc_time(record.created_at)),
    ]
    if record.next_attempt_at is not None:
        fields.append(("next try", utc_time(record.next_attempt_at)))
    if record.final_attempt_reason:
        fields.append(("why", record.final_attempt_reason))
    for name, value in fields:
        click.echo(f"{name + ':':<10}{value}")
    click.echo(f"\nattempts ({len(attempts)}):")
    for attempt in attempts:
        host = f" via {attempt.remote_host}" if attempt.remote_host else ""
        click.echo(f"  #{attempt.number}  {utc_time(attempt.started_at)}{host}")
        if attempt.finished_at is None:
            click.echo("      (in progress, or interrupted)")
        for stage, response in (("MAIL", attempt.mail), ("RCPT", attempt.rcpt), ("DATA", attempt.data)):
            if response is not None:
                click.echo(f"      {stage}  {response.code} {response.message}")
    click.echo(f"\nevents ({len(events)}):")
    for event in events:
        details = " ".join(f"{k}={v}" for k, v in event.data.items() if k in ("code", "text", "reason"))
        click.echo(f"  {utc_time(event.occurred_at)}  {event.type.value:<12} {details}".rstrip())


@queue.command("retry")
@click.argument("delivery_ids", nargs=-1)
@_filters
@json_option
@config_option
@fail_cleanly
def queue_retry(
    delivery_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    domain: str | None,
    recipient: str | None,
    older_than: float | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Make deliveries due now: queued ones at once, failed ones for one more attempt.

    Give delivery ids, or filters (every queued and failed delivery they match).

    Example: mailnode queue retry --status deferred --recipient @example.org
    """
    config = load_config(config_path(config_file))
    act = _act_on(delivery_ids, statuses, domain, recipient, older_than, RETRYABLE, "retry")
    records = run(with_store(config, lambda store: act(store, _retry_one)))
    _report(records, as_json, "due now")


@queue.command("cancel")
@click.argument("delivery_ids", nargs=-1)
@_filters
@click.option("--yes", is_flag=True, help="Do not ask before cancelling by filters.")
@json_option
@config_option
@fail_cleanly
def queue_cancel(
    delivery_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    domain: str | None,
    recipient: str | None,
    older_than: float | None,
    yes: bool,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Cancel deliveries that are not finished (as POST /transactions/{id}/cancel does).

    Give delivery ids, or filters (asks first unless --yes).

    Example: mailnode queue cancel --domain example.com --status deferred --yes
    """
    config = load_config(config_path(config_file))
    act = _act_on(delivery_ids, statuses, domain, recipient, older_than, CANCELLABLE, "cancel")
    if not delivery_ids and not yes:
        query = _query(statuses, domain, recipient, older_than, allowed=CANCELLABLE)
        count = run(with_store(config, lambda store: store.count_deliveries(query)))
        if count == 0:
            raise NotFoundError("no unfinished delivery matches; `mailnode queue list` shows them")
        click.confirm(f"Cancel {_deliveries(count)}?", abort=True, err=True)
    records = run(with_store(config, lambda store: act(store, _cancel_one)))
    _report(records, as_json, "cancelled")


async def _cancel_one(store: Store, rest_id: str) -> TransactionRecord:
    record = await store.cancel(rest_id)
    if record.status is not Status.CANCELLED:
        raise ConflictError(
            f"delivery {rest_id} is {record.status.value}: only unfinished ones can be cancelled"
        )
    return record


async def _retry_one(store: Store, rest_id: str) -> TransactionRecord:
    return await store.retry(rest_id)


Action = Callable[[Store, str], Awaitable[TransactionRecord]]


def _act_on(
    delivery_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    domain: str | None,
    recipient: str | None,
    older_than: float | None,
    allowed: set[Status],
    verb: str,
) -> Callable[[Store, Action], Awaitable[list[TransactionRecord]]]:
    """What retry and cancel do: act on the ids given, or on every delivery the filters match."""
    filtered = bool(statuses) or any(value is not None for value in (domain, recipient, older_than))
    if delivery_ids and filtered:
        raise MailnodeError(f"give delivery ids or filters to {verb}, not both")
    if not delivery_ids and not filtered:
        raise MailnodeError(f"nothing to {verb}: give delivery ids, or filters such as --status deferred")
    query = None if delivery_ids else _query(statuses, domain, recipient, older_than, allowed=allowed)

    async def act(store: Store, action: Action) -> list[TransactionRecord]:
        if query is None:
            return [await action(store, rest_id) for rest_id in delivery_ids]
        done: list[TransactionRecord] = []
        page = dataclasses.replace(query, limit=PAGE)
        while found := await store.list_deliveries(page):
            done += [await action(store, record.rest_id) for record in found]
            page = dataclasses.replace(page, after_id=found[-1].id)
        return done

    return act


def _report(records: list[TransactionRecord], as_json: bool, what: str) -> None:
    if as_json:
        echo_json([delivery_json(r) for r in records])
        return
    for record in records:
        click.echo(f"{record.rest_id}  {record.rcpt_to}  {what}")
    click.echo(f"{_deliveries(len(records))} {what}", err=True)


@queue.command("purge")
@_filters
@click.option("--yes", is_flag=True, help="Do not ask first.")
@json_option
@config_option
@fail_cleanly
def queue_purge(
    statuses: tuple[str, ...],
    domain: str | None,
    recipient: str | None,
    older_than: float | None,
    yes: bool,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Delete finished deliveries (delivered, failed, cancelled), or those the filters match.

    Their attempts go with them; events and stats stay. Asks first unless --yes.

    Example: mailnode queue purge --status failed --older-than 30d --yes
    """
    config = load_config(config_path(config_file))
    query = dataclasses.replace(_query(statuses, domain, recipient, older_than, allowed=FINISHED), limit=None)
    if not yes:
        count = run(with_store(config, lambda store: store.count_deliveries(query)))
        if count == 0:
            _purged(0, as_json)
            return
        click.confirm(
            f"Delete {count} finished {_deliveries(count, bare=True)} for good?", abort=True, err=True
        )
    _purged(run(with_store(config, lambda store: store.purge(query))), as_json)


def _purged(count: int, as_json: bool) -> None:
    if as_json:
        echo_json({"deleted": count})
    else:
        click.echo(f"deleted {_deliveries(count)}")


# -- how deliveries look -------------------------------------------------------------------------


def delivery_json(record: TransactionRecord) -> dict[str, Any]:
    """A delivery for --json: what /v1/deliveries shows, with its attempt count and last answer."""
    return {
        "id": record.rest_id,
        "domain": record.domain,
        "sender": record.sender,
        "mail_from": record.mail_from,
        "rcpt_to": record.rcpt_to,
        "status": record.status.value,
        "deferred": _status(record) == DEFERRED,
        "final_reason": record.final_attempt_reason,
        "attempts": record.attempt_count,
        "last_answer": _outcome(record.latest_attempt),
        "created_at": rfc3339(record.created_at),
        "updated_at": rfc3339(record.updated_at),
        "next_attempt_at": rfc3339(record.next_attempt_at),
    }


def _attempt_json(attempt: AttemptRecord) -> dict[str, Any]:
    answers = {
        stage: None if response is None else {"code": response.code, "message": response.message}
        for stage, response in (("mail", attempt.mail), ("rcpt", attempt.rcpt), ("data", attempt.data))
    }
    return {
        "number": attempt.number,
        "started_at": rfc3339(attempt.started_at),
        "finished_at": rfc3339(attempt.finished_at),
        "remote_host": attempt.remote_host,
        "answers": answers,
        "outcome": _outcome(attempt),
    }


def _outcome(attempt: AttemptRecord | None) -> dict[str, Any] | None:
    """The answer that decided a finished attempt: the first failure, else the data answer."""
    if attempt is None or attempt.finished_at is None:
        return None
    stage, response = AttemptResult(attempt.mail, attempt.rcpt, attempt.data).decisive
    return {"stage": stage.value, "code": response.code, "message": response.message}


def _status(record: TransactionRecord) -> str:
    if record.status is Status.QUEUED and record.attempt_count > 0:
        return DEFERRED
    return record.status.value


def _next(record: TransactionRecord, now: float) -> str:
    if record.next_attempt_at is None:
        return "-"
    if record.next_attempt_at <= now:
        return "due"
    return "in " + ago(record.next_attempt_at - now)


def _last_answer(attempt: AttemptRecord | None, width: int = 60) -> str:
    outcome = _outcome(attempt)
    if outcome is None:
        return "-" if attempt is None else "(trying)"
    text = f"{outcome['stage'].upper()} {outcome['code']} {outcome['message']}"
    return text if len(text) <= width else text[: width - 1] + "…"


def _deliveries(count: int, *, bare: bool = False) -> str:
    """ "1 delivery", "3 deliveries" (bare: the noun alone)."""
    noun = "delivery" if count == 1 else "deliveries"
    return noun if bare else f"{count} {noun}"
