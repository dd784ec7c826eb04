"""On-chain balances as sources of `GET /api/v1/balances` (wallet.balances): one source per linked or
deposit address per chain, native coin and the chain's enabled tokens, read in one round trip (Multicall3
where the chain has it, else one JSON-RPC batch) pinned to one block.

The factory runs in the request thread and reads the registry (the ORM); each source's `fetch` runs on the
aggregation's event loop and only talks JSON-RPC, in a worker thread (the RPC client is synchronous and
shared by the process). RPC failures become the balances app's retryable provider errors, so the source is
reported stale or unavailable, and the circuit breaker of the chain (`chain:<chain id>`) counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from chains.balances import _read_batch, _read_multicall
from chains.clients import client_for
from chains.models import Chain, DepositAddress, LinkedWallet, TenantChain, Token
from chains.rpc import RpcError, to_int
from tenants.models import Tenant, User
from wallet.balances import conf as balances_conf
from wallet.balances.providers.errors import ProviderUnavailable
from wallet.balances.sources import BalanceEntry, BalanceSource


@dataclass
class ChainAddressSource:
    """The native and token balances of one address on one chain."""

    chain: Chain
    address: str
    tokens: list[Token]
    address_kind: str  # "linked" or "deposit"
    timeout: float
    kind: str = "chain"

    def __post_init__(self) -> None:
        self.id = f"chain:{self.chain.chain_id}:{self.address.lower()}"
        self.label = f"{self.chain.name} {self.address[:6]}…{self.address[-4:]}"
        self.provider = f"chain:{self.chain.chain_id}"

    def _read(self) -> tuple[int, list[int | None]]:
        client = client_for(self.chain)
        block_number = to_int(client.call("eth_blockNumber", []))
        block = hex(block_number)
        reader = _read_multicall if self.chain.multicall3_address else _read_batch
        return block_number, reader(self.chain, block, self.address, self.tokens)

    async def fetch(self) -> Sequence[BalanceEntry]:
        try:
            block_number, amounts = await asyncio.to_thread(self._read)
        except RpcError as exc:
            raise ProviderUnavailable(f"{self.chain.name}: {exc}") from exc
        entries = []
        native = self.chain.native_asset
        holdings: list[tuple[str, int, int | None, str]] = []
        if native is not None:
            holdings.append((native.code, native.decimals, amounts[0], "native"))
        holdings += [(token.asset.code, token.decimals, amount, token.contract)
                     for token, amount in zip(self.tokens, amounts[1:], strict=True)]
        for code, decimals, amount, what in holdings:
            if amount is None:
                continue
            entries.append(BalanceEntry(
                key=f"{self.id}:{what.lower()}", asset=code, decimals=decimals, amount=amount, label=self.label,
                details={"chain_id": self.chain.chain_id, "address": self.address, "address_kind": self.address_kind,
                         "block_number": block_number, **({"contract": what} if what != "native" else {})},
            ))
        return entries


def chain_balance_sources(tenant: Tenant, user: User) -> list[BalanceSource]:
    """The user's linked and deposit addresses on the tenant's enabled chains."""
    chains = {tc.chain.chain_id: tc.chain for tc in TenantChain.objects.for_tenant(tenant)
              .filter(enabled=True, chain__enabled=True).select_related("chain__native_asset")}
    if not chains:
        return []
    tokens: dict[int, list[Token]] = {chain_id: [] for chain_id in chains}
    for token in (Token.objects.filter(chain__chain_id__in=list(chains), enabled=True)
                  .select_related("asset", "chain").order_by("symbol")):
        tokens[token.chain.chain_id].append(token)
    timeout = balances_conf.source_timeout()
    sources: list[BalanceSource] = []
    seen: set[tuple[int, str]] = set()
    # A linked account address is the same account on every EVM chain the app offers (as
    # `GET /api/v1/wallets/{id}/balances` reads it); a contract wallet exists only where it was verified.
    addresses = [(chain_id, w.address, "linked") for w in LinkedWallet.objects.for_tenant(tenant)
                 .filter(user=user).order_by("created_at")
                 for chain_id in ([w.chain_id] if w.is_contract else list(chains))]
    addresses += [(d.chain.chain_id, d.address, "deposit") for d in DepositAddress.objects.for_tenant(tenant)
                  .filter(user=user).select_related("chain").order_by("created_at")]
    for chain_id, address, kind in addresses:
        if chain_id not in chains or (chain_id, address.lower()) in seen:
            continue
        seen.add((chain_id, address.lower()))
        sources.append(ChainAddressSource(chains[chain_id], address, tokens[chain_id], kind, timeout))
    return sources
