"""Tenant scoping that nobody has to remember.

Every tenant-owned model inherits `TenantOwned`. Its default manager only ever returns the current
tenant's rows (from the context set at the edge: HTTP middleware, websocket middleware, task base class);
with no tenant in scope it refuses to run rather than return everyone's rows. Platform code that must read
across tenants says so with `all_tenants_scope()` or uses the explicit `all_tenants` manager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import models

from wallet.core.context import all_tenants_var, current_tenant
from wallet.core.errors import NotFound

if TYPE_CHECKING:
    from tenants.models import Tenant

M = TypeVar("M", bound=models.Model)


class TenantScopeError(RuntimeError):
    """A tenant-owned table was queried with no tenant in scope."""


class TenantScopedQuerySet(models.QuerySet[M]):
    def for_tenant(self, tenant: Tenant) -> TenantScopedQuerySet[M]:
        return self.filter(tenant_id=tenant.pk)


class TenantScopedManager(models.Manager[M]):
    """Filters by the current tenant; raises `TenantScopeError` when there is none."""

    _queryset_class = TenantScopedQuerySet

    def get_queryset(self) -> TenantScopedQuerySet[M]:
        queryset = TenantScopedQuerySet(self.model, using=self._db)
        tenant = current_tenant()
        if tenant is not None:
            return queryset.filter(tenant_id=tenant.pk)
        if all_tenants_var.get():
            return queryset
        raise TenantScopeError(
            f"{self.model._meta.label} queried with no tenant in scope; use a selector with an explicit "
            "tenant inside tenant_scope(), or all_tenants_scope() for platform code."
        )

    def for_tenant(self, tenant: Tenant) -> TenantScopedQuerySet[M]:
        """Rows of `tenant`, explicitly (works with or without a tenant in scope)."""
        return TenantScopedQuerySet(self.model, using=self._db).filter(tenant_id=tenant.pk)


class TenantOwned(models.Model):
    """Abstract base of every row that belongs to one tenant."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")

    objects = TenantScopedManager()
    all_tenants = models.Manager()  # noqa: DJ012 (a manager, not a field)

    class Meta:
        abstract = True
        base_manager_name = "all_tenants"


def access_by_id(model: type[M], *, tenant: Tenant, object_id: Any,
                 queryset: models.QuerySet[M] | None = None) -> M:
    """Fetch one of `tenant`'s rows by id, or raise 404 (never 403) for a missing, foreign or malformed id.

    The tenant filter is applied here, explicitly, whatever `queryset` already does.
    """
    if queryset is None:
        manager = getattr(model, "all_tenants", None) or model._default_manager
        queryset = manager.all()
    try:
        return queryset.filter(tenant_id=tenant.pk).get(pk=object_id)
    except (model.DoesNotExist, ValueError, TypeError, ValidationError) as exc:
        raise NotFound() from exc
