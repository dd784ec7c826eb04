"""WSGI entry point: the production HTTP path (gunicorn sync workers, persistent DB connections)."""

import gc
import os
import sys

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet.settings.development")
application = get_wsgi_application()

# Threaded workers (gunicorn gthread): a thread that comes back from I/O, such as the group commit's
# leader returning from PostgreSQL with a batch's locks held, waits for the GIL at most this long while
# another thread parses a request (CPython's default is 5 ms, which queues every round trip of a batch).
sys.setswitchinterval(float(os.environ.get("WSGI_SWITCH_INTERVAL_MS", "0.5")) / 1000)
# Django, the URL conf and everything loaded at start-up live as long as the process: keep them out of
# the collector's full passes.
gc.collect()
gc.freeze()
