from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "wallet.core"
    label = "core"
    verbose_name = "Core"
