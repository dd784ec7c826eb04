"""Ledger verification: the hash chain, zero-sum entries, balances equal to their postings."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from uuid import UUID

from django.db.models import F

from tenants.models import Tenant
from wallet.ledger.engine import GENESIS_HASH, entry_hash
from wallet.ledger.models import Account, Hold, JournalEntry, LedgerHead, Posting, Transfer

CHUNK = 2000


@dataclass
class VerifyReport:
    tenant: str
    entries: int = 0
    postings: int = 0
    accounts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def ledger_verify(*, tenant: Tenant, max_problems: int = 100) -> VerifyReport:
    """Recompute the tenant's chain and balances from its postings; report every mismatch found."""
    report = VerifyReport(tenant=tenant.slug)

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)

    sums: dict[UUID, int] = defaultdict(int)
    # Transfers name their sender, recipient and asset without foreign-key constraints (see Transfer):
    # they must be the owners and the asset of the accounts their entry debits and credits.
    owner_of = {pk: (user_id, asset_id) for pk, user_id, asset_id in
                Account.all_tenants.filter(tenant_id=tenant.pk).values_list("pk", "user_id", "asset_id")}
    prev_hash, expected_seq, last_seq = GENESIS_HASH, 1, 0
    while True:
        entries = list(JournalEntry.all_tenants.filter(tenant_id=tenant.pk, seq__gte=expected_seq)
                       .order_by("seq")[:CHUNK])
        if not entries:
            break
        legs_by_entry: dict[UUID, list[tuple[UUID, UUID, int]]] = defaultdict(list)
        for entry_id, account_id, asset_id, amount in Posting.all_tenants.filter(
            tenant_id=tenant.pk, entry_id__in=[e.pk for e in entries]
        ).values_list("entry_id", "account_id", "asset_id", "amount"):
            legs_by_entry[entry_id].append((account_id, asset_id, amount))
        for transfer_id, entry_id, sender_id, recipient_id, asset_id in Transfer.all_tenants.filter(
            tenant_id=tenant.pk, entry_id__in=[e.pk for e in entries]
        ).values_list("pk", "entry_id", "sender_id", "recipient_id", "asset_id"):
            moved = {(owner_of.get(account_id), amount > 0) for account_id, _, amount
                     in legs_by_entry.get(entry_id, [])}
            if moved != {((sender_id, asset_id), False), ((recipient_id, asset_id), True)}:
                problem(f"transfer {transfer_id}: sender, recipient or asset differ from the accounts its entry moves")
        for entry in entries:
            report.entries += 1
            if entry.seq != expected_seq:
                problem(f"entry {entry.pk}: seq {entry.seq}, expected {expected_seq} (gap or duplicate)")
            legs = legs_by_entry.get(entry.pk, [])
            report.postings += len(legs)
            if len(legs) < 2:
                problem(f"entry #{entry.seq}: {len(legs)} posting(s), needs two or more")
            per_asset: dict[UUID, int] = defaultdict(int)
            for account_id, asset_id, amount in legs:
                per_asset[asset_id] += amount
                sums[account_id] += amount
            if any(per_asset.values()):
                problem(f"entry #{entry.seq}: postings do not sum to zero per asset")
            if entry.prev_hash != prev_hash:
                problem(f"entry #{entry.seq}: prev_hash does not match the previous entry's hash")
            digest = entry_hash(prev_hash=entry.prev_hash, entry_id=entry.pk, seq=entry.seq, kind=entry.kind,
                                created_at=entry.created_at, memo=entry.memo, reference=entry.reference,
                                reverses_id=entry.reverses_id, legs=legs)
            if digest != entry.hash:
                problem(f"entry #{entry.seq}: hash mismatch (entry or postings changed)")
            prev_hash, expected_seq, last_seq = entry.hash, entry.seq + 1, entry.seq
    head = LedgerHead.objects.filter(tenant_id=tenant.pk).first()
    if head is not None and (head.seq, head.hash) != (last_seq, prev_hash):
        problem(f"ledger head at #{head.seq} does not match the last entry #{last_seq}")
    # The tenant and asset copied onto postings (no foreign-key constraint: see Posting) must be those of
    # the posting's account and entry.
    foreign = (Posting.all_tenants.filter(tenant_id=tenant.pk)
               .exclude(account__tenant_id=tenant.pk, account__asset_id=F("asset_id"), entry__tenant_id=tenant.pk))
    for posting_id, entry_id in foreign.values_list("pk", "entry_id")[:max_problems]:
        problem(f"posting {posting_id} of entry {entry_id}: tenant or asset differs from its account's or entry's")
    for posting_id in (Posting.all_tenants.filter(account__tenant_id=tenant.pk).exclude(tenant_id=tenant.pk)
                       .values_list("pk", flat=True)[:max_problems]):
        problem(f"posting {posting_id} on one of the tenant's accounts is recorded under another tenant")
    for transfer_id in (Transfer.all_tenants.filter(tenant_id=tenant.pk)
                        .exclude(entry__tenant_id=tenant.pk).values_list("pk", flat=True)[:max_problems]):
        problem(f"transfer {transfer_id}: its entry belongs to another tenant")
    held: dict[UUID, int] = defaultdict(int)
    for account_id, remaining in Hold.all_tenants.filter(tenant_id=tenant.pk, status=Hold.Status.ACTIVE
                                                         ).values_list("account_id", "remaining"):
        held[account_id] += remaining
    for account in Account.all_tenants.filter(tenant_id=tenant.pk).iterator(chunk_size=CHUNK):
        report.accounts += 1
        if account.posted != sums.get(account.pk, 0):
            problem(f"account {account.pk}: posted {account.posted} != sum of postings {sums.get(account.pk, 0)}")
        if account.held != held.get(account.pk, 0):
            problem(f"account {account.pk}: held {account.held} != active holds {held.get(account.pk, 0)}")
        if not account.allow_negative and account.posted - account.held < 0:
            problem(f"account {account.pk}: negative available balance {account.posted - account.held}")
    return report
