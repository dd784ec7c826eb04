"""Writes of the outbox: emitting events inside the caller's transaction, and purging old published ones.

`events_emit` is on the hot path of every ledger change, so one call costs a fixed handful of SQL
statements whatever the number of events: one upsert of the stream cursors, one insert of the events, and,
on PostgreSQL with an out-of-process relay, one `pg_notify` per transaction.

On PostgreSQL the cursors are upserted from two arrays (`unnest ... WITH ORDINALITY`) and the events go in
with `COPY`: Django's psycopg cursors bind parameters client-side, which made a 193-event `bulk_create`
cost ~20 ms of Python against ~4 ms for `COPY` (193 events over 129 streams). Elsewhere (SQLite,
the embedded default) a multi-row `INSERT ... ON CONFLICT ... RETURNING` and `bulk_create`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, OuterRef, Subquery
from django.utils import timezone

from tenants.models import Tenant
from wallet.core.bulk import (
    DEFERRED_VALUES_MAX_ROWS,
    Deferrable,
    NamedStatement,
    SentQuery,
    copy_rows,
    in_pipeline,
    loaded,
    pg_array,
)
from wallet.core.ids import uuid7
from wallet.events import conf
from wallet.events.models import OutboxEvent, StreamCursor
from wallet.events.streams import InvalidStreamError, parse_stream, tenant_stream, user_stream

__all__ = [
    "EventSpec",
    "InvalidEventError",
    "InvalidStreamError",
    "TransactionRequiredError",
    "events_emit",
    "events_purge_published",
    "register_commit_listener",
    "tenant_stream",
    "user_stream",
]

logger = logging.getLogger("wallet.events")

# Rows per cursor upsert statement (3 parameters each; SQLite allows 32766 parameters from 3.32).
_UPSERT_CHUNK = 2000
_SQLITE_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_TYPE_MAX_LENGTH = OutboxEvent._meta.get_field("type").max_length
_PURGE_BATCH = 5000
_django_json = DjangoJSONEncoder()
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


class TransactionRequiredError(RuntimeError):
    """`events_emit` was called outside `transaction.atomic()`: the events would not share the fate of
    the change they report."""


class InvalidEventError(ValueError):
    """An event with an empty or too long type, or data that is not a dict."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event to emit: its stream (`user_stream(...)` or `tenant_stream(...)`), its type (e.g.
    `"account.balance_changed"`) and its JSON data.

    `EventSpec.prepared(...)` also fixes the event id and encodes the data up front, so that a caller
    holding locks later (the ledger builds its `transfer.completed` events before locking accounts)
    spends none of that time under them."""

    stream: str
    type: str
    data: dict[str, Any]
    id: uuid.UUID | None = None
    encoded: str | None = None

    @classmethod
    def prepared(cls, *, stream: str, type: str, data: dict[str, Any]) -> EventSpec:
        try:
            encoded = _encode(data)
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(f"event data of {type!r} is not JSON serializable: {exc}") from exc
        return cls(stream=stream, type=type, data=data, id=uuid7(), encoded=encoded)


def events_emit(*, tenant: Tenant, events: Sequence[EventSpec], returning: bool = True,
                defer: list[Deferrable] | None = None) -> list[OutboxEvent]:
    """Write `events` of `tenant` to the outbox, in the caller's open transaction, and return the rows
    (with `returning=False`, on PostgreSQL, an empty list: the ledger's hot path does not read them).
    With `defer` (PostgreSQL), the writes are appended there for the caller to run with its other writes
    (`wallet.core.bulk.execute_together`) before the transaction commits: with `returning=False` and as
    many events as one INSERT takes (`copy_rows`' rule), both the cursors' upsert and the events' insert
    (which reads its sequence numbers from the upsert's rows): no round trip of their own, and the cursors
    are locked there, at the end of the caller's transaction; otherwise the upsert runs now and the insert
    alone is deferred.

    Each stream's events get the next sequence numbers of that (tenant, stream), consecutive in the order
    given, starting at 1 for a new stream. The stream cursors are bumped with one upsert in sorted stream
    order, so concurrent transactions lock them in the same order and cannot deadlock on them; their row
    locks are held until commit, so seq N+1 of a stream commits after seq N and the relay publishes each
    stream in order. A rollback takes the events and the cursor bumps with it: no gap.

    Call it once per transaction with all its events, after the transaction's other row locks (ledger
    accounts): a stream's cursor lock serialises every transaction writing to that stream until commit.

    Raises `TransactionRequiredError` outside `transaction.atomic()`, `InvalidStreamError` for a malformed
    stream or a tenant stream of another tenant, `InvalidEventError` for a bad type or data.
    """
    alias = router.db_for_write(OutboxEvent)
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise TransactionRequiredError(
            "events_emit must run inside transaction.atomic(), in the transaction of the change it reports."
        )
    if not events:
        return []

    counts, encoded = _validate(tenant, events)
    notify = _notify_channel(connection)
    if (defer is not None and not returning and connection.vendor == "postgresql"
            and (len(events) <= DEFERRED_VALUES_MAX_ROWS or in_pipeline(connection))):
        _defer_events(defer, tenant, events, counts, encoded, notify)
        _wake_relay_after_commit(connection, alias, notified=notify is not None)
        _remember_streams(connection, tenant, counts)
        return []
    last_seqs = _bump_cursors(connection, tenant, counts, notify)

    # The first seq of each stream's share of this call; then consecutive in the order given.
    next_seq = {stream: last_seqs[stream] - count + 1 for stream, count in counts.items()}
    seqs = []
    for spec in events:
        seqs.append(next_seq[spec.stream])
        next_seq[spec.stream] += 1
    ids = [spec.id or uuid7() for spec in events]
    now = timezone.now()
    if connection.vendor == "postgresql":
        rows = _copy_events(connection, tenant, events, ids, seqs, encoded, now, returning, defer)
    else:
        rows = [OutboxEvent(id=event_id, tenant=tenant, stream=spec.stream, seq=seq, type=spec.type, data=spec.data,
                            created_at=now) for event_id, spec, seq in zip(ids, events, seqs, strict=True)]
        OutboxEvent.all_tenants.using(alias).bulk_create(rows)

    _wake_relay_after_commit(connection, alias, notified=notify is not None)
    _remember_streams(connection, tenant, counts)
    return rows


def _remember_streams(connection: BaseDatabaseWrapper, tenant: Tenant, counts: dict[str, int]) -> None:
    if _commit_listeners:
        # Told at commit by `_after_commit` (the transaction's one hook); a rollback leaves them for the
        # next commit of this connection, which only tells listeners of a stream that did not move.
        connection.__dict__.setdefault(_PENDING_ATTRIBUTE, set()).update((tenant.pk, stream) for stream in counts)


# Called in the committing process, after commit, with (tenant id, streams that got events): lets an app
# of this process react at once (the balances app drops its per-process copy of those users' stream heads).
# Other processes hear of events through the relay (`wallet.events.relay.register_publish_listener`).
CommitListener = Callable[[Any, tuple[str, ...]], None]
_commit_listeners: list[CommitListener] = []


def register_commit_listener(listener: CommitListener) -> None:
    """Call `listener(tenant_id, streams)` after each commit that emitted events, in the committing process
    (once per tenant of the transaction's events). It must be quick and must not raise (exceptions are
    logged)."""
    if listener not in _commit_listeners:
        _commit_listeners.append(listener)


_PENDING_ATTRIBUTE = "_events_streams_to_tell"


def _tell_commit_listeners() -> None:
    connection = connections[router.db_for_write(OutboxEvent)]
    pending = connection.__dict__.pop(_PENDING_ATTRIBUTE, None)
    if not pending:
        return
    by_tenant: dict[Any, list[str]] = {}
    for tenant_id, stream in pending:
        by_tenant.setdefault(tenant_id, []).append(stream)
    for tenant_id, streams in by_tenant.items():
        commit_listeners_tell(tenant_id, tuple(streams))


def commit_listeners_tell(tenant_id: Any, streams: tuple[str, ...]) -> None:
    """Tell this process's commit listeners that `streams` of the tenant got events in a commit (called after
    each commit here, and by wallet/ledger/committer_process.py for the commits of its committer process)."""
    for listener in list(_commit_listeners):
        try:
            listener(tenant_id, streams)
        except Exception:
            logger.exception("commit listener failed", extra={"listener": getattr(listener, "__name__", "?")})


def _encode(data: dict[str, Any]) -> str:
    """JSON text of an event's data, as the model's DjangoJSONEncoder renders it (orjson, and the standard
    library for what orjson refuses, such as integers beyond 64 bits)."""
    try:
        return orjson.dumps(data, default=_django_json.default, option=_ORJSON_OPTIONS).decode()
    except TypeError:
        return json.dumps(data, cls=DjangoJSONEncoder)


def _validate(tenant: Tenant, events: Sequence[EventSpec]) -> tuple[dict[str, int], list[str]]:
    """Validate every event before any SQL; return how many events each stream gets, and each event's
    data as JSON text."""
    counts: dict[str, int] = {}
    encoded = []
    own_tenant_stream = tenant_stream(tenant.pk)
    for spec in events:
        stream = spec.stream
        if stream not in counts:
            kind, _ = parse_stream(stream)
            if kind == "tenant" and stream != own_tenant_stream:
                raise InvalidStreamError(f"{stream!r} is not the stream of tenant {tenant.pk}")
            counts[stream] = 0
        counts[stream] += 1
        if not isinstance(spec.type, str) or not 0 < len(spec.type) <= _TYPE_MAX_LENGTH:
            raise InvalidEventError(f"event type must be 1-{_TYPE_MAX_LENGTH} characters, got {spec.type!r}")
        if not isinstance(spec.data, dict):
            raise InvalidEventError(f"event data must be a dict, got {type(spec.data).__name__}")
        if spec.encoded is not None:
            encoded.append(spec.encoded)
            continue
        try:
            encoded.append(_encode(spec.data))
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(f"event data of {spec.type!r} is not JSON serializable: {exc}") from exc
    return counts, encoded


def _bump_cursors(connection: BaseDatabaseWrapper, tenant: Tenant, counts: dict[str, int],
                  notify: str | None = None) -> dict[str, int]:
    """Add each stream's count to its cursor (creating it at the count) and return the new last_seq per
    stream: one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` whose rows are in sorted stream order (the
    order in which it takes the row locks). With `notify` (PostgreSQL), the same statement also sends
    `pg_notify(notify, '')`, which PostgreSQL delivers at commit: no round trip of its own."""
    streams = sorted(counts)
    quote = connection.ops.quote_name
    table = quote(StreamCursor._meta.db_table)
    upsert = (
        f"ON CONFLICT ({quote('tenant_id')}, {quote('stream')}) "
        f"DO UPDATE SET {quote('last_seq')} = {table}.{quote('last_seq')} + EXCLUDED.{quote('last_seq')} "
        f"RETURNING {quote('stream')}, {quote('last_seq')}"
    )
    columns = f"{table} ({quote('tenant_id')}, {quote('stream')}, {quote('last_seq')})"
    if connection.vendor == "postgresql":
        prefix, params = "", []
        if notify is not None:
            prefix, params = "WITH wake AS (SELECT pg_notify(%s, '')) ", [notify]
        sql, upsert_params = _pg_cursor_upsert(tenant, counts, wake="wake" if notify is not None else None)
        return dict(SentQuery(connection, prefix + sql, params + upsert_params).fetchall())
    if connection.vendor != "sqlite" or not _SQLITE_HAS_RETURNING:
        return _bump_cursors_portably(connection, tenant, counts, streams)
    tenant_id = StreamCursor._meta.get_field("tenant").get_db_prep_value(tenant.pk, connection)
    last_seqs: dict[str, int] = {}
    with connection.cursor() as cursor:
        for start in range(0, len(streams), _UPSERT_CHUNK):
            chunk = streams[start:start + _UPSERT_CHUNK]
            params: list[Any] = []
            for stream in chunk:
                params.extend((tenant_id, stream, counts[stream]))
            values = ", ".join(["(%s, %s, %s)"] * len(chunk))
            cursor.execute(f"INSERT INTO {columns} VALUES {values} {upsert}", params)  # noqa: S608
            last_seqs.update(cursor.fetchall())
    return last_seqs


_CURSOR_TABLE = StreamCursor._meta.db_table
_OUTBOX_TABLE = OutboxEvent._meta.db_table


def _pg_cursor_upsert(tenant: Tenant, counts: dict[str, int], wake: str | None = None) -> tuple[str, list[Any]]:
    """PostgreSQL: the cursors' upsert, `RETURNING stream, last_seq`. Two array parameters whatever the
    number of streams, in sorted stream order (the ordinality makes it explicit: the order of the row
    locks). `wake`: the name of a one-row CTE (the notification) joined to the source rows, which runs it
    exactly once."""
    streams = sorted(counts)
    join = f" CROSS JOIN {wake}" if wake else ""
    return (
        f'INSERT INTO "{_CURSOR_TABLE}" ("tenant_id", "stream", "last_seq") SELECT %s, u.stream, u.count '  # noqa: S608
        f"FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS u(stream, count, position){join} "
        f'ORDER BY u.position ON CONFLICT ("tenant_id", "stream") DO UPDATE SET '
        f'"last_seq" = "{_CURSOR_TABLE}"."last_seq" + EXCLUDED."last_seq" RETURNING "stream", "last_seq"',
        [tenant.pk, pg_array(streams), pg_array([counts[stream] for stream in streams])],
    )


def _defer_events(defer: list[Deferrable], tenant: Tenant, events: Sequence[EventSpec], counts: dict[str, int],
                  encoded: list[str], notify: str | None) -> None:
    """PostgreSQL: append the cursors' upsert (a `NamedStatement`) and the events' insert, which takes each
    event's seq from its stream's new last_seq: the k-th of a stream's n events of this call gets
    last_seq - n + k (the upsert's `RETURNING`: the value it wrote, after waiting for any other
    transaction's lock on the cursor)."""
    if any(isinstance(statement, NamedStatement) and statement.name.endswith("_cursors") for statement in defer):
        # Two upserts of one cursor in one statement fail ("cannot affect row a second time").
        raise RuntimeError("one deferred events_emit per statement: gather the transaction's events in one call")
    prefix = f"ev{len(defer)}"
    wake = None
    if notify is not None:
        wake = f"{prefix}_wake"
        defer.append(NamedStatement("SELECT pg_notify(%s, '')", [notify], wake))
    cursors = f"{prefix}_cursors"
    upsert, upsert_params = _pg_cursor_upsert(tenant, counts, wake)
    defer.append(NamedStatement(upsert, upsert_params, cursors))
    seen: dict[str, int] = {}
    params: list[Any] = []
    for spec, data in zip(events, encoded, strict=True):
        position = seen[spec.stream] = seen.get(spec.stream, 0) + 1
        params.extend((spec.id or uuid7(), spec.stream, position - counts[spec.stream], spec.type, data))
    first = "(%s::uuid, %s::text, %s::bigint, %s::text, %s::jsonb)"
    values = ", ".join([first] + ["(%s, %s, %s, %s, %s)"] * (len(events) - 1))
    defer.append((
        f'INSERT INTO "{_OUTBOX_TABLE}" ("id", "tenant_id", "stream", "seq", "type", "data", "created_at") '  # noqa: S608
        f"SELECT v.id, %s, v.stream, c.last_seq + v.offset_, v.type, v.data, %s "
        f"FROM (VALUES {values}) AS v(id, stream, offset_, type, data) JOIN {cursors} AS c ON c.stream = v.stream",
        [tenant.pk, timezone.now(), *params],
    ))


def _copy_events(connection: BaseDatabaseWrapper, tenant: Tenant, events: Sequence[EventSpec], ids: list[uuid.UUID],
                 seqs: list[int], encoded: list[str], now: datetime, returning: bool,
                 defer: list[Deferrable] | None = None) -> list[OutboxEvent]:
    """PostgreSQL: write the events with `copy_rows` (one INSERT for a few, one COPY for many) and return
    them as saved model instances."""
    tenant_id = tenant.pk
    rows: list[OutboxEvent] = []
    copy_rows(connection, OutboxEvent, ("id", "tenant_id", "stream", "seq", "type", "data", "created_at"),
              [(event_id, tenant_id, spec.stream, seq, spec.type, data, now)
               for event_id, spec, seq, data in zip(ids, events, seqs, encoded, strict=True)], defer=defer)
    if not returning:
        return rows
    alias = connection.alias
    related = {"tenant": tenant}
    for event_id, spec, seq in zip(ids, events, seqs, strict=True):
        rows.append(loaded(OutboxEvent, alias, {
            "id": event_id, "tenant_id": tenant_id, "stream": spec.stream, "seq": seq, "type": spec.type,
            "data": spec.data, "created_at": now, "published_at": None}, related))
    return rows


def _bump_cursors_portably(connection: BaseDatabaseWrapper, tenant: Tenant, counts: dict[str, int],
                           streams: list[str]) -> dict[str, int]:
    """Fallback for databases without upsert-returning (SQLite < 3.35): statements per stream."""
    manager = StreamCursor.all_tenants.db_manager(connection.alias)
    last_seqs = {}
    for stream in streams:
        updated = manager.filter(tenant=tenant, stream=stream).update(last_seq=F("last_seq") + counts[stream])
        if updated:
            last_seqs[stream] = manager.filter(tenant=tenant, stream=stream).values_list("last_seq", flat=True)[0]
        else:
            manager.create(tenant=tenant, stream=stream, last_seq=counts[stream])
            last_seqs[stream] = counts[stream]
    return last_seqs


def _after_commit() -> None:
    from wallet.events.relay import wake_relay

    _tell_commit_listeners()

    wake_relay()


def _notify_channel(connection: BaseDatabaseWrapper) -> str | None:
    """The channel to NOTIFY in this emit (PostgreSQL, out-of-process relay, first emit of the
    transaction), else None. The on-commit hook's presence marks "already done": a savepoint rollback drops
    both the hook and a NOTIFY sent inside it, so the next emit in the transaction sends them again."""
    if connection.vendor != "postgresql" or not conf.notify() or conf.relay_in_process():
        return None
    if any(entry[1] is _after_commit for entry in connection.run_on_commit):
        return None
    return conf.notify_channel()


def _wake_relay_after_commit(connection: BaseDatabaseWrapper, alias: str, *, notified: bool = False) -> None:
    """Once per transaction: NOTIFY an out-of-process relay (PostgreSQL; delivered at commit), unless the
    cursor upsert already did (`notified`), and register the on-commit hook that wakes an in-process relay.
    """
    if any(entry[1] is _after_commit for entry in connection.run_on_commit):
        return
    if not notified and _notify_channel(connection) is not None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [conf.notify_channel()])
    transaction.on_commit(_after_commit, using=alias, robust=True)


def _uuid7_floor(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of the millisecond `moment`: every UUIDv7 made before it compares lower."""
    return uuid.UUID(int=int(moment.timestamp() * 1000) << 80)


def events_purge_published(*, older_than: timedelta | None = None, keep_per_stream: int | None = None,
                           batch_size: int = _PURGE_BATCH) -> int:
    """Delete published events that are both older than `older_than` (default `OUTBOX_RETENTION_HOURS`,
    72 h) and not among the newest `keep_per_stream` (default `OUTBOX_RETAIN_PER_STREAM`, 1000) of their
    stream; return how many were deleted. Across all tenants (platform housekeeping).

    What is kept, exactly, for replay: every unpublished event; every event created within the retention
    window; and in every stream, whatever its age, the events with `seq > head - keep_per_stream`, where
    head is the stream cursor's last_seq. Consequence for replay: from any `after_seq >= head -
    keep_per_stream` the table holds the complete tail of the stream; from an older one it may not (the
    client then needs a full resync).

    Age is read from the UUIDv7 id (the emitting process's clock), which makes the scan a primary-key range.
    Deletes in batches of `batch_size`, each its own statement, so no lock is held for long.
    """
    hours = conf.retention_hours() if older_than is None else older_than.total_seconds() / 3600
    keep = conf.retain_per_stream() if keep_per_stream is None else keep_per_stream
    cutoff_id = _uuid7_floor(timezone.now() - timedelta(hours=hours))
    head = StreamCursor.all_tenants.filter(tenant_id=OuterRef("tenant_id"), stream=OuterRef("stream"))
    deletable = OutboxEvent.all_tenants.filter(
        id__lt=cutoff_id,
        published_at__isnull=False,
        seq__lte=Subquery(head.values("last_seq")[:1]) - keep,
    )
    total = 0
    while True:
        ids = deletable.values("id")[:batch_size]
        deleted, _ = OutboxEvent.all_tenants.filter(id__in=ids).delete()
        total += deleted
        if deleted < batch_size:
            break
    if total:
        logger.info("outbox purged", extra={"deleted": total, "retention_hours": hours, "keep_per_stream": keep})
    return total
