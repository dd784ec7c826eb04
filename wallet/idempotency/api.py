"""The public API of the Idempotency-Key layer: `@idempotent` for DRF view methods, its OpenAPI parameter,
and (re-exported) the low-level claim/complete services for code that owns its transaction.

    from wallet.idempotency.api import idempotency_key_parameter, idempotent

    class TransferCreateApi(APIView):
        @extend_schema(request=..., responses={201: ...}, operation_id="transfer_create")
        @idempotent
        def post(self, request: Request) -> Response:
            ...validate, call the service (no durable=True inside), return Response(..., status=201)

Per request:
1. the key is read from the header (400 when missing or invalid) and the request fingerprinted;
2. the fast lock is taken (Redis, or the in-process table); if another request holds it, the committed
   record decides: replay it, 422 for another request, else 409 in flight;
3. in one transaction: claim the key (PostgreSQL advisory lock + pending record), run the view method in a
   savepoint, render its response, store it in the record, commit;
4. the fast lock is released after the transaction has ended.

Outcomes of the view method:
- a response (or an error the API reports, e.g. 409 `insufficient_funds` or 400 validation) below 500:
  stored and replayed to every retry. An error's savepoint is rolled back first, so the effect is undone
  while the record (with the problem response) commits: the retry gets the same answer, like Stripe;
- 401, 408, 429 and 5xx (raised or returned), and any unexpected exception: the whole transaction rolls
  back, nothing is stored, and a retry runs the view again. These answers say "try again", so storing
  them would make a retry useless;
- a database connection that breaks (or a database that cannot be reached): 503 `outcome_unknown`, since
  the transaction may have committed before its answer was lost; the retry with the same key replays it
  or runs it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, connections, transaction
from django.http import HttpResponse, HttpResponseBase, RawPostDataException
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from wallet.core.errors import to_api_error
from wallet.idempotency.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    OutcomeUnknown,
)
from wallet.idempotency.fingerprint import (
    HEADER,
    HEADER_META,
    REPLAYED_HEADER,
    canonical_data,
    parse_idempotency_key,
    request_fingerprint,
)
from wallet.idempotency.locks import fast_lock
from wallet.idempotency.schema import idempotency_key_parameter
from wallet.idempotency.services import (
    Claim,
    StoredResponse,
    idempotency_claim,
    idempotency_complete,
    idempotency_database_alias,
    idempotency_stored_response,
    in_flight_error,
)

__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "Claim",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "StoredResponse",
    "idempotency_claim",
    "idempotency_complete",
    "idempotency_key_parameter",
    "idempotent",
    "is_storable",
    "parse_idempotency_key",
    "replay_response",
    "request_fingerprint",
    "request_key_and_fingerprint",
]

logger = logging.getLogger("wallet.idempotency")
ViewMethod = TypeVar("ViewMethod", bound=Callable[..., HttpResponseBase])

#: Statuses that tell the client to retry the same request (after re-authenticating, or later):
#: never stored, so that the retry can succeed.
UNSTORED_STATUSES = frozenset({401, 408, 429})


def is_storable(status: int) -> bool:
    """Whether a response with this status becomes the key's permanent answer."""
    return status < 500 and status not in UNSTORED_STATUSES


def replay_response(stored: StoredResponse) -> HttpResponse:
    """The stored first response, with `Idempotent-Replayed: true`."""
    response = HttpResponse(stored.body, status=stored.status)
    if stored.content_type:
        response["Content-Type"] = stored.content_type
    else:
        del response["Content-Type"]
    if stored.location:
        response["Location"] = stored.location
    response[REPLAYED_HEADER] = "true"
    return response


class _Unstored(Exception):
    """Carries a response out of the transaction so that the transaction rolls back."""

    def __init__(self, response: HttpResponseBase) -> None:
        super().__init__(response.status_code)
        self.response = response


def _render(view: APIView, request: Request, response: HttpResponseBase) -> None:
    """Render a DRF response now (as `finalize_response` would), so its bytes can be stored."""
    if response.streaming:
        raise TypeError("@idempotent cannot store a streaming response.")
    if isinstance(response, Response) and not response.is_rendered:
        response.accepted_renderer = request.accepted_renderer
        response.accepted_media_type = request.accepted_media_type
        response.renderer_context = view.get_renderer_context()
        response.render()


def connection_lost(raw: Any) -> bool:
    """Whether `raw`, a driver connection (`connections[alias].connection`, taken while the work ran), is
    missing, closed or broke (psycopg's view; no round trip). Ask about the connection the work used: after
    a failure, Django's outermost atomic block closes it and, leaving, opens a new one."""
    return raw is None or bool(getattr(raw, "closed", False)) or bool(getattr(raw, "broken", False))


