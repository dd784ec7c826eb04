"""Celery task base that runs each task inside its tenant's scope.

Tasks take ids and an explicit `tenant_id` keyword; the base class loads the tenant and sets the context
for the run only, so nothing leaks from one task to the next in a worker.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from wallet.core.context import tenant_scope


class TenantTask(Task):
    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from tenants.models import Tenant

        tenant_id = kwargs.get("tenant_id")
        if tenant_id is None:
            raise TypeError(f"{self.name} needs an explicit tenant_id keyword argument")
        tenant = Tenant.objects.get(pk=tenant_id)
        with tenant_scope(tenant):
            return super().__call__(*args, **kwargs)
