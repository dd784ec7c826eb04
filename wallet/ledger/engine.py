"""The ledger engine: applies entries and hold changes for one tenant under locks, in batches.

`LedgerBatch` is used inside the caller's `transaction.atomic()` block:

1. `lock(account_ids, head=...)` takes the accounts' row locks in primary-key order, and with `head` the
   tenant's `LedgerHead` row lock too (in a `bulk.pipeline`, in the same round trip).
2. `apply(draft)` checks an entry (two or more postings, zero sum per asset, no account that may not go
   negative goes below zero) against the in-memory balances and records it; a refused draft changes
   nothing, so one batch can hold many independent transfers and refuse some of them.
3. `flush()` takes the head's lock unless `lock` did, numbers and hashes the entries, and writes the
   balances, the events (`account.balance_changed` to the owners' streams, plus whatever the caller queued
   in `events`), the entries and their postings; on PostgreSQL all in one statement (`deferred`).

Lock order, the same for every writer: accounts (by primary key), the ledger head, daily-usage rows (the
transfers' senders', whose accounts are locked already), then the event-stream cursors (the outbox's
upsert, in the last statement). `lock` refuses an account once the head is locked. Transfers on disjoint
accounts still queue on the head, for their place in the hash chain: the group commit holds it for one
round trip after it is granted (the last statement, with the COMMIT). Foreign keys to the entries are
deferred to commit. Nothing is acknowledged to anyone before the caller's transaction commits.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import DatabaseError, connection
from django.utils import timezone

from tenants.models import Tenant
from wallet.core.bulk import Deferrable, SentQuery, copy_rows, execute_together, loaded, pg_array
from wallet.core.ids import uuid7
from wallet.ledger.errors import InsufficientFunds, UnbalancedEntry
from wallet.ledger.models import Account, Asset, JournalEntry, LedgerHead, Posting

GENESIS_HASH = "0" * 64
_ENTRY_FIELDS = ("tenant_id", "id", "seq", "kind", "memo", "reference", "reverses_id", "requested_by_id",
                 "created_at", "prev_hash", "hash")
_POSTING_FIELDS = ("tenant_id", "entry_id", "account_id", "asset_id", "amount", "created_at")


@dataclass(frozen=True)
class Leg:
    """One posting of a draft entry: a signed amount on an account (positive credits it)."""

    account_id: UUID
    amount: int


@dataclass
class EntryDraft:
    kind: str
    legs: list[Leg]
    memo: str = ""
    reference: str = ""
    reverses_id: UUID | None = None
    requested_by_id: UUID | None = None
    # Changes to accounts' held amounts that happen with this entry (posting a hold releases it).
    held_deltas: dict[UUID, int] = field(default_factory=dict)
    id: UUID = field(default_factory=uuid7)
    created_at: datetime = field(default_factory=timezone.now)


def entry_hash(*, prev_hash: str, entry_id: Any, seq: int, kind: str, created_at: datetime, memo: str,
               reference: str, reverses_id: Any, legs: Iterable[tuple[Any, Any, int]]) -> str:
    """SHA-256 over the previous hash and a canonical form of the entry and its postings.

    `legs` are (account id, asset id, amount); they are sorted here so that the order postings were
    written or read in does not matter.
    """
    canonical_legs = ";".join(f"{a}:{b}:{amount}" for a, b, amount in sorted((str(a), str(b), int(c))
                                                                              for a, b, c in legs))
    text = "|".join([
        prev_hash, str(entry_id), str(seq), kind, created_at.isoformat(), memo, reference,
        str(reverses_id or ""), canonical_legs,
    ])
    return hashlib.sha256(text.encode()).hexdigest()


_LOCKED = [field for field in Account._meta.concrete_fields if field.attname not in ("created_at", "updated_at")]
_LOCKED_FIELDS = tuple(field.attname for field in _LOCKED)
_LOCK_SQL = (
    f"SELECT {', '.join(field.column for field in _LOCKED)} "  # noqa: S608 (constant names)
    f"FROM {Account._meta.db_table} WHERE tenant_id = %s AND id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE"
)
_HEAD_TABLE = LedgerHead._meta.db_table
_HEAD_LOCK_SQL = f"SELECT seq, hash FROM {_HEAD_TABLE} WHERE tenant_id = %s"  # noqa: S608
_HEAD_UPDATE_SQL = f"UPDATE {_HEAD_TABLE} SET seq = %s, hash = %s WHERE tenant_id = %s"  # noqa: S608
_ASSETS: dict[UUID, Asset] = {}


def _head_tenant_id(tenant: Tenant) -> Any:
    return LedgerHead._meta.get_field("tenant").get_db_prep_value(tenant.pk, connection)


def _head_locked(tenant: Tenant) -> LedgerHead | None:
    """The tenant's ledger head, locked until commit (plain SQL: it runs in every ledger transaction)."""
    return _head_from(tenant, _head_lock_send(tenant).fetchone())


