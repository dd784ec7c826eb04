"""Assets, accounts, the double-entry journal, holds, transfers and per-tenant policy.

Invariants (enforced by `wallet.ledger.engine`, checked by `manage.py ledger_verify`):
- an entry has two or more postings whose amounts sum to zero per asset;
- entries and postings are never updated or deleted (PostgreSQL triggers refuse it; the ORM refuses a
  second save); a correction is a reversing entry;
- an account's `posted` equals the sum of its postings, and `held` the sum of its active holds' remaining
  amounts; an account that may not go negative never has `posted - held < 0`;
- each tenant's entries form a hash chain (`seq`, `prev_hash`, `hash`).
"""

from __future__ import annotations

from typing import Any

from django.core.validators import MaxValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import User
from tenants.scoping import TenantOwned
from wallet.core.ids import uuid7
from wallet.core.money import AmountField


class ImmutableRowError(RuntimeError):
    """An entry or posting was saved a second time or deleted."""


class Asset(models.Model):
    """A currency or token, shared by all tenants (tenants enable the ones their app offers)."""

    class Kind(models.TextChoices):
        FIAT = "fiat", "Fiat currency"
        CRYPTO = "crypto", "Crypto asset"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    code = models.CharField(
        max_length=32, unique=True,
        validators=[RegexValidator(r"^[A-Z0-9][A-Z0-9._:-]{0,31}$", "Upper-case letters, digits and ._:-")],
        help_text="Stable code the API uses: an ISO 4217 code for fiat (USD), e.g. ETH or USDC:1 for crypto.",
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=100)
    symbol = models.CharField(max_length=16)
    decimals = models.PositiveSmallIntegerField(validators=[MaxValueValidator(18)])
    currency_code = models.CharField(max_length=3, blank=True, help_text="ISO 4217, fiat only")
    chain_id = models.BigIntegerField(null=True, blank=True, help_text="EVM chain id, crypto only")
    contract_address = models.CharField(max_length=42, blank=True, help_text="ERC-20 contract; empty: native")

    class Meta:
        ordering = ("code",)
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="fiat", chain_id__isnull=True) & ~Q(currency_code=""))
                | Q(kind="crypto", chain_id__isnull=False),
                name="asset_kind_fields",
            ),
            models.UniqueConstraint(fields=["chain_id", "contract_address"], condition=Q(kind="crypto"),
                                    name="asset_unique_on_chain"),
        ]

    def __str__(self) -> str:
        return self.code


