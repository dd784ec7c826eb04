"""The admin site shared by platform operators and tenant staff."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate
from django.http import HttpRequest

from tenants.models import Tenant


class TenantAdminAuthenticationForm(AdminAuthenticationForm):
    """Sign in with organisation (tenant slug), email and password. Platform operators leave the
    organisation empty and may use their username instead of an email."""

    tenant = forms.CharField(label="Organisation", max_length=50, required=False,
                             help_text="Your tenant's slug; empty for platform operators.")
    field_order = ["tenant", "username", "password"]

    def __init__(self, request: HttpRequest | None = None, *args: object, **kwargs: object) -> None:
        super().__init__(request, *args, **kwargs)
        self.fields["username"].label = "Email"
        self.order_fields(self.field_order)

    def clean(self) -> dict:
        slug = (self.cleaned_data.get("tenant") or "").strip().lower()
        email = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if email is None or not password:
            return self.cleaned_data
        tenant = Tenant.objects.filter(slug=slug).first() if slug else None
        user = None
        if slug and tenant is None:
            user = None
        else:
            user = authenticate(self.request, tenant=tenant, email=email, password=password)
            if user is None and not slug:
                user = authenticate(self.request, username=email, password=password)
        if user is None:
            raise self.get_invalid_login_error()
        self.user_cache = user
        self.confirm_login_allowed(user)
        return self.cleaned_data


class TenantAdminSite(admin.AdminSite):
    site_header = "Wallet BFF admin"
    site_title = "Wallet BFF"
    index_title = "Administration"
    login_form = TenantAdminAuthenticationForm

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        if user.is_superuser:
            return True
        from tenants.selectors import membership_for

        membership = membership_for(user=user)
        return membership is not None and user.tenant is not None and user.tenant.is_active
