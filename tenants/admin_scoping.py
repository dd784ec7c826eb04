"""`TenantScopedAdmin`: a ModelAdmin base that confines tenant staff to their own tenant.

Scoped: list and change pages (querysets), foreign-key and many-to-many choices, autocomplete (which uses
the related admin's queryset), list filters (related filters only offer values in the scoped queryset),
actions (which act on the scoped queryset), and adds (the tenant is forced). Permissions follow the
staff member's role. Every change is written to the audit log.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.filters import RelatedOnlyFieldListFilter
from django.db import models
from django.forms.models import model_to_dict
from django.http import HttpRequest

from tenants.models import ROLE_RANK, Membership, Tenant
from tenants.selectors import membership_for
from tenants.services import audit_record

ALL_ROLES = frozenset(Membership.Role)
MANAGERS = frozenset({Membership.Role.OWNER, Membership.Role.ADMIN})


def staff_role(request: HttpRequest) -> str | None:
    """The request user's role in their tenant, cached on the request."""
    if not hasattr(request, "_staff_role"):
        membership = membership_for(user=request.user) if request.user.is_authenticated else None
        request._staff_role = membership.role if membership else None  # type: ignore[attr-defined]
    return request._staff_role  # type: ignore[attr-defined]


def role_at_least(request: HttpRequest, role: str) -> bool:
    current = staff_role(request)
    return current is not None and ROLE_RANK[Membership.Role(current)] >= ROLE_RANK[Membership.Role(role)]


def _tenant_path(model: type[models.Model]) -> str | None:
    if model is Tenant:
        return "pk"
    try:
        model._meta.get_field("tenant")
    except Exception:
        return None
    return "tenant"


