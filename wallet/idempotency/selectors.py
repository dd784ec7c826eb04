"""Reads of idempotency records. The tenant is always explicit."""

from __future__ import annotations

from tenants.models import Tenant, User
from wallet.idempotency.models import IdempotencyRecord


def idempotency_record_get(*, tenant: Tenant, user: User, key: str) -> IdempotencyRecord | None:
    """The record of `key` for (tenant, user), committed or written by this transaction, or None."""
    return IdempotencyRecord.all_tenants.filter(tenant_id=tenant.pk, user_id=user.pk, key=key).first()
