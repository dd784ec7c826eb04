"""On-chain balances of addresses (native and the chain's tokens), read in one round trip: one Multicall3
`aggregate3` call where the chain has Multicall3, else one JSON-RPC batch (`eth_getBalance` + `eth_call
balanceOf`). All reads are pinned to one block number, which is cached with the amounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from eth_abi import decode, encode
from eth_utils import keccak

from chains.clients import client_for
from chains.conf import setting
from chains.errors import ChainUnavailable
from chains.models import AddressBalance, Chain, Token
from chains.rpc import RpcError, to_int

BALANCE_OF = keccak(text="balanceOf(address)")[:4]
GET_ETH_BALANCE = keccak(text="getEthBalance(address)")[:4]
AGGREGATE3 = keccak(text="aggregate3((address,bool,bytes)[])")[:4]


@dataclass(frozen=True)
class BalanceRow:
    token: Token | None
    amount: int
    block_number: int
    read_at: Any


def _read_multicall(chain: Chain, block: str, address: str, tokens: list[Token]) -> list[int | None]:
    target = chain.multicall3_address
    calls = [(target, True, GET_ETH_BALANCE + encode(["address"], [address]))]
    calls += [(t.contract, True, BALANCE_OF + encode(["address"], [address])) for t in tokens]
    data = AGGREGATE3 + encode(["(address,bool,bytes)[]"], [calls])
    raw = client_for(chain).call("eth_call", [{"to": target, "data": "0x" + data.hex()}, block])
    (results,) = decode(["(bool,bytes)[]"], bytes.fromhex(raw[2:]))
    return [int.from_bytes(ret[:32], "big") if ok and len(ret) >= 32 else None for ok, ret in results]


def _read_batch(chain: Chain, block: str, address: str, tokens: list[Token]) -> list[int | None]:
    calls: list[tuple[str, list[Any]]] = [("eth_getBalance", [address, block])]
    calls += [("eth_call", [{"to": t.contract, "data": "0x" + (BALANCE_OF + encode(["address"], [address])).hex()},
                            block]) for t in tokens]
    replies = client_for(chain).batch(calls, raise_errors=False)
    return [None if isinstance(r, Exception) or not r or r == "0x" else to_int(r) for r in replies]


def address_balances(*, chain: Chain, address: str, tokens: list[Token], max_age: float | None = None,
                     ) -> list[BalanceRow]:
    """Native and token balances of `address`, from the cache when younger than `max_age` seconds."""
    max_age = setting("CHAINS_BALANCE_CACHE_SECONDS") if max_age is None else max_age
    fresh_after = timezone.now() - timedelta(seconds=max_age)
    cached = {row.token_id: row for row in AddressBalance.objects.filter(chain=chain, address=address,
                                                                        read_at__gte=fresh_after)}
    wanted = [None, *(t.pk for t in tokens)]
    if all(k in cached for k in wanted):
        by_id = {t.pk: t for t in tokens}
        return [BalanceRow(by_id.get(k), int(cached[k].amount), cached[k].block_number, cached[k].read_at)
                for k in wanted]
    try:
        block_number = to_int(client_for(chain).call("eth_blockNumber"))
        block = hex(block_number)
        reader = _read_multicall if chain.multicall3_address else _read_batch
        amounts = reader(chain, block, address, tokens)
    except RpcError as exc:
        raise ChainUnavailable() from exc
    now = timezone.now()
    rows = []
    with transaction.atomic():
        for token, amount in zip([None, *tokens], amounts, strict=True):
            if amount is None:
                continue
            AddressBalance.objects.update_or_create(chain=chain, address=address, token=token,
                                                    defaults={"amount": amount, "block_number": block_number,
                                                              "read_at": now})
            rows.append(BalanceRow(token, amount, block_number, now))
    return rows
