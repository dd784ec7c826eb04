"""Admin for tenants, app keys, users, memberships and the audit log (scoped per tenant)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants import services
from tenants.admin_scoping import ALL_ROLES, MANAGERS, TenantScopedAdmin, role_at_least, staff_role
from tenants.models import ROLE_RANK, AppKey, AuditLogEntry, Membership, Tenant, User


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_field = "pk"
    list_display = ("slug", "name", "status", "created_at")
    list_filter = ("status",)
    search_fields = ("slug", "name")
    superuser_only_fields = ()
    change_roles = frozenset({Membership.Role.OWNER})
    add_roles = frozenset()
    delete_roles = frozenset()
    actions = ["suspend", "reactivate"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if request.user.is_superuser:
            return ("created_at",) if obj is None else ("slug", "created_at")
        return ("slug", "status", "created_at")

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if not request.user.is_superuser:
            actions.pop("suspend", None)
            actions.pop("reactivate", None)
        return actions

    @admin.action(description="Suspend selected tenants (their apps get 403 tenant_suspended)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED, actor=request.user)

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            services.tenant_set_status(tenant=tenant, status=Tenant.Status.ACTIVE, actor=request.user)


@admin.register(AppKey)
class AppKeyAdmin(TenantScopedAdmin):
    list_display = ("key", "label", "tenant", "created_at", "revoked_at")
    list_filter = ("tenant",)
    search_fields = ("key", "label")
    readonly_fields = ("key", "created_at", "revoked_at")
    fields = ("tenant", "label", "key", "created_at", "revoked_at")
    delete_roles = frozenset()
    actions = ["revoke"]

    @admin.action(description="Revoke selected app keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AppKey]) -> None:
        if not self.has_change_permission(request):
            raise PermissionDenied
        for key in queryset:
            services.app_key_revoke(tenant=key.tenant, app_key=key)
            self._audit(request, key, "admin.action.revoke", {})
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


class UserAdminForm(forms.ModelForm):
    # Not named `password`: that is the model's hash field, which the form must never write.
    new_password = forms.CharField(
        label="Password", widget=forms.PasswordInput(render_value=False), required=False, strip=False,
        help_text="Set on creation; leave empty on change to keep the current password.",
    )

    class Meta:
        model = User
        fields = ("tenant", "email", "display_name", "is_active", "is_staff", "is_superuser")

    def clean(self) -> dict:
        data = super().clean()
        password = data.get("new_password")
        adding = self.instance._state.adding  # (UUID primary keys are set before the first save)
        if adding and not password:
            self.add_error("new_password", "A password is required for a new user.")
        if password:
            try:
                validate_password(password, user=self.instance)
            except ValidationError as exc:
                self.add_error("new_password", exc)
        email = data.get("email")
        if "tenant" in self.fields:
            tenant = data.get("tenant")
        elif not adding:
            tenant = self.instance.tenant
        else:
            tenant = getattr(self, "forced_tenant", None)
        if email is not None:
            clash = User.objects.filter(email__iexact=email, tenant=tenant).exclude(pk=self.instance.pk)
            if clash.exists():
                self.add_error("email", "An account with this email already exists in this tenant.")
        return data


@admin.register(User)
class UserAdmin(TenantScopedAdmin):
    form = UserAdminForm
    list_display = ("email", "display_name", "tenant", "is_active", "is_staff", "date_joined")
    list_filter = ("tenant", "is_active", "is_staff")
    search_fields = ("email", "display_name")
    ordering = ("email",)
    superuser_only_fields = ("tenant", "is_superuser", "is_staff")
    change_roles = frozenset({*MANAGERS, Membership.Role.SUPPORT})
    delete_roles = frozenset()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["tenant", "email", "display_name", "new_password", "is_active", "is_staff", "is_superuser"]
        if not request.user.is_superuser:
            fields = [f for f in fields if f not in self.superuser_only_fields]
        if staff_role(request) == Membership.Role.SUPPORT:
            fields = [f for f in fields if f != "new_password"]
        return fields

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if not request.user.is_superuser:
            form.forced_tenant = request.user.tenant
        return form

    def has_change_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        if not allowed or obj is None or request.user.is_superuser or obj.pk == request.user.pk:
            return allowed
        membership = Membership.all_tenants.filter(user=obj).first()
        if membership is None:
            return True  # an app user
        # Staff accounts: support never edits them; nobody edits a member who outranks them.
        return staff_role(request) != Membership.Role.SUPPORT and role_at_least(request, membership.role)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        if not request.user.is_superuser:
            obj.tenant_id = request.user.tenant_id
            obj.is_superuser = False
            if not change:
                obj.is_staff = False  # staff are made through memberships
        password = form.cleaned_data.get("new_password")
        if password:
            obj.set_password(password)
            if change:
                obj.auth_epoch += 1
        if not change:
            obj.username = ""
        obj.save()
        if password and change:
            services.sessions_revoke_all(user=obj, reason="admin_password_reset")


class MembershipAdminForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ("tenant", "user", "role")

    def clean(self) -> dict:
        data = super().clean()
        user, tenant = data.get("user"), data.get("tenant") or getattr(self, "forced_tenant", None)
        if user is not None and tenant is not None and user.tenant_id != tenant.pk:
            self.add_error("user", "The user belongs to another tenant.")
        if user is not None and user.is_superuser:
            self.add_error("user", "Platform operators cannot be tenant members.")
        return data


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    form = MembershipAdminForm
    list_display = ("user", "role", "tenant", "created_at")
    list_filter = ("tenant", "role")
    search_fields = ("user__email",)
    autocomplete_fields = ("user",)
    view_roles = ALL_ROLES

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if not request.user.is_superuser:
            form.forced_tenant = request.user.tenant
        return form

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "role" and not request.user.is_superuser:
            own = staff_role(request)
            kwargs["choices"] = [
                (value, label) for value, label in Membership.Role.choices
                if own is not None and ROLE_RANK[Membership.Role(value)] <= ROLE_RANK[Membership.Role(own)]
            ]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Membership | None = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        if allowed and obj is not None and not request.user.is_superuser:
            return role_at_least(request, obj.role)  # nobody edits a member above them
        return allowed

    has_delete_permission = has_change_permission  # type: ignore[assignment]

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        if not request.user.is_superuser:
            obj.tenant_id = request.user.tenant_id
            if not role_at_least(request, obj.role):
                raise PermissionDenied
        super().save_model(request, obj, form, change)
        User.objects.filter(pk=obj.user_id).update(is_staff=True)


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(TenantScopedAdmin):
    list_display = ("created_at", "actor_repr", "action", "object_type", "object_repr", "tenant")
    list_filter = ("tenant", "action")
    search_fields = ("actor_repr", "object_repr", "object_id", "request_id")
    view_roles = frozenset({Membership.Role.OWNER})
    change_roles = frozenset()
    add_roles = frozenset()
    delete_roles = frozenset()
    superuser_only_fields = ()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._role_allows(request, self.view_roles)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]
