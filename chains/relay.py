"""Relay of signed transactions: decode and check, broadcast, then track `pending -> included -> final`, or
`failed` (reverted), `dropped` (gone from the node with its nonce unused, after a grace period) or
`replaced` (another transaction took its nonce). An event (`tx.<status>`) at each step, to the user's stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import rlp
from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak
from hexbytes import HexBytes

from chains import errors
from chains.clients import client_for
from chains.models import Chain, LinkedWallet, RelayedTransaction
from chains.rpc import RpcClient, RpcResponseError, RpcUnavailable, to_int
from tenants.models import Tenant, User
from wallet.events.services import EventSpec, events_emit
from wallet.events.streams import user_stream

logger = logging.getLogger("chains.relay")


@dataclass(frozen=True)
class DecodedTransaction:
    tx_hash: str
    sender: str
    chain_id: int | None
    nonce: int


def transaction_decode(raw_hex: str) -> DecodedTransaction:
    """Sender (recovered from the signature), chain id, nonce and hash of a signed raw transaction."""
    text = raw_hex.strip()
    try:
        raw = bytes.fromhex(text[2:] if text.startswith("0x") else text)
        if not raw:
            raise ValueError("empty")
        sender = Account.recover_transaction(raw).lower()
        if raw[0] <= 0x7F:  # EIP-2718 typed transaction
            fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
            chain_id, nonce = int(fields["chainId"]), int(fields["nonce"])
        else:  # legacy: [nonce, gasPrice, gas, to, value, data, v, r, s]; EIP-155 v = chainId * 2 + 35/36
            items = rlp.decode(raw)
            nonce = int.from_bytes(items[0], "big")
            v = int.from_bytes(items[6], "big")
            chain_id = (v - 35) // 2 if v >= 35 else None
    except Exception as exc:
        raise errors.TransactionMalformed() from exc
    return DecodedTransaction(tx_hash="0x" + keccak(raw).hex(), sender=sender, chain_id=chain_id, nonce=nonce)


def relay_payload(row: RelayedTransaction) -> dict[str, Any]:
    return {"id": str(row.pk), "chain_id": row.chain.chain_id, "tx_hash": row.tx_hash, "from": row.sender,
            "nonce": row.nonce, "status": row.status, "block_number": row.block_number,
            "block_hash": row.block_hash or None, "replaced_by": row.replaced_by or None, "error": row.error or None,
            "created_at": row.created_at.isoformat(), "updated_at": row.updated_at.isoformat()}


def _event(row: RelayedTransaction) -> None:
    events_emit(tenant=row.tenant, events=[EventSpec(stream=user_stream(row.user_id), type=f"tx.{row.status}",
                                                     data=relay_payload(row))])


def relayed_transaction_submit(*, tenant: Tenant, user: User, chain: Chain, raw: str) -> RelayedTransaction:
    """Check a signed transaction (chain id, sender linked to `user`), broadcast it and record it `pending`.

    Broadcasting the same raw transaction twice is harmless (same hash); a node refusing it answers 422.
    """
    decoded = transaction_decode(raw)
    if decoded.chain_id != chain.chain_id:
        raise errors.TransactionWrongChain(expected=chain.chain_id, got=decoded.chain_id)
    if not LinkedWallet.all_tenants.filter(tenant_id=tenant.pk, user=user, address=decoded.sender).exists():
        raise errors.TransactionSenderNotLinked()
    existing = RelayedTransaction.all_tenants.filter(tenant_id=tenant.pk, chain=chain, tx_hash=decoded.tx_hash).first()
    if existing is not None:
        return existing
    raw_text = raw.strip() if raw.strip().startswith("0x") else "0x" + raw.strip()
    try:
        client_for(chain).call("eth_sendRawTransaction", [raw_text])
    except RpcResponseError as exc:
        if "already known" not in exc.message.lower():
            raise errors.TransactionRejected(detail=exc.message[:300]) from None
    except RpcUnavailable:
        raise errors.ChainUnavailable() from None
    try:
        with transaction.atomic():
            row = RelayedTransaction.all_tenants.create(tenant=tenant, user=user, chain=chain,
                                                        tx_hash=decoded.tx_hash, sender=decoded.sender,
                                                        nonce=decoded.nonce, raw=raw_text)
            _event(row)
    except IntegrityError:  # the same transaction submitted at the same moment: one row, theirs
        return RelayedTransaction.all_tenants.get(tenant_id=tenant.pk, chain=chain, tx_hash=decoded.tx_hash)
    return row


def _transition(row_id: Any, status: str, **fields: Any) -> None:
    with transaction.atomic():
        row = RelayedTransaction.all_tenants.select_for_update().select_related("chain", "tenant").get(pk=row_id)
        if row.status == status and all(getattr(row, k) == v for k, v in fields.items()):
            return
        row.status = status
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated_at = timezone.now()
        row.save()
        _event(row)


def relay_track(*, chain: Chain, client: RpcClient, head: int, finalized: int | None = None) -> None:
    """Advance every open relayed transaction of `chain` (called by the watcher each tick)."""
    open_rows = list(RelayedTransaction.all_tenants.filter(
        chain=chain, status__in=[RelayedTransaction.Status.PENDING, RelayedTransaction.Status.INCLUDED]))
    if not open_rows:
        return
    receipts = client.batch([("eth_getTransactionReceipt", [r.tx_hash]) for r in open_rows], raise_errors=False)
    waiting = []
    for row, receipt in zip(open_rows, receipts, strict=True):
        if isinstance(receipt, Exception):
            continue
        if receipt is None:
            waiting.append(row)
            continue
        number = to_int(receipt["blockNumber"])
        if to_int(receipt.get("status")) == 0:
            _transition(row.pk, RelayedTransaction.Status.FAILED, block_number=number,
                        block_hash=receipt["blockHash"], error="reverted")
            continue
        confirmations = head - number + 1
        if confirmations >= chain.confirmations or (finalized is not None and number <= finalized):
            _transition(row.pk, RelayedTransaction.Status.FINAL, block_number=number, block_hash=receipt["blockHash"])
        else:
            _transition(row.pk, RelayedTransaction.Status.INCLUDED, block_number=number,
                        block_hash=receipt["blockHash"])
    if not waiting:
        return
    # No receipt: has its nonce been used (replaced), is it still known to the node, or is it gone (dropped)?
    calls: list[tuple[str, list[Any]]] = []
    for row in waiting:
        calls.append(("eth_getTransactionCount", [row.sender, "latest"]))
        calls.append(("eth_getTransactionByHash", [row.tx_hash]))
    replies = client.batch(calls, raise_errors=False)
    for index, row in enumerate(waiting):
        mined_nonces, known = replies[2 * index], replies[2 * index + 1]
        if isinstance(mined_nonces, Exception) or isinstance(known, Exception):
            continue
        if isinstance(known, dict) and known.get("blockNumber"):
            continue  # mined between the two reads: its receipt comes next tick
        if to_int(mined_nonces) > row.nonce:
            replaced_by = _replacement(client, row, head) or ""
            if replaced_by.lower() == row.tx_hash.lower():
                continue  # it took its own nonce: included, not replaced (receipt next tick)
            _transition(row.pk, RelayedTransaction.Status.REPLACED,
                        replaced_by=replaced_by, block_number=None, block_hash="")
        elif known is None:
            _unknown_to_the_node(client, row)
        elif row.status == RelayedTransaction.Status.INCLUDED:  # its block was reorged away; back in the pool
            _transition(row.pk, RelayedTransaction.Status.PENDING, block_number=None, block_hash="")


# What nodes answer when a nonce is already used (geth, erigon, reth, nethermind, anvil).
_NONCE_TAKEN = ("nonce too low", "already imported", "nonce has already been used", "old nonce", "nonce too small")


def _unknown_to_the_node(client: RpcClient, row: RelayedTransaction) -> None:
    """No receipt, the node does not know the transaction (evicted from its pool, or a node that restarted or
    that we failed over to never had it), and its nonce is not taken: the node decides. We broadcast the
    signed transaction again: accepted ("already known" too), it is pending still (back in the pool); refused
    for its nonce, another took it: `replaced` (the watcher finds which when it is mined); refused for any
    other reason (funds, fees under the base fee, gas), it cannot be included as signed: `dropped`, with the
    node's reason. A node that does not answer decides nothing (next tick)."""
    try:
        client.call("eth_sendRawTransaction", [row.raw])
    except RpcResponseError as exc:
        message = exc.message.lower()
        if "already known" in message or "known transaction" in message:
            return
        if any(p in message for p in _NONCE_TAKEN):
            _transition(row.pk, RelayedTransaction.Status.REPLACED, block_number=None, block_hash="")
            return
        _transition(row.pk, RelayedTransaction.Status.DROPPED, block_number=None, block_hash="",
                    error=exc.message[:300])
        return
    except RpcUnavailable:
        return
    logger.info("relayed transaction was unknown to the node: broadcast again",
                extra={"tx_hash": row.tx_hash, "chain_id": row.chain.chain_id})
    if row.status == RelayedTransaction.Status.INCLUDED:  # its block was reorged away; back in the pool
        _transition(row.pk, RelayedTransaction.Status.PENDING, block_number=None, block_hash="")


def _replacement(client: RpcClient, row: RelayedTransaction, head: int, lookback: int = 64) -> str | None:
    """The hash of the transaction that took `row`'s nonce, if it is in the last `lookback` blocks."""
    numbers = list(range(max(0, head - lookback + 1), head + 1))
    blocks = client.batch([("eth_getBlockByNumber", [hex(n), True]) for n in reversed(numbers)], raise_errors=False)
    for block in blocks:
        if not isinstance(block, dict):
            continue
        for tx in block.get("transactions") or ():
            if (isinstance(tx, dict) and (tx.get("from") or "").lower() == row.sender
                    and to_int(tx.get("nonce")) == row.nonce):
                return tx["hash"]
    return None


def relay_rollback(*, chain: Chain, above: int) -> None:
    """A reorg removed the blocks above `above`: transactions included there are pending again."""
    for row_id in RelayedTransaction.all_tenants.filter(
            chain=chain, block_number__gt=above,
            status__in=[RelayedTransaction.Status.INCLUDED, RelayedTransaction.Status.FINAL,
                        RelayedTransaction.Status.FAILED]).values_list("pk", flat=True):
        _transition(row_id, RelayedTransaction.Status.PENDING, block_number=None, block_hash="")
