"""Admin of the chains app. The chain and token registry is platform data (superusers change it; staff see
it); tenant rows are scoped to the staff member's tenant; deposits and relayed transactions are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest

from chains.models import (
    Chain,
    ChainCursor,
    Deposit,
    DepositAddress,
    LinkedWallet,
    RelayedTransaction,
    TenantChain,
    Token,
)
from chains.services import chain_assets_enable
from tenants.admin_scoping import TenantScopedAdmin


class PlatformAdmin(admin.ModelAdmin):
    """Staff may look; only superusers change platform data."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser


class TokenInline(admin.TabularInline):
    model = Token
    fields = ("contract", "symbol", "decimals", "asset", "enabled")
    extra = 0


@admin.register(Chain)
class ChainAdmin(PlatformAdmin):
    list_display = ("chain_id", "name", "confirmations", "trust_finalized", "poll_interval_ms", "enabled")
    search_fields = ("name", "chain_id")
    inlines = [TokenInline]


@admin.register(ChainCursor)
class ChainCursorAdmin(PlatformAdmin):
    list_display = ("chain", "block_number", "head_number", "head_changed_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class ReadOnlyTenantAdmin(TenantScopedAdmin):
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TenantChain)
class TenantChainAdmin(TenantScopedAdmin):
    list_display = ("chain", "enabled", "next_deposit_index", "tenant")
    list_filter = ("tenant", "enabled")
    fields = ("tenant", "chain", "enabled", "deposit_xpub")

    def save_model(self, request: HttpRequest, obj: TenantChain, form: Any, change: bool) -> None:
        """As `tenant_chain_enable`: an enabled chain offers its native asset and tokens in the app."""
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if obj.enabled:
                chain_assets_enable(tenant=obj.tenant, chain=obj.chain)


@admin.register(LinkedWallet)
class LinkedWalletAdmin(ReadOnlyTenantAdmin):
    list_display = ("address", "user", "chain_id", "is_contract", "created_at", "tenant")
    list_filter = ("tenant", "is_contract")
    search_fields = ("address", "user__email")


@admin.register(DepositAddress)
class DepositAddressAdmin(ReadOnlyTenantAdmin):
    list_display = ("address", "user", "chain", "derivation_index", "created_at", "tenant")
    list_filter = ("tenant", "chain")
    search_fields = ("address", "user__email")


@admin.register(Deposit)
class DepositAdmin(ReadOnlyTenantAdmin):
    list_display = ("tx_hash", "log_index", "chain", "user", "asset", "amount", "status", "confirmations",
                    "block_number", "tenant")
    list_filter = ("tenant", "status", "chain")
    search_fields = ("tx_hash", "to_address", "user__email")
    list_select_related = ("chain", "user", "asset")


@admin.register(RelayedTransaction)
class RelayedTransactionAdmin(ReadOnlyTenantAdmin):
    list_display = ("tx_hash", "chain", "user", "sender", "nonce", "status", "block_number", "tenant")
    list_filter = ("tenant", "status", "chain")
    search_fields = ("tx_hash", "sender", "user__email")
    exclude = ("raw",)
