"""Money API: assets, accounts and their entries, transfers, holds. One view per operation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.validators import MaxLengthValidator, ProhibitNullCharactersValidator
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.validators import ProhibitSurrogateCharactersValidator
from rest_framework.views import APIView

from tenants.auth.authentication import bearer_user
from tenants.models import Tenant, User
from wallet.core.context import request_id_var
from wallet.core.errors import ApiError, problem_response, to_api_error
from wallet.core.money import parse_amount
from wallet.core.pagination import Cursor
from wallet.idempotency.api import (
    REPLAYED_HEADER,
    idempotency_key_parameter,
    idempotent,
    is_storable,
    request_key_and_fingerprint,
)
from wallet.idempotency.fingerprint import (
    HEADER_META,
    canonical_parsed,
    parse_idempotency_key,
    request_fingerprint,
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
from wallet.ledger.groupcommit import Outcome, TransferJob, TransferOrder, transfer_submit
from wallet.ledger.models import Account, JournalEntry, TenantAsset


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
        try:
            data = self.TransferCreateInputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
        except Exception as exc:
            error = to_api_error(exc)
            if error is None or not is_storable(error.status):
                raise
            values, refusal = None, error  # the key's answer, stored like any other
        else:
            values, refusal = data.validated_data, None
        outcome = _transfer_run(request._request, tenant, request.user, key, fingerprint, values, refusal)
        if outcome.error is not None:
            raise outcome.error
        return _outcome_response(outcome)


def _transfer_run(request: HttpRequest, tenant: Tenant, user: User, key: str, fingerprint: str,
                  values: dict[str, Any] | None, refusal: ApiError | None) -> Outcome:
    """Prepare the job of a validated `POST /api/v1/transfers` (or of its refusal) and run it in the next
    batch of its tenant."""
    job = TransferJob(claim=ClaimRequest(user=user, key=key, fingerprint=fingerprint, method=request.method,
                                         path=request.path),
                      viewer=user, request_id=request_id_var.get(), refusal=refusal)
    if values is not None:
        try:
            policy: TenantAsset | ApiError = selectors.tenant_asset_by_code_cached(tenant=tenant,
                                                                                  code=values["asset"])
        except Exception as exc:
            error = to_api_error(exc)
            if error is None or not is_storable(error.status):
                raise
            policy = error
        job.order = TransferOrder(sender=user, recipient=values["recipient"], amount=values["amount"],
                                  memo=values["memo"], policy=policy)
    return transfer_submit(tenant=tenant, job=job)


def _outcome_response(outcome: Outcome) -> HttpResponse:
    response = HttpResponse(outcome.body, status=outcome.status, content_type=outcome.content_type)
    if outcome.location:
        response["Location"] = outcome.location
    if outcome.replayed:
        response[REPLAYED_HEADER] = "true"
    return response


@dataclass(frozen=True)
class _PlainField:
    name: str
    required: bool
    allow_blank: bool
    max_length: int
    amount: bool


def _plain_fields(serializer: type[serializers.Serializer]) -> tuple[_PlainField, ...]:
    """The input serializer's fields as the fast path reads them. Only fields whose every rule it knows are
    allowed (a plain trimmed `CharField` with a maximum length, or `AmountField`): anything else added to
    the serializer must be taught to the fast path first, or the app does not start."""
    known_validators = (MaxLengthValidator, ProhibitNullCharactersValidator, ProhibitSurrogateCharactersValidator)
    if serializer.validate is not serializers.Serializer.validate or any(
            name.startswith("validate_") and not hasattr(serializers.Serializer, name) for name in dir(serializer)):
        raise ImproperlyConfigured("the transfer fast path does not know the input serializer's validate methods")
    found = []
    for name, field in serializer().fields.items():
        if field.source != name or field.read_only or field.allow_null:
            raise ImproperlyConfigured(f"the transfer fast path does not know the rules of field {name!r}")
        if type(field) is AmountField and not field.validators and field.required:
            found.append(_PlainField(name, field.required, False, 0, True))
            continue
        plain_text = (type(field) is serializers.CharField and field.trim_whitespace
                      and field.min_length is None and field.max_length is not None
                      and all(isinstance(v, known_validators) for v in field.validators)
                      and (field.required or field.default == ""))
        if not plain_text:
            raise ImproperlyConfigured(f"the transfer fast path does not know the rules of field {name!r}")
        found.append(_PlainField(name, field.required, field.allow_blank, field.max_length, False))
    return tuple(found)


_TRANSFER_FIELDS = _plain_fields(TransferCreateApi.TransferCreateInputSerializer)
_TRANSFER_FIELD_NAMES = frozenset(field.name for field in _TRANSFER_FIELDS)


def _transfer_values_plain(body: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The validated values of a transfer body, as `TransferCreateInputSerializer` gives them, and the body's
    canonical form for the fingerprint; None for any body that is not plainly valid (not UTF-8 JSON, not an
    object of known string fields, a field the serializer would refuse or convert): the DRF view then
    decides, with its own errors (a test checks both agree)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_float=_float_refused, parse_constant=_float_refused)
    except (ValueError, RecursionError, _Unplain):
        return None
    if not isinstance(value, dict) or not value.keys() <= _TRANSFER_FIELD_NAMES:
        return None
    values: dict[str, Any] = {}
    for field in _TRANSFER_FIELDS:
        raw = value.get(field.name)
        if raw is None:
            if field.required or field.name in value:
                return None
            values[field.name] = ""
            continue
        # DRF's CharField: trimmed; refused when blank (unless allowed), too long, or with NUL or surrogates
        if not isinstance(raw, str) or "\x00" in raw or (not raw.isascii() and _has_surrogates(raw)):
            return None
        if field.amount:
            try:
                values[field.name] = parse_amount(raw, field=field.name)
            except ApiError:
                return None
            continue
        text = raw.strip()
        if (not text and not field.allow_blank) or len(text) > field.max_length:
            return None
        values[field.name] = text
    return values, canonical_parsed(value)


class _Unplain(Exception):
    pass


def _float_refused(text: str) -> Any:
    raise _Unplain(text)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_transfers_drf: Any = None  # TransferRouter.as_view(), below


@csrf_exempt
def transfers_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """`/api/v1/transfers`. The common `POST` (a valid bearer token and Idempotency-Key, a plainly valid JSON
    body) is served here without DRF's dispatch: it is the money path's hot route (docs/BENCHMARKS.md).
    Everything else, including every error found before the transfer is queued, goes through
    `TransferRouter`, which starts again from the request and answers as every API view does. Both build
    the same job for the same group commit: the key's fingerprint, stored answer and replay are the same
    whichever path a request took."""
    if request.method == "POST" and request.content_type == "application/json" and \
            request.content_params.get("charset", "utf-8").lower() in ("utf-8", "utf8"):
        user = bearer_user(request)
        if user is not None:
            key: str | None
            try:
                key = parse_idempotency_key(request.META.get(HEADER_META))
            except ApiError:
                key = None
            plain = _transfer_values_plain(request.body) if key is not None else None
            if plain is not None and key is not None:
                values, canonical = plain
                fingerprint = request_fingerprint(method="POST", path=request.path, body=request.body,
                                                  query_string=request.META.get("QUERY_STRING", ""),
                                                  canonical=canonical)
                outcome = _transfer_run(request, request.tenant, user, key,  # type: ignore[attr-defined]
                                        fingerprint, values, None)
                if outcome.error is not None:
                    error = to_api_error(outcome.error)  # type: ignore[arg-type]
                    if error is None:
                        raise outcome.error
                    response = problem_response(error, instance=request.path)
                else:
                    response = _outcome_response(outcome)
                response["Allow"] = _TRANSFERS_ALLOW
                return response
    return _transfers_drf(request, *args, **kwargs)


_TRANSFERS_ALLOW = "GET, POST, HEAD, OPTIONS"  # as DRF's view answers


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


_transfers_drf = TransferRouter.as_view()
# What DRF's `as_view()` exposes, so that the OpenAPI schema and route discovery see `TransferRouter`.
transfers_view.cls = TransferRouter  # type: ignore[attr-defined]
transfers_view.initkwargs = {}  # type: ignore[attr-defined]
