"""Writes of the money core: accounts, transfers, holds, sandbox funding and reversals.

Every function that moves money runs inside one database transaction, through `LedgerBatch` (lock order:
accounts by primary key, then the tenant's ledger head, then daily-usage rows, then event-stream cursors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tenants.models import Tenant, User
from wallet.core.bulk import Deferrable, copy_rows, loaded
from wallet.core.errors import ApiError
from wallet.core.ids import uuid7
from wallet.ledger.engine import (
    EntryDraft,
    LedgerBatch,
    Leg,
    WriterSessionLock,
    apply_single,
    tenant_writer_lock,
)
from wallet.ledger.errors import (
    AlreadyReversed,
    AssetNotEnabled,
    DailyLimitExceeded,
    HoldAmountExceeded,
    HoldNotActive,
    NotReversible,
    RecipientIsSender,
    SandboxOnly,
    TransferLimitExceeded,
)
from wallet.ledger.models import Account, Asset, DailyUsage, Hold, JournalEntry, Posting, TenantAsset, Transfer

SYSTEM_ALLOWS_NEGATIVE = {
    Account.Kind.SETTLEMENT: True, Account.Kind.SUSPENSE: True, Account.Kind.EXTERNAL: True,
    Account.Kind.FEES: False,
}


# --- assets and accounts ----------------------------------------------------------------------------------
def assets_catalogue_ensure() -> None:
    """Create the built-in assets if missing (the migration seeds them; test databases flushed by
    transactional tests and fresh installs call this again)."""
    from wallet.ledger.catalogue import CRYPTO, FIAT

    for code, name, symbol, decimals in FIAT:
        Asset.objects.get_or_create(code=code, defaults={"kind": Asset.Kind.FIAT, "name": name, "symbol": symbol,
                                                         "decimals": decimals, "currency_code": code})
    for code, name, symbol, decimals, chain_id, contract in CRYPTO:
        Asset.objects.get_or_create(code=code, defaults={"kind": Asset.Kind.CRYPTO, "name": name, "symbol": symbol,
                                                         "decimals": decimals, "chain_id": chain_id,
                                                         "contract_address": contract})


def tenant_asset_enable(*, tenant: Tenant, asset: Asset, max_per_transfer: int | None = None,
                        daily_limit_per_user: int | None = None) -> TenantAsset:
    """Offer `asset` in the tenant's app (idempotent; updates the limits)."""
    row, _ = TenantAsset.all_tenants.update_or_create(
        tenant=tenant, asset=asset,
        defaults={"enabled": True, "max_per_transfer": max_per_transfer,
                  "daily_limit_per_user": daily_limit_per_user},
    )
    return row


# (tenant id, user id, asset id) -> account id. Safe to cache for the life of the process: a user's
# account for an asset, once created, keeps its id forever (accounts are never deleted: PROTECT).
_USER_ACCOUNT_IDS: dict[tuple[UUID, UUID, UUID], UUID] = {}
_USER_ACCOUNT_IDS_MAX = 200_000


