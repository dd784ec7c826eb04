"""Reads of tenancy data. Every selector takes the tenant explicitly."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from tenants.models import AppKey, AuditLogEntry, Membership, Tenant, User
from tenants.scoping import access_by_id


@dataclass
class _Cached:
    expires: float
    tenant: Tenant | None


class _AppKeyCache:
    """Per-process cache of app key -> tenant, for `TENANT_CACHE_SECONDS` (suspensions and revocations
    take effect within that time in every process)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Cached] = {}

    def get(self, key: str) -> _Cached | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires > time.monotonic():
            return entry
        return None

    def put(self, key: str, tenant: Tenant | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = _Cached(time.monotonic() + settings.TENANT_CACHE_SECONDS, tenant)

    def clear(self) -> None:
        self._entries.clear()


app_key_cache = _AppKeyCache()


def tenant_for_app_key(key: str) -> Tenant | None:
    """The tenant whose live app key this is, or None. Cached briefly per process."""
    cached = app_key_cache.get(key)
    if cached is not None:
        return cached.tenant
    row = AppKey.all_tenants.select_related("tenant").filter(key=key, revoked_at__isnull=True).first()
    tenant = row.tenant if row is not None else None
    app_key_cache.put(key, tenant)
    return tenant


def tenant_get(*, slug: str) -> Tenant:
    return Tenant.objects.get(slug=slug)


def app_key_list(*, tenant: Tenant, include_revoked: bool = False) -> QuerySet[AppKey]:
    queryset = AppKey.objects.for_tenant(tenant)
    return queryset if include_revoked else queryset.filter(revoked_at__isnull=True)


def user_list(*, tenant: Tenant) -> QuerySet[User]:
    return User.objects.filter(tenant=tenant)


def user_find_by_email(*, tenant: Tenant, email: str) -> User | None:
    return User.objects.filter(tenant=tenant, email__iexact=email.strip()).first()


def access_user_by_id(*, tenant: Tenant, user_id: Any) -> User:
    """A user of `tenant` by id; 404 for another tenant's user or a malformed id."""
    return access_by_id(User, tenant=tenant, object_id=user_id, queryset=User.objects.all())


def membership_for(*, user: User) -> Membership | None:
    if user.tenant_id is None:
        return None
    return Membership.all_tenants.filter(user=user, tenant_id=user.tenant_id).first()


def audit_log_list(*, tenant: Tenant) -> QuerySet[AuditLogEntry]:
    return AuditLogEntry.objects.filter(tenant=tenant)
