"""Reads of the money core. Every selector takes the tenant (and, for user data, the user) explicitly."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.db.models import Q, QuerySet

from tenants.models import Tenant, User
from tenants.scoping import access_by_id
from wallet.core.bulk import hot_cursor, loaded
from wallet.ledger.errors import AssetNotEnabled, RecipientNotFound, UnknownAsset
from wallet.ledger.models import Account, Asset, Hold, Posting, TenantAsset, Transfer


def tenant_asset_list(*, tenant: Tenant) -> QuerySet[TenantAsset]:
    return TenantAsset.objects.for_tenant(tenant).filter(enabled=True).select_related("asset")


def tenant_asset_by_code(*, tenant: Tenant, code: str) -> TenantAsset:
    """The tenant's policy row for the asset with this code (with the asset), in one query; distinct
    errors for an unknown asset and one the tenant does not offer."""
    code = code.strip().upper()
    policy = (TenantAsset.objects.for_tenant(tenant).filter(asset__code=code, enabled=True)
              .select_related("asset").first())
    if policy is not None:
        return policy
    if Asset.objects.filter(code=code).exists():
        raise AssetNotEnabled(asset=code)
    raise UnknownAsset(asset=code)


# (tenant id, code) -> (policy, monotonic time read). Read on every transfer; a change made in this
# process is seen at once (signals clear it), one made elsewhere within POLICY_CACHE_SECONDS.
_POLICIES: dict[tuple[Any, str], tuple[TenantAsset, float]] = {}


def tenant_asset_by_code_cached(*, tenant: Tenant, code: str) -> TenantAsset:
    """`tenant_asset_by_code`, cached per process for `LEDGER_POLICY_CACHE_SECONDS` (default 2)."""
    key = (tenant.pk, code.strip().upper())
    hit = _POLICIES.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < getattr(settings, "LEDGER_POLICY_CACHE_SECONDS", 2.0):
        return hit[0]
    policy = tenant_asset_by_code(tenant=tenant, code=code)
    if len(_POLICIES) > 10_000:
        _POLICIES.clear()
    _POLICIES[key] = (policy, now)
    return policy


def policy_cache_clear(**_: Any) -> None:
    _POLICIES.clear()


def asset_enabled_by_code(*, tenant: Tenant, code: str) -> Asset:
    """The asset with this code if the tenant offers it; distinct errors for unknown and not offered."""
    return tenant_asset_by_code(tenant=tenant, code=code).asset


def account_list(*, tenant: Tenant, user: User) -> QuerySet[Account]:
    return (Account.objects.for_tenant(tenant).filter(user=user, kind=Account.Kind.USER)
            .select_related("asset").order_by("asset__code"))


def access_account(*, tenant: Tenant, user: User, account_id: Any) -> Account:
    """One of the user's own accounts; 404 for anyone else's (same tenant or not)."""
    return access_by_id(Account, tenant=tenant, object_id=account_id,
                        queryset=Account.all_tenants.filter(user=user).select_related("asset"))


def account_get(*, tenant: Tenant, account_id: Any) -> Account:
    """An account of the tenant by id (services already proved it belongs to the caller)."""
    return Account.objects.for_tenant(tenant).select_related("asset").get(pk=account_id)


def account_postings(*, tenant: Tenant, account: Account, since: datetime | None = None,
                     until: datetime | None = None, kinds: list[str] | None = None) -> QuerySet[Posting]:
    queryset = Posting.objects.for_tenant(tenant).filter(account=account).select_related("entry", "asset")
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    if until is not None:
        queryset = queryset.filter(created_at__lt=until)
    if kinds:
        queryset = queryset.filter(entry__kind__in=kinds)
    return queryset


def transfer_list(*, tenant: Tenant, user: User) -> QuerySet[Transfer]:
    return (Transfer.objects.for_tenant(tenant).filter(Q(sender=user) | Q(recipient=user))
            .select_related("asset", "sender", "recipient"))


def access_transfer(*, tenant: Tenant, user: User, transfer_id: Any) -> Transfer:
    return access_by_id(Transfer, tenant=tenant, object_id=transfer_id,
                        queryset=transfer_list(tenant=tenant, user=user))


def hold_list(*, tenant: Tenant, user: User) -> QuerySet[Hold]:
    return Hold.objects.for_tenant(tenant).filter(account__user=user).select_related("account__asset")


def access_hold(*, tenant: Tenant, user: User, hold_id: Any) -> Hold:
    return access_by_id(Hold, tenant=tenant, object_id=hold_id, queryset=hold_list(tenant=tenant, user=user))


# What a transfer reads of its recipient (the id, and the counterparty shown to the sender); any other
# field is loaded by Django on first access, as for `.only()`. The password hash, for one, never is.
_USER_FIELDS = tuple(User._meta.get_field(name) for name in
                     ("id", "tenant", "email", "handle", "display_name", "is_active"))
_TENANT_FIELD = User._meta.get_field("tenant")
_RECIPIENT_SQL = {
    column: (f"SELECT {', '.join(field.column for field in _USER_FIELDS)} FROM {User._meta.db_table} "  # noqa: S608
             f"WHERE tenant_id = %s AND is_active AND lower({column}) = %s LIMIT 1")
    for column in ("email", "handle")
}


_CONVERTERS: dict[str, list[tuple[str, Any, list[Any]]]] = {}


def _user_converters(connection: Any) -> list[tuple[str, Any, list[Any]]]:
    """Per database alias, once: each user column's attribute name, expression and value converters (what
    the ORM applies when it builds a model from a row)."""
    found = _CONVERTERS.get(connection.alias)
    if found is None:
        found = []
        for field in _USER_FIELDS:
            col = field.get_col(User._meta.db_table)
            found.append((field.attname, col,
                          connection.ops.get_db_converters(col) + field.get_db_converters(connection)))
        _CONVERTERS[connection.alias] = found
    return found


def recipient_find(*, tenant: Tenant, email: str | None = None, handle: str | None = None) -> User:
    """An active user of the tenant by email or handle (case-insensitive)."""
    # lower(...) = lower(value): the form the unique indexes are built on (iexact's UPPER would scan).
    # Plain SQL: it runs on every transfer, and the ORM's compilation cost more than the query.
    if email:
        column, value = "email", email.strip().lower()
    elif handle:
        column, value = "handle", handle.strip().lstrip("@").lower()
    else:
        raise RecipientNotFound()
    connection = connections[router.db_for_read(User) or "default"]
    with hot_cursor(connection) as cursor:
        cursor.execute(_RECIPIENT_SQL[column], [_TENANT_FIELD.get_db_prep_value(tenant.pk, connection), value])
        row = cursor.fetchone()
    user = None
    if row is not None:
        values = {}
        for (attname, col, converters), raw in zip(_user_converters(connection), row, strict=True):
            for converter in converters:
                raw = converter(raw, col, connection)
            values[attname] = raw
        user = loaded(User, connection.alias, values, {"tenant": tenant})
    if user is None:
        raise RecipientNotFound()
    return user