def user_accounts_ensure(*, tenant: Tenant, pairs: Sequence[tuple[Any, Any]],
                         known: dict[tuple[UUID, UUID], UUID] | None = None) -> dict[tuple[UUID, UUID], UUID]:
    """Make sure each (user id, asset id) has its account; returns their ids. Created when first needed.
    `known`: account ids the caller read in its transaction (used as found; cached once it commits)."""
    wanted = {(u if isinstance(u, UUID) else UUID(str(u)), a if isinstance(a, UUID) else UUID(str(a)))
              for u, a in pairs}
    if not wanted:
        return {}
    tenant_id = tenant.pk
    found: dict[tuple[UUID, UUID], UUID] = {}
    unknown = set()
    read: dict[tuple[UUID, UUID], UUID] = {}  # read in this transaction: cached once it commits
    for pair in wanted:
        account_id = _USER_ACCOUNT_IDS.get((tenant_id, *pair))
        if account_id is None and known:
            account_id = read[pair] = known.get(pair)  # type: ignore[assignment]
        if account_id is None:
            read.pop(pair, None)
            unknown.add(pair)
        else:
            found[pair] = account_id
    if read:
        transaction.on_commit(lambda: _remember_accounts(tenant_id, read))
    if not unknown:
        return found

    def existing() -> dict[tuple[UUID, UUID], UUID]:
        rows = Account.all_tenants.filter(
            tenant_id=tenant_id, kind=Account.Kind.USER, user_id__in={u for u, _ in unknown},
            asset_id__in={a for _, a in unknown},
        ).values_list("user_id", "asset_id", "pk")
        return {(u, a): pk for u, a, pk in rows if (u, a) in unknown}

    fetched = existing()
    missing = sorted(unknown - fetched.keys())
    if missing:  # created when first needed; a concurrent creator wins the unique constraint, we read its row
        Account.all_tenants.bulk_create(
            [Account(tenant_id=tenant_id, kind=Account.Kind.USER, user_id=u, asset_id=a, allow_negative=False)
             for u, a in missing],
            ignore_conflicts=True,
        )
        fetched = existing()
    # Cached only once the transaction commits: rows this transaction (or an outer one) created vanish if
    # it rolls back.
    transaction.on_commit(lambda: _remember_accounts(tenant_id, fetched))
    found.update(fetched)
    return found


def _remember_accounts(tenant_id: UUID, ids: dict[tuple[UUID, UUID], UUID]) -> None:
    if len(_USER_ACCOUNT_IDS) + len(ids) > _USER_ACCOUNT_IDS_MAX:
        _USER_ACCOUNT_IDS.clear()
    for (user_id, asset_id), account_id in ids.items():
        _USER_ACCOUNT_IDS[(tenant_id, user_id, asset_id)] = account_id


def system_account(*, tenant: Tenant, asset: Asset, kind: str, rail: str = "") -> Account:
    """The tenant's settlement, fees, suspense or external (per rail) account for `asset`."""
    Account.all_tenants.bulk_create(
        [Account(tenant_id=tenant.pk, asset=asset, kind=kind, rail=rail,
                 allow_negative=SYSTEM_ALLOWS_NEGATIVE[Account.Kind(kind)])],
        ignore_conflicts=True,
    )
    return Account.all_tenants.get(tenant_id=tenant.pk, asset=asset, kind=kind, rail=rail)


def _policy(tenant: Tenant, asset: Asset) -> TenantAsset:
    policy = TenantAsset.all_tenants.filter(tenant_id=tenant.pk, asset=asset, enabled=True).first()
    if policy is None:
        raise AssetNotEnabled(asset=asset.code)
    return policy


# --- transfers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransferRequest:
    sender: User
    recipient: User
    asset: Asset
    amount: int
    memo: str = ""
    policy: TenantAsset | None = None  # the tenant's policy for the asset, when the caller already has it


