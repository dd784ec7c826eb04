"""Reads of the balances app. Every selector takes the tenant (and the user) explicitly."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from tenants.models import Tenant, User
from tenants.scoping import access_by_id
from wallet.balances import conf
from wallet.balances.models import BalancePreference, LinkedBankAccount
from wallet.events.models import StreamCursor
from wallet.events.streams import user_stream


def bank_account_list(*, tenant: Tenant, user: User) -> QuerySet[LinkedBankAccount]:
    """The user's active linked bank accounts, oldest first."""
    return (LinkedBankAccount.objects.for_tenant(tenant)
            .filter(user=user, status=LinkedBankAccount.Status.ACTIVE).order_by("created_at", "id"))


def access_bank_account(*, tenant: Tenant, user: User, bank_account_id: Any) -> LinkedBankAccount:
    """One of the user's own active linked accounts; 404 for anyone else's, a removed one or a bad id."""
    return access_by_id(LinkedBankAccount, tenant=tenant, object_id=bank_account_id,
                        queryset=bank_account_list(tenant=tenant, user=user))


def display_currency_of(*, tenant: Tenant, user: User) -> str:
    """The user's display currency (their preference, else `BALANCES_DEFAULT_CURRENCY`)."""
    chosen = list(BalancePreference.objects.for_tenant(tenant).filter(user=user)
                  .values_list("display_currency", flat=True)[:1])
    return chosen[0] if chosen else conf.default_currency()


def stream_position(*, tenant: Tenant, user: User) -> int:
    """The head of the user's event stream (0 before any event): one read on a unique index. Every ledger
    change of the user moves it (`account.balance_changed`), so a cached aggregate remembers it."""
    found = list(StreamCursor.all_tenants.filter(tenant_id=tenant.pk, stream=user_stream(user.pk))
                 .values_list("last_seq", flat=True)[:1])
    return found[0] if found else 0
