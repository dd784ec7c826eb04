"""Wallet BFF: the Django project and the money core."""

# The Celery app must load with Django so that `@shared_task` binds to it (and workers find Redis).
from wallet.celery import app as celery_app

__all__ = ["celery_app"]
