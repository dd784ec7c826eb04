"""System checks of the core app (registered by `CoreConfig.ready`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

# The admin's checks (admin.E408-E410) and the deploy check for CSRF (security.W003) look for these in
# MIDDLEWARE; here they are in BROWSER_MIDDLEWARE, which `wallet.core.middleware.BrowserMiddleware` runs for
# every path but the API's (settings.base silences those checks, and this one takes their place).
_ADMIN_NEEDS = (
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
)
_CSRF = "django.middleware.csrf.CsrfViewMiddleware"


@checks.register(checks.Tags.admin)
def check_browser_middleware(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The admin's session, authentication and messages middleware run, in that order, for its pages, and
    CSRF protection for every page that has a session."""
    browser = list(getattr(settings, "BROWSER_MIDDLEWARE", ()))
    runs = "wallet.core.middleware.BrowserMiddleware" in settings.MIDDLEWARE
    errors: list[checks.CheckMessage] = []
    for number, path in enumerate((*_ADMIN_NEEDS, _CSRF), start=1):
        if path not in settings.MIDDLEWARE and not (runs and path in browser):
            errors.append(checks.Error(f"'{path}' must be in MIDDLEWARE, or in BROWSER_MIDDLEWARE with "
                                       "'wallet.core.middleware.BrowserMiddleware' in MIDDLEWARE.",
                                       id=f"core.E00{number}"))
    if runs and all(path in browser for path in _ADMIN_NEEDS):
        positions = [browser.index(path) for path in _ADMIN_NEEDS]
        if positions != sorted(positions):
            errors.append(checks.Error("BROWSER_MIDDLEWARE must list sessions, then authentication, then messages.",
                                       id="core.E005"))
    return errors


@checks.register(checks.Tags.security, deploy=True)
def check_csrf_cookie_secure(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django's own deploy check of the CSRF cookie (security.W016) runs only with the CSRF middleware in
    MIDDLEWARE; with it in BROWSER_MIDDLEWARE, this one does its job."""
    if _CSRF in getattr(settings, "BROWSER_MIDDLEWARE", ()) and not settings.CSRF_USE_SESSIONS \
            and not settings.CSRF_COOKIE_SECURE:
        return [checks.Warning("CSRF_COOKIE_SECURE is not True: the admin's CSRF cookie may be sent over HTTP.",
                               hint="Set CSRF_COOKIE_SECURE = True (wallet.settings.production does).",
                               id="core.W001")]
    return []
