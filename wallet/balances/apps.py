from django.apps import AppConfig


class BalancesConfig(AppConfig):
    name = "wallet.balances"
    label = "balances"
    verbose_name = "Balances"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from wallet.balances import conf
        from wallet.balances.builtin_sources import bank_sources, ledger_sources
        from wallet.balances.listeners import on_events_published
        from wallet.balances.selectors import stream_heads_moved
        from wallet.balances.sources import register_source_factory
        from wallet.events.relay import register_publish_listener
        from wallet.events.services import register_commit_listener

        register_commit_listener(stream_heads_moved)
        register_publish_listener(on_events_published)
        register_source_factory("ledger", ledger_sources)
        register_source_factory("bank", bank_sources)
        # The scheduled refresh, read by Celery beat and by the in-process scheduler alike (both read
        # CELERY_BEAT_SCHEDULE after the apps are ready). An entry set in settings wins.
        schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", None)
        if isinstance(schedule, dict):
            schedule.setdefault("balances-refresh", {"task": "balances.refresh_all",
                                                     "schedule": conf.refresh_seconds()})