def _run_effect(view: APIView, request: Request, method: Callable[..., HttpResponseBase],
                args: tuple[Any, ...], kwargs: dict[str, Any], using: str) -> HttpResponseBase:
    """The view method in a savepoint; a reported error below 500 becomes its stored problem response."""
    try:
        with transaction.atomic(using=using):
            response = method(view, request, *args, **kwargs)
            _render(view, request, response)
    except Exception as exc:
        error = to_api_error(exc)
        if error is None or not is_storable(error.status):
            raise  # rolls back the whole transaction: no record, a retry runs again
        response = view.handle_exception(exc)  # the view's own problem+json rendering
        _render(view, request, response)
    if not is_storable(response.status_code):
        raise _Unstored(response)
    return response


def _body_identity(request: Request) -> tuple[bytes, bytes | None]:
    """The raw body, or (if something already consumed the stream) the canonical parsed data."""
    try:
        return request._request.body, None
    except RawPostDataException:
        return b"", canonical_data(request.data)


def request_key_and_fingerprint(request: Request) -> tuple[str, str]:
    """The request's Idempotency-Key (400 when missing or invalid) and its fingerprint (method, path,
    query and body), for views that claim their key themselves (the transfer group commit)."""
    key = parse_idempotency_key(request.META.get(HEADER_META))
    body, canonical = _body_identity(request)
    fingerprint = request_fingerprint(
        method=request.method, path=request.path, query_string=request.META.get("QUERY_STRING", ""),
        body=body, canonical=canonical,
    )
    return key, fingerprint


@contextlib.contextmanager
def _atomic_or_outcome_unknown(using: str) -> Iterator[None]:
    """`transaction.atomic(using=using)`, where a database connection that broke (or a database that cannot
    be reached) while the block ran or committed is 503 `outcome_unknown`: the transaction may have
    committed (a COMMIT whose answer was lost) or not, and a retry with the same key tells which. A deadlock
    or a lock timeout, on a live connection, stays as it was. The connection checked is the one the block
    used, taken inside it: Django replaces a broken one as the block ends."""
    used: Any = None
    try:
        with transaction.atomic(using=using):
            used = connections[using].connection
            yield
    except (InterfaceError, OperationalError) as exc:
        if not connection_lost(used):
            raise
        logger.warning("the database connection failed during an idempotent request", exc_info=True)
        raise OutcomeUnknown() from exc


def idempotent(view_method: ViewMethod) -> ViewMethod:
    """Require `Idempotency-Key` on a DRF view method and make it exactly-once per (tenant, user, key).

    The method must be an authenticated, tenant-resolved API view's (`/api/v1/...`); anything else is a
    programming error. The OpenAPI operation gets the required `Idempotency-Key` header parameter.
    Services the method calls run inside this decorator's transaction: they must not ask for
    `transaction.atomic(durable=True)`.
    """

    @functools.wraps(view_method)
    def wrapper(view: APIView, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = request.user
        tenant = getattr(request._request, "tenant", None)
        if user is None or not getattr(user, "is_authenticated", False) or tenant is None:
            raise ImproperlyConfigured(
                f"@idempotent on {type(view).__name__}.{view_method.__name__} needs an authenticated user "
                "and a resolved tenant (an /api/v1/ view with authentication required)."
            )
        key, fingerprint = request_key_and_fingerprint(request)
        scope = {"tenant": tenant, "user": user, "key": key}
        with fast_lock(tenant_id=tenant.pk, user_id=user.pk, key=key) as acquired:
            if acquired is False:
                # Another request holds the key: it is running, or finished a moment ago.
                stored = idempotency_stored_response(**scope, fingerprint=fingerprint)
                if stored is None:
                    raise in_flight_error()
                return replay_response(stored)
            using = idempotency_database_alias()
            try:
                with _atomic_or_outcome_unknown(using):
                    claim = idempotency_claim(**scope, fingerprint=fingerprint, method=request.method,
                                              path=request.path)
                    if claim.stored is not None:
                        return replay_response(claim.stored)
                    response = _run_effect(view, request, view_method, args, kwargs, using)
                    idempotency_complete(
                        claim, status=response.status_code, body=response.content,
                        content_type=response.get("Content-Type", ""), location=response.get("Location"),
                    )
                    return response
            except _Unstored as unstored:
                return unstored.response

    wrapper.kwargs = dict(getattr(view_method, "kwargs", {}))  # type: ignore[attr-defined]  # own schema slot
    wrapper.idempotent = True  # type: ignore[attr-defined]  # lets tests find every decorated operation
    return extend_schema(parameters=[idempotency_key_parameter])(wrapper)  # type: ignore[return-value]
