"""Reads of the money core. Every selector takes the tenant (and, for user data, the user) explicitly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from tenants.models import Tenant, User
from tenants.scoping import access_by_id
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


def recipient_find(*, tenant: Tenant, email: str | None = None, handle: str | None = None) -> User:
    """An active user of the tenant by email or handle (case-insensitive)."""
    queryset = User.objects.filter(tenant=tenant, is_active=True)
    if email:
        user = queryset.filter(email__iexact=email.strip()).first()
    elif handle:
        user = queryset.filter(handle__iexact=handle.strip().lstrip("@")).first()
    else:
        user = None
    if user is None:
        raise RecipientNotFound()
    return user
