from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants and access"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tenants.auth import schema  # noqa: F401  (registers the OpenAPI auth extension)


class WalletAdminConfig(AdminConfig):
    """Django admin with the tenant-aware site (tenant staff see only their tenant)."""

    default_site = "tenants.admin_site.TenantAdminSite"