class TenantAsset(TenantOwned):
    """An asset a tenant's app offers, with the tenant's transfer policy for it."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    enabled = models.BooleanField(default=True)
    max_per_transfer = AmountField(null=True, blank=True, help_text="Smallest units; empty: no maximum")
    daily_limit_per_user = AmountField(null=True, blank=True, help_text="Smallest units; empty: no limit")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "asset"], name="tenant_asset_unique")]

    def __str__(self) -> str:
        return f"{self.asset_id} for {self.tenant_id}"


class Account(TenantOwned):
    """A balance in one asset: a user's wallet, or one of the tenant's system accounts."""

    class Kind(models.TextChoices):
        USER = "user", "User"
        SETTLEMENT = "settlement", "Settlement"
        FEES = "fees", "Fees"
        SUSPENSE = "suspense", "Suspense"
        EXTERNAL = "external", "External (one per rail)"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    user = models.ForeignKey(User, on_delete=models.PROTECT, null=True, blank=True, related_name="accounts")
    rail = models.CharField(max_length=64, blank=True, help_text="External accounts: the rail (e.g. sandbox)")
    allow_negative = models.BooleanField(default=False)
    posted = AmountField(default=0)
    held = AmountField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "asset", "user"], condition=Q(kind="user"),
                                    name="account_one_per_user_asset"),
            models.UniqueConstraint(fields=["tenant", "asset", "kind", "rail"], condition=~Q(kind="user"),
                                    name="account_one_system_per_kind_rail"),
            models.CheckConstraint(condition=Q(kind="user", user__isnull=False) | (~Q(kind="user") &
                                                                                 Q(user__isnull=True)),
                                   name="account_user_iff_user_kind"),
        ]

    def __str__(self) -> str:
        owner = self.user_id or f"{self.kind}{':' + self.rail if self.rail else ''}"
        return f"{self.asset_id}/{owner}"

    @property
    def available(self) -> int:
        return self.posted - self.held


class LedgerHead(models.Model):
    """The head of a tenant's hash chain; locked by every ledger write of that tenant, right after its
    accounts (wallet/ledger/engine.py: the lock order)."""

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.PROTECT, primary_key=True, related_name="+")
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"head #{self.seq}"


class _AppendOnly(models.Model):
    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableRowError(f"{self._meta.label} rows are never changed")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableRowError(f"{self._meta.label} rows are never deleted")


class JournalEntry(_AppendOnly, TenantOwned):
    class Kind(models.TextChoices):
        TRANSFER = "transfer", "Transfer"
        FUNDING = "funding", "Sandbox funding"
        HOLD_POST = "hold_post", "Hold posted"
        REVERSAL = "reversal", "Reversal"
        DEPOSIT = "deposit", "Deposit"
        ADJUSTMENT = "adjustment", "Adjustment"

    # Hot append-only table: no index of its own on tenant (the composite index/constraint below leads with
    # it) and no foreign-key constraint to the tenant row, which every concurrent writer would otherwise
    # key-share lock (see docs/ARCHITECTURE.md, "Write path"). The engine writes it; ledger_verify checks it.
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+", db_index=False,
                               db_constraint=False)
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    seq = models.BigIntegerField(help_text="Position in the tenant's hash chain")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    memo = models.CharField(max_length=200, blank=True)
    reference = models.CharField(max_length=100, blank=True)  # indexed in Meta (equality only: no LIKE index)
    reverses = models.OneToOneField("self", on_delete=models.PROTECT, null=True, blank=True,
                                    related_name="reversed_by")
    requested_by = models.ForeignKey(User, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        verbose_name_plural = "journal entries"
        ordering = ("-seq",)
        constraints = [models.UniqueConstraint(fields=["tenant", "seq"], name="entry_seq_unique_per_tenant")]
        indexes = [models.Index(fields=["reference"], name="entry_reference")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind}"


class Posting(_AppendOnly, TenantOwned):
    # Hot append-only table: no index of its own on tenant (the composite index/constraint below leads with
    # it) and no foreign-key constraint to the tenant row, which every concurrent writer would otherwise
    # key-share lock (see docs/ARCHITECTURE.md, "Write path"). The engine writes it; ledger_verify checks it.
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+", db_index=False,
                               db_constraint=False)
    id = models.BigAutoField(primary_key=True)
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="postings")
    # Indexed by posting_account_time, which leads with it.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="postings", db_index=False)
    # The account's asset, copied for verification and reports: checked by ledger_verify, not by a
    # constraint (the few asset rows are shared by every tenant: a hot parent row).
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+", db_index=False,
                              db_constraint=False)
    amount = AmountField(help_text="Signed: positive credits the account, negative debits it")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["account", "-created_at", "-id"], name="posting_account_time")]

    def __str__(self) -> str:
        return f"{self.amount} on {self.account_id}"


class Hold(TenantOwned):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        POSTED = "posted", "Posted"
        VOIDED = "voided", "Voided"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    amount = AmountField()
    remaining = AmountField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    memo = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(User, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["status", "expires_at"], name="hold_expiry")]

    def __str__(self) -> str:
        return f"hold {self.remaining}/{self.amount} ({self.status})"


class Transfer(TenantOwned):
    class Status(models.TextChoices):
        COMPLETED = "completed", "Completed"
        REVERSED = "reversed", "Reversed"

    # Hot table: tenant, sender and recipient are indexed by transfer_sender_time/transfer_recipient_time
    # (which lead with the tenant). None of tenant, asset, sender and recipient is a foreign-key constraint:
    # each check key-share locks the parent row at commit (a WAL record per user row, and the tenant and
    # asset rows are shared by every writer). The service sets them from the rows it locked; the entry
    # (a constraint) says whose accounts moved, and ledger_verify checks that sender and recipient are
    # the owners of the debited and credited accounts, and that the asset is theirs.
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+", db_index=False,
                               db_constraint=False)
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    sender = models.ForeignKey(User, on_delete=models.PROTECT, related_name="transfers_sent", db_index=False,
                               db_constraint=False)
    recipient = models.ForeignKey(User, on_delete=models.PROTECT, related_name="transfers_received",
                                  db_index=False, db_constraint=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+", db_index=False,
                              db_constraint=False)
    amount = AmountField()
    memo = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETED)
    entry = models.OneToOneField(JournalEntry, on_delete=models.PROTECT, related_name="transfer")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "sender", "-created_at"], name="transfer_sender_time"),
            models.Index(fields=["tenant", "recipient", "-created_at"], name="transfer_recipient_time"),
        ]

    def __str__(self) -> str:
        return f"transfer {self.amount} {self.asset_id}"


class DailyUsage(TenantOwned):
    """Amount a user sent in one asset on one UTC day; locked and updated with each transfer so that
    concurrent transfers cannot exceed the daily limit."""

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    amount = AmountField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user", "asset", "day"],
                                               name="daily_usage_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day}: {self.amount}"
