"""Edge middleware: request ids, body size limit and JSON errors for the whole API surface."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from corsheaders.middleware import CorsMiddleware as _CorsMiddleware
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers
from django.utils.functional import empty
from django.utils.module_loading import import_string

from wallet.core.context import request_id_var, user_id_var
from wallet.core.errors import PayloadTooLarge, problem_response

logger = logging.getLogger("wallet.request")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdMiddleware:
    """Accept a well-formed `X-Request-ID` or make one; echo it and put it in every log line."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        user_token = user_id_var.set(None)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response["X-Request-ID"] = request_id
            if settings.LOG_REQUESTS:
                logger.info(
                    "request",
                    extra={
                        "tenant": getattr(getattr(request, "tenant", None), "slug", None),
                        "user": _loaded_user_id(request),
                        "method": request.method,
                        "path": request.path,
                        "status": response.status_code,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )
            return response
        finally:
            user_id_var.reset(user_token)
            request_id_var.reset(token)


def _loaded_user_id(request: HttpRequest) -> str | None:
    """The authenticated user's id if authentication already ran (never triggers a query)."""
    user = request.__dict__.get("user")
    if user is None:
        return None
    wrapped = getattr(user, "_wrapped", user)
    if wrapped is empty or not getattr(wrapped, "is_authenticated", False):
        return None
    return str(wrapped.pk)


class CorsMiddleware(_CorsMiddleware):
    """django-cors-headers, without its work for requests that carry no `Origin` (the Flutter app's, servers'):
    such a request gets what the library gives it, `Vary: origin` where CORS applies and no CORS header,
    without building `request.headers` (every header parsed into a new mapping, ~3% of a transfer request's
    CPU). Preflights, requests with an `Origin` and the async path are the library's own."""

    def __call__(self, request: HttpRequest) -> HttpResponse:  # type: ignore[override]
        if self.async_mode or request.method == "OPTIONS" or "HTTP_ORIGIN" in request.META:
            return super().__call__(request)  # type: ignore[return-value]
        # Decided before the view, as the library does (`check_request_enabled` receivers see the request as
        # it arrived).
        enabled = request._cors_enabled = self.is_enabled(request)  # type: ignore[attr-defined]
        response = self.get_response(request)
        if enabled:
            patch_vary_headers(response, ("origin",))
        return response  # type: ignore[return-value]


class BodySizeMiddleware:
    """Refuse bodies over `API_MAX_BODY_BYTES` with 413 before anything reads them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.limit = settings.API_MAX_BODY_BYTES

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            too_big = int(length) > self.limit
        except ValueError:
            too_big = False
        if too_big and request.path.startswith("/api/"):
            return problem_response(
                PayloadTooLarge(f"The body may not exceed {self.limit} bytes.", limit=self.limit),
                instance=request.path,
            )
        return self.get_response(request)


class BrowserMiddleware:
    """Django's browser middleware (`settings.BROWSER_MIDDLEWARE`: sessions, CSRF, authentication from the
    session, the admin's tenant scope, messages), for every path but the JSON API's (`/api/`).

    The app API authenticates with bearer tokens, sets no cookie and takes no form: for its requests those
    middleware only cost time (building a message store and its cookie signer on every request was ~5% of
    a transfer request's CPU). They run in the order listed, as if listed in `MIDDLEWARE` in this one's
    place, including their `process_view` hooks (CSRF's); they may not define the other hooks."""

    API_PREFIX = "/api/"

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        handler: Callable[[HttpRequest], HttpResponse] = get_response
        inner = []
        for path in reversed(settings.BROWSER_MIDDLEWARE):
            middleware = import_string(path)(handler)
            for hook in ("process_exception", "process_template_response"):
                if hasattr(middleware, hook):
                    raise ImproperlyConfigured(f"{path} defines {hook}: list it in MIDDLEWARE, not BROWSER_MIDDLEWARE")
            handler = convert_exception_to_response(middleware)
            inner.insert(0, middleware)
        self.browser = handler
        self.view_hooks = [middleware.process_view for middleware in inner if hasattr(middleware, "process_view")]

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(self.API_PREFIX):
            return self.get_response(request)
        return self.browser(request)

    def process_view(self, request: HttpRequest, view: Callable[..., HttpResponse], args: tuple[object, ...],
                     kwargs: dict[str, object]) -> HttpResponse | None:
        if request.path_info.startswith(self.API_PREFIX):
            return None
        for hook in self.view_hooks:
            response = hook(request, view, args, kwargs)
            if response is not None:
                return response
        return None
