"""Production settings: everything from the environment, nothing insecure by default.

`python manage.py check --deploy --settings=wallet.settings.production` passes with no warnings given
SECRET_KEY, ALLOWED_HOSTS and DATABASE_URL (a test proves it).
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from wallet.settings.base import *  # noqa: F403
from wallet.settings.base import env_bool, env_int

if DEBUG:  # noqa: F405
    raise ImproperlyConfigured("Production settings refuse DEBUG=1.")
if not ALLOWED_HOSTS:  # noqa: F405
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set in production.")
if not os.environ.get("DATABASE_URL"):
    raise ImproperlyConfigured("DATABASE_URL must be set in production (PostgreSQL).")

PRODUCTION = True
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
if env_bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True
WHITENOISE_USE_FINDERS = False
WHITENOISE_AUTOREFRESH = False
