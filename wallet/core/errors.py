"""Errors with a stable machine `code`, rendered as RFC 9457 `application/problem+json`.

Services raise `ApiError` subclasses (or DRF/Django exceptions); one DRF exception handler and one
middleware-level helper turn every error into the same problem document, so the app can branch on `code`
and never on message text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from wallet.core.context import request_id_var
from wallet.core.jsonutil import dumps

logger = logging.getLogger("wallet.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApiError(Exception):
    """Base for errors the API reports. Subclasses set `code`, `status` and `title`."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Request failed"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra = extra
        self.headers: dict[str, str] = {}
        super().__init__(self.detail)


def error_class(code: str, status: int, title: str) -> type[ApiError]:
    """Declare an error type in one line: `NotFound = error_class("not_found", 404, "Not found")`."""
    return type(
        "".join(part.capitalize() for part in code.split("_")),
        (ApiError,),
        {"code": code, "status": status, "title": title},
    )


# Errors shared by every app.
BadRequest = error_class("bad_request", 400, "Bad request")
MalformedJson = error_class("malformed_json", 400, "The request body is not valid JSON")
ValidationFailed = error_class("validation_failed", 400, "The request has invalid fields")
NotAuthenticated = error_class("not_authenticated", 401, "Authentication credentials were not provided")
AuthenticationFailed = error_class("authentication_failed", 401, "Authentication failed")
Forbidden = error_class("forbidden", 403, "You may not do this")
NotFound = error_class("not_found", 404, "Not found")
MethodNotAllowed = error_class("method_not_allowed", 405, "Method not allowed")
Conflict = error_class("conflict", 409, "Conflict")
PayloadTooLarge = error_class("payload_too_large", 413, "The request body is too large")
UnsupportedMediaType = error_class("unsupported_media_type", 415, "Unsupported media type")
Throttled = error_class("throttled", 429, "Too many requests")
ServiceUnavailable = error_class("service_unavailable", 503, "Service unavailable")


def problem_body(
    *, code: str, status: int, title: str, detail: str | None = None, instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:wallet-bff:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
    }
    if detail and detail != title:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return body


def problem_response(error: ApiError, *, instance: str | None = None) -> HttpResponse:
    """A plain Django response for errors raised outside DRF (middleware)."""
    body = problem_body(
        code=error.code, status=error.status, title=error.title, detail=error.detail, instance=instance,
        extra=error.extra,
    )
    response = HttpResponse(dumps(body), status=error.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _validation_errors(detail: Any, pointer: str = "") -> list[dict[str, str]]:
    """Flatten DRF's nested error detail into RFC 6901 pointers."""
    out: list[dict[str, str]] = []
    if isinstance(detail, Mapping):
        for key, value in detail.items():
            sub = pointer if key == "non_field_errors" else f"{pointer}/{key}"
            out.extend(_validation_errors(value, sub))
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (Mapping, list)):
                out.extend(_validation_errors(value, f"{pointer}/{index}"))
            else:
                out.extend(_validation_errors(value, pointer))
    else:
        code = getattr(detail, "code", None) or "invalid"
        out.append({"pointer": pointer or "/", "code": str(code), "detail": str(detail)})
    return out


_DRF_MAP: dict[type[Exception], type[ApiError]] = {
    drf_exceptions.ParseError: MalformedJson,
    drf_exceptions.NotAuthenticated: NotAuthenticated,
    drf_exceptions.AuthenticationFailed: AuthenticationFailed,
    drf_exceptions.PermissionDenied: Forbidden,
    drf_exceptions.NotFound: NotFound,
    drf_exceptions.MethodNotAllowed: MethodNotAllowed,
    drf_exceptions.UnsupportedMediaType: UnsupportedMediaType,
    drf_exceptions.Throttled: Throttled,
}


def to_api_error(exc: Exception) -> ApiError | None:
    """Translate any exception we know how to report into an ApiError; None for unexpected ones."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Http404):
        return NotFound()
    if isinstance(exc, PermissionDenied):
        return Forbidden()
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, drf_exceptions.ValidationError):
        errors = _validation_errors(exc.detail)
        return ValidationFailed(errors=errors)
    for drf_type, api_type in _DRF_MAP.items():
        if isinstance(exc, drf_type):
            error = api_type(str(getattr(exc, "detail", "")) or None)
            if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
                error.headers["Retry-After"] = str(int(exc.wait) + 1)
                error.extra["retry_after"] = int(exc.wait) + 1
            if isinstance(exc, drf_exceptions.AuthenticationFailed | drf_exceptions.NotAuthenticated):
                error.headers["WWW-Authenticate"] = 'Bearer realm="api"'
            return error
    return None


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF exception handler: every known error becomes problem+json; unknown ones stay 500s."""
    error = to_api_error(exc)
    if error is None:
        return None
    request = context.get("request")
    body = problem_body(
        code=error.code, status=error.status, title=error.title, detail=error.detail,
        instance=request.path if request is not None else None, extra=error.extra,
    )
    response = Response(body, status=error.status, headers=error.headers or None,
                        content_type=PROBLEM_CONTENT_TYPE)
    return response
