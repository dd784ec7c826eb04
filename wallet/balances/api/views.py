"""Balances API: the aggregate, the display-currency preference and linked bank accounts."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.auth.authentication import bearer_user
from wallet.balances import selectors, services
from wallet.balances.api.serializers import (
    BalancesOutputSerializer,
    BankAccountOutputSerializer,
    PreferenceOutputSerializer,
)
from wallet.balances.assets import display_currencies
from wallet.core.jsonutil import dumps
from wallet.idempotency.api import idempotency_key_parameter, idempotent


class BalancesApi(APIView):
    """Every balance of the user in their display currency, from the cached snapshot while it is fresh and
    the user's event stream has not moved. Built without a serializer on purpose: it is the home screen's
    hot path."""

    class FilterSerializer(serializers.Serializer):
        currency = serializers.CharField(max_length=3, required=False,
                                         help_text="Display currency for this request (default: preference)")
        refresh = serializers.BooleanField(required=False, default=False,
                                           help_text="Fetch every source now (pull to refresh)")

    @extend_schema(parameters=[FilterSerializer], responses={200: BalancesOutputSerializer},
                   operation_id="balances_get")
    def get(self, request: Request) -> HttpResponse:
        params = request.query_params
        currency = params.get("currency")
        refresh = False
        if "refresh" in params:
            filters = self.FilterSerializer(data={"refresh": params["refresh"]})
            filters.is_valid(raise_exception=True)
            refresh = filters.validated_data["refresh"]
        body = services.balances_read(tenant=request._request.tenant, user=request.user, currency=currency,
                                      refresh=refresh)
        # Pre-encoded JSON skips DRF's template-response machinery (same bytes), as `/me` does.
        return HttpResponse(dumps(body), content_type="application/json")


_balances_drf = BalancesApi.as_view()


@csrf_exempt
def balances_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """`GET /api/v1/balances`. The common request (GET, no parameters, a valid bearer token) is served here
    without DRF's dispatch (the home screen's hot path: see docs/BALANCES.md); anything else, including
    every error, goes through `BalancesApi`, which authenticates again and answers as every API view does."""
    if request.method == "GET" and not request.META.get("QUERY_STRING"):
        user = bearer_user(request)
        if user is not None:
            body = services.balances_read_json(tenant=request.tenant, user=user)  # type: ignore[attr-defined]
            response = HttpResponse(body, content_type="application/json")
            response["Allow"] = _ALLOW
            return response
    return _balances_drf(request, *args, **kwargs)


_ALLOW = "GET, HEAD, OPTIONS"  # as DRF's view answers (it serves HEAD as GET)
# What DRF's `as_view()` exposes, so that the OpenAPI schema and route discovery see `BalancesApi`.
balances_view.cls = BalancesApi  # type: ignore[attr-defined]
balances_view.initkwargs = {}  # type: ignore[attr-defined]


class PreferenceGetApi(APIView):
    @extend_schema(responses={200: PreferenceOutputSerializer}, operation_id="balance_preferences_get")
    def get(self, request: Request) -> Response:
        code = selectors.display_currency_of(tenant=request._request.tenant, user=request.user)
        return Response(PreferenceOutputSerializer({"display_currency": code,
                                                    "supported": sorted(display_currencies())}).data)


class PreferenceUpdateApi(APIView):
    class PreferenceUpdateInputSerializer(serializers.Serializer):
        display_currency = serializers.CharField(max_length=3)

    @extend_schema(request=PreferenceUpdateInputSerializer, responses={200: PreferenceOutputSerializer},
                   operation_id="balance_preferences_update")
    def patch(self, request: Request) -> Response:
        data = self.PreferenceUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        preference = services.preference_set(tenant=request._request.tenant, user=request.user,
                                             display_currency=data.validated_data["display_currency"])
        return Response(PreferenceOutputSerializer({"display_currency": preference.display_currency,
                                                    "supported": sorted(display_currencies())}).data)


class BankAccountListApi(APIView):
    @extend_schema(responses={200: BankAccountOutputSerializer(many=True)}, operation_id="bank_accounts_list")
    def get(self, request: Request) -> Response:
        accounts = selectors.bank_account_list(tenant=request._request.tenant, user=request.user)
        return Response({"results": BankAccountOutputSerializer(accounts, many=True).data})


class BankAccountLinkApi(APIView):
    class BankAccountLinkInputSerializer(serializers.Serializer):
        account_ref = serializers.CharField(max_length=100, help_text="The provider's account id "
                                            "(sandbox: any id starting with 'sandbox-')")

    @extend_schema(request=BankAccountLinkInputSerializer, responses={201: BankAccountOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="bank_accounts_link")
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.BankAccountLinkInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account = services.bank_account_link(tenant=request._request.tenant, user=request.user,
                                             account_ref=data.validated_data["account_ref"].strip())
        return Response(BankAccountOutputSerializer(account).data, status=status.HTTP_201_CREATED,
                        headers={"Location": f"/api/v1/bank-accounts/{account.pk}"})


class BankAccountDetailApi(APIView):
    @extend_schema(responses={200: BankAccountOutputSerializer}, operation_id="bank_accounts_get")
    def get(self, request: Request, bank_account_id: str) -> Response:
        account = selectors.access_bank_account(tenant=request._request.tenant, user=request.user,
                                                bank_account_id=bank_account_id)
        return Response(BankAccountOutputSerializer(account).data)


class BankAccountRemoveApi(APIView):
    @extend_schema(responses={204: None}, operation_id="bank_accounts_remove")
    def delete(self, request: Request, bank_account_id: str) -> Response:
        tenant = request._request.tenant
        account = selectors.access_bank_account(tenant=tenant, user=request.user, bank_account_id=bank_account_id)
        services.bank_account_remove(tenant=tenant, account=account)
        return Response(status=status.HTTP_204_NO_CONTENT)


# One URL serves two operations; each operation keeps its own view class.
class PreferenceRouter(PreferenceGetApi, PreferenceUpdateApi):
    pass


class BankAccountRouter(BankAccountListApi, BankAccountLinkApi):
    pass


class BankAccountDetailRouter(BankAccountDetailApi, BankAccountRemoveApi):
    pass
