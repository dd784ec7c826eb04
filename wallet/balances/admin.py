"""Admin for the balances app: provider configs with write-only credentials, linked accounts read-only."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from tenants.admin_scoping import TenantScopedAdmin
from wallet.balances.crypto import credentials_encrypt
from wallet.balances.models import BankCustomer, LinkedBankAccount, ProviderConfig
from wallet.balances.providers.errors import ProviderNotConfigured
from wallet.balances.providers.factory import provider_base_url


class ProviderConfigForm(forms.ModelForm):
    credentials = forms.CharField(
        required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text='JSON, e.g. {"token": "..."} for Unit or {"api_key": "..."} for CoinGecko. Write-only: '
                  "never shown again; leave empty to keep the stored credentials.",
    )
    clear_credentials = forms.BooleanField(required=False, help_text="Remove the stored credentials")

    class Meta:
        model = ProviderConfig
        fields = ("tenant", "kind", "provider", "options", "enabled")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        options = cleaned.get("options")
        if isinstance(options, dict) and cleaned.get("provider"):
            try:
                provider_base_url(cleaned["provider"], options)
            except ProviderNotConfigured as exc:
                self.add_error("options", str(exc))
        return cleaned

    def clean_credentials(self) -> dict[str, Any] | None:
        text = self.cleaned_data.get("credentials") or ""
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError("Credentials must be a JSON object.") from exc
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise forms.ValidationError("Credentials must be a JSON object of strings.")
        return value

    def save(self, commit: bool = True) -> ProviderConfig:
        config = super().save(commit=False)
        credentials = self.cleaned_data.get("credentials")
        if self.cleaned_data.get("clear_credentials"):
            config.credentials_encrypted = ""
        elif credentials:
            config.credentials_encrypted = credentials_encrypt(credentials)
        config.updated_at = timezone.now()
        if commit:
            config.save()
        return config


@admin.register(ProviderConfig)
class ProviderConfigAdmin(TenantScopedAdmin):
    form = ProviderConfigForm
    list_display = ("kind", "provider", "enabled", "has_credentials", "updated_at")
    list_filter = ("kind", "provider", "enabled")
    readonly_fields = ("has_credentials", "updated_at")

    @admin.display(boolean=True, description="credentials stored")
    def has_credentials(self, obj: ProviderConfig) -> bool:
        return obj.has_credentials


@admin.register(LinkedBankAccount)
class LinkedBankAccountAdmin(TenantScopedAdmin):
    list_display = ("user", "institution", "account_last4", "currency", "status", "created_at")
    list_filter = ("status", "provider")
    search_fields = ("user__email", "external_id")
    readonly_fields = ("user", "provider", "external_id", "name", "institution", "account_last4", "currency",
                       "status", "created_at", "removed_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BankCustomer)
class BankCustomerAdmin(TenantScopedAdmin):
    """Who each user is at the banking provider (their customer id): linking an account the provider says
    belongs to other customers is refused."""

    list_display = ("user", "provider", "customer_ref", "created_at")
    list_filter = ("provider",)
    search_fields = ("user__email", "customer_ref")
    fields = ("tenant", "user", "provider", "customer_ref")
