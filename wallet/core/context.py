"""Request-scoped context carried in contextvars through HTTP, websockets and tasks.

The tenant travels here so that scoped managers and log lines can see it without every function having to
pass it on. Code that *acts* on a tenant still takes it as an explicit argument; this is the safety net.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# The current tenant (a tenants.models.Tenant), or None when no tenant is in scope.
tenant_var: ContextVar[Any | None] = ContextVar("tenant", default=None)
# True only inside `all_tenants_scope()`: platform code (superuser admin, migrations, operator commands)
# that deliberately reads across tenants.
all_tenants_var: ContextVar[bool] = ContextVar("all_tenants", default=False)
user_id_var: ContextVar[str | None] = ContextVar("user_id", default=None)


def current_tenant() -> Any | None:
    return tenant_var.get()


@contextlib.contextmanager
def tenant_scope(tenant: Any) -> Iterator[Any]:
    """Make `tenant` the current tenant for the block (and only for it)."""
    token = tenant_var.set(tenant)
    all_token = all_tenants_var.set(False)
    try:
        yield tenant
    finally:
        all_tenants_var.reset(all_token)
        tenant_var.reset(token)


@contextlib.contextmanager
def all_tenants_scope() -> Iterator[None]:
    """Allow tenant-scoped managers to read every tenant's rows for the block (platform code only)."""
    token = tenant_var.set(None)
    all_token = all_tenants_var.set(True)
    try:
        yield
    finally:
        all_tenants_var.reset(all_token)
        tenant_var.reset(token)


@contextlib.contextmanager
def user_scope(user_id: str | None) -> Iterator[None]:
    token = user_id_var.set(user_id)
    try:
        yield
    finally:
        user_id_var.reset(token)
