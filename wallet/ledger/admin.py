"""Admin for the money core. Entries and postings are read-only; a reversal is an action that records who
asked; sandbox funding is an action on accounts (refused in production)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from tenants.admin_scoping import MANAGERS, TenantScopedAdmin
from wallet.core.errors import ApiError
from wallet.ledger import services
from wallet.ledger.models import Account, Asset, Hold, JournalEntry, Posting, TenantAsset, Transfer

READ_ONLY = frozenset()


class ReadOnlyAdmin(TenantScopedAdmin):
    change_roles = READ_ONLY
    add_roles = READ_ONLY
    delete_roles = READ_ONLY

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    list_display = ("code", "kind", "name", "symbol", "decimals", "chain_id", "contract_address")
    list_filter = ("kind",)
    search_fields = ("code", "name", "symbol")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    has_add_permission = has_change_permission  # type: ignore[assignment]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TenantAsset)
class TenantAssetAdmin(TenantScopedAdmin):
    list_display = ("asset", "enabled", "max_per_transfer", "daily_limit_per_user", "tenant")
    list_filter = ("tenant", "enabled")
    fields = ("tenant", "asset", "enabled", "max_per_transfer", "daily_limit_per_user")
    delete_roles = READ_ONLY


class FundForm(forms.Form):
    amount = forms.IntegerField(min_value=1, help_text="In the asset's smallest unit (cents, wei)")


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ("id", "asset", "kind", "user", "rail", "posted", "held", "tenant")
    list_filter = ("tenant", "kind", "asset")
    search_fields = ("user__email", "id")
    list_select_related = ("asset", "user")
    actions = ["fund_sandbox"]

    @admin.action(description="Fund (sandbox only): credit from the sandbox external account")
    def fund_sandbox(self, request: HttpRequest, queryset: QuerySet[Account]) -> HttpResponse | None:
        if not self._role_allows(request, MANAGERS):
            raise PermissionDenied
        accounts = list(queryset.filter(kind=Account.Kind.USER).select_related("asset", "user", "tenant"))
        form = FundForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            for account in accounts:
                try:
                    entry = services.sandbox_fund(tenant=account.tenant, user=account.user, asset=account.asset,
                                                  amount=form.cleaned_data["amount"], requested_by=request.user,
                                                  memo=f"Sandbox funding by {request.user.email}")
                except ApiError as error:
                    self.message_user(request, f"{account}: {error.code}", messages.ERROR)
                    continue
                self._audit(request, entry, "admin.action.fund", {"account": str(account.pk),
                                                                  "amount": str(form.cleaned_data["amount"])})
            self.message_user(request, f"Funded {len(accounts)} account(s).", messages.SUCCESS)
            return None
        return TemplateResponse(request, "admin/ledger/fund.html", {
            **self.admin_site.each_context(request), "title": "Fund accounts (sandbox)", "form": form,
            "accounts": accounts, "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })


class PostingInline(admin.TabularInline):
    model = Posting
    fields = ("account", "asset", "amount", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Posting]:
        return Posting.all_tenants.select_related("account", "asset")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ("seq", "kind", "memo", "reference", "created_at", "requested_by", "tenant")
    list_filter = ("tenant", "kind")
    search_fields = ("reference", "memo", "id")
    inlines = [PostingInline]
    actions = ["reverse_entries"]

    @admin.action(description="Reverse selected entries (posts the opposite entry; records who asked)")
    def reverse_entries(self, request: HttpRequest, queryset: QuerySet[JournalEntry]) -> None:
        if not self._role_allows(request, MANAGERS):
            raise PermissionDenied
        for entry in queryset.select_related("tenant"):
            try:
                reversal = services.entry_reverse(tenant=entry.tenant, entry=entry, requested_by=request.user)
            except ApiError as error:
                self.message_user(request, f"#{entry.seq}: {error.code} ({error.detail})", messages.ERROR)
                continue
            self._audit(request, entry, "admin.action.reverse", {"reversal": str(reversal.pk), "seq": reversal.seq})
            self.message_user(request, f"#{entry.seq} reversed by #{reversal.seq}.", messages.SUCCESS)


@admin.register(Transfer)
class TransferAdmin(ReadOnlyAdmin):
    list_display = ("id", "sender", "recipient", "asset", "amount", "status", "created_at", "tenant")
    list_filter = ("tenant", "status", "asset")
    search_fields = ("sender__email", "recipient__email", "id")
    list_select_related = ("sender", "recipient", "asset")


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ("id", "account", "amount", "remaining", "status", "expires_at", "tenant")
    list_filter = ("tenant", "status")
