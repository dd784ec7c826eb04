"""Tenant resolution at the HTTP edge.

- `AppTenantMiddleware`: every request under /api/v1/ names its tenant with a public app key
  (`X-App-Key`); the tenant goes on the request and into the context for the whole request.
- `AdminTenantMiddleware`: an admin request runs in its staff member's tenant; a superuser's in
  all-tenants scope.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from tenants.errors import AppKeyMissing, InvalidAppKey, TenantSuspended
from tenants.selectors import tenant_for_app_key
from wallet.core.context import all_tenants_scope, tenant_scope
from wallet.core.errors import ApiError, problem_response

API_PREFIX = "/api/v1/"


def resolve_app_tenant(app_key: str | None):  # -> Tenant
    """The active tenant of an app key, or the error to answer with."""
    if not app_key:
        raise AppKeyMissing()
    tenant = tenant_for_app_key(app_key)
    if tenant is None:
        raise InvalidAppKey()
    if not tenant.is_active:
        raise TenantSuspended()
    return tenant


class AppTenantMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX) or request.method == "OPTIONS":
            return self.get_response(request)
        try:
            tenant = resolve_app_tenant(request.META.get("HTTP_X_APP_KEY"))
        except ApiError as error:
            return problem_response(error, instance=request.path)
        request.tenant = tenant  # type: ignore[attr-defined]
        with tenant_scope(tenant):
            return self.get_response(request)


class AdminTenantMiddleware:
    ADMIN_PREFIX = "/admin/"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(self.ADMIN_PREFIX):
            return self.get_response(request)
        user = request.user
        if user.is_authenticated and user.is_superuser:
            with all_tenants_scope():
                return self.get_response(request)
        if user.is_authenticated and user.is_staff and user.tenant_id is not None:
            with tenant_scope(user.tenant):
                return self.get_response(request)
        return self.get_response(request)
