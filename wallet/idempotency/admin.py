"""Read-only admin of idempotency records, scoped per tenant.

Every staff role sees its own tenant's records (key, user, request, status, times); the stored response
body may hold personal data, so only owners, admins and superusers see it. Nobody adds, changes or deletes
records here: the API writes them and the purge task removes them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from tenants.admin_scoping import ALL_ROLES, TenantScopedAdmin, role_at_least
from tenants.models import Membership
from wallet.idempotency.models import IdempotencyRecord

BODY_PREVIEW_CHARACTERS = 20_000

_FIELDS = (
    "tenant", "user", "key", "method", "path", "fingerprint", "response_status", "response_content_type",
    "response_location", "created_at", "expires_at",
)


def may_see_bodies(request: HttpRequest) -> bool:
    """Owners, admins and superusers may read stored response bodies."""
    return request.user.is_superuser or role_at_least(request, Membership.Role.ADMIN)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(TenantScopedAdmin):
    list_display = ("created_at", "key", "user", "method", "path", "response_status", "expires_at", "tenant")
    list_filter = ("tenant", "method", "response_status")
    search_fields = ("key", "path", "user__email")
    list_select_related = ("user", "tenant")
    ordering = ("-created_at",)
    view_roles = ALL_ROLES
    change_roles = frozenset()
    add_roles = frozenset()
    delete_roles = frozenset()
    actions = None

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(_FIELDS)
        if may_see_bodies(request):
            fields.append("response_body_text")
        if not request.user.is_superuser:
            fields = [name for name in fields if name not in self.superuser_only_fields]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_fields(request, obj)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._role_allows(request, self.view_roles)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Response body")
    def response_body_text(self, obj: IdempotencyRecord) -> str:
        text = bytes(obj.response_body).decode("utf-8", "replace")
        if len(text) > BODY_PREVIEW_CHARACTERS:
            text = text[:BODY_PREVIEW_CHARACTERS] + "…"
        return format_html("<pre>{}</pre>", text)