def transfers_execute(
    *, tenant: Tenant, requests: Sequence[TransferRequest],
    known_accounts: dict[tuple[UUID, UUID], UUID] | None = None,
    before_flush: Callable[[list[Transfer | ApiError], list[Deferrable] | None], None] | None = None,
) -> list[Transfer | ApiError]:
    """Execute many P2P transfers in one transaction (one lock of the tenant's ledger, a few statements).

    Each request succeeds or is refused on its own (insufficient funds, limits); the result list matches
    the request list. Nothing is visible to anyone before the caller's transaction commits.
    `known_accounts`: user account ids by (user id, asset id) that the caller read in its transaction
    (`selectors.transfer_parties_send`); they are not looked up again, and cached once it commits.
    `before_flush(results, defer)`: called with the results once every transfer is decided, before the
    ledger's writes; statements it appends to `defer` (None: not PostgreSQL) run with the ledger's last
    one (the group commit stores its answers so).
    """
    from wallet.events.services import EventSpec, user_stream

    results: list[Transfer | ApiError | None] = [None] * len(requests)
    # No savepoint of its own: inside a request's transaction (Idempotency-Key) that would cost two round
    # trips; refusals are returned, not raised, and any exception rolls back the enclosing block.
    # Outermost transaction (not inside a request's or the group commit's): a large batch may release its
    # writer lock just before COMMIT (WriterSessionLock); inside another transaction it keeps it to the end.
    outermost = not connection.in_atomic_block
    writer: WriterSessionLock | None = None
    try:
        with transaction.atomic(savepoint=False):
            policies: dict[UUID, TenantAsset | ApiError] = {}
            for request in requests:
                if request.asset.pk not in policies:
                    if request.policy is not None and request.policy.enabled:
                        policies[request.asset.pk] = request.policy
                        continue
                    try:
                        policies[request.asset.pk] = _policy(tenant, request.asset)
                    except ApiError as error:
                        policies[request.asset.pk] = error
            pairs = []
            for request in requests:
                pairs += [(request.sender.pk, request.asset.pk), (request.recipient.pk, request.asset.pk)]
            account_ids = user_accounts_ensure(tenant=tenant, pairs=pairs, known=known_accounts)

            # Everything that does not depend on balances is built before the accounts are locked, so that the
            # locks are held for the checks and the writes only: drafts, transfer rows, their events.
            alias = connection.alias
            postgresql = connection.vendor == "postgresql"
            prepared: list[tuple[int, TransferRequest, EntryDraft, Transfer, list[EventSpec]]] = []
            rows: dict[UUID, list[Any]] = {}  # PostgreSQL: each transfer's row, ready for COPY
            for index, request in enumerate(requests):
                policy = policies[request.asset.pk]
                try:
                    if isinstance(policy, ApiError):
                        raise policy
                    if request.sender.pk == request.recipient.pk:
                        raise RecipientIsSender()
                    if policy.max_per_transfer is not None and request.amount > policy.max_per_transfer:
                        raise TransferLimitExceeded(maximum=str(policy.max_per_transfer), requested=str(request.amount),
                                                    decimals=request.asset.decimals)
                except ApiError as error:
                    results[index] = error
                    continue
                source = account_ids[(request.sender.pk, request.asset.pk)]
                target = account_ids[(request.recipient.pk, request.asset.pk)]
                draft = EntryDraft(kind=JournalEntry.Kind.TRANSFER, memo=request.memo,
                                   legs=[Leg(source, -request.amount), Leg(target, request.amount)])
                transfer = loaded(Transfer, alias, {
                    "tenant_id": tenant.pk, "id": uuid7(), "sender_id": request.sender.pk,
                    "recipient_id": request.recipient.pk, "asset_id": request.asset.pk, "amount": request.amount,
                    "memo": request.memo, "status": Transfer.Status.COMPLETED, "entry_id": draft.id,
                    "created_at": draft.created_at,
                }, {"sender": request.sender, "recipient": request.recipient, "asset": request.asset})
                draft.reference = f"transfer:{transfer.pk}"
                if postgresql:
                    rows[transfer.pk] = [transfer.__dict__[name] for name in _TRANSFER_FIELDS]
                payload = transfer_payload(transfer)
                prepared.append((index, request, draft, transfer, [
                    EventSpec.prepared(stream=user_stream(request.sender.pk), type="transfer.completed",
                                       data={**payload, "direction": "out"}),
                    EventSpec.prepared(stream=user_stream(request.recipient.pk), type="transfer.completed",
                                       data={**payload, "direction": "in"}),
                ]))

            batch = LedgerBatch(tenant)
            if 0 < settings.LEDGER_WRITER_LOCK_MIN_BATCH <= len(prepared):
                if outermost and connection.vendor == "postgresql":
                    writer = WriterSessionLock(tenant)
                    writer.acquire()
                else:
                    tenant_writer_lock(tenant)
            batch.lock(account_ids.values(), head=True)  # the head too: one round trip in a pipeline
            today = timezone.now().date()
            limited = sorted({(r.sender.pk, r.asset.pk) for _, r, _, _, _ in prepared
                              if policies[r.asset.pk].daily_limit_per_user is not None})  # type: ignore[union-attr]
            usage = _lock_daily_usage(tenant, limited, today)
            used_before = {key: row.amount for key, row in usage.items()}

            transfers: list[Transfer] = []
            events: list[EventSpec] = []
            for index, request, draft, transfer, transfer_events in prepared:
                policy = policies[request.asset.pk]
                key = (request.sender.pk, request.asset.pk)
                try:
                    if key in usage:
                        limit = policy.daily_limit_per_user  # type: ignore[union-attr]
                        if usage[key].amount + request.amount > limit:
                            raise DailyLimitExceeded(limit=str(limit), remaining=str(max(limit - usage[key].amount, 0)),
                                                     requested=str(request.amount), decimals=request.asset.decimals)
                    batch.apply(draft)
                except ApiError as error:
                    results[index] = error
                    continue
                if key in usage:
                    usage[key].amount += request.amount
                transfers.append(transfer)
                results[index] = transfer
                events.extend(transfer_events)
            # On PostgreSQL these writes are deferred to flush()'s one statement (`batch.deferred`).
            if transfers:
                _transfers_insert(transfers, defer=batch.deferred,
                                  rows=[rows[t.pk] for t in transfers] if rows else None)
            changed = [row for key, row in usage.items() if row.amount != used_before[key]]
            if changed:
                DailyUsage.all_tenants.bulk_update(changed, ["amount"])
            batch.events.extend(events)
            if before_flush is not None:
                before_flush(results, batch.deferred)  # type: ignore[arg-type]
            batch.flush()
            if writer is not None:
                writer.release()  # the last statement before COMMIT
    finally:
        if writer is not None:
            writer.release_after_rollback()
    return results  # type: ignore[return-value]


