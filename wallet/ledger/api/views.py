"""Money API: assets, accounts and their entries, transfers, holds. One view per operation."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from wallet.core.context import request_id_var
from wallet.core.errors import to_api_error
from wallet.core.money import parse_amount
from wallet.core.pagination import Cursor
from wallet.idempotency.api import (
    REPLAYED_HEADER,
    idempotency_key_parameter,
    idempotent,
    is_storable,
    request_key_and_fingerprint,
)
from wallet.idempotency.services import ClaimRequest
from wallet.ledger import selectors, services
from wallet.ledger.api.serializers import (
    AccountOutputSerializer,
    AssetOutputSerializer,
    HoldOutputSerializer,
    PostingOutputSerializer,
    TransferOutputSerializer,
)
from wallet.ledger.groupcommit import TransferJob, transfer_submit
from wallet.ledger.models import Account, JournalEntry


class OldestFirst(Cursor):
    ordering = ("created_at", "id")


def _page(view: APIView, request: Request, queryset: Any, serializer: type[serializers.Serializer],
          paginator: type[Cursor] = Cursor, context: dict[str, Any] | None = None) -> Response:
    pager = paginator()
    page = pager.paginate_queryset(queryset, request, view=view)
    return pager.get_paginated_response(serializer(page, many=True, context=context or {}).data)


@extend_schema_field({"type": "string", "pattern": "^[0-9]{1,78}$", "example": "1250",
                     "description": "Amount in the asset's smallest unit, as a string of digits"})
class AmountField(serializers.Field):
    """A positive amount in the smallest unit, sent as a string (distinct error codes, see core.money)."""

    def to_internal_value(self, data: Any) -> int:
        return parse_amount(data, field=self.field_name)

    def to_representation(self, value: int) -> str:
        return str(value)


# --- assets and accounts --------------------------------------------------------------------------------------
class AssetListApi(APIView):
    @extend_schema(responses={200: AssetOutputSerializer(many=True)}, operation_id="assets_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.tenant_asset_list(tenant=request._request.tenant)
        return _page(self, request, queryset, AssetOutputSerializer, OldestFirst)


class AccountListApi(APIView):
    @extend_schema(responses={200: AccountOutputSerializer(many=True)}, operation_id="accounts_list")
    def get(self, request: Request) -> Response:
        tenant = request._request.tenant
        enabled = selectors.tenant_asset_list(tenant=tenant).values_list("asset_id", flat=True)
        services.user_accounts_ensure(tenant=tenant, pairs=[(request.user.pk, a) for a in enabled])
        queryset = selectors.account_list(tenant=tenant, user=request.user)
        return _page(self, request, queryset, AccountOutputSerializer, OldestFirst)


class AccountEntriesApi(APIView):
    class FilterSerializer(serializers.Serializer):
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)
        type = serializers.MultipleChoiceField(choices=JournalEntry.Kind.choices, required=False)

    @extend_schema(parameters=[FilterSerializer], responses={200: PostingOutputSerializer(many=True)},
                   operation_id="account_entries_list")
    def get(self, request: Request, account_id: str) -> Response:
        tenant = request._request.tenant
        account = selectors.access_account(tenant=tenant, user=request.user, account_id=account_id)
        filters = self.FilterSerializer(data={
            **{k: request.query_params[k] for k in ("since", "until") if k in request.query_params},
            **({"type": request.query_params.getlist("type")} if "type" in request.query_params else {}),
        })
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        queryset = selectors.account_postings(tenant=tenant, account=account, since=data.get("since"),
                                              until=data.get("until"), kinds=sorted(data.get("type") or []))
        return _page(self, request, queryset, PostingOutputSerializer)


# --- transfers --------------------------------------------------------------------------------------------------
class TransferCreateApi(APIView):
    class TransferCreateInputSerializer(serializers.Serializer):
        recipient = serializers.CharField(max_length=254, help_text="Email, or handle (optionally with @)")
        asset = serializers.CharField(max_length=32)
        amount = AmountField(help_text="Smallest unit, as a string of digits")
        memo = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(request=TransferCreateInputSerializer, responses={201: TransferOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="transfers_create")
    def post(self, request: Request) -> HttpResponse:
        """Idempotent like every `@idempotent` view, through the group commit (wallet/ledger/groupcommit.py):
        transfers arriving together share one transaction; each is answered after it commits."""
        tenant = request._request.tenant
        key, fingerprint = request_key_and_fingerprint(request)
        job = TransferJob(claim=ClaimRequest(user=request.user, key=key, fingerprint=fingerprint,
                                             method=request.method, path=request.path),
                          viewer=request.user, request_id=request_id_var.get())
        try:
            job.transfer = self._prepare(request, tenant)
        except Exception as exc:
            error = to_api_error(exc)
            if error is None or not is_storable(error.status):
                raise
            job.refusal = error  # the key's answer, stored like any other
        outcome = transfer_submit(tenant=tenant, job=job)
        if outcome.error is not None:
            raise outcome.error
        response = HttpResponse(outcome.body, status=outcome.status, content_type=outcome.content_type)
        if outcome.location:
            response["Location"] = outcome.location
        if outcome.replayed:
            response[REPLAYED_HEADER] = "true"
        return response

    def _prepare(self, request: Request, tenant: Any) -> services.TransferRequest:
        data = self.TransferCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        recipient_text = values["recipient"].strip()
        if "@" in recipient_text[1:]:
            recipient = selectors.recipient_find(tenant=tenant, email=recipient_text)
        else:
            recipient = selectors.recipient_find(tenant=tenant, handle=recipient_text)
        policy = selectors.tenant_asset_by_code_cached(tenant=tenant, code=values["asset"])
        return services.TransferRequest(sender=request.user, recipient=recipient, asset=policy.asset,
                                        amount=values["amount"], memo=values["memo"], policy=policy)


class TransferListApi(APIView):
    @extend_schema(responses={200: TransferOutputSerializer(many=True)}, operation_id="transfers_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.transfer_list(tenant=request._request.tenant, user=request.user)
        return _page(self, request, queryset, TransferOutputSerializer, context={"user": request.user})


class TransferDetailApi(APIView):
    @extend_schema(responses={200: TransferOutputSerializer}, operation_id="transfers_get")
    def get(self, request: Request, transfer_id: str) -> Response:
        transfer = selectors.access_transfer(tenant=request._request.tenant, user=request.user,
                                             transfer_id=transfer_id)
        return Response(TransferOutputSerializer(transfer, context={"user": request.user}).data)


# --- holds ----------------------------------------------------------------------------------------------------
class HoldCreateApi(APIView):
    class HoldCreateInputSerializer(serializers.Serializer):
        asset = serializers.CharField(max_length=32)
        amount = AmountField()
        memo = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        expires_in_seconds = serializers.IntegerField(min_value=1, max_value=90 * 24 * 3600, required=False)

    @extend_schema(request=HoldCreateInputSerializer, responses={201: HoldOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="holds_create")
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.HoldCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        tenant = request._request.tenant
        asset = selectors.asset_enabled_by_code(tenant=tenant, code=values["asset"])
        account_id = services.user_accounts_ensure(tenant=tenant, pairs=[(request.user.pk, asset.pk)])[
            (request.user.pk, asset.pk)]
        account = selectors.account_get(tenant=tenant, account_id=account_id)
        hold = services.hold_place(tenant=tenant, account=account, amount=values["amount"], memo=values["memo"],
                                   expires_at=services.expiry_default(values.get("expires_in_seconds")),
                                   created_by=request.user)
        return Response(HoldOutputSerializer(hold).data, status=status.HTTP_201_CREATED,
                        headers={"Location": f"/api/v1/holds/{hold.pk}"})


class HoldListApi(APIView):
    @extend_schema(responses={200: HoldOutputSerializer(many=True)}, operation_id="holds_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.hold_list(tenant=request._request.tenant, user=request.user)
        return _page(self, request, queryset, HoldOutputSerializer)


class HoldDetailApi(APIView):
    @extend_schema(responses={200: HoldOutputSerializer}, operation_id="holds_get")
    def get(self, request: Request, hold_id: str) -> Response:
        hold = selectors.access_hold(tenant=request._request.tenant, user=request.user, hold_id=hold_id)
        return Response(HoldOutputSerializer(hold).data)


class HoldPostApi(APIView):
    """Capture (part of) a hold into the tenant's settlement account (a payment to the tenant)."""

    class HoldPostInputSerializer(serializers.Serializer):
        amount = AmountField(required=False, help_text="Defaults to everything that remains")
        memo = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(request=HoldPostInputSerializer, responses={200: HoldOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="holds_post")
    @idempotent
    def post(self, request: Request, hold_id: str) -> Response:
        tenant = request._request.tenant
        hold = selectors.access_hold(tenant=tenant, user=request.user, hold_id=hold_id)
        data = self.HoldPostInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        amount = data.validated_data.get("amount", hold.remaining)
        settlement = services.system_account(tenant=tenant, asset=hold.account.asset, kind=Account.Kind.SETTLEMENT)
        services.hold_post(tenant=tenant, hold=hold, amount=amount, destination=settlement,
                           memo=data.validated_data["memo"], requested_by=request.user)
        hold.refresh_from_db()
        return Response(HoldOutputSerializer(hold).data)


class HoldVoidApi(APIView):
    @extend_schema(request=None, responses={200: HoldOutputSerializer}, parameters=[idempotency_key_parameter],
                   operation_id="holds_void")
    @idempotent
    def post(self, request: Request, hold_id: str) -> Response:
        tenant = request._request.tenant
        hold = selectors.access_hold(tenant=tenant, user=request.user, hold_id=hold_id)
        hold = services.hold_void(tenant=tenant, hold=hold)
        return Response(HoldOutputSerializer(hold).data)


# One URL serves two operations (GET lists, POST creates); each operation keeps its own view class.
class TransferRouter(TransferListApi, TransferCreateApi):
    pass


class HoldRouter(HoldListApi, HoldCreateApi):
    pass
