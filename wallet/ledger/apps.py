from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class LedgerConfig(AppConfig):
    name = "wallet.ledger"
    label = "ledger"
    verbose_name = "Ledger"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from wallet.ledger.models import Asset, TenantAsset
        from wallet.ledger.selectors import policy_cache_clear

        # The per-process policy cache of transfers sees this process's own changes at once.
        for model in (Asset, TenantAsset):
            post_save.connect(policy_cache_clear, sender=model, dispatch_uid=f"ledger-policy-{model.__name__}")
            post_delete.connect(policy_cache_clear, sender=model, dispatch_uid=f"ledger-policy-d-{model.__name__}")