_TRANSFER_FIELDS = tuple(field.attname for field in Transfer._meta.concrete_fields)


def _transfers_insert(transfers: Sequence[Transfer], defer: list[Deferrable] | None = None,
                      rows: list[list[Any]] | None = None) -> None:
    """Insert transfers built by `loaded` (INSERT or COPY on PostgreSQL, possibly deferred to the flush);
    `rows`, when given, are their column values already (built before the caller took its locks)."""
    if connection.vendor == "postgresql":
        if rows is None:
            rows = [[transfer.__dict__[name] for name in _TRANSFER_FIELDS] for transfer in transfers]
        copy_rows(connection, Transfer, _TRANSFER_FIELDS, rows, defer=defer)
        return
    for transfer in transfers:
        transfer._state.adding = True
    Transfer.all_tenants.bulk_create(transfers)
    for transfer in transfers:
        transfer._state.adding = False


def transfer_create(*, tenant: Tenant, sender: User, recipient: User, asset: Asset, amount: int,
                    memo: str = "", policy: TenantAsset | None = None) -> Transfer:
    """One P2P transfer; raises the refusal (insufficient_funds, limits, ...) instead of returning it."""
    request = TransferRequest(sender, recipient, asset, amount, memo, policy)
    (result,) = transfers_execute(tenant=tenant, requests=[request])
    if isinstance(result, ApiError):
        raise result
    return result