class TenantScopedAdmin(admin.ModelAdmin):
    #: how to reach the tenant from this model (a lookup path); "pk" for the Tenant model itself
    tenant_field: str = "tenant"
    view_roles: frozenset[str] = ALL_ROLES
    change_roles: frozenset[str] = MANAGERS
    add_roles: frozenset[str] = MANAGERS
    delete_roles: frozenset[str] = MANAGERS
    #: fields only a superuser sees in forms
    superuser_only_fields: tuple[str, ...] = ("tenant",)

    # --- scoping ----------------------------------------------------------------------------------------
    def staff_tenant_id(self, request: HttpRequest) -> Any | None:
        return None if request.user.is_superuser else request.user.tenant_id

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        manager = getattr(self.model, "all_tenants", None) or self.model._default_manager
        queryset = manager.get_queryset()
        ordering = self.get_ordering(request)
        if ordering:
            queryset = queryset.order_by(*ordering)
        if request.user.is_superuser:
            return queryset
        tenant_id = self.staff_tenant_id(request)
        if tenant_id is None:
            return queryset.none()
        return queryset.filter(**{self.tenant_field: tenant_id})

    def _scope_related(self, request: HttpRequest, related: type[models.Model],
                       queryset: models.QuerySet | None) -> models.QuerySet | None:
        if request.user.is_superuser:
            return queryset
        path = _tenant_path(related)
        if path is None:
            return queryset
        manager = getattr(related, "all_tenants", None) or related._default_manager
        base = queryset if queryset is not None else manager.all()
        return base.filter(**{path: self.staff_tenant_id(request)})

    def formfield_for_foreignkey(self, db_field: models.ForeignKey, request: HttpRequest,
                                 **kwargs: Any) -> Any:
        # A model without a tenant (a chain, an asset) keeps Django's own choices: no `queryset=None` passed on.
        scoped = self._scope_related(request, db_field.related_model, kwargs.get("queryset"))
        if scoped is not None:
            kwargs["queryset"] = scoped
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field: models.ManyToManyField, request: HttpRequest,
                                 **kwargs: Any) -> Any:
        scoped = self._scope_related(request, db_field.related_model, kwargs.get("queryset"))
        if scoped is not None:
            kwargs["queryset"] = scoped
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        filters = []
        for spec in super().get_list_filter(request):
            if isinstance(spec, str) and not request.user.is_superuser:
                if spec == "tenant":
                    continue
                field = self._lookup_field(spec)
                if field is not None and field.is_relation:
                    spec = (spec, RelatedOnlyFieldListFilter)
            filters.append(spec)
        return filters

    def _lookup_field(self, path: str) -> models.Field | None:
        model: Any = self.model
        field = None
        for part in path.split("__"):
            try:
                field = model._meta.get_field(part)
            except Exception:
                return None
            model = getattr(field, "related_model", None)
        return field

    def get_exclude(self, request: HttpRequest, obj: Any = None) -> list[str]:
        exclude = list(super().get_exclude(request, obj) or [])
        if not request.user.is_superuser:
            exclude.extend(f for f in self.superuser_only_fields if f not in exclude)
        return exclude

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_fields(request, obj))
        if not request.user.is_superuser:
            fields = [f for f in fields if f not in self.superuser_only_fields]
        return fields

    def get_list_display(self, request: HttpRequest) -> list[str]:
        display = list(super().get_list_display(request))
        if not request.user.is_superuser:
            display = [f for f in display if f != "tenant"]
        return display

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        """For a tenant's staff, the form also checks the model's unique constraints that include `tenant`: staff
        have no `tenant` field (it is set on save), so Django's validation skips those constraints, and a
        duplicate reached the database as a 500."""
        form = super().get_form(request, obj, change=change, **kwargs)
        tenant_id = self.staff_tenant_id(request)
        unique_sets = self._unique_per_tenant()
        if tenant_id is None or not unique_sets or self.tenant_field != "tenant":
            return form
        manager = getattr(self.model, "all_tenants", self.model._default_manager)

        class StaffTenantForm(form):  # type: ignore[misc, valid-type]
            def clean(self) -> dict[str, Any]:
                data = super().clean()
                for names in unique_sets:
                    if any(name in self.errors for name in names):
                        continue
                    values = {name: data[name] if name in data else getattr(self.instance, name, None)
                              for name in names}
                    if any(value is None for value in values.values()):
                        continue
                    if manager.filter(tenant_id=tenant_id, **values).exclude(pk=self.instance.pk).exists():
                        labels = " and ".join(str(self.instance._meta.get_field(name).verbose_name) for name in names)
                        self.add_error(names[0] if names[0] in self.fields else None,
                                       f"This app has a row with this {labels} already: change that one instead.")
                return data

        return StaffTenantForm

    def _unique_per_tenant(self) -> list[tuple[str, ...]]:
        """The other fields of each unconditional unique constraint (or `unique_together`) with `tenant`."""
        meta = self.model._meta
        sets = [tuple(c.fields) for c in meta.total_unique_constraints] + [tuple(t) for t in meta.unique_together]
        return [tuple(name for name in fields if name != "tenant") for fields in sets
                if "tenant" in fields and len(fields) > 1]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not request.user.is_superuser and self.tenant_field == "tenant":
            obj.tenant_id = request.user.tenant_id
        super().save_model(request, obj, form, change)

    # --- permissions by role ----------------------------------------------------------------------------
    def _role_allows(self, request: HttpRequest, roles: frozenset[str]) -> bool:
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        if user.is_superuser:
            return True
        role = staff_role(request)
        return role is not None and role in roles

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._role_allows(request, self.view_roles)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._role_allows(request, self.view_roles | self.change_roles)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._role_allows(request, self.change_roles)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._role_allows(request, self.add_roles)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._role_allows(request, self.delete_roles)

    # --- audit ------------------------------------------------------------------------------------------
    def _audit(self, request: HttpRequest, obj: Any, action: str, changes: dict[str, Any]) -> None:
        tenant_id = getattr(obj, "tenant_id", None) if not isinstance(obj, Tenant) else obj.pk
        tenant = Tenant.objects.filter(pk=tenant_id).first() if tenant_id else None
        from tenants.auth.throttle import client_ip

        audit_record(tenant=tenant, actor=request.user, action=action, obj=obj, changes=changes,
                     ip=client_ip(request))

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        fields = {k: str(v) for k, v in model_to_dict(obj).items() if k not in ("password",)}
        self._audit(request, obj, "admin.add", {"fields": fields})
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit(request, obj, "admin.change", {"message": message if isinstance(message, (list, str))
                                                   else str(message)})
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        for obj in queryset:
            self._audit(request, obj, "admin.delete", {})
        return super().log_deletions(request, queryset)
