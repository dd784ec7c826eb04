"""Reads of the balances app. Every selector takes the tenant (and the user) explicitly."""

from __future__ import annotations

from typing import Any

from django.db import connections, router
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


_POSITION_SQL: dict[str, str] = {}


def stream_position(*, tenant: Tenant, user: User) -> int:
    """The head of the user's event stream (0 before any event): one read on a unique index. Every ledger
    change of the user moves it (`account.balance_changed`), so a cached aggregate remembers it.

    Plain SQL on the hot path: the ORM's query building cost more than the query on a warm read."""
    alias = router.db_for_read(StreamCursor)
    connection = connections[alias]
    sql = _POSITION_SQL.get(alias)
    if sql is None:
        quote = connection.ops.quote_name
        sql = (f"SELECT {quote('last_seq')} FROM {quote(StreamCursor._meta.db_table)} "  # noqa: S608
               f"WHERE {quote('tenant_id')} = %s AND {quote('stream')} = %s")
        _POSITION_SQL[alias] = sql
    tenant_id = StreamCursor._meta.get_field("tenant").get_db_prep_value(tenant.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_id, user_stream(user.pk)])
        row = cursor.fetchone()
    return int(row[0]) if row else 0
