"""Refreshes of the balances read model: event-driven (after a ledger change or a deposit, scheduled by the
relay's listener) and scheduled (bank balances move without our events; streams that moved since a
snapshot without an event-driven refresh taking it in)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.db.models import F, OuterRef, Subquery
from django.utils import timezone

from tenants.models import Tenant
from tenants.tasks import TenantTask
from wallet.balances import conf

REFRESH_BATCH = 500
logger = logging.getLogger("wallet.balances")


def _moved_positions() -> Any:
    """`SnapshotPosition` rows (of snapshots still kept) whose user's stream head is past them."""
    from wallet.balances.models import SnapshotPosition
    from wallet.events.models import StreamCursor

    head = StreamCursor.all_tenants.filter(tenant_id=OuterRef("tenant_id"), stream=OuterRef("stream"))
    cutoff = timezone.now() - timedelta(seconds=conf.keep_seconds())
    return (SnapshotPosition.all_tenants.filter(refreshed_at__gte=cutoff)
            .annotate(head=Subquery(head.values("last_seq")[:1])).filter(head__gt=F("position")))


@shared_task(name="balances.refresh_all")
def refresh_all() -> int:
    """Fan out one `balances.refresh_tenant` per active tenant with linked bank accounts or with users whose
    stream moved since their snapshot (beat entry)."""
    from wallet.balances.models import LinkedBankAccount

    tenant_ids = set(LinkedBankAccount.all_tenants.filter(status=LinkedBankAccount.Status.ACTIVE)
                     .values_list("tenant_id", flat=True).distinct())
    tenant_ids |= set(_moved_positions().values_list("tenant_id", flat=True).distinct())
    active = Tenant.objects.filter(pk__in=tenant_ids, status=Tenant.Status.ACTIVE).values_list("pk", flat=True)
    count = 0
    for tenant_id in active:
        refresh_tenant.apply_async(kwargs={"tenant_id": str(tenant_id)})
        count += 1
    return count


@shared_task(base=TenantTask, name="balances.refresh_tenant", bind=True, max_retries=0)
def refresh_tenant(self: TenantTask, *, tenant_id: str) -> int:
    """Refresh the snapshot of every user of the tenant with an active linked bank account, and of every
    user whose stream moved since their snapshot (at most REFRESH_BATCH of each per run); emits
    `balances.updated` where balances changed. Safe to run twice."""
    from tenants.models import User
    from wallet.balances.models import LinkedBankAccount
    from wallet.balances.services import balances_refresh
    from wallet.core.context import current_tenant

    tenant = current_tenant()
    user_ids = set(LinkedBankAccount.objects.for_tenant(tenant).filter(status=LinkedBankAccount.Status.ACTIVE)
                   .values_list("user_id", flat=True).distinct()[:REFRESH_BATCH])
    user_ids |= set(_moved_positions().filter(tenant=tenant).values_list("user_id", flat=True)[:REFRESH_BATCH])
    refreshed = 0
    for user in User.objects.filter(tenant=tenant, pk__in=user_ids, is_active=True):
        try:
            balances_refresh(tenant=tenant, user=user)
        except Exception:  # one user's failure must not stop the others; the next run tries again
            logger.exception("balances refresh failed", extra={"user": str(user.pk)})
            continue
        refreshed += 1
    return refreshed


@shared_task(base=TenantTask, name="balances.refresh_user", bind=True, max_retries=0)
def refresh_user(self: TenantTask, *, tenant_id: str, user_id: str) -> bool:
    """Refresh one user's snapshot after a ledger change or a deposit (scheduled, debounced, by the relay's
    listener: `wallet.balances.listeners`); emits `balances.updated` when the aggregate changed. Does
    nothing for a user without a snapshot (their first read computes it), an inactive user, or a snapshot
    already taken at the stream's head (a read refreshed it meanwhile). Idempotent: returns whether it
    refreshed."""
    from tenants.models import User
    from wallet.balances.services import balances_refresh_if_moved
    from wallet.core.context import current_tenant

    tenant = current_tenant()
    user = User.objects.filter(tenant=tenant, pk=user_id, is_active=True).first()
    if user is None:
        return False
    return balances_refresh_if_moved(tenant=tenant, user=user)
