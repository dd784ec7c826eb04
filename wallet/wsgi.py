"""WSGI entry point: the production HTTP path (granian WSGI workers with blocking threads, or gunicorn
gthread; persistent database connections)."""

import os

from django.core.wsgi import get_wsgi_application

from wallet.core.runtime import process_tune, whole_responses

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet.settings.development")
# One call into Python per request, and the worker pinned to a CPU at its first: wallet/core/runtime.py
application = whole_responses(get_wsgi_application(), pin=True)
process_tune()  # a frozen start-up heap, rarer collections, a 0.5 ms GIL switch interval: wallet/core/runtime.py

from wallet.ledger.committer_process import prestart  # noqa: E402 (needs the apps)

prestart()  # the transfer committer process starts with the server, not with its first transfer
