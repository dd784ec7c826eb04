"""Test-only API for the Idempotency-Key tests (mounted with `pytest.mark.urls("tests.idempotency_views")`).

`POST /api/v1/test/widgets` (and the same effect at `/api/v1/test/gadgets`) has a countable effect: one audit
entry with action `test.widget_create`. The body's `outcome` asks for a business error raised after the
effect was written; `EFFECT_HOOK`, when set by a test, runs after the effect (to block, signal or crash).
`/api/v1/test/widgets-plain` is the same view without `@idempotent`, to measure what the decorator adds.
"""

from __future__ import annotations

from collections.abc import Callable

from django.urls import path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.models import AuditLogEntry
from tenants.services import audit_record
from wallet.core.errors import ServiceUnavailable, Throttled, error_class
from wallet.idempotency.api import idempotency_key_parameter, idempotent

WIDGET_ACTION = "test.widget_create"
InsufficientFunds = error_class("insufficient_funds", 409, "Insufficient funds")

#: Set by a test: called after the effect was written, inside the effect's savepoint.
EFFECT_HOOK: Callable[[], None] | None = None


def effect_count() -> int:
    """How many widget effects are committed (visible to this connection)."""
    return AuditLogEntry.objects.filter(action=WIDGET_ACTION).count()


class WidgetInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    outcome = serializers.ChoiceField(
        choices=["created", "insufficient_funds", "unavailable", "throttled"], default="created"
    )


class WidgetOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


def _create_widget(request: Request) -> Response:
    data = WidgetInputSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    name, outcome = data.validated_data["name"], data.validated_data["outcome"]
    entry = audit_record(tenant=request._request.tenant, actor=request.user, action=WIDGET_ACTION,
                         object_type="widget", changes={"name": name})
    if EFFECT_HOOK is not None:
        EFFECT_HOOK()
    if outcome == "insufficient_funds":
        raise InsufficientFunds(available="0", requested="10")
    if outcome == "unavailable":
        raise ServiceUnavailable()
    if outcome == "throttled":
        raise Throttled()
    return Response({"id": str(entry.pk), "name": name}, status=status.HTTP_201_CREATED,
                    headers={"Location": f"/api/v1/test/widgets/{entry.pk}"})


class WidgetCreateApi(APIView):
    @extend_schema(request=WidgetInputSerializer, responses={201: WidgetOutputSerializer},
                   operation_id="test_widgets_create")
    @idempotent
    def post(self, request: Request) -> Response:
        return _create_widget(request)


class GadgetCreateApi(APIView):
    """Lists the parameter explicitly as well (as the ledger views do): the schema must not repeat it."""

    @extend_schema(request=WidgetInputSerializer, responses={201: WidgetOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="test_gadgets_create")
    @idempotent
    def post(self, request: Request) -> Response:
        return _create_widget(request)


class ReadsBodyFirst(IsAuthenticated):
    """A permission that reads the parsed body before the view runs (the raw body is then gone)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return super().has_permission(request, view) and "name" in request.data


class PrereadWidgetApi(APIView):
    permission_classes = [ReadsBodyFirst]

    @extend_schema(request=WidgetInputSerializer, responses={201: WidgetOutputSerializer},
                   operation_id="test_preread_widgets_create")
    @idempotent
    def post(self, request: Request) -> Response:
        return _create_widget(request)


class AnonymousWidgetApi(APIView):
    """A misuse: @idempotent on a view anyone may call."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @idempotent
    def post(self, request: Request) -> Response:
        return _create_widget(request)


class WidgetCreatePlainApi(APIView):
    @extend_schema(request=WidgetInputSerializer, responses={201: WidgetOutputSerializer},
                   operation_id="test_widgets_create_plain")
    def post(self, request: Request) -> Response:
        return _create_widget(request)


urlpatterns = [
    path("api/v1/test/widgets", WidgetCreateApi.as_view()),
    path("api/v1/test/gadgets", GadgetCreateApi.as_view()),
    path("api/v1/test/anonymous-widgets", AnonymousWidgetApi.as_view()),
    path("api/v1/test/preread-widgets", PrereadWidgetApi.as_view()),
    path("api/v1/test/widgets-plain", WidgetCreatePlainApi.as_view()),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
