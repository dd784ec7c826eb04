"""CORS at the edge: `wallet.core.middleware.CorsMiddleware` answers exactly as django-cors-headers does."""

from __future__ import annotations

import pytest
from corsheaders.middleware import CorsMiddleware as LibraryCorsMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from wallet.core.middleware import CorsMiddleware

ALLOWED = "https://app.example.com"


def _view(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(b"{}", content_type="application/json")
    if request.path.startswith("/api/v1/varied"):
        response["Vary"] = "Accept-Language"
    return response


CASES = [
    ("get", "/api/v1/assets", {}),
    ("post", "/api/v1/transfers", {}),
    ("get", "/api/v1/varied", {}),
    ("get", "/admin/", {}),
    ("get", "/api/v1/assets", {"HTTP_ORIGIN": ALLOWED}),
    ("get", "/api/v1/varied", {"HTTP_ORIGIN": ALLOWED}),
    ("get", "/api/v1/assets", {"HTTP_ORIGIN": "https://evil.example.com"}),
    ("get", "/admin/", {"HTTP_ORIGIN": ALLOWED}),
    ("options", "/api/v1/transfers", {"HTTP_ORIGIN": ALLOWED, "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}),
    ("options", "/api/v1/transfers", {}),
]


@pytest.mark.parametrize(("method", "path", "headers"), CASES)
@override_settings(CORS_ALLOWED_ORIGINS=[ALLOWED])
def test_cors_headers_are_the_librarys(method: str, path: str, headers: dict[str, str]) -> None:
    factory = RequestFactory()
    ours = CorsMiddleware(_view)(getattr(factory, method)(path, **headers))
    theirs = LibraryCorsMiddleware(_view)(getattr(factory, method)(path, **headers))
    assert ours.status_code == theirs.status_code
    assert dict(ours.headers) == dict(theirs.headers)
    assert ours.content == theirs.content


@override_settings(CORS_ALLOWED_ORIGINS=[ALLOWED])
def test_an_api_request_without_origin_varies_on_origin_and_gets_no_cors_header() -> None:
    response = CorsMiddleware(_view)(RequestFactory().get("/api/v1/assets"))
    assert response["Vary"].lower() == "origin"
    assert "Access-Control-Allow-Origin" not in response


@override_settings(CORS_ALLOWED_ORIGINS=[ALLOWED])
def test_a_check_request_enabled_receiver_is_asked_before_the_view_as_by_the_library() -> None:
    from corsheaders.signals import check_request_enabled

    seen = []

    def view(request: HttpRequest) -> HttpResponse:
        request.marked = True  # type: ignore[attr-defined]
        return HttpResponse(b"{}")

    def receiver(sender: object, request: HttpRequest, **_: object) -> bool:
        seen.append(getattr(request, "marked", False))
        return request.path == "/outside/"

    check_request_enabled.connect(receiver)
    try:
        ours = CorsMiddleware(view)(RequestFactory().get("/outside/"))
        theirs = LibraryCorsMiddleware(view)(RequestFactory().get("/outside/"))
    finally:
        check_request_enabled.disconnect(receiver)
    assert seen == [False, False]
    assert dict(ours.headers) == dict(theirs.headers)
    assert ours["Vary"].lower() == "origin"


def test_the_api_runs_our_cors_middleware_in_place_of_the_librarys(client) -> None:
    assert "wallet.core.middleware.CorsMiddleware" in settings.MIDDLEWARE
    assert "corsheaders.middleware.CorsMiddleware" not in settings.MIDDLEWARE
    response = client.get("/api/v1/assets")  # no Origin: the fast path, through the whole stack
    assert "origin" in response["Vary"].lower()
    assert "Access-Control-Allow-Origin" not in response


@override_settings(CORS_ALLOWED_ORIGINS=[ALLOWED])
def test_an_allowed_origin_is_answered_through_the_whole_stack(client) -> None:
    response = client.get("/api/v1/assets", HTTP_ORIGIN=ALLOWED)
    assert response["Access-Control-Allow-Origin"] == ALLOWED
    assert "origin" in response["Vary"].lower()
    response = client.options("/api/v1/transfers", HTTP_ORIGIN=ALLOWED, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert response.status_code == 200
    assert "idempotency-key" in response["Access-Control-Allow-Headers"].lower()