def _head_lock_send(tenant: Tenant) -> SentQuery:
    """`_head_locked` in two steps: the statement sent, its row read later (`_head_from`)."""
    # SQLite has no row locks: its transactions are IMMEDIATE, writers are serialised anyway.
    sql = _HEAD_LOCK_SQL + (" FOR UPDATE" if connection.vendor == "postgresql" else "")
    return SentQuery(connection, sql, [_head_tenant_id(tenant)])


def _head_from(tenant: Tenant, row: tuple[Any, ...] | None) -> LedgerHead | None:
    if row is None:
        return None
    return loaded(LedgerHead, connection.alias, {"tenant_id": tenant.pk, "seq": row[0], "hash": row[1]},
                  {"tenant": tenant})


# The class (first key) of the tenants' writer locks, apart from the other advisory locks of the app.
_WRITER_LOCK_CLASS = 0x4C454447  # "LEDG"


def tenant_writer_lock(tenant: Tenant) -> None:
    """PostgreSQL: wait for the tenant's writer lock (a transaction-level advisory lock), before any row lock.

    Taken by large batches only (`LEDGER_WRITER_LOCK_MIN_BATCH`). Two large batches of one tenant almost
    always share accounts; without it they lock their accounts in order until they meet, then wait for
    each other half-locked, and every batch they hold rows of waits behind them too (a convoy). With it
    they run one after the other, each at full speed, while the next ones build their rows outside.
    Small writers do not take it: they still meet large batches on the account row locks only, which a
    batch always takes after this lock, so no cycle can form. Tenants whose key collides share a lock.
    """
    if connection.vendor != "postgresql":
        return  # SQLite serialises writers already
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_WRITER_LOCK_CLASS, _writer_key(tenant)])


def _writer_key(tenant: Tenant) -> int:
    return int.from_bytes(UUID(str(tenant.pk)).bytes[:4], "big", signed=True)


