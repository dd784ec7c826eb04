"""Scheduled ledger work: expiring holds (per tenant, tenant passed explicitly)."""

from __future__ import annotations

from celery import shared_task

from tenants.models import Tenant
from tenants.tasks import TenantTask


@shared_task(name="ledger.expire_holds_all")
def expire_holds_all() -> int:
    """Fan out one `ledger.expire_holds` per active tenant (beat entry point)."""
    count = 0
    for tenant_id in Tenant.objects.filter(status=Tenant.Status.ACTIVE).values_list("pk", flat=True):
        expire_holds.apply_async(kwargs={"tenant_id": str(tenant_id)})
        count += 1
    return count


@shared_task(base=TenantTask, name="ledger.expire_holds", bind=True, max_retries=3)
def expire_holds(self: TenantTask, *, tenant_id: str) -> int:
    """Void the tenant's holds whose expiry has passed. Safe to run twice (voided holds are skipped)."""
    from wallet.core.context import current_tenant
    from wallet.ledger.services import holds_expire

    return holds_expire(tenant=current_tenant())
