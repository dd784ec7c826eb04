"""Read-only admin of the outbox: tenant staff see their tenant's events; nobody adds, changes or deletes."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from tenants.admin_scoping import TenantScopedAdmin
from wallet.events.models import OutboxEvent


@admin.register(OutboxEvent)
class OutboxEventAdmin(TenantScopedAdmin):
    list_display = ("created_at", "stream", "seq", "type", "published_at", "tenant")
    list_filter = ("type", ("published_at", admin.EmptyFieldListFilter), "tenant")
    search_fields = ("=id", "=stream", "type")
    ordering = ("-created_at", "-id")
    fields = ("id", "tenant", "stream", "seq", "type", "data", "created_at", "published_at")
    readonly_fields = fields
    # The table is large: skip the unfiltered COUNT(*) and the per-row tenant queries.
    show_full_result_count = False
    list_select_related = ("tenant",)
    change_roles = frozenset()
    add_roles = frozenset()
    delete_roles = frozenset()
    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