class WriterSessionLock:
    """PostgreSQL: the same writer lock, held by the session, for a caller whose transaction is the outermost
    one: it releases the lock as the last statement before its COMMIT, so that the next batch of the tenant
    takes its locks while this one commits (it waits only on the rows both share, and only until the commit
    ends; the ledger head, locked until commit, keeps the hash chain in order). If the transaction fails
    instead, `release_after_rollback()`, outside it, lets the lock go (or ends the session, which does)."""

    def __init__(self, tenant: Tenant) -> None:
        self.params = [_WRITER_LOCK_CLASS, _writer_key(tenant)]
        self.held = False

    def acquire(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", self.params)
        self.held = True

    def release(self) -> None:
        if self.held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", self.params)
            self.held = False

    def release_after_rollback(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", self.params)
        except DatabaseError:
            connection.close()  # the session's end releases every lock it held


def asset_cached(asset_id: UUID) -> Asset:
    """An asset by id, read once per process (assets are never deleted; code and decimals never change)."""
    asset = _ASSETS.get(asset_id)
    if asset is None:
        asset = _ASSETS[asset_id] = Asset.objects.get(pk=asset_id)
    return asset


class LedgerBatch:
    """Locks, in-memory balances and pending writes of one tenant's ledger changes in one transaction."""

    def __init__(self, tenant: Tenant) -> None:
        if not connection.in_atomic_block:
            raise RuntimeError("LedgerBatch must be used inside transaction.atomic()")
        self.tenant = tenant
        self.head: LedgerHead | None = None
        self.accounts: dict[UUID, Account] = {}
        self.drafts: list[EntryDraft] = []
        self.dirty: set[UUID] = set()
        self.entries: list[JournalEntry] = []
        # Events written with the flush, after the balance events, in one outbox call per transaction.
        self.events: list[Any] = []
        self.now = timezone.now()
        # PostgreSQL: writes run together at the end of `flush` (see there); None elsewhere.
        self.deferred: list[Deferrable] | None = [] if connection.vendor == "postgresql" else None

    # --- locking ----------------------------------------------------------------------------------------
    def lock(self, account_ids: Iterable[UUID | str], *, head: bool = False) -> dict[UUID, Account]:
        """Lock the given accounts, in primary-key order (call again to add accounts: new ones only), and with
        `head`, then the tenant's ledger head, in the same round trip when in a `bulk.pipeline`.

        Every ledger transaction locks in this order: accounts, then the head (here, or at the latest by
        `flush`), then the stream cursors (the outbox's upsert, in `flush`'s last statement). So no account
        may be locked once the head is."""
        wanted = sorted({a if isinstance(a, UUID) else UUID(str(a)) for a in account_ids} - self.accounts.keys())
        if wanted and self.head is not None and connection.vendor == "postgresql":
            raise RuntimeError("accounts must be locked before the ledger head")
        head = head and self.head is None
        if wanted and connection.vendor == "postgresql":
            self._lock_raw(wanted, head=head)  # the head's lock with the accounts' (one round trip in a pipeline)
            return self.accounts
        if wanted:
            rows = (
                # of=("self",): lock the accounts only, not the asset rows joined in (shared by everyone)
                Account.all_tenants.select_for_update(of=("self",))
                .filter(tenant_id=self.tenant.pk, pk__in=wanted)
                .select_related("asset")
                .order_by("pk")
            )
            for account in rows:
                self.accounts[account.pk] = account
            missing = set(wanted) - self.accounts.keys()
            if missing:
                raise LookupError(f"accounts not found in tenant {self.tenant.slug}: {sorted(missing)}")
        if head:
            self._lock_head(create=False)
        return self.accounts

    def _lock_raw(self, wanted: list[UUID], head: bool = False) -> None:
        """PostgreSQL: the same lock as the ORM query, from plain rows (the ORM's per-row cost dominated
        large batches); assets come from a per-process cache (they are never deleted, and the fields read
        here, code and decimals, do not change). The timestamps are not read (loading them cost a few per
        cent of a transfer's CPU): `created_at` is left deferred, `updated_at` is set by `_write_balances`.
        With `head`, the head's lock is sent before the accounts' rows are read (one round trip in a pipeline)."""
        sent = SentQuery(connection, _LOCK_SQL, [self.tenant.pk, pg_array(wanted)])
        head_sent = _head_lock_send(self.tenant) if head else None
        rows = sent.fetchall()
        alias = connection.alias
        for row in rows:
            values = dict(zip(_LOCKED_FIELDS, row, strict=True))
            values["posted"], values["held"] = int(values["posted"]), int(values["held"])
            account = loaded(Account, alias, values, {"asset": asset_cached(values["asset_id"])})
            self.accounts[account.pk] = account
        if head_sent is not None:
            # A tenant without entries has no head yet: `flush` creates it if this batch records one.
            self.head = _head_from(self.tenant, head_sent.fetchone())
        missing = set(wanted) - self.accounts.keys()
        if missing:
            raise LookupError(f"accounts not found in tenant {self.tenant.slug}: {sorted(missing)}")

    def _lock_head(self, *, create: bool) -> None:
        """Lock the tenant's head; with `create`, create it first if the tenant has none (its first entry)."""
        self.head = _head_locked(self.tenant)
        if self.head is None and create:
            LedgerHead.objects.bulk_create([LedgerHead(tenant=self.tenant)], ignore_conflicts=True)
            self.head = _head_locked(self.tenant)
            assert self.head is not None

    def account(self, account_id: UUID) -> Account:
        return self.accounts[account_id]

    # --- applying ---------------------------------------------------------------------------------------
    def _check(self, balances: dict[UUID, tuple[int, int]]) -> None:
        for account_id, (posted, held) in balances.items():
            account = self.accounts[account_id]
            if account.allow_negative:
                continue
            before = account.posted - account.held
            after = posted - held
            if after < 0 and after < before:
                raise InsufficientFunds(
                    available=str(max(before, 0)), requested=str(before - after),
                    asset=account.asset.code, decimals=account.asset.decimals,
                )
            if held < 0:
                raise RuntimeError(f"held amount of {account_id} would go below zero")

    def apply(self, draft: EntryDraft | None = None, *, held_deltas: dict[UUID, int] | None = None) -> None:
        """Check and record an entry (or, with only `held_deltas`, a change of held amounts).

        Raises InsufficientFunds or UnbalancedEntry and changes nothing when the draft is refused.
        """
        legs = draft.legs if draft is not None else []
        deltas = draft.held_deltas if draft is not None else (held_deltas or {})
        if draft is not None:
            if len(legs) < 2:
                raise UnbalancedEntry("An entry needs two or more postings.")
            sums: dict[UUID, int] = defaultdict(int)
            for leg in legs:
                if leg.amount == 0:
                    raise UnbalancedEntry("Postings must be non-zero.")
                sums[self.accounts[leg.account_id].asset_id] += leg.amount
            if any(sums.values()):
                raise UnbalancedEntry()
        balances: dict[UUID, tuple[int, int]] = {}
        for leg in legs:
            posted, held = balances.get(leg.account_id) or (self.accounts[leg.account_id].posted,
                                                            self.accounts[leg.account_id].held)
            balances[leg.account_id] = (posted + leg.amount, held)
        for account_id, delta in deltas.items():
            posted, held = balances.get(account_id) or (self.accounts[account_id].posted,
                                                        self.accounts[account_id].held)
            balances[account_id] = (posted, held + delta)
        self._check(balances)
        for account_id, (posted, held) in balances.items():
            account = self.accounts[account_id]
            account.posted, account.held = posted, held
            self.dirty.add(account_id)
        if draft is not None:
            self.drafts.append(draft)

    # --- writing ----------------------------------------------------------------------------------------
    def flush(self) -> list[JournalEntry]:
        """Lock the head (unless `lock` did), then write balances, events, entries and postings.

        On PostgreSQL the writes (balances, small inserts of transfers, entries and postings, the events with
        their cursors' upsert, the head) are gathered in `deferred` and sent as one statement at the end: in a
        `bulk.pipeline`, with the COMMIT. The accounts' and the head's locks are then held for one round trip
        after they are granted."""
        if self.drafts and self.head is None:
            self._lock_head(create=True)
        self._write_balances()
        self._emit_balance_events()
        if not self.drafts:
            self.dirty.clear()
            self._run_deferred()
            return []
        assert self.head is not None
        tenant_id = self.tenant.pk
        entry_rows: list[tuple[Any, ...]] = []
        posting_rows: list[tuple[Any, ...]] = []
        seq, prev = self.head.seq, self.head.hash
        for draft in self.drafts:
            seq += 1
            legs = [(leg.account_id, self.accounts[leg.account_id].asset_id, leg.amount) for leg in draft.legs]
            digest = entry_hash(prev_hash=prev, entry_id=draft.id, seq=seq, kind=draft.kind,
                                created_at=draft.created_at, memo=draft.memo, reference=draft.reference,
                                reverses_id=draft.reverses_id, legs=legs)
            entry_rows.append((tenant_id, draft.id, seq, draft.kind, draft.memo, draft.reference, draft.reverses_id,
                               draft.requested_by_id, draft.created_at, prev, digest))
            posting_rows.extend((tenant_id, draft.id, account_id, asset_id, amount, draft.created_at)
                                for account_id, asset_id, amount in legs)
            prev = digest
        alias = connection.alias
        if connection.vendor == "postgresql":
            copy_rows(connection, JournalEntry, _ENTRY_FIELDS, entry_rows, defer=self.deferred)
            copy_rows(connection, Posting, _POSTING_FIELDS, posting_rows, defer=self.deferred)
            entries = [loaded(JournalEntry, alias, dict(zip(_ENTRY_FIELDS, row, strict=True)))
                       for row in entry_rows]
        else:
            entries = [JournalEntry(**dict(zip(_ENTRY_FIELDS, row, strict=True))) for row in entry_rows]
            JournalEntry.all_tenants.bulk_create(entries)
            Posting.all_tenants.bulk_create([Posting(**dict(zip(_POSTING_FIELDS, row, strict=True)))
                                             for row in posting_rows])
        if self.deferred is not None:
            self.deferred.append((_HEAD_UPDATE_SQL, [seq, prev, _head_tenant_id(self.tenant)]))
        else:
            with connection.cursor() as cursor:
                cursor.execute(_HEAD_UPDATE_SQL, [seq, prev, _head_tenant_id(self.tenant)])
        self._run_deferred()
        self.head.seq, self.head.hash = seq, prev
        self.entries.extend(entries)
        self.drafts.clear()
        self.dirty.clear()
        return entries

    def _run_deferred(self) -> None:
        if self.deferred:
            statements, self.deferred[:] = list(self.deferred), []
            execute_together(connection, statements)

    def _write_balances(self) -> None:
        accounts = [self.accounts[a] for a in sorted(self.dirty)]
        if not accounts:
            return
        now = timezone.now()
        for account in accounts:
            account.updated_at = now
        if connection.vendor == "postgresql":
            values = ", ".join(["(%s::uuid, %s::numeric, %s::numeric)"] * len(accounts))
            params: list[Any] = []
            for account in accounts:
                params.extend([account.pk, account.posted, account.held])
            sql = ("UPDATE ledger_account AS a SET posted = v.posted, held = v.held, updated_at = %s "  # noqa: S608
                   f"FROM (VALUES {values}) AS v(id, posted, held) WHERE a.id = v.id")
            if self.deferred is not None:  # the accounts are locked by this transaction already
                self.deferred.append((sql, [now, *params]))
                return
            with connection.cursor() as cursor:
                cursor.execute(sql, [now, *params])
        else:
            Account.all_tenants.bulk_update(accounts, ["posted", "held", "updated_at"])

    def _emit_balance_events(self) -> None:
        from wallet.events.services import EventSpec, events_emit, user_stream

        events = []
        for account_id in sorted(self.dirty):
            account = self.accounts[account_id]
            if account.user_id is None:
                continue
            events.append(EventSpec(stream=user_stream(account.user_id), type="account.balance_changed",
                                    data=balance_payload(account)))
        events.extend(self.events)
        self.events = []
        if events:
            events_emit(tenant=self.tenant, events=events, returning=False, defer=self.deferred)


def balance_payload(account: Account) -> dict[str, Any]:
    return {
        "account_id": str(account.pk), "asset": account.asset.code, "decimals": account.asset.decimals,
        "posted": str(account.posted), "held": str(account.held), "available": str(account.available),
    }


def apply_single(tenant: Tenant, draft: EntryDraft, extra_accounts: Sequence[UUID] = ()) -> JournalEntry:
    """Lock, apply and flush one entry (inside the caller's transaction)."""
    batch = LedgerBatch(tenant)
    batch.lock([leg.account_id for leg in draft.legs] + list(draft.held_deltas) + list(extra_accounts))
    batch.apply(draft)
    return batch.flush()[0]
