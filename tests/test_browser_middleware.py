"""`wallet.core.middleware.BrowserMiddleware`: sessions, CSRF, session authentication, the admin's tenant and
messages run for the admin (and any page), not for the token-authenticated JSON API under /api/."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory

from wallet.core.checks import check_browser_middleware
from wallet.core.middleware import BrowserMiddleware


def _seen(path: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def view(request: HttpRequest) -> HttpResponse:
        seen.update(session=hasattr(request, "session"), user=hasattr(request, "user"),
                    messages=hasattr(request, "_messages"))
        return HttpResponse("ok")

    middleware = BrowserMiddleware(view)
    request = RequestFactory().get(path)
    response = middleware(request)
    assert response.status_code == 200
    return seen


def test_the_api_skips_the_browser_middleware(db: Any) -> None:
    assert _seen("/api/v1/transfers") == {"session": False, "user": False, "messages": False}


def test_other_paths_get_them(db: Any) -> None:
    assert _seen("/admin/login/") == {"session": True, "user": True, "messages": True}


def test_the_admin_keeps_its_csrf_protection_and_cookies(db: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/admin/login/")
    assert page.status_code == 200 and "csrftoken" in page.cookies
    refused = client.post("/admin/login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403
    token = page.cookies["csrftoken"].value
    accepted = client.post("/admin/login/", {"username": "x", "password": "y", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 200  # the form again, with its error: past the CSRF check


def test_a_session_cookie_on_the_api_is_not_read(db: Any) -> None:
    seen: dict[str, Any] = {}

    def view(request: HttpRequest) -> HttpResponse:
        seen.update(session=hasattr(request, "session"), user=hasattr(request, "user"))
        return HttpResponse("ok")

    request = RequestFactory().get("/api/v1/me", HTTP_COOKIE="sessionid=abc; csrftoken=def")
    response = BrowserMiddleware(view)(request)
    assert seen == {"session": False, "user": False}
    assert not response.cookies and "Cookie" not in response.get("Vary", "")


def test_a_browser_middleware_with_hooks_it_cannot_run_is_refused(settings: Any) -> None:
    settings.BROWSER_MIDDLEWARE = ["tests.test_browser_middleware.WithExceptionHook"]
    with pytest.raises(ImproperlyConfigured, match="process_exception"):
        BrowserMiddleware(lambda request: HttpResponse())


class WithExceptionHook:
    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        return None


def test_the_system_check_stands_in_for_the_admins(settings: Any) -> None:
    assert check_browser_middleware() == []
    settings.BROWSER_MIDDLEWARE = [path for path in settings.BROWSER_MIDDLEWARE
                                   if path != "django.middleware.csrf.CsrfViewMiddleware"]
    assert [error.id for error in check_browser_middleware()] == ["core.E004"]
    settings.BROWSER_MIDDLEWARE = list(reversed(settings.BROWSER_MIDDLEWARE))
    assert [error.id for error in check_browser_middleware()] == ["core.E004", "core.E005"]
    settings.MIDDLEWARE = [path for path in settings.MIDDLEWARE if path != "wallet.core.middleware.BrowserMiddleware"]
    assert [error.id for error in check_browser_middleware()] == ["core.E001", "core.E002", "core.E003", "core.E004"]


def test_the_csrf_cookie_deploy_check_stands_in_for_djangos(settings: Any) -> None:
    from wallet.core.checks import check_csrf_cookie_secure

    settings.CSRF_COOKIE_SECURE = True
    assert check_csrf_cookie_secure() == []
    settings.CSRF_COOKIE_SECURE = False
    assert [warning.id for warning in check_csrf_cookie_secure()] == ["core.W001"]
