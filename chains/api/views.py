"""Chains API: enabled chains, linked wallets (SIWE), their on-chain balances, deposit addresses, deposits and
relayed transactions. One view per operation."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chains import selectors, services
from chains.api.serializers import (
    BalanceOutputSerializer,
    ChainOutputSerializer,
    DepositAddressOutputSerializer,
    DepositOutputSerializer,
    LinkedWalletOutputSerializer,
    NonceOutputSerializer,
    RelayedTransactionOutputSerializer,
)
from chains.balances import address_balances
from chains.conf import setting
from chains.errors import ActivityDirectionInvalid
from chains.models import Deposit
from chains.relay import relayed_transaction_submit
from chains.siwe import linked_wallet_create, siwe_nonce_issue
from wallet.core.pagination import Cursor
from wallet.idempotency.api import idempotency_key_parameter, idempotent


class OldestFirst(Cursor):
    ordering = ("created_at", "id")


class NewestSeenFirst(Cursor):
    ordering = ("-seen_at", "-id")


def _page(view: APIView, request: Request, queryset: QuerySet, serializer: type[serializers.Serializer],
          paginator: type[Cursor] = Cursor) -> Response:
    pager = paginator()
    page = pager.paginate_queryset(queryset, request, view=view)
    return pager.get_paginated_response(serializer(page, many=True).data)


def siwe_domain_and_uri(request: Request) -> tuple[str, str]:
    """The domain and URI sign-in messages must name: from settings, else this request's host."""
    host = request._request.get_host()
    domain = setting("CHAINS_SIWE_DOMAIN") or host
    uri = setting("CHAINS_SIWE_URI") or f"{request._request.scheme}://{host}"
    return domain, uri


# --- chains ------------------------------------------------------------------------------------------------
class ChainListApi(APIView):
    @extend_schema(responses={200: ChainOutputSerializer(many=True)}, operation_id="chains_list")
    def get(self, request: Request) -> Response:
        rows = selectors.tenant_chain_list(tenant=request._request.tenant)
        data = [ChainOutputSerializer({"chain": r.chain, "deposit_addresses": bool(r.deposit_xpub),
                                       "tokens": selectors.chain_tokens(chain=r.chain)}).data for r in rows]
        return Response({"results": data})


# --- linked wallets ------------------------------------------------------------------------------------------
class WalletNonceApi(APIView):
    class NonceInputSerializer(serializers.Serializer):
        chain_id = serializers.IntegerField(min_value=1)

    @extend_schema(request=NonceInputSerializer, responses={201: NonceOutputSerializer},
                   operation_id="wallets_nonce")
    def post(self, request: Request) -> Response:
        data = self.NonceInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = request._request.tenant
        tenant_chain = selectors.tenant_chain_get(tenant=tenant, chain_id=data.validated_data["chain_id"])
        domain, uri = siwe_domain_and_uri(request)
        grant = siwe_nonce_issue(tenant=tenant, user=request.user, tenant_chain=tenant_chain, domain=domain, uri=uri)
        return Response(NonceOutputSerializer(grant.fields()).data, status=status.HTTP_201_CREATED)


class WalletLinkApi(APIView):
    class LinkInputSerializer(serializers.Serializer):
        message = serializers.CharField(max_length=4000, trim_whitespace=False)
        signature = serializers.CharField(max_length=2000)

    @extend_schema(request=LinkInputSerializer, responses={201: LinkedWalletOutputSerializer},
                   operation_id="wallets_link")
    def post(self, request: Request) -> Response:
        data = self.LinkInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        domain, uri = siwe_domain_and_uri(request)
        wallet = linked_wallet_create(tenant=request._request.tenant, user=request.user,
                                      message=data.validated_data["message"],
                                      signature=data.validated_data["signature"], domain=domain, uri=uri)
        return Response(LinkedWalletOutputSerializer(wallet).data, status=status.HTTP_201_CREATED,
                        headers={"Location": f"/api/v1/wallets/{wallet.pk}"})


