from django.apps import AppConfig


class ChainsConfig(AppConfig):
    name = "chains"
    label = "chains"
    verbose_name = "Chains"
    default_auto_field = "django.db.models.BigAutoField"
