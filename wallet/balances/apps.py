from django.apps import AppConfig


class BalancesConfig(AppConfig):
    name = "wallet.balances"
    label = "balances"
    verbose_name = "Balances"
    default_auto_field = "django.db.models.BigAutoField"