class WalletListApi(APIView):
    @extend_schema(responses={200: LinkedWalletOutputSerializer(many=True)}, operation_id="wallets_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.linked_wallet_list(tenant=request._request.tenant, user=request.user)
        return _page(self, request, queryset, LinkedWalletOutputSerializer, OldestFirst)


class WalletDetailApi(APIView):
    @extend_schema(responses={200: LinkedWalletOutputSerializer}, operation_id="wallets_get")
    def get(self, request: Request, wallet_id: str) -> Response:
        wallet = selectors.access_linked_wallet(tenant=request._request.tenant, user=request.user,
                                                wallet_id=wallet_id)
        return Response(LinkedWalletOutputSerializer(wallet).data)

    @extend_schema(responses={204: None}, operation_id="wallets_unlink")
    def delete(self, request: Request, wallet_id: str) -> Response:
        tenant = request._request.tenant
        wallet = selectors.access_linked_wallet(tenant=tenant, user=request.user, wallet_id=wallet_id)
        services.linked_wallet_delete(tenant=tenant, wallet=wallet)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WalletBalancesApi(APIView):
    """On-chain balances of a linked address on every chain the app offers (cached with their block)."""

    @extend_schema(responses={200: BalanceOutputSerializer(many=True)}, operation_id="wallets_balances")
    def get(self, request: Request, wallet_id: str) -> Response:
        tenant = request._request.tenant
        wallet = selectors.access_linked_wallet(tenant=tenant, user=request.user, wallet_id=wallet_id)
        results: list[dict[str, Any]] = []
        for tenant_chain in selectors.tenant_chain_list(tenant=tenant):
            chain = tenant_chain.chain
            for row in address_balances(chain=chain, address=wallet.address,
                                        tokens=selectors.chain_tokens(chain=chain)):
                asset = row.token.asset if row.token else chain.native_asset
                results.append(BalanceOutputSerializer({
                    "chain_id": chain.chain_id, "asset": asset.code if asset else "", "decimals":
                    asset.decimals if asset else 18, "contract": row.token.contract if row.token else None,
                    "amount": row.amount, "block_number": row.block_number, "read_at": row.read_at}).data)
        return Response({"address": wallet.address, "results": results})


# --- deposit addresses and deposits ---------------------------------------------------------------------------
class DepositAddressEnsureApi(APIView):
    @extend_schema(request=None, responses={200: DepositAddressOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="deposit_address_ensure")
    @idempotent
    def post(self, request: Request, chain_id: str) -> Response:
        tenant = request._request.tenant
        tenant_chain = selectors.tenant_chain_get(tenant=tenant, chain_id=chain_id)
        address = services.deposit_address_ensure(tenant=tenant, user=request.user, tenant_chain=tenant_chain)
        return Response(DepositAddressOutputSerializer(address).data)


class DepositAddressListApi(APIView):
    @extend_schema(responses={200: DepositAddressOutputSerializer(many=True)}, operation_id="deposit_addresses_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.deposit_address_list(tenant=request._request.tenant, user=request.user)
        return _page(self, request, queryset, DepositAddressOutputSerializer, OldestFirst)


class DepositListApi(APIView):
    @extend_schema(responses={200: DepositOutputSerializer(many=True)}, operation_id="deposits_list")
    def get(self, request: Request) -> Response:
        queryset = selectors.deposit_list(tenant=request._request.tenant, user=request.user)
        return _page(self, request, queryset, DepositOutputSerializer, NewestSeenFirst)


class ActivityListApi(APIView):
    @extend_schema(responses={200: DepositOutputSerializer(many=True)}, operation_id="activity_list",
                   parameters=[OpenApiParameter("direction", str, enum=["in", "out"], required=False,
                                                description="only incoming (deposits) or outgoing transfers")])
    def get(self, request: Request) -> Response:
        direction = request.query_params.get("direction") or None
        if direction not in (None, Deposit.Direction.IN, Deposit.Direction.OUT):
            raise ActivityDirectionInvalid()
        queryset = selectors.activity_list(tenant=request._request.tenant, user=request.user, direction=direction)
        return _page(self, request, queryset, DepositOutputSerializer, NewestSeenFirst)


class ActivityDetailApi(APIView):
    @extend_schema(responses={200: DepositOutputSerializer}, operation_id="activity_get")
    def get(self, request: Request, activity_id: str) -> Response:
        row = selectors.access_activity(tenant=request._request.tenant, user=request.user, activity_id=activity_id)
        return Response(DepositOutputSerializer(row).data)


class DepositDetailApi(APIView):
    @extend_schema(responses={200: DepositOutputSerializer}, operation_id="deposits_get")
    def get(self, request: Request, deposit_id: str) -> Response:
        deposit = selectors.access_deposit(tenant=request._request.tenant, user=request.user, deposit_id=deposit_id)
        return Response(DepositOutputSerializer(deposit).data)


# --- relay ---------------------------------------------------------------------------------------------------
class TransactionRelayApi(APIView):
    class RelayInputSerializer(serializers.Serializer):
        raw = serializers.RegexField(r"^(0x)?[0-9a-fA-F]{2,262144}$", help_text="Signed raw transaction, hex")

    @extend_schema(request=RelayInputSerializer, responses={202: RelayedTransactionOutputSerializer},
                   parameters=[idempotency_key_parameter], operation_id="transactions_relay")
    @idempotent
    def post(self, request: Request, chain_id: str) -> Response:
        tenant = request._request.tenant
        tenant_chain = selectors.tenant_chain_get(tenant=tenant, chain_id=chain_id)
        data = self.RelayInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = relayed_transaction_submit(tenant=tenant, user=request.user, chain=tenant_chain.chain,
                                         raw=data.validated_data["raw"])
        return Response(RelayedTransactionOutputSerializer(row).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/transactions/{row.pk}"})


class TransactionListApi(APIView):
    @extend_schema(responses={200: RelayedTransactionOutputSerializer(many=True)}, operation_id="transactions_list")
    def get(self, request: Request, chain_id: str) -> Response:
        tenant = request._request.tenant
        tenant_chain = selectors.tenant_chain_get(tenant=tenant, chain_id=chain_id)
        queryset = selectors.relayed_transaction_list(tenant=tenant, user=request.user).filter(
            chain=tenant_chain.chain)
        return _page(self, request, queryset, RelayedTransactionOutputSerializer)


class TransactionDetailApi(APIView):
    @extend_schema(responses={200: RelayedTransactionOutputSerializer}, operation_id="transactions_get")
    def get(self, request: Request, transaction_id: str) -> Response:
        row = selectors.access_relayed_transaction(tenant=request._request.tenant, user=request.user,
                                                   transaction_id=transaction_id)
        return Response(RelayedTransactionOutputSerializer(row).data)


class WalletRouter(WalletListApi, WalletLinkApi):
    pass


class TransactionRouter(TransactionListApi, TransactionRelayApi):
    pass
