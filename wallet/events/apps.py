from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "wallet.events"
    label = "events"
    verbose_name = "Events (outbox and stream)"
    default_auto_field = "django.db.models.BigAutoField"