def _lock_daily_usage(tenant: Tenant, keys: Sequence[tuple[UUID, UUID]], day: Any) -> dict[tuple[UUID, UUID],
                                                                                          DailyUsage]:
    if not keys:
        return {}
    DailyUsage.all_tenants.bulk_create(
        [DailyUsage(tenant_id=tenant.pk, user_id=u, asset_id=a, day=day, amount=0) for u, a in keys],
        ignore_conflicts=True,
    )
    rows = (DailyUsage.all_tenants.select_for_update()
            .filter(tenant_id=tenant.pk, day=day, user_id__in={u for u, _ in keys}, asset_id__in={a for _, a in keys})
            .order_by("pk"))
    return {(row.user_id, row.asset_id): row for row in rows if (row.user_id, row.asset_id) in set(keys)}


def transfer_payload(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": str(transfer.pk), "asset": transfer.asset.code, "decimals": transfer.asset.decimals,
        "amount": str(transfer.amount), "memo": transfer.memo, "sender": str(transfer.sender_id),
        "recipient": str(transfer.recipient_id), "status": transfer.status,
        "created_at": transfer.created_at.isoformat(),
    }


# --- holds ---------------------------------------------------------------------------------------------------
def hold_payload(hold: Hold) -> dict[str, Any]:
    return {
        "id": str(hold.pk), "account_id": str(hold.account_id), "asset": hold.account.asset.code,
        "decimals": hold.account.asset.decimals, "amount": str(hold.amount), "remaining": str(hold.remaining),
        "status": hold.status, "expires_at": hold.expires_at.isoformat() if hold.expires_at else None,
    }


def hold_place(*, tenant: Tenant, account: Account, amount: int, memo: str = "", expires_at: datetime | None = None,
               created_by: User | None = None) -> Hold:
    """Reserve `amount` of an account: available drops, posted does not."""
    with transaction.atomic():
        batch = LedgerBatch(tenant)
        locked = batch.lock([account.pk])[account.pk]
        batch.apply(held_deltas={account.pk: amount})
        hold = Hold.all_tenants.create(tenant_id=tenant.pk, account=locked, amount=amount, remaining=amount,
                                       memo=memo, expires_at=expires_at, created_by=created_by)
        _hold_event(batch, hold, "placed")
        batch.flush()
    return hold


def _locked_hold(tenant: Tenant, hold_id: Any, batch: LedgerBatch) -> Hold:
    account_id = Hold.all_tenants.filter(tenant_id=tenant.pk, pk=hold_id).values_list("account_id", flat=True).get()
    batch.lock([account_id])
    hold = Hold.all_tenants.select_for_update().get(tenant_id=tenant.pk, pk=hold_id)
    hold.account = batch.account(hold.account_id)
    if hold.status != Hold.Status.ACTIVE:
        raise HoldNotActive(status=hold.status)
    return hold


def hold_post(*, tenant: Tenant, hold: Hold, amount: int, destination: Account, memo: str = "",
              requested_by: User | None = None) -> JournalEntry:
    """Post `amount` of a hold to `destination`; the hold stays active while something remains."""
    with transaction.atomic():
        batch = LedgerBatch(tenant)
        batch.lock([hold.account_id, destination.pk])
        locked = _locked_hold(tenant, hold.pk, batch)
        if amount > locked.remaining:
            raise HoldAmountExceeded(remaining=str(locked.remaining), requested=str(amount))
        draft = EntryDraft(kind=JournalEntry.Kind.HOLD_POST, memo=memo or locked.memo, reference=f"hold:{locked.pk}",
                           requested_by_id=requested_by.pk if requested_by else None,
                           legs=[Leg(locked.account_id, -amount), Leg(destination.pk, amount)],
                           held_deltas={locked.account_id: -amount})
        batch.apply(draft)
        locked.remaining -= amount
        locked.status = Hold.Status.POSTED if locked.remaining == 0 else Hold.Status.ACTIVE
        locked.updated_at = timezone.now()
        locked.save(update_fields=["remaining", "status", "updated_at"])
        _hold_event(batch, locked, "posted")
        (entry,) = batch.flush()
    hold.remaining, hold.status = locked.remaining, locked.status
    return entry


