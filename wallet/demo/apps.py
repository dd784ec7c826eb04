from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The composition root for demo data: it may import every app (nothing imports it)."""

    name = "wallet.demo"
    label = "demo"
    verbose_name = "Demo data"
