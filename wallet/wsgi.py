"""WSGI entry point: the production HTTP path (gunicorn sync workers, persistent DB connections)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet.settings.development")
application = get_wsgi_application()
