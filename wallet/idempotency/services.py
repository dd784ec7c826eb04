"""Writes of the Idempotency-Key layer: claim a key, complete it, purge expired records.

The low-level pair works inside any transaction the caller owns (a view, or later a batch of requests):

    with transaction.atomic():
        claim = idempotency_claim(tenant=t, user=u, key=k, fingerprint=f, method="POST", path=p)
        if claim.stored is not None:
            return claim.stored                   # replay: nothing else to do
        with transaction.atomic():                # a savepoint: a business error undoes only the effect
            ... the effect ...
        idempotency_complete(claim, status=201, body=b"...", content_type="application/json")

`idempotency_claim` inserts the record (pending) in the caller's transaction, so the record and the effect
commit or roll back together: a retry can never see an effect without its record, nor a record without
its effect. Concurrency:
- PostgreSQL: one statement takes `pg_try_advisory_xact_lock(<64-bit hash of tenant, user, key>)` and, only
  if it got it, inserts the pending record with `ON CONFLICT DO NOTHING`. Not getting the lock means
  another transaction holds this key right now: 409 at once (nobody waits), unless the key already has a
  completed record, which is replayed. The lock is held until the caller's transaction ends, i.e. until
  the record is committed (or rolled back).
- SQLite: transactions are IMMEDIATE, so writers are serialised; a duplicate waits for the first to
  commit, then finds its record and replays it.
- Everywhere: the unique constraint on (tenant, user, key) is the final arbiter.
The isolation level must be READ COMMITTED (Django's default) on PostgreSQL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from tenants.models import Tenant, User
from wallet.core.bulk import Deferrable, SentQuery, hot_cursor, pg_array
from wallet.core.errors import ApiError
from wallet.idempotency import conf
from wallet.idempotency.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from wallet.idempotency.fingerprint import advisory_lock_id, validate_idempotency_key
from wallet.idempotency.models import IdempotencyRecord
from wallet.idempotency.selectors import KeyRecord, idempotency_record_get
from wallet.idempotency.sql import quote_identifier as _quote

logger = logging.getLogger("wallet.idempotency")


@dataclass(frozen=True)
class StoredResponse:
    """The first response of a key, as sent: replayed byte for byte."""

    status: int
    body: bytes
    content_type: str = ""
    location: str = ""


@dataclass(frozen=True)
class Claim:
    """The outcome of `idempotency_claim`: either a stored response to replay, or a record to complete."""

    tenant_id: Any
    user_id: Any
    key: str
    record_id: int | None = None
    stored: StoredResponse | None = None
    using: str = "default"

    @property
    def is_replay(self) -> bool:
        return self.stored is not None


def in_flight_error() -> IdempotencyKeyInFlight:
    """409 `idempotency_key_in_flight`, with `Retry-After: 1` (the first request is usually quick)."""
    error = IdempotencyKeyInFlight(retry_after=1)
    error.headers["Retry-After"] = "1"
    return error


def idempotency_database_alias() -> str:
    """The database holding the records (the effect's transaction must be on the same one)."""
    return router.db_for_write(IdempotencyRecord) or "default"


def _require_transaction(connection: BaseDatabaseWrapper, what: str) -> None:
    if not connection.in_atomic_block:
        raise TransactionManagementError(
            f"{what} must run inside transaction.atomic(), in the same transaction as the request's effect."
        )


def _stored_response(record: KeyRecord, fingerprint: str) -> StoredResponse | None:
    """The record's response (None while it is pending); 422 when it belongs to another request."""
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    if record.response_status is None:
        return None
    return StoredResponse(
        status=record.response_status, body=record.response_body,
        content_type=record.response_content_type, location=record.response_location,
    )


def idempotency_stored_response(*, tenant: Tenant, user: User, key: str,
                                fingerprint: str) -> StoredResponse | None:
    """The completed response of `key` for (tenant, user), or None if there is none (yet).

    Raises 422 `idempotency_key_reused` when the key was used for another request. Needs no transaction:
    the fast path calls it when another request holds the key's fast lock.
    """
    record = idempotency_record_get(tenant=tenant, user=user, key=key)
    if record is None:
        return None
    return _stored_response(record, fingerprint)


_CLAIM_COLUMNS = (
    "tenant", "user", "key", "method", "path", "fingerprint", "response_body", "response_content_type",
    "response_location", "created_at", "expires_at",
)


@functools.cache
def _claim_postgresql_sql() -> str:
    meta = IdempotencyRecord._meta
    columns = ", ".join(_quote(meta.get_field(name).column) for name in _CLAIM_COLUMNS)
    placeholders = ", ".join(["%s"] * len(_CLAIM_COLUMNS))
    unique = ", ".join(_quote(meta.get_field(name).column) for name in ("tenant", "user", "key"))
    table, pk = _quote(meta.db_table), _quote(meta.pk.column)
    # Identifiers come from the model and are quoted; every value is a query parameter.
    return (
        "WITH lock AS (SELECT pg_try_advisory_xact_lock(%s) AS acquired), "  # noqa: S608
        f"inserted AS (INSERT INTO {table} ({columns}) SELECT {placeholders} FROM lock WHERE lock.acquired "
        f"ON CONFLICT ({unique}) DO NOTHING RETURNING {pk}) "
        f"SELECT lock.acquired, (SELECT {pk} FROM inserted) FROM lock"
    )


def _claim_postgresql(connection: BaseDatabaseWrapper, values: dict[str, Any], lock_id: int) -> tuple[bool, int | None]:
    """Try the advisory lock and, only when it is acquired, insert the pending record: one round trip.

    Two statements (lock, then insert) would cost a round trip more. In one statement the insert cannot
    miss a record committed just before the lock was acquired, because `ON CONFLICT` checks the unique
    index against committed rows, not against the statement's snapshot.
    """
    meta = IdempotencyRecord._meta
    params: list[Any] = [lock_id]
    params.extend(meta.get_field(name).get_db_prep_save(values[name], connection) for name in _CLAIM_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(_claim_postgresql_sql(), params)
        acquired, record_id = cursor.fetchone()
    return bool(acquired), record_id


def idempotency_claim(*, tenant: Tenant, user: User, key: str, fingerprint: str, method: str,
                      path: str) -> Claim:
    """Claim `key` for (tenant, user) inside the caller's transaction.

    Returns a `Claim` carrying either the stored response of the completed first request (replay it;
    write nothing), or a new pending record that `idempotency_complete` must fill in the same transaction.
    Raises 422 `idempotency_key_reused` (the key belongs to a request with another fingerprint) and 409
    `idempotency_key_in_flight` (the first request is still running). On a 409 raised after a database
    conflict the transaction must be rolled back, as with any database error.
    """
    validate_idempotency_key(key)
    using = idempotency_database_alias()
    connection = connections[using]
    _require_transaction(connection, "idempotency_claim")
    now = timezone.now()
    values: dict[str, Any] = {
        "tenant": tenant.pk, "user": user.pk, "key": key, "method": method.upper(), "path": path,
        "fingerprint": fingerprint, "response_body": b"", "response_content_type": "",
        "response_location": "", "created_at": now, "expires_at": now + conf.ttl(),
    }
    if connection.vendor == "postgresql":
        acquired, record_id = _claim_postgresql(
            connection, values, advisory_lock_id(tenant_id=tenant.pk, user_id=user.pk, key=key)
        )
        if record_id is not None:
            return Claim(tenant_id=tenant.pk, user_id=user.pk, key=key, record_id=record_id, using=using)
        # Either another transaction holds the lock (it runs the first request, or it is only replaying a
        # completed one), or the key already has a record (committed, or claimed earlier in this same
        # transaction: advisory locks are re-entrant). A completed record answers either way.
        record = idempotency_record_get(tenant=tenant, user=user, key=key)
        if not acquired and (record is None or not record.is_complete):
            raise in_flight_error()
    else:
        record = idempotency_record_get(tenant=tenant, user=user, key=key)
        if record is None:
            fields = {name + ("_id" if name in ("tenant", "user") else ""): value for name, value in values.items()}
            try:
                created = IdempotencyRecord.all_tenants.create(**fields)
            except IntegrityError as exc:  # a concurrent claim won (only without IMMEDIATE transactions)
                raise in_flight_error() from exc
            return Claim(tenant_id=tenant.pk, user_id=user.pk, key=key, record_id=created.pk, using=using)
    if record is None:  # purged between the two statements: let the client retry
        raise in_flight_error()
    stored = _stored_response(record, fingerprint)
    if stored is None:
        # Pending: claimed earlier in this same transaction, or (a bug) committed without a response.
        stale_before = now - timedelta(seconds=conf.lock_ttl_seconds())
        if IdempotencyRecord.all_tenants.filter(pk=record.id, created_at__lt=stale_before).exists():
            logger.error("idempotency record committed without a response (claimed, never completed)",
                         extra={"record_id": record.id})
        raise in_flight_error()
    return Claim(tenant_id=tenant.pk, user_id=user.pk, key=key, stored=stored, using=using)


def idempotency_complete(claim: Claim, *, status: int, body: bytes, content_type: str = "",
                         location: str | None = None) -> None:
    """Store the response of a claimed key, in the transaction that claimed it (and ran the effect)."""
    if claim.record_id is None:
        raise ValueError("This claim replays a stored response; there is nothing to complete.")
    connection = connections[claim.using]
    _require_transaction(connection, "idempotency_complete")
    meta = IdempotencyRecord._meta
    values = {
        "response_status": status, "response_body": bytes(body), "response_content_type": content_type or "",
        "response_location": location or "",
    }
    params = [meta.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]
    params.append(claim.record_id)
    # Raw SQL: this runs on every request, and the ORM's query compilation costs more than the round trip.
    with connection.cursor() as cursor:
        cursor.execute(_complete_sql(), params)
        updated = cursor.rowcount
    if updated != 1:
        raise TransactionManagementError(
            "The claimed idempotency record is gone or already completed: complete a claim once, in the "
            "transaction that claimed it."
        )


@functools.cache
def _complete_sql() -> str:
    meta = IdempotencyRecord._meta
    quote = _quote
    assignments = ", ".join(
        f"{quote(meta.get_field(name).column)} = %s"
        for name in ("response_status", "response_body", "response_content_type", "response_location")
    )
    status = quote(meta.get_field("response_status").column)
    # Identifiers come from the model and are quoted; every value is a query parameter.
    return (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608
        f"WHERE {quote(meta.pk.column)} = %s AND {status} IS NULL"
    )


def idempotency_purge_expired(*, now: datetime | None = None, batch_size: int | None = None) -> int:
    """Delete records whose `expires_at` has passed, in batches; return how many were deleted.

    Platform code: runs across all tenants. Expired records are honoured until this runs, so a key is
    kept at least `IDEMPOTENCY_TTL_HOURS`.
    """
    now = now or timezone.now()
    batch_size = batch_size or conf.purge_batch_size()
    deleted_total = 0
    while True:
        ids = list(
            IdempotencyRecord.all_tenants.filter(expires_at__lte=now).order_by("expires_at")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        deleted, _ = IdempotencyRecord.all_tenants.filter(pk__in=ids, expires_at__lte=now).delete()
        deleted_total += deleted
        if len(ids) < batch_size:
            break
    if deleted_total:
        logger.info("idempotency records purged", extra={"deleted": deleted_total})
    return deleted_total


# --- many keys at once (group commit) ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClaimRequest:
    """One key to claim in `idempotency_claim_many`."""

    user: User
    key: str
    fingerprint: str
    method: str
    path: str


@functools.cache
def _claim_many_postgresql_sql() -> str:
    meta = IdempotencyRecord._meta
    column = {name: _quote(meta.get_field(name).column) for name in (*_CLAIM_COLUMNS, "id")}
    table = _quote(meta.db_table)
    insert_columns = ", ".join(column[name] for name in _CLAIM_COLUMNS)
    # One statement for the whole batch, the same rule as `_claim_postgresql` per row: try the key's
    # advisory lock and insert the pending record only where it was acquired. `locked` is materialised
    # (it calls a volatile function and is read twice), so each lock is tried exactly once.
    return (
        "WITH input AS (SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::text[], %s::text[], "  # noqa: S608
        "%s::text[]) WITH ORDINALITY AS i(lock_id, user_id, key, method, path, fingerprint, pos)), "
        "locked AS MATERIALIZED (SELECT input.*, pg_try_advisory_xact_lock(input.lock_id) AS acquired FROM input), "
        f"inserted AS (INSERT INTO {table} ({insert_columns}) "
        "SELECT %s, user_id, key, method, path, fingerprint, ''::bytea, '', '', %s, %s FROM locked "
        f"WHERE acquired ORDER BY pos ON CONFLICT ({column['tenant']}, {column['user']}, {column['key']}) "
        f"DO NOTHING RETURNING {column['id']} AS id, {column['user']} AS user_id, {column['key']} AS key) "
        "SELECT locked.pos, locked.acquired, inserted.id FROM locked "
        "LEFT JOIN inserted ON inserted.user_id = locked.user_id AND inserted.key = locked.key ORDER BY locked.pos"
    )


def idempotency_claim_many(*, tenant: Tenant, requests: Sequence[ClaimRequest]) -> list[Claim | ApiError]:
    """`idempotency_claim` for many keys of one tenant in the caller's transaction: on PostgreSQL one
    statement claims them all (plus one read for the keys that already had a record). Each result is
    the `Claim` (new, or a replay) or the error that key answers (409 in flight, 422 reused).

    The keys must be distinct (per user); the group committer defers a duplicate to its next batch.
    """
    return idempotency_claims_send(tenant=tenant, requests=requests).result()


def idempotency_claims_send(*, tenant: Tenant, requests: Sequence[ClaimRequest]) -> PendingClaims:
    """`idempotency_claim_many`, in two steps: this sends the claim statement; `.result()` reads it. In
    the caller's `bulk.pipeline`, statements sent in between share the claim's round trip."""
    using = idempotency_database_alias()
    connection = connections[using]
    _require_transaction(connection, "idempotency_claim_many")
    if len({(request.user.pk, request.key) for request in requests}) != len(requests):
        raise ValueError("idempotency_claim_many needs distinct (user, key) pairs")
    if connection.vendor != "postgresql":
        results: list[Claim | ApiError] = []
        for request in requests:
            try:
                results.append(idempotency_claim(tenant=tenant, user=request.user, key=request.key,
                                                 fingerprint=request.fingerprint, method=request.method,
                                                 path=request.path))
            except ApiError as error:
                results.append(error)
        return PendingClaims(tenant, requests, using, results=results)
    now = timezone.now()
    for request in requests:
        validate_idempotency_key(request.key)
    params: list[Any] = [
        pg_array([advisory_lock_id(tenant_id=tenant.pk, user_id=request.user.pk, key=request.key)
                  for request in requests]),
        pg_array([request.user.pk for request in requests]),
        pg_array([request.key for request in requests]),
        pg_array([request.method.upper() for request in requests]),
        pg_array([request.path for request in requests]),
        pg_array([request.fingerprint for request in requests]),
        tenant.pk, now, now + conf.ttl(),
    ]
    return PendingClaims(tenant, requests, using, sent=SentQuery(connection, _claim_many_postgresql_sql(), params))


class PendingClaims:
    """The claims of `idempotency_claims_send`, read with `result()` (once)."""

    def __init__(self, tenant: Tenant, requests: Sequence[ClaimRequest], using: str, *,
                 sent: SentQuery | None = None, results: list[Claim | ApiError] | None = None) -> None:
        self._tenant, self._requests, self._using = tenant, requests, using
        self._sent, self._results = sent, results

    def result(self) -> list[Claim | ApiError]:
        if self._results is not None:
            return self._results
        assert self._sent is not None, "result() reads the claims once"
        rows, self._sent = self._sent.fetchall(), None
        tenant, requests, using = self._tenant, self._requests, self._using
        results_by_pos: dict[int, Claim | ApiError] = {}
        unclaimed = []
        for position, _acquired, record_id in rows:
            request = requests[position - 1]
            if record_id is not None:
                results_by_pos[position] = Claim(tenant_id=tenant.pk, user_id=request.user.pk, key=request.key,
                                                 record_id=record_id, using=using)
            else:
                unclaimed.append(position)  # locked elsewhere, or the key already has a record
        if unclaimed:
            records = _records_get(connections[using], tenant, [requests[position - 1] for position in unclaimed])
            for position in unclaimed:
                request = requests[position - 1]
                record = records.get((request.user.pk, request.key))
                try:
                    if record is None or not record.is_complete:
                        # Held by another transaction right now, or pending (or purged a moment ago): retry.
                        raise in_flight_error()
                    stored = _stored_response(record, request.fingerprint)
                    assert stored is not None
                    results_by_pos[position] = Claim(tenant_id=tenant.pk, user_id=request.user.pk, key=request.key,
                                                     stored=stored, using=using)
                except ApiError as error:
                    results_by_pos[position] = error
        self._results = [results_by_pos[position] for position in range(1, len(requests) + 1)]
        return self._results


def _records_get(connection: BaseDatabaseWrapper, tenant: Tenant,
                 requests: Sequence[ClaimRequest]) -> dict[tuple[Any, str], KeyRecord]:
    meta = IdempotencyRecord._meta
    column = {name: _quote(meta.get_field(name).column) for name in
              ("id", "tenant", "user", "key", "fingerprint", "response_status", "response_body",
               "response_content_type", "response_location")}
    sql = (
        f"SELECT r.{column['user']}, r.{column['key']}, r.{column['id']}, r.{column['fingerprint']}, "  # noqa: S608
        f"r.{column['response_status']}, r.{column['response_body']}, r.{column['response_content_type']}, "
        f"r.{column['response_location']} FROM {_quote(meta.db_table)} r "
        f"JOIN unnest(%s::uuid[], %s::text[]) AS w(user_id, key) ON r.{column['user']} = w.user_id "
        f"AND r.{column['key']} = w.key WHERE r.{column['tenant']} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [pg_array([r.user.pk for r in requests]), pg_array([r.key for r in requests]), tenant.pk])
        rows = cursor.fetchall()
    return {
        (user_id, key): KeyRecord(id=record_id, fingerprint=fingerprint, response_status=status,
                                  response_body=bytes(body), response_content_type=content_type,
                                  response_location=location)
        for user_id, key, record_id, fingerprint, status, body, content_type, location in rows
    }


@dataclass(frozen=True)
class Completion:
    claim: Claim
    status: int
    body: bytes
    content_type: str = ""
    location: str = ""


def idempotency_complete_many(completions: Sequence[Completion], defer: list[Deferrable] | None = None) -> None:
    """`idempotency_complete` for many claims of the caller's transaction: one UPDATE on PostgreSQL.

    With `defer` (PostgreSQL), the UPDATE is appended there for the caller to run with its other writes
    (`bulk.execute_together`); it then checks itself that it completes every claim, and fails the
    statement if not (as the immediate form raises `TransactionManagementError`)."""
    if not completions:
        return
    using = completions[0].claim.using
    connection = connections[using]
    _require_transaction(connection, "idempotency_complete_many")
    if any(c.claim.record_id is None for c in completions):
        raise ValueError("A replayed claim has nothing to complete.")
    if connection.vendor != "postgresql":
        for c in completions:
            idempotency_complete(c.claim, status=c.status, body=c.body, content_type=c.content_type,
                                 location=c.location)
        return
    meta = IdempotencyRecord._meta
    column = {name: _quote(meta.get_field(name).column) for name in
              ("id", "response_status", "response_body", "response_content_type", "response_location")}
    sql = (
        f"UPDATE {_quote(meta.db_table)} AS r SET {column['response_status']} = v.status, "  # noqa: S608
        f"{column['response_body']} = v.body, {column['response_content_type']} = v.content_type, "
        f"{column['response_location']} = v.location "
        "FROM unnest(%s::bigint[], %s::int[], %s::bytea[], %s::text[], %s::text[]) "
        "AS v(id, status, body, content_type, location) "
        f"WHERE r.{column['id']} = v.id AND r.{column['response_status']} IS NULL"
    )
    ids = pg_array([c.claim.record_id for c in completions])
    params = [ids, pg_array([c.status for c in completions]), pg_array([bytes(c.body) for c in completions]),
              pg_array([c.content_type or "" for c in completions]), pg_array([c.location or "" for c in completions])]
    if defer is not None:
        if using != DEFAULT_DB_ALIAS:
            raise ValueError("a deferred completion runs in the ledger's statement, on the default database")
        # Evaluated once (an uncorrelated subquery); the failing cast depends on the count, so the planner
        # cannot fold it: it raises only when a claimed record is gone or completed already.
        guard = (
            f" AND (SELECT CASE WHEN count(*) = %s::bigint THEN true ELSE CAST("  # noqa: S608
            "'claimed idempotency records gone or already completed: ' || (%s::bigint - count(*)) AS boolean) "
            f"END FROM {_quote(meta.db_table)} AS g WHERE g.{column['id']} = ANY(%s::bigint[]) "
            f"AND g.{column['response_status']} IS NULL)"
        )
        defer.append((sql + guard, [*params, len(completions), len(completions), ids]))
        return
    with hot_cursor(connection) as cursor:
        # The rows, not the row count: in a `bulk.pipeline` the count is known only once results are read.
        cursor.execute(f"{sql} RETURNING r.{column['id']}", params)
        updated = len(cursor.fetchall())
    if updated != len(completions):
        raise TransactionManagementError(
            f"{len(completions) - updated} claimed idempotency records are gone or already completed."
        )
