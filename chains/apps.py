from django.apps import AppConfig


class ChainsConfig(AppConfig):
    name = "chains"
    label = "chains"
    verbose_name = "Chains"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # On-chain balances of linked and deposit addresses are sources of GET /api/v1/balances.
        from chains.balance_sources import chain_balance_sources
        from wallet.balances.sources import register_source_factory

        register_source_factory("chains", chain_balance_sources)
        # Scheduled housekeeping, read by Celery beat and by the in-process scheduler alike (an entry set in
        # settings wins).
        from django.conf import settings

        from chains.conf import setting

        schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", None)
        if isinstance(schedule, dict):
            schedule.setdefault("chains-purge-siwe-nonces", {"task": "chains.purge_siwe_nonces",
                                                             "schedule": setting("CHAINS_SIWE_PURGE_SECONDS")})
