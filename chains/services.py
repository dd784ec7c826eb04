"""Writes of the chains app: the registry, tenant enablement, deposit addresses, unlinking.

Sign-In with Ethereum lives in `chains.siwe`, the relay in `chains.relay`, the watcher in `chains.watcher`.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from chains.errors import DepositAddressesDisabled, DepositAddressTaken, DepositXpubInUse
from chains.models import Chain, DepositAddress, LinkedWallet, TenantChain, Token, xpub_in_use
from tenants.models import Tenant, User
from wallet.ledger.models import Asset
from wallet.ledger.services import tenant_asset_enable


def normalize_address(value: str) -> str:
    """Lower-case `0x` + 40 hex digits, or ValueError."""
    text = value.strip().lower()
    if not text.startswith("0x"):
        text = "0x" + text
    if len(text) != 42 or any(c not in "0123456789abcdef" for c in text[2:]):
        raise ValueError(f"not an address: {value!r}")
    return text


# --- registry (platform data) --------------------------------------------------------------------------------
def chain_register(*, chain_id: int, name: str, rpc_urls: list[str], confirmations: int = 12,
                   ws_url: str = "", trust_finalized: bool = False, poll_interval_ms: int = 2000,
                   native_symbol: str = "ETH", native_decimals: int = 18, **fields: Any) -> Chain:
    """Create or update a chain and its native asset (`ETH:<chain id>`-style code unless the catalogue has one)."""
    with transaction.atomic():
        native = Asset.objects.filter(kind=Asset.Kind.CRYPTO, chain_id=chain_id, contract_address="").first()
        if native is None:
            native = Asset.objects.create(code=f"{native_symbol}:{chain_id}", kind=Asset.Kind.CRYPTO,
                                          name=f"{native_symbol} ({name})", symbol=native_symbol,
                                          decimals=native_decimals, chain_id=chain_id)
        chain, _ = Chain.objects.update_or_create(
            chain_id=chain_id,
            defaults={"name": name, "rpc_urls": list(rpc_urls), "confirmations": confirmations, "ws_url": ws_url,
                      "trust_finalized": trust_finalized, "poll_interval_ms": poll_interval_ms,
                      "native_asset": native, **fields},
        )
    return chain


def token_register(*, chain: Chain, contract: str, symbol: str, decimals: int, name: str = "") -> Token:
    """Create (or return) an ERC-20 token of `chain` and its ledger asset (`<SYMBOL>:<chain id>`)."""
    contract = normalize_address(contract)
    with transaction.atomic():
        existing = Token.objects.filter(chain=chain, contract=contract).select_related("asset").first()
        if existing is not None:
            return existing
        asset = Asset.objects.filter(kind=Asset.Kind.CRYPTO, chain_id=chain.chain_id, contract_address=contract).first()
        if asset is None:
            code = f"{symbol.upper()}:{chain.chain_id}"
            if Asset.objects.filter(code=code).exists():
                code = f"{symbol.upper()}:{chain.chain_id}:{contract[2:8].upper()}"
            asset = Asset.objects.create(code=code, kind=Asset.Kind.CRYPTO, name=name or symbol, symbol=symbol,
                                         decimals=decimals, chain_id=chain.chain_id, contract_address=contract)
        return Token.objects.create(chain=chain, contract=contract, symbol=symbol, decimals=decimals, asset=asset)


def tenant_chain_enable(*, tenant: Tenant, chain: Chain, deposit_xpub: str | None = None) -> TenantChain:
    """Offer `chain` (its native asset and tokens) in the tenant's app; optionally set the deposit xpub.
    An xpub that another tenant derives from on this chain is refused (`DepositXpubInUse`)."""
    try:
        with transaction.atomic():
            defaults: dict[str, Any] = {"enabled": True}
            if deposit_xpub is not None:
                if deposit_xpub:
                    from chains.derivation import validate_xpub

                    validate_xpub(deposit_xpub)
                    if _xpub_taken(tenant, chain, deposit_xpub):
                        raise DepositXpubInUse(chain_id=chain.chain_id)
                defaults["deposit_xpub"] = deposit_xpub
            row, _ = TenantChain.all_tenants.update_or_create(tenant=tenant, chain=chain, defaults=defaults)
            chain_assets_enable(tenant=tenant, chain=chain)
    except IntegrityError as exc:  # another tenant set the same xpub concurrently: the constraint decided
        if deposit_xpub and _xpub_taken(tenant, chain, deposit_xpub):
            raise DepositXpubInUse(chain_id=chain.chain_id) from exc
        raise
    return row


def chain_assets_enable(*, tenant: Tenant, chain: Chain) -> None:
    """Offer the chain's native asset and its enabled tokens in the tenant's app (idempotent)."""
    if chain.native_asset_id:
        tenant_asset_enable(tenant=tenant, asset=chain.native_asset)
    for token in Token.objects.filter(chain=chain, enabled=True).select_related("asset"):
        tenant_asset_enable(tenant=tenant, asset=token.asset)


def _xpub_taken(tenant: Tenant, chain: Chain, xpub: str) -> bool:
    own = TenantChain.all_tenants.filter(tenant=tenant, chain=chain).values_list("pk", flat=True).first()
    return xpub_in_use(chain_id=chain.pk, xpub=xpub, other_than=own)


# --- linked wallets -----------------------------------------------------------------------------------------
def linked_wallet_delete(*, tenant: Tenant, wallet: LinkedWallet) -> None:
    """Unlink an address (its past deposits stay; no new ones are seen for it)."""
    with transaction.atomic():
        LinkedWallet.all_tenants.filter(tenant_id=tenant.pk, pk=wallet.pk).delete()


# --- deposit addresses ----------------------------------------------------------------------------------------
def deposit_address_ensure(*, tenant: Tenant, user: User, tenant_chain: TenantChain) -> DepositAddress:
    """The user's deposit address on the chain, derived from the tenant's xpub at the next index when first
    asked for (one per user per chain; the index counter is bumped under the row lock)."""
    from chains.derivation import derive_address

    existing = DepositAddress.all_tenants.filter(tenant_id=tenant.pk, user=user, chain_id=tenant_chain.chain_id).first()
    if existing is not None:
        return existing
    if not tenant_chain.deposit_xpub:
        raise DepositAddressesDisabled(chain_id=tenant_chain.chain.chain_id)
    with transaction.atomic():
        locked = TenantChain.all_tenants.select_for_update().get(pk=tenant_chain.pk)
        existing = DepositAddress.all_tenants.filter(tenant_id=tenant.pk, user=user, chain_id=locked.chain_id).first()
        if existing is not None:
            return existing
        index = locked.next_deposit_index
        TenantChain.all_tenants.filter(pk=locked.pk).update(next_deposit_index=F("next_deposit_index") + 1)
        address = derive_address(locked.deposit_xpub, index)
        if DepositAddress.all_tenants.filter(chain_id=locked.chain_id, address=address).exists():
            # Another app's key derived it (an xpub set before keys had to be distinct): every index of a shared
            # key is the other app's too, so none is safe; refuse (the index bump rolls back with the rest).
            raise DepositAddressTaken(chain_id=locked.chain.chain_id)
        return DepositAddress.all_tenants.create(tenant=tenant, user=user, chain_id=locked.chain_id,
                                                 address=address, derivation_index=index)