def hold_void(*, tenant: Tenant, hold: Hold, status: str = Hold.Status.VOIDED) -> Hold:
    """Release what remains of a hold (voided by a user, or expired by the scheduler)."""
    with transaction.atomic():
        batch = LedgerBatch(tenant)
        locked = _locked_hold(tenant, hold.pk, batch)
        batch.apply(held_deltas={locked.account_id: -locked.remaining})
        locked.status = status
        locked.updated_at = timezone.now()
        locked.save(update_fields=["status", "updated_at"])
        _hold_event(batch, locked, "voided" if status == Hold.Status.VOIDED else "expired")
        batch.flush()
    return locked


def holds_expire(*, tenant: Tenant, now: datetime | None = None, limit: int = 500) -> int:
    """Void the tenant's active holds whose expiry has passed; returns how many."""
    now = now or timezone.now()
    due = list(Hold.all_tenants.filter(tenant_id=tenant.pk, status=Hold.Status.ACTIVE, expires_at__lte=now)
               .order_by("expires_at")[:limit])
    count = 0
    for hold in due:
        try:
            hold_void(tenant=tenant, hold=hold, status=Hold.Status.EXPIRED)
            count += 1
        except HoldNotActive:
            continue  # posted or voided meanwhile
    return count


def _hold_event(batch: LedgerBatch, hold: Hold, kind: str) -> None:
    from wallet.events.services import EventSpec, user_stream

    if hold.account.user_id is not None:
        batch.events.append(EventSpec(stream=user_stream(hold.account.user_id), type=f"hold.{kind}",
                                      data=hold_payload(hold)))


# --- funding and reversals ---------------------------------------------------------------------------------
def sandbox_fund(*, tenant: Tenant, user: User, asset: Asset, amount: int, requested_by: User | None = None,
                 memo: str = "Sandbox funding") -> JournalEntry:
    """Credit a user from the tenant's external `sandbox` account (demos and tests only)."""
    if getattr(settings, "PRODUCTION", False):
        raise SandboxOnly()
    _policy(tenant, asset)
    with transaction.atomic():
        external = system_account(tenant=tenant, asset=asset, kind=Account.Kind.EXTERNAL, rail="sandbox")
        target = user_accounts_ensure(tenant=tenant, pairs=[(user.pk, asset.pk)])[(user.pk, asset.pk)]
        draft = EntryDraft(kind=JournalEntry.Kind.FUNDING, memo=memo, reference=f"fund:{user.pk}",
                           requested_by_id=requested_by.pk if requested_by else None,
                           legs=[Leg(external.pk, -amount), Leg(target, amount)])
        return apply_single(tenant, draft)


def entry_reverse(*, tenant: Tenant, entry: JournalEntry, requested_by: User | None, memo: str = "") -> JournalEntry:
    """Post the exact opposite of `entry`, linked to it; the original is never changed."""
    with transaction.atomic():
        original = JournalEntry.all_tenants.select_for_update().get(tenant_id=tenant.pk, pk=entry.pk)
        if original.kind == JournalEntry.Kind.REVERSAL:
            raise NotReversible()
        if JournalEntry.all_tenants.filter(reverses=original).exists():
            raise AlreadyReversed()
        legs = [Leg(p.account_id, -p.amount)
                for p in Posting.all_tenants.filter(tenant_id=tenant.pk, entry=original).order_by("pk")]
        draft = EntryDraft(kind=JournalEntry.Kind.REVERSAL, legs=legs, reverses_id=original.pk,
                           reference=f"reversal:{original.pk}", memo=memo or f"Reversal of #{original.seq}",
                           requested_by_id=requested_by.pk if requested_by else None)
        reversal = apply_single(tenant, draft)
        Transfer.all_tenants.filter(tenant_id=tenant.pk, entry=original).update(status=Transfer.Status.REVERSED)
    return reversal


def expiry_default(seconds: int | None) -> datetime | None:
    return timezone.now() + timedelta(seconds=seconds) if seconds else None
