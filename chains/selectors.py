"""Reads of the chains app. Every selector of tenant data takes the tenant explicitly."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from chains.errors import ChainNotEnabled
from chains.models import Chain, Deposit, DepositAddress, LinkedWallet, RelayedTransaction, TenantChain, Token
from tenants.models import Tenant, User
from tenants.scoping import access_by_id


def tenant_chain_get(*, tenant: Tenant, chain_id: Any) -> TenantChain:
    """The tenant's enablement of the chain with this EVM chain id (404 `chain_not_enabled` otherwise)."""
    try:
        number = int(chain_id)
    except (TypeError, ValueError) as exc:
        raise ChainNotEnabled() from exc
    row = (TenantChain.objects.for_tenant(tenant).filter(chain__chain_id=number, enabled=True, chain__enabled=True)
           .select_related("chain").first())
    if row is None:
        raise ChainNotEnabled(chain_id=number)
    return row


def tenant_chain_list(*, tenant: Tenant) -> QuerySet[TenantChain]:
    return (TenantChain.objects.for_tenant(tenant).filter(enabled=True, chain__enabled=True)
            .select_related("chain", "chain__native_asset").order_by("chain__chain_id"))


def chain_tokens(*, chain: Chain) -> list[Token]:
    return list(Token.objects.filter(chain=chain, enabled=True).select_related("asset").order_by("symbol"))


def linked_wallet_list(*, tenant: Tenant, user: User) -> QuerySet[LinkedWallet]:
    return LinkedWallet.objects.for_tenant(tenant).filter(user=user)


def access_linked_wallet(*, tenant: Tenant, user: User, wallet_id: Any) -> LinkedWallet:
    return access_by_id(LinkedWallet, tenant=tenant, object_id=wallet_id,
                        queryset=LinkedWallet.all_tenants.filter(user=user))


def deposit_address_list(*, tenant: Tenant, user: User) -> QuerySet[DepositAddress]:
    return DepositAddress.objects.for_tenant(tenant).filter(user=user).select_related("chain")


def deposit_list(*, tenant: Tenant, user: User) -> QuerySet[Deposit]:
    """The user's deposits (incoming transfers)."""
    return activity_list(tenant=tenant, user=user, direction=Deposit.Direction.IN)


def access_deposit(*, tenant: Tenant, user: User, deposit_id: Any) -> Deposit:
    return access_by_id(Deposit, tenant=tenant, object_id=deposit_id,
                        queryset=Deposit.all_tenants.filter(user=user, direction=Deposit.Direction.IN)
                        .select_related("chain", "asset"))


def activity_list(*, tenant: Tenant, user: User, direction: str | None = None) -> QuerySet[Deposit]:
    """The user's on-chain activity: transfers to (deposits) and from their watched addresses."""
    queryset = Deposit.objects.for_tenant(tenant).filter(user=user).select_related("chain", "asset")
    return queryset.filter(direction=direction) if direction else queryset


def access_activity(*, tenant: Tenant, user: User, activity_id: Any) -> Deposit:
    return access_by_id(Deposit, tenant=tenant, object_id=activity_id,
                        queryset=Deposit.all_tenants.filter(user=user).select_related("chain", "asset"))


def access_relayed_transaction(*, tenant: Tenant, user: User, transaction_id: Any) -> RelayedTransaction:
    return access_by_id(RelayedTransaction, tenant=tenant, object_id=transaction_id,
                        queryset=RelayedTransaction.all_tenants.filter(user=user).select_related("chain"))


def relayed_transaction_list(*, tenant: Tenant, user: User) -> QuerySet[RelayedTransaction]:
    return RelayedTransaction.objects.for_tenant(tenant).filter(user=user).select_related("chain")
