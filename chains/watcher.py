"""The chain watcher: one `ChainWatcher` per chain, one `tick()` at a time.

A tick:
1. reads the head (and the `finalized` block where the chain's tag is trusted) and raises the stale-head
   alarm when the head has not moved for `stale_after_seconds`;
2. checks the stored tip against the node: if its hash changed, walks the stored window of block hashes
   back to the common ancestor and rolls back everything above it (deposits `reorged`, with a reversing
   ledger entry for a credited one; relayed transactions back to `pending`), then rewinds the cursor;
3. scans forward from the cursor in chunks: block bodies (native transfers to watched addresses; hashes and
   parent hashes of the blocks inside the reorg window) and ERC-20 `Transfer` logs of the registered tokens
   (filtered by the node on the recipient topic for a few watched addresses; by topic only and matched
   against a Python set for many). Each chunk commits its deposits, its block hashes and the cursor in one
   transaction under the cursor's row lock, so a watcher killed anywhere resumes at the last committed
   chunk: no gap, and the unique key (tenant, chain, tx hash, log index) makes a repeat harmless;
4. advances confirmations: `seen -> confirming(n) -> final`, crediting the ledger in the transaction that
   marks a deposit final (under its row lock: exactly once);
5. tracks relayed transactions (`chains.relay`).

Catch-up has no time limit: a tick does at most `CHAINS_MAX_BLOCKS_PER_TICK` blocks and the loop ticks
again at once while it is behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone
from eth_utils import keccak

from chains import metrics
from chains.clients import client_for
from chains.conf import setting
from chains.models import BlockRecord, Chain, ChainCursor, Deposit, DepositAddress, LinkedWallet, TenantChain, Token
from chains.rpc import RpcClient, RpcError, RpcResponseError, is_unsupported, to_int
from tenants.models import Tenant
from wallet.events.services import EventSpec, events_emit
from wallet.events.streams import user_stream
from wallet.ledger.engine import EntryDraft, LedgerBatch, Leg, apply_single
from wallet.ledger.errors import InsufficientFunds
from wallet.ledger.models import Account, JournalEntry, Posting, TenantAsset
from wallet.ledger.services import entry_reverse, system_account, user_accounts_ensure

logger = logging.getLogger("chains.watcher")

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
NATIVE_LOG_INDEX = -1


class ReorgDuringScan(Exception):
    """The chain changed under a chunk being scanned; the next tick finds the fork and rolls back."""


@dataclass(frozen=True)
class Owner:
    tenant_id: Any
    user_id: Any
    kind: str


@dataclass
class Found:
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    from_address: str
    to_address: str
    asset_id: Any
    amount: int


@dataclass
class Fetched:
    natives: list[Found]
    blocks: dict[int, dict[str, Any]]
    logs: list[dict[str, Any]]


@dataclass
class TickResult:
    head: int = 0
    cursor: int = 0
    scanned: int = 0
    found: int = 0
    reorged_to: int | None = None
    finalized: int = 0
    behind: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


def deposit_payload(deposit: Deposit, chain: Chain | None = None) -> dict[str, Any]:
    chain = chain or deposit.chain
    return {
        "id": str(deposit.pk), "chain_id": chain.chain_id, "tx_hash": deposit.tx_hash, "log_index": deposit.log_index,
        "block_number": deposit.block_number, "block_hash": deposit.block_hash, "from": deposit.from_address,
        "to": deposit.to_address, "address_kind": deposit.address_kind, "asset": deposit.asset.code,
        "decimals": deposit.asset.decimals, "amount": str(deposit.amount), "status": deposit.status,
        "direction": deposit.direction,
        "confirmations": deposit.confirmations, "required_confirmations": chain.confirmations,
        "entry_id": str(deposit.entry_id) if deposit.entry_id else None,
        "reversal_id": str(deposit.reversal_id) if deposit.reversal_id else None,
        "shortfall": str(deposit.shortfall),
    }


def event_type(deposit: Deposit) -> str:
    """`deposit.<status>` for an incoming transfer, `outgoing.<status>` for one from a watched address."""
    prefix = "deposit" if deposit.direction == Deposit.Direction.IN else "outgoing"
    return f"{prefix}.{deposit.status}"


class ChainWatcher:
    """Watches one chain. Not thread-safe: one tick at a time per instance (the command runs one loop per
    chain; two processes on one chain serialise on the cursor's row lock)."""

    def __init__(self, chain: Chain, *, client: RpcClient | None = None,
                 max_blocks_per_tick: int | None = None) -> None:
        self.chain = chain
        self.own_client = client is None  # else a client given by the caller (tests), kept as is
        self.client = client or client_for(chain)
        self.max_blocks = max_blocks_per_tick or setting("CHAINS_MAX_BLOCKS_PER_TICK")
        self.watch: dict[str, list[Owner]] = {}
        self.watch_version: tuple[Any, ...] | None = None
        self.tokens: dict[str, Token] = {}
        self.assets: dict[Any, Any] = {}
        self.offered: set[tuple[Any, Any]] = set()
        self.tenants: dict[Any, Tenant] = {}
        self.last_head: int | None = None
        self.head_changed_at = time.monotonic()
        self.stale_alarmed = False
        self.native_mode: str | None = None
        self.native_mode_source: str | None = None
        # Test hook: called after each committed chunk with its last block (a crash there must lose nothing).
        self.after_chunk: Any = None

    # --- watched addresses ------------------------------------------------------------------------------
    def _tenant_ids(self) -> list[Any]:
        return list(TenantChain.all_tenants.filter(chain=self.chain, enabled=True).values_list("tenant_id", flat=True))

    def refresh_watch(self) -> None:
        """Reload the watched addresses and tokens when they changed (one cheap aggregate query otherwise)."""
        tenant_ids = self._tenant_ids()
        # Count and newest creation time: an insert or a delete changes one of them (PostgreSQL has no max(uuid)).
        linked = (LinkedWallet.all_tenants.filter(Q(is_contract=False) | Q(chain_id=self.chain.chain_id),
                                                  tenant_id__in=tenant_ids)
                  .aggregate(n=Count("pk"), last=Max("created_at")))
        deposit = (DepositAddress.all_tenants.filter(tenant_id__in=tenant_ids, chain=self.chain)
                   .aggregate(n=Count("pk"), last=Max("created_at")))
        tokens = Token.objects.filter(chain=self.chain, enabled=True).aggregate(n=Count("pk"), last=Max("contract"))
        offered = (TenantAsset.all_tenants.filter(tenant_id__in=tenant_ids, enabled=True,
                                                  asset__chain_id=self.chain.chain_id).aggregate(n=Count("pk")))
        version = (tuple(sorted(map(str, tenant_ids))), linked["n"], linked["last"], deposit["n"], deposit["last"],
                   tokens["n"], tokens["last"], offered["n"])
        if version == self.watch_version:
            return
        watch: dict[str, list[Owner]] = {}
        # A contract wallet (ERC-1271) was verified on one chain only; the same address elsewhere may be
        # someone else's contract (or nobody's yet).
        linked_rows = LinkedWallet.all_tenants.filter(Q(is_contract=False) | Q(chain_id=self.chain.chain_id),
                                                      tenant_id__in=tenant_ids)
        for address, tenant_id, user_id in (linked_rows.values_list("address", "tenant_id", "user_id")
                                            .iterator(chunk_size=5000)):
            watch.setdefault(address, []).append(Owner(tenant_id, user_id, Deposit.Kind.LINKED))
        deposit_rows = DepositAddress.all_tenants.filter(tenant_id__in=tenant_ids, chain=self.chain)
        for address, tenant_id, user_id in (deposit_rows.values_list("address", "tenant_id", "user_id")
                                            .iterator(chunk_size=5000)):
            watch.setdefault(address, []).append(Owner(tenant_id, user_id, Deposit.Kind.DEPOSIT))
        self.watch = watch
        tokens_rows = Token.objects.filter(chain=self.chain, enabled=True).select_related("asset")
        self.tokens = {t.contract: t for t in tokens_rows}
        self.assets = {t.asset_id: t.asset for t in self.tokens.values()}
        if self.chain.native_asset_id:
            self.assets[self.chain.native_asset_id] = self.chain.native_asset
        self.tenants = {t.pk: t for t in Tenant.objects.filter(pk__in=tenant_ids)}
        # A tenant sees deposits only in the assets its app offers (a token it disabled is ignored).
        self.offered = set(TenantAsset.all_tenants.filter(tenant_id__in=tenant_ids, enabled=True,
                                                          asset_id__in=list(self.assets))
                           .values_list("tenant_id", "asset_id"))
        self.watch_version = version

    # --- the tick ---------------------------------------------------------------------------------------
    def tick(self) -> TickResult:
        """Do one round of work (see the module docstring); returns what it did."""
        self.chain = Chain.objects.select_related("native_asset").get(pk=self.chain.pk)
        if self.own_client:
            self.client = client_for(self.chain)  # a new one when the registry changed the chain's URLs
        self.refresh_watch()
        result = TickResult()
        calls = [("eth_blockNumber", [])]
        if self.chain.trust_finalized:
            calls.append(("eth_getBlockByNumber", ["finalized", False]))
        replies = self.client.batch(calls, raise_errors=False)
        if isinstance(replies[0], Exception):
            raise replies[0]
        head = to_int(replies[0])
        finalized = None
        if self.chain.trust_finalized and isinstance(replies[1], dict):
            finalized = to_int(replies[1]["number"])
        result.head = head
        self._track_head(head)

        cursor = self._cursor(head)
        # A node behind our cursor (a failover to a lagging one) is compared at its own head: the blocks it
        # has not seen yet are not "removed"; a real reorg differs at or below its head.
        ancestor = self.find_fork(min(cursor.block_number, head))
        if ancestor is not None:
            self.rollback(ancestor)
            result.reorged_to = ancestor
            cursor.refresh_from_db()

        start = cursor.block_number + 1
        end = min(head, cursor.block_number + self.max_blocks)
        if end >= start:
            try:
                result.found = self.scan(start, end, head)
                result.scanned = end - start + 1
            except ReorgDuringScan:
                logger.info("chain changed during a scan; rechecking", extra={"chain_id": self.chain.chain_id})
        cursor.refresh_from_db()
        result.cursor = cursor.block_number
        result.behind = cursor.block_number < head
        result.finalized = self.advance_confirmations(head, finalized)
        from chains.relay import relay_track

        relay_track(chain=self.chain, client=self.client, head=head, finalized=finalized)
        return result

    def _track_head(self, head: int) -> None:
        now = time.monotonic()
        if head != self.last_head:
            self.last_head = head
            self.head_changed_at = now
            if self.stale_alarmed:
                logger.info("chain head moves again", extra={"chain_id": self.chain.chain_id, "head": head})
            self.stale_alarmed = False
            ChainCursor.objects.filter(chain=self.chain).update(head_number=head, head_changed_at=timezone.now())
        elif now - self.head_changed_at > self.chain.stale_after_seconds and not self.stale_alarmed:
            self.stale_alarmed = True
            metrics.increment("chains_stale_head_alarms_total", chain_id=self.chain.chain_id)
            logger.error("chain head is stale", extra={"chain_id": self.chain.chain_id, "head": head,
                                                        "stale_for_s": round(now - self.head_changed_at, 1)})
        metrics.gauge("chains_head_block", head, chain_id=self.chain.chain_id)

    def _cursor(self, head: int) -> ChainCursor:
        cursor = ChainCursor.objects.filter(chain=self.chain).first()
        if cursor is None:
            start = self.chain.start_block if self.chain.start_block is not None else head
            ChainCursor.objects.bulk_create([ChainCursor(chain=self.chain, block_number=start - 1, head_number=head)],
                                            ignore_conflicts=True)
            cursor = ChainCursor.objects.get(chain=self.chain)
        return cursor

    # --- reorgs -----------------------------------------------------------------------------------------
    def find_fork(self, tip: int) -> int | None:
        """None when the stored tip is still on the chain; else the highest stored block that still is (the
        common ancestor), or the block below the window when none is."""
        records = list(BlockRecord.objects.filter(chain=self.chain, number__lte=tip).order_by("-number")
                       .values_list("number", "hash")[: self.chain.reorg_window])
        if not records or records[0][0] != tip:
            return None
        headers = self.client.batch([("eth_getBlockByNumber", [hex(n), False]) for n, _ in records])
        if headers[0] is not None and headers[0]["hash"] == records[0][1]:
            return None
        for (number, stored), header in zip(records, headers, strict=True):
            if header is not None and header["hash"] == stored:
                logger.warning("reorg detected", extra={"chain_id": self.chain.chain_id, "ancestor": number,
                                                         "depth": tip - number})
                metrics.increment("chains_reorgs_total", chain_id=self.chain.chain_id)
                return number
        ancestor = records[-1][0] - 1
        logger.error("reorg deeper than the stored window", extra={"chain_id": self.chain.chain_id,
                                                                    "window": len(records), "ancestor": ancestor})
        metrics.increment("chains_reorgs_total", chain_id=self.chain.chain_id)
        return ancestor

    def rollback(self, ancestor: int) -> int:
        """Undo everything above `ancestor`: deposits become `reorged` (a credited one gets a reversing entry),
        relayed transactions included there go back to `pending`, block hashes are forgotten, the cursor rewinds."""
        from chains.relay import relay_rollback

        removed = 0
        with transaction.atomic():
            ChainCursor.objects.select_for_update().get(chain=self.chain)
            doomed = list(Deposit.all_tenants.filter(chain=self.chain, block_number__gt=ancestor)
                          .exclude(status=Deposit.Status.REORGED).values_list("pk", flat=True))
            for deposit_id in doomed:
                self._reorg_deposit(deposit_id)
                removed += 1
            relay_rollback(chain=self.chain, above=ancestor)
            BlockRecord.objects.filter(chain=self.chain, number__gt=ancestor).delete()
            ChainCursor.objects.filter(chain=self.chain).update(block_number=ancestor, updated_at=timezone.now())
        return removed

    def _reorg_deposit(self, deposit_id: Any) -> None:
        deposit = Deposit.all_tenants.select_for_update().select_related("asset", "chain").get(pk=deposit_id)
        tenant = self._tenant(deposit.tenant_id)
        with transaction.atomic():
            if deposit.entry_id and not deposit.reversal_id:
                deposit.reversal, deposit.shortfall = self._reverse_credit(tenant, deposit)
            deposit.status = Deposit.Status.REORGED
            deposit.reorged_at = timezone.now()
            deposit.save(update_fields=["status", "reorged_at", "reversal", "shortfall"])
            events_emit(tenant=tenant, events=[EventSpec(stream=user_stream(deposit.user_id), type=event_type(deposit),
                                                         data=deposit_payload(deposit))])

    def _reverse_credit(self, tenant: Tenant, deposit: Deposit) -> tuple[JournalEntry, int]:
        """Reverse the credit of a deposit a reorg removed; returns (reversal, shortfall).

        Normally the exact opposite of the credit. When the user has already spent part or all of it (their
        account may not go negative), the reversal still posts at once: the user's account gives back what it
        holds (available = posted - held) and the rest, the shortfall, is debited to the tenant's suspense
        account of the chain's rail (`suspense`, rail `chain:<id>`, which may go negative): a receivable the
        tenant's operators recover from the user (CRITICAL log and `chains_reversal_shortfalls_total`). The
        ledger stays balanced (`ledger_verify` clean) and no account that may not go negative does."""
        entry = JournalEntry.all_tenants.get(pk=deposit.entry_id)
        memo = f"Reorg removed deposit {deposit.tx_hash}"[:200]
        try:
            return entry_reverse(tenant=tenant, entry=entry, requested_by=None, memo=memo), 0
        except InsufficientFunds:
            pass
        postings = list(Posting.all_tenants.filter(tenant_id=tenant.pk, entry=entry).select_related("account")
                        .order_by("pk"))
        # The user's credit (a re-credit that repaid suspense also credits the suspense account).
        credited = next(p for p in postings if p.amount > 0 and p.account.user_id is not None)
        user_account = Account.all_tenants.select_for_update().get(pk=credited.account_id)
        take = max(0, min(int(credited.amount), int(user_account.posted - user_account.held)))
        shortfall = int(credited.amount) - take
        suspense = system_account(tenant=tenant, asset=deposit.asset, kind=Account.Kind.SUSPENSE,
                                  rail=f"chain:{self.chain.chain_id}")
        legs = [Leg(p.account_id, -p.amount) for p in postings if p.pk != credited.pk]
        legs += ([Leg(credited.account_id, -take)] if take else []) + [Leg(suspense.pk, -shortfall)]
        reversal = apply_single(tenant, EntryDraft(kind=JournalEntry.Kind.REVERSAL, legs=legs, reverses_id=entry.pk,
                                                   reference=f"reversal:{entry.pk}", memo=memo))
        logger.critical("reorged deposit was already spent: shortfall debited to suspense",
                        extra={"deposit_id": str(deposit.pk), "tenant_id": str(deposit.tenant_id),
                               "shortfall": str(shortfall), "asset": deposit.asset.code})
        metrics.increment("chains_reversal_shortfalls_total", chain_id=self.chain.chain_id)
        return reversal, shortfall

    def _tenant(self, tenant_id: Any) -> Tenant:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            tenant = self.tenants[tenant_id] = Tenant.objects.get(pk=tenant_id)
        return tenant

    # --- scanning ---------------------------------------------------------------------------------------
    def scan(self, start: int, end: int, head: int) -> int:
        """Scan [start, end] in chunks of `log_chunk_blocks`, committing each in order; returns transfers found.

        Catching up, the node is asked for the next chunks (`CHAINS_SCAN_PREFETCH` of them, in worker threads:
        RPC only, no database) while this thread matches and commits the current one, so the node's time and
        ours overlap. Commits stay in block order and each one still checks the cursor and parent hashes."""
        found = 0
        step = max(1, self.chain.log_chunk_blocks)
        chunks = [(s, min(end, s + step - 1)) for s in range(start, end + 1, step)]
        depth = max(0, int(setting("CHAINS_SCAN_PREFETCH")))
        if len(chunks) == 1 or depth == 0:
            for chunk_start, chunk_end in chunks:
                found += self._scan_chunk(chunk_start, chunk_end, head,
                                          self._fetch_chunk(chunk_start, chunk_end, head))
                if self.after_chunk is not None:
                    self.after_chunk(chunk_end)
            return found
        pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix=f"chain-{self.chain.chain_id}-fetch")
        try:
            pending = [pool.submit(self._fetch_chunk, s, e, head) for s, e in chunks[:depth]]
            for index, (chunk_start, chunk_end) in enumerate(chunks):
                fetched = pending[index].result()
                if index + depth < len(chunks):
                    pending.append(pool.submit(self._fetch_chunk, *chunks[index + depth], head))
                found += self._scan_chunk(chunk_start, chunk_end, head, fetched)
                if self.after_chunk is not None:
                    self.after_chunk(chunk_end)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return found

    def _native_mode(self) -> str:
        """`traces` or `bodies` (`auto` becomes `traces` until the node says it has no `trace_filter`)."""
        if self.native_mode is None or self.native_mode_source != self.chain.native_source:
            self.native_mode_source = self.chain.native_source
            self.native_mode = "bodies" if self.chain.native_source == Chain.NativeSource.BODIES else "traces"
        return self.native_mode

    def _many(self) -> bool:
        return len(self.watch) > setting("CHAINS_LOG_FILTER_MAX_ADDRESSES")

    def _fetch_blocks(self, start: int, end: int, head: int, full: bool) -> dict[int, dict[str, Any]]:
        """Block bodies of the whole chunk when `full` (native transfers from bodies), else the headers of the
        chunk's blocks inside the reorg window (their hashes are kept)."""
        window_floor = head - self.chain.reorg_window + 1
        numbers = list(range(start if full else max(start, window_floor), end + 1))
        if not numbers:
            return {}
        blocks = self.client.batch([("eth_getBlockByNumber", [hex(n), full]) for n in numbers], max_batch=200)
        out = {}
        for number, block in zip(numbers, blocks, strict=True):
            if block is None:
                raise ReorgDuringScan(f"block {number} is gone")
            out[number] = block
        return out

    def _fetch_logs(self, start: int, end: int) -> list[dict[str, Any]]:
        """`Transfer` logs of the registered tokens to or from watched addresses (filtered by the node for a
        few addresses: one query per direction; by topic only for many, matched in Python)."""
        if not self.tokens or not self.watch:
            return []
        contracts = sorted(self.tokens)
        if self._many():
            return self.client.get_logs(from_block=start, to_block=end, address=contracts, topics=[TRANSFER_TOPIC])
        padded = ["0x" + "0" * 24 + a[2:] for a in sorted(self.watch)]
        incoming = self.client.get_logs(from_block=start, to_block=end, address=contracts,
                                        topics=[TRANSFER_TOPIC, None, padded])
        outgoing = self.client.get_logs(from_block=start, to_block=end, address=contracts,
                                        topics=[TRANSFER_TOPIC, padded])
        seen = {(log["transactionHash"], log["logIndex"]) for log in incoming}
        return incoming + [log for log in outgoing if (log["transactionHash"], log["logIndex"]) not in seen]

    def _native_from_traces(self, start: int, end: int) -> list[Found]:
        """Native transfers to or from watched addresses from `trace_filter`: top-level transactions and
        internal calls with value (a contract paying out), skipping failed calls and calls under a failed one."""
        addresses = None if self._many() else sorted(self.watch)
        queries = [{"to_addresses": addresses}, {"from_addresses": addresses}] if addresses else [{}]
        traces: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
        for query in queries:
            for trace in self.client.trace_filter(from_block=start, to_block=end, **query):
                traces.setdefault((trace.get("transactionHash") or "", tuple(trace.get("traceAddress") or ())), trace)
        watch = self.watch
        matched = []
        for (tx_hash, path), trace in traces.items():
            action = trace.get("action") or {}
            if trace.get("type") != "call" or action.get("callType", "call") != "call" or not tx_hash:
                continue
            value = to_int(action.get("value"))
            sender, to = (action.get("from") or "").lower(), (action.get("to") or "").lower()
            if value <= 0 or (sender not in watch and to not in watch) or trace.get("error"):
                continue
            matched.append((tx_hash, path, trace, sender, to, value))
        # An internal call counts only if no call above it failed; its index is its place in the transaction's
        # traces (the top-level call is the first: -1, as from a block body).
        internal_txs = sorted({tx for tx, path, *_ in matched if path})
        positions: dict[str, dict[tuple[int, ...], tuple[int, bool]]] = {}
        if internal_txs:
            replies = self.client.batch([("trace_transaction", [tx]) for tx in internal_txs])
            for tx_hash, full in zip(internal_txs, replies, strict=True):
                failed = {tuple(t.get("traceAddress") or ()) for t in full or () if t.get("error")}
                positions[tx_hash] = {
                    tuple(t.get("traceAddress") or ()): (i, any(tuple(t.get("traceAddress") or ())[:k] in failed
                                                              for k in range(len(t.get("traceAddress") or ()))))
                    for i, t in enumerate(full or ())}
        found = []
        for tx_hash, path, trace, sender, to, value in matched:
            index = 0
            if path:
                position = positions.get(tx_hash, {}).get(path)
                if position is None or position[1]:
                    continue
                index = position[0]
            found.append(Found(tx_hash, NATIVE_LOG_INDEX - index, to_int(trace.get("blockNumber")),
                               trace.get("blockHash") or "", sender, to, self.chain.native_asset_id, value))
        return found

    def _native_from_bodies(self, blocks: dict[int, dict[str, Any]]) -> list[Found]:
        """Native transfers to or from watched addresses among the blocks' top-level transactions (a reverted
        one, told by its receipt, moved nothing)."""
        watch = self.watch
        found = []
        for number, block in blocks.items():
            for tx in block.get("transactions") or ():
                if not isinstance(tx, dict):
                    continue
                sender, to = (tx.get("from") or "").lower(), (tx.get("to") or "").lower()
                if (to in watch or sender in watch) and to:
                    value = to_int(tx.get("value"))
                    if value > 0:
                        found.append(Found(tx["hash"], NATIVE_LOG_INDEX, number, block["hash"], sender, to,
                                           self.chain.native_asset_id, value))
        if found:
            receipts = self.client.batch([("eth_getTransactionReceipt", [f.tx_hash]) for f in found])
            found = [f for f, r in zip(found, receipts, strict=True) if r is None or to_int(r.get("status", "0x1"))]
        return found

    def _fetch_chunk(self, start: int, end: int, head: int) -> Fetched:
        """What the node says about [start, end]: native transfers, block headers (or bodies) and token logs.
        RPC only (it runs in worker threads): no database access."""
        native = bool(self.chain.scan_native and self.watch and self.chain.native_asset_id)
        natives: list[Found] = []
        bodies = native and self._native_mode() == "bodies"
        if native and not bodies:
            try:
                natives = self._native_from_traces(start, end)
            except RpcResponseError as exc:
                if self.chain.native_source != Chain.NativeSource.AUTO or not is_unsupported(exc):
                    raise
                logger.warning("the node has no trace_filter; reading block bodies",
                               extra={"chain_id": self.chain.chain_id, "error": str(exc)})
                self.native_mode = "bodies"
                bodies = True
        blocks = self._fetch_blocks(start, end, head, full=bodies)
        if bodies:
            natives = self._native_from_bodies(blocks)
        return Fetched(natives=natives, blocks=blocks, logs=self._fetch_logs(start, end))

    def _scan_chunk(self, start: int, end: int, head: int, fetched: Fetched) -> int:
        natives, blocks, logs = fetched.natives, fetched.blocks, fetched.logs
        # Continuity inside the chunk and against the stored block below it.
        previous = BlockRecord.objects.filter(chain=self.chain, number=start - 1).values_list("hash", flat=True).first()
        for number in sorted(blocks):
            block = blocks[number]
            expected = blocks[number - 1]["hash"] if number - 1 in blocks else previous if number == start else None
            if expected is not None and block["parentHash"] != expected:
                raise ReorgDuringScan(f"block {number} does not follow {expected}")
        found: list[Found] = []
        watch = self.watch
        for item in natives:
            if item.block_number in blocks and blocks[item.block_number]["hash"] != item.block_hash:
                raise ReorgDuringScan(f"trace of block {item.block_number} has another block hash")
            found.append(item)
        for log in logs:
            topics = log.get("topics") or ()
            if len(topics) != 3 or topics[0] != TRANSFER_TOPIC or log.get("removed"):
                continue
            to = "0x" + topics[2][-40:].lower()
            sender = "0x" + topics[1][-40:].lower()
            if to not in watch and sender not in watch:
                continue
            token = self.tokens.get(log["address"].lower())
            if token is None:
                continue
            number = to_int(log["blockNumber"])
            if number in blocks and blocks[number]["hash"] != log["blockHash"]:
                raise ReorgDuringScan(f"log of block {number} has another block hash")
            data = log.get("data") or "0x"
            amount = int(data[2:66] or "0", 16)
            if amount <= 0:
                continue
            found.append(Found(log["transactionHash"], to_int(log["logIndex"]), number, log["blockHash"],
                               sender, to, token.asset_id, amount))
        window_floor = head - self.chain.reorg_window + 1
        records = [BlockRecord(chain=self.chain, number=n, hash=b["hash"], parent_hash=b["parentHash"])
                   for n, b in blocks.items() if n >= window_floor]
        with transaction.atomic():
            cursor = ChainCursor.objects.select_for_update().get(chain=self.chain)
            if cursor.block_number != start - 1:
                raise ReorgDuringScan("another watcher moved the cursor")  # rolled back; the next tick re-reads
            self._record(found, head)
            if records:
                BlockRecord.objects.bulk_create(records, update_conflicts=True, unique_fields=["chain", "number"],
                                                update_fields=["hash", "parent_hash"])
            BlockRecord.objects.filter(chain=self.chain, number__lt=window_floor).delete()
            ChainCursor.objects.filter(chain=self.chain).update(block_number=end, updated_at=timezone.now())
        metrics.gauge("chains_cursor_block", end, chain_id=self.chain.chain_id)
        return len(found)

    def _record(self, found: Iterable[Found], head: int) -> None:
        """Insert new deposits (incoming) and outgoing transfers of watched addresses (and revive ones a reorg
        removed that came back), with `deposit.seen` / `outgoing.seen` events."""
        rows: list[Deposit] = []
        for item in found:
            for direction, address in ((Deposit.Direction.IN, item.to_address),
                                       (Deposit.Direction.OUT, item.from_address)):
                for owner in self.watch.get(address, ()):
                    if (owner.tenant_id, item.asset_id) not in self.offered:
                        continue
                    rows.append(Deposit(tenant_id=owner.tenant_id, user_id=owner.user_id, address_kind=owner.kind,
                                        chain=self.chain, tx_hash=item.tx_hash.lower(), log_index=item.log_index,
                                        direction=direction, block_number=item.block_number,
                                        block_hash=item.block_hash, from_address=item.from_address,
                                        to_address=item.to_address, asset=self.assets[item.asset_id],
                                        amount=item.amount, confirmations=max(0, head - item.block_number + 1)))
        if not rows:
            return

        def key(d: Deposit) -> tuple[Any, ...]:
            return d.tenant_id, d.tx_hash, d.log_index, d.direction

        existing = {key(d): d for d in Deposit.all_tenants.select_for_update().filter(
            chain=self.chain, tx_hash__in={r.tx_hash for r in rows})}
        new_rows, revived, keys = [], [], set()
        for row in rows:
            if key(row) in keys:  # the same address twice in one set of owners: one row
                continue
            keys.add(key(row))
            old = existing.get(key(row))
            if old is None:
                new_rows.append(row)
            elif old.status == Deposit.Status.REORGED:
                old.block_number, old.block_hash = row.block_number, row.block_hash
                old.status, old.entry, old.reversal = Deposit.Status.SEEN, None, None
                old.confirmations = row.confirmations
                old.seen_at, old.reorged_at, old.final_at = timezone.now(), None, None
                old.save()
                revived.append(old)
        Deposit.all_tenants.bulk_create(new_rows)
        by_tenant: dict[Any, list[EventSpec]] = {}
        for deposit in new_rows + revived:
            by_tenant.setdefault(deposit.tenant_id, []).append(
                EventSpec(stream=user_stream(deposit.user_id), type=event_type(deposit),
                          data=deposit_payload(deposit, self.chain)))
        for tenant_id, events in by_tenant.items():
            events_emit(tenant=self._tenant(tenant_id), events=events)

    # --- confirmations and crediting -------------------------------------------------------------------
    def advance_confirmations(self, head: int, finalized: int | None) -> int:
        """Move open deposits along; credit the ones that became final. Returns how many became final.

        One transaction per tenant and batch of deposits (their rows locked in primary-key order), one
        outbox write per transaction."""
        required = self.chain.confirmations
        finals = 0
        open_deposits = list(Deposit.all_tenants.filter(chain=self.chain, status__in=[Deposit.Status.SEEN,
                                                                                    Deposit.Status.CONFIRMING],
                                                        block_number__lte=head)
                             .values_list("pk", "tenant_id", "block_number", "confirmations"))
        by_tenant: dict[Any, list[Any]] = {}
        for deposit_id, tenant_id, block_number, known in open_deposits:
            confirmations = head - block_number + 1
            final = confirmations >= required or (finalized is not None and block_number <= finalized)
            if final or confirmations != known:
                by_tenant.setdefault(tenant_id, []).append(deposit_id)
        for tenant_id, ids in by_tenant.items():
            for start in range(0, len(ids), 200):
                finals += self._advance(self._tenant(tenant_id), sorted(ids[start:start + 200]), head, finalized)
        return finals

    def _advance(self, tenant: Tenant, deposit_ids: list[Any], head: int, finalized: int | None) -> int:
        """Confirm or finalize-and-credit these deposits of one tenant, exactly once: under their row locks,
        a deposit already final (or credited, or reorged) is skipped."""
        required = self.chain.confirmations
        finals = 0
        events: list[EventSpec] = []
        with transaction.atomic():
            rows = list(Deposit.all_tenants.select_for_update(of=("self",)).select_related("asset")
                        .filter(tenant_id=tenant.pk, pk__in=deposit_ids).order_by("pk"))
            rows = [d for d in rows if d.status in (Deposit.Status.SEEN, Deposit.Status.CONFIRMING)
                    and not d.entry_id]
            final_rows = [d for d in rows if head - d.block_number + 1 >= required
                          or (finalized is not None and d.block_number <= finalized)]
            externals: dict[Any, Any] = {}
            suspense: dict[Any, Any] = {}
            targets = user_accounts_ensure(tenant=tenant, pairs=sorted({(d.user_id, d.asset_id) for d in final_rows
                                                                        if d.direction == Deposit.Direction.IN}))
            now = timezone.now()
            credits: list[tuple[Deposit, EntryDraft]] = []
            for deposit in rows:
                deposit.confirmations = max(head - deposit.block_number + 1, deposit.confirmations)
                if deposit not in final_rows:
                    deposit.status = Deposit.Status.CONFIRMING
                    deposit.save(update_fields=["status", "confirmations"])
                    events.append(EventSpec(stream=user_stream(deposit.user_id), type=event_type(deposit),
                                            data=deposit_payload(deposit, self.chain)))
                    continue
                deposit.status = Deposit.Status.FINAL
                deposit.final_at = now
                if deposit.direction == Deposit.Direction.OUT:  # activity only: the ledger is not touched
                    deposit.save(update_fields=["status", "confirmations", "final_at"])
                    events.append(EventSpec(stream=user_stream(deposit.user_id), type=event_type(deposit),
                                            data=deposit_payload(deposit, self.chain)))
                    continue
                rail = f"chain:{self.chain.chain_id}"
                if deposit.asset_id not in externals:
                    externals[deposit.asset_id] = system_account(tenant=tenant, asset=deposit.asset,
                                                                 kind=Account.Kind.EXTERNAL, rail=rail).pk
                legs = [Leg(externals[deposit.asset_id], -deposit.amount)]
                # A deposit that came back after a reorg whose reversal left a shortfall repays the suspense
                # account first (the user already had, and spent, that part).
                repay = min(int(deposit.shortfall), int(deposit.amount))
                if repay:
                    if deposit.asset_id not in suspense:
                        suspense[deposit.asset_id] = system_account(tenant=tenant, asset=deposit.asset,
                                                                    kind=Account.Kind.SUSPENSE, rail=rail).pk
                    legs.append(Leg(suspense[deposit.asset_id], repay))
                if deposit.amount - repay:
                    legs.append(Leg(targets[(deposit.user_id, deposit.asset_id)], deposit.amount - repay))
                credits.append((deposit, EntryDraft(
                    kind=JournalEntry.Kind.DEPOSIT, legs=legs,
                    memo=f"Deposit {deposit.tx_hash[:18]} on chain {self.chain.chain_id}"[:200],
                    reference=f"deposit:{deposit.pk}")))
            # All credits of the tenant in one ledger batch: its accounts locked together in primary-key order,
            # then the deposit events with the balance events, after the ledger's locks (one outbox write).
            # One account at a time, with the ledger head held in between, could deadlock with transfers.
            batch = LedgerBatch(tenant)
            batch.lock([leg.account_id for _, draft in credits for leg in draft.legs])
            for deposit, draft in credits:
                batch.apply(draft)  # credits only: the external and suspense accounts may go negative
                deposit.entry_id = draft.id
                deposit.shortfall = 0
                deposit.save(update_fields=["status", "confirmations", "entry", "final_at", "shortfall"])
                events.append(EventSpec(stream=user_stream(deposit.user_id), type=event_type(deposit),
                                        data=deposit_payload(deposit, self.chain)))
                finals += 1
            batch.events.extend(events)
            batch.flush()
        return finals


def watcher_run_until_idle(chain: Chain, *, max_ticks: int = 1000, watcher: ChainWatcher | None = None) -> TickResult:
    """Tick until the cursor is at the head (tests, benchmarks and catch-up)."""
    watcher = watcher or ChainWatcher(chain)
    result = TickResult()
    for _ in range(max_ticks):
        try:
            result = watcher.tick()
        except RpcError:
            raise
        if not result.behind:
            return result
    return result
