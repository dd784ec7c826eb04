"""Scheduled refresh of balances from external sources (bank balances move without our events)."""

from __future__ import annotations

import logging

from celery import shared_task

from tenants.models import Tenant
from tenants.tasks import TenantTask

REFRESH_BATCH = 500
logger = logging.getLogger("wallet.balances")


@shared_task(name="balances.refresh_all")
def refresh_all() -> int:
    """Fan out one `balances.refresh_tenant` per active tenant with linked bank accounts (beat entry)."""
    from wallet.balances.models import LinkedBankAccount

    tenant_ids = set(LinkedBankAccount.all_tenants.filter(status=LinkedBankAccount.Status.ACTIVE)
                     .values_list("tenant_id", flat=True).distinct())
    active = Tenant.objects.filter(pk__in=tenant_ids, status=Tenant.Status.ACTIVE).values_list("pk", flat=True)
    count = 0
    for tenant_id in active:
        refresh_tenant.apply_async(kwargs={"tenant_id": str(tenant_id)})
        count += 1
    return count


@shared_task(base=TenantTask, name="balances.refresh_tenant", bind=True, max_retries=0)
def refresh_tenant(self: TenantTask, *, tenant_id: str) -> int:
    """Refresh the snapshot of every user of the tenant with an active linked bank account (at most
    REFRESH_BATCH per run); emits `balances.updated` where balances changed. Safe to run twice."""
    from tenants.models import User
    from wallet.balances.models import LinkedBankAccount
    from wallet.balances.services import balances_refresh
    from wallet.core.context import current_tenant

    tenant = current_tenant()
    user_ids = list(LinkedBankAccount.objects.for_tenant(tenant).filter(status=LinkedBankAccount.Status.ACTIVE)
                    .values_list("user_id", flat=True).distinct()[:REFRESH_BATCH])
    refreshed = 0
    for user in User.objects.filter(tenant=tenant, pk__in=user_ids, is_active=True):
        try:
            balances_refresh(tenant=tenant, user=user)
        except Exception:  # one user's failure must not stop the others; the next run tries again
            logger.exception("balances refresh failed", extra={"user": str(user.pk)})
            continue
        refreshed += 1
    return refreshed
