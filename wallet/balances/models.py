"""Per-tenant provider configuration (credentials encrypted at rest), linked bank accounts and the user's
display-currency preference. The aggregate itself is a read model in the cache, not a table."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import User
from tenants.scoping import TenantOwned
from wallet.core.ids import uuid7


class ProviderConfig(TenantOwned):
    """Which adapter a tenant uses for one kind of provider, its settings and its encrypted credentials.

    `credentials_encrypted` is a MultiFernet token (see `wallet.balances.crypto`); nothing renders it or its
    plaintext back: the admin form has a write-only field and the API has no route for it.
    """

    class Kind(models.TextChoices):
        BANKING = "banking", "Banking"
        PRICES = "prices", "Prices and FX"

    class Provider(models.TextChoices):
        SANDBOX = "sandbox", "Sandbox (deterministic, no network)"
        UNIT = "unit", "Unit (banking)"
        COINGECKO = "coingecko", "CoinGecko (prices)"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.SANDBOX)
    options = models.JSONField(default=dict, blank=True,
                               help_text="Adapter options: base_url, plan, latency_ms, failure_rate, timeout_seconds")
    credentials_encrypted = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "kind"], name="provider_config_one_per_kind")]

    def __str__(self) -> str:
        return f"{self.kind}: {self.provider}"

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_encrypted)


class LinkedBankAccount(TenantOwned):
    """A user's external bank account, linked through the tenant's banking provider."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REMOVED = "removed", "Removed"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    provider = models.CharField(max_length=16)
    external_id = models.CharField(max_length=100, help_text="The provider's account id")
    name = models.CharField(max_length=200, blank=True)
    institution = models.CharField(max_length=100, blank=True)
    account_last4 = models.CharField(max_length=4, blank=True)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One active link per external account in a tenant: another user cannot link (and so read)
            # an account someone else already linked.
            models.UniqueConstraint(fields=["tenant", "provider", "external_id"], condition=Q(status="active"),
                                    name="linked_bank_account_active_unique"),
        ]
        indexes = [models.Index(fields=["tenant", "user", "status"], name="linked_bank_account_user")]

    def __str__(self) -> str:
        return f"{self.institution or self.provider} ••{self.account_last4}"


class BalancePreference(TenantOwned):
    """A user's display currency for balances."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, primary_key=True, related_name="+")
    display_currency = models.CharField(max_length=3)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.display_currency}"


class BankCustomer(TenantOwned):
    """Who the user is at the tenant's banking provider (Unit: their customer id), recorded by the tenant's
    onboarding (admin, or `bank_customer_set`). Linking an account whose provider names its owners
    requires the user's customer among them."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    provider = models.CharField(max_length=16)
    customer_ref = models.CharField(max_length=100, help_text="The provider's customer id")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user", "provider"], name="bank_customer_one_per_provider"),
            models.UniqueConstraint(fields=["tenant", "provider", "customer_ref"], name="bank_customer_unique_ref"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.customer_ref}"


class SnapshotPosition(TenantOwned):
    """Where a user's cached aggregate stands in their event stream: the stream head it was computed at
    (`position`) and when. Written by a refresh when the position moved (or on the first snapshot), so the
    scheduled refresh finds, with one query, the users whose stream moved since their snapshot (a change
    that no event-driven refresh has taken in yet), and the relay's listener finds which users have a
    snapshot worth refreshing. The snapshot itself stays in the cache."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, primary_key=True, related_name="+")
    stream = models.CharField(max_length=64, help_text="The user's stream (`user:<hex>`), to join the cursor")
    position = models.BigIntegerField()
    refreshed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["tenant", "stream"], name="balances_snapshot_stream")]

    def __str__(self) -> str:
        return f"{self.stream}@{self.position}"
