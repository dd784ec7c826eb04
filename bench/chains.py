"""bench-chains: the watcher's backfill against a raw `eth_getLogs` scan of the same range, its cost with 1,
1,000 and 100,000 watched addresses, and the detection latency of a new deposit.

1. A fresh anvil gets >= 10,000 blocks: every BLOCK_STEP-th block carries a `mintMany` to RECIPIENTS random
   addresses (RECIPIENTS Transfer logs) and a native transfer; one "hot" address, watched in every run,
   receives a transfer in every HOT_EVERY-th of those blocks; the other watched addresses receive nothing.
2. Reference: a raw `eth_getLogs` scan of the whole range (Transfer topic, the token; chunks of CHUNK
   blocks, JSON decoded), best of REPEAT.
3. The watcher's backfill of the same range (`watcher_run_until_idle`, chunks of CHUNK blocks, native
   transfers to and from watched addresses from `trace_filter` (the chain's default `native_source=auto`;
   anvil has it), token logs to and from them, deposits written and credited, cursor committed per chunk, the
   next chunks fetched while one commits) with 1, 1,000 and 100,000 watched addresses, best of REPEAT runs
   each (like the reference): a fresh tenant, cursor, watcher and RPC client per run (so every run writes
   and credits the same deposits, and learns the node's trace_filter range limit anew). The watched set is
   loaded from the database once per run before the timed part (its load time is printed on its own line).
   For comparison (not in the summary): the same backfill with native transfers from block bodies
   (`native_source=bodies`), and with no native transfers at all (logs only).
4. Detection latency: the watcher runs in its asyncio loop (poll interval POLL_MS, plus the websocket
   `newHeads` subscription); DETECT_SAMPLES deposits are sent one by one (anvil automines); the latency is
   from the moment the node has mined the block (the send returns) to the deposit row and its
   `deposit.seen` outbox event being committed (the websocket delivery of that event is measured by
   bench-stream; it is not in this figure).

Last line: chains: backfill_blocks_per_s=<n> raw_blocks_per_s=<n> ratio=<backfill/raw> scale_100k=<t100k/t1>
detect_p99_ms=<n>
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet.settings.development")

from bench.harness import say, stop_on_sigterm

BLOCKS = int(os.environ.get("BENCH_CHAINS_BLOCKS", "10000"))
BLOCK_STEP = 10
RECIPIENTS = 20
HOT_EVERY = 50
CHUNK = 2000
REPEAT = 3
POLL_MS = 1000
DETECT_SAMPLES = int(os.environ.get("BENCH_CHAINS_DETECT", "60"))
SIZES = (1, 1_000, 100_000)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Node:
    def __init__(self) -> None:
        from tests.fixtures.chains.helpers import Anvil

        self.anvil = Anvil("--gas-limit", "300000000")
        self.url = self.anvil.url
        self.http = httpx.Client(timeout=120, trust_env=False)

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        replies = orjson.loads(self.http.post(self.url, content=orjson.dumps(payload),
                                              headers={"Content-Type": "application/json"}).content)
        out = [None] * len(calls)
        for reply in replies:
            if "error" in reply:
                raise RuntimeError(reply["error"])
            out[reply["id"]] = reply["result"]
        return out


def build_chain(node: Node, token: str, hot: str) -> tuple[int, int, int]:
    """Mine >= BLOCKS blocks with transfers spread; returns (first block, last block, transfers to `hot`)."""
    from tests.fixtures.chains.helpers import call_data

    funder = node.anvil.accounts()[0]
    rng = random.Random(7)
    start = node.anvil.block_number() + 1
    hot_count = 0
    nonce = int(node.batch([("eth_getTransactionCount", [funder, "latest"])])[0], 16)
    node.batch([("evm_setAutomine", [False])])
    for i in range(BLOCKS // BLOCK_STEP):
        recipients = ["0x" + rng.randbytes(20).hex() for _ in range(RECIPIENTS)]
        to_native = "0x" + rng.randbytes(20).hex()
        if i % HOT_EVERY == 0:
            recipients[0] = hot
            to_native = hot
            hot_count += 2
        # Both into the pool (explicit nonces: a batch is served concurrently), then BLOCK_STEP blocks, the
        # first of which takes them.
        node.batch([
            ("eth_sendTransaction", [{"from": funder, "to": token, "gas": hex(2_000_000), "nonce": hex(nonce),
                                      "data": call_data("TestToken", "mintMany", recipients, 10**6)}]),
            ("eth_sendTransaction", [{"from": funder, "to": to_native, "value": hex(10**15), "gas": hex(21_000),
                                      "nonce": hex(nonce + 1)}]),
        ])
        nonce += 2
        node.batch([("anvil_mine", [hex(BLOCK_STEP)])])
    node.batch([("evm_setAutomine", [True])])
    return start, node.anvil.block_number(), hot_count


def raw_scan(node: Node, token: str, start: int, end: int) -> tuple[float, int]:
    """The reference: eth_getLogs over [start, end] in CHUNK-block queries, decoded. Returns (seconds, logs)."""
    from chains.watcher import TRANSFER_TOPIC

    client = httpx.Client(timeout=120, trust_env=False)
    began = time.perf_counter()
    count = 0
    for chunk_start in range(start, end + 1, CHUNK):
        query = {"fromBlock": hex(chunk_start), "toBlock": hex(min(end, chunk_start + CHUNK - 1)),
                 "address": [token], "topics": [TRANSFER_TOPIC]}
        reply = orjson.loads(client.post(node.url, content=orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]}),
            headers={"Content-Type": "application/json"}).content)
        count += len(reply["result"])
    elapsed = time.perf_counter() - began
    client.close()
    return elapsed, count


def watcher_backfill(chain: Any, tenant_label: str, watched: int, hot: str, start: int) -> tuple[float, int]:
    """A fresh tenant watching `watched` addresses (the hot one included); time the backfill from `start`."""
    from django.db import connection

    from chains.clients import clients_reset
    from chains.models import ChainCursor, Deposit, LinkedWallet, TenantChain
    from chains.services import tenant_chain_enable
    from chains.watcher import ChainWatcher, watcher_run_until_idle
    from tests.factories import TenantFactory, UserFactory

    tenant = TenantFactory(slug=f"bench-{tenant_label}", name=f"Bench {tenant_label}")
    user = UserFactory(tenant=tenant, email=f"hot@{tenant_label}.example")
    TenantChain.all_tenants.filter(chain=chain).update(enabled=False)
    tenant_chain_enable(tenant=tenant, chain=chain)
    rng = random.Random(watched)
    rows = [LinkedWallet(tenant=tenant, user=user, address=hot, chain_id=chain.chain_id)]
    # Cold addresses: rows inserted directly (a SIWE sign-in each would only slow the setup down).
    cold_user = UserFactory(tenant=tenant, email=f"cold@{tenant_label}.example")
    rows += [LinkedWallet(tenant=tenant, user=cold_user, address="0x" + rng.randbytes(20).hex(),
                          chain_id=chain.chain_id) for _ in range(watched - 1)]
    LinkedWallet.all_tenants.bulk_create(rows, batch_size=5000)
    ChainCursor.objects.filter(chain=chain).delete()
    chain.start_block = start
    chain.save()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    clients_reset()  # a new RPC client: nothing it learned in a previous run (trace_filter's span) carries over
    watcher = ChainWatcher(chain, max_blocks_per_tick=10**9)
    loading = time.perf_counter()
    watcher.refresh_watch()  # once per process (and when the set changes): reported, not in the backfill time
    load_seconds = time.perf_counter() - loading
    began = time.perf_counter()
    watcher_run_until_idle(chain, watcher=watcher)
    elapsed = time.perf_counter() - began
    found = Deposit.all_tenants.filter(tenant=tenant, status=Deposit.Status.FINAL, entry__isnull=False).count()
    say(f"  (loading the {watched} watched addresses took {load_seconds:.2f}s, before the timed backfill; "
        f"native transfers from {watcher.native_mode or 'nowhere'})")
    return elapsed, found


def detect_latency(node: Node, chain: Any, hot: str) -> list[float]:
    """Latency (ms) from a mined deposit to its committed row + outbox event, the watcher in its loop."""
    from django.db import close_old_connections

    from chains.models import Deposit
    from chains.runner import WatcherThread

    chain.ws_url = node.url.replace("http://", "ws://")
    chain.poll_interval_ms = POLL_MS
    chain.save()
    thread = WatcherThread([chain.chain_id]).start()
    funder = node.anvil.accounts()[0]
    samples = []
    try:
        time.sleep(2)  # the loop has caught up to the head and subscribed
        for _ in range(DETECT_SAMPLES):
            tx_hash = node.anvil.send(funder, hot, 10**12, wait=False)
            node.anvil.receipt(tx_hash, wait=10)  # mined
            mined = time.perf_counter()
            while not Deposit.all_tenants.filter(tx_hash=tx_hash).exists():
                if time.perf_counter() - mined > 30:
                    raise RuntimeError("a deposit was not detected within 30 s")
                time.sleep(0.002)
            samples.append((time.perf_counter() - mined) * 1000)
            close_old_connections()
            time.sleep(random.uniform(0.05, 0.4))  # not in phase with the poll interval
    finally:
        thread.stop()
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    stop_on_sigterm()
    import logging

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("chains").setLevel(logging.ERROR)
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    say(f"bench-chains: load average at start {loadavg()} ({os.cpu_count()} cores); database "
        f"{django.db.connection.vendor}")
    from chains.services import chain_register, token_register
    from wallet.ledger.services import assets_catalogue_ensure

    assets_catalogue_ensure()
    node = Node()
    try:
        token = node.anvil.deploy("TestToken", "Bench Dollar", "BUSD", 6)
        hot = "0x" + random.Random(1).randbytes(20).hex()
        began = time.perf_counter()
        start, end, hot_count = build_chain(node, token, hot)
        blocks = end - start + 1
        say(f"built {blocks} blocks in {time.perf_counter() - began:.1f}s: {blocks // BLOCK_STEP} token "
            f"transactions x {RECIPIENTS} Transfer logs + {blocks // BLOCK_STEP} native transfers; "
            f"{hot_count} transfers to the hot address")

        raw_runs = [raw_scan(node, token, start, end) for _ in range(REPEAT)]
        raw_seconds = min(t for t, _ in raw_runs)
        say(f"raw eth_getLogs scan: {raw_runs[0][1]} logs, runs {', '.join(f'{t:.2f}s' for t, _ in raw_runs)}; "
            f"best {blocks / raw_seconds:.0f} blocks/s")

        chain = chain_register(chain_id=31337, name="bench anvil", rpc_urls=[node.url], confirmations=12,
                               log_chunk_blocks=CHUNK, reorg_window=64)
        token_register(chain=chain, contract=token, symbol="BUSD", decimals=6)
        timings: dict[int, float] = {}
        for size in SIZES:
            runs = []
            for run in range(REPEAT):  # best of REPEAT, like the reference; each run from scratch
                seconds, found = watcher_backfill(chain, f"w{size}-{run}", size, hot, start)
                runs.append(seconds)
                if found != hot_count:
                    say(f"bench-chains: FAILED: expected {hot_count} deposits, got {found}")
                    return 1
            timings[size] = min(runs)
            say(f"watcher backfill, {size} watched: runs {', '.join(f'{t:.2f}s' for t in runs)}; best "
                f"{timings[size]:.2f}s ({blocks / timings[size]:.0f} blocks/s), {found} deposits credited each")
        # Native transfers from block bodies instead of trace_filter (what a node without traces costs).
        chain.native_source = "bodies"
        chain.save()
        bodies, found = watcher_backfill(chain, "bodies", 1, hot, start)
        say(f"watcher backfill with native transfers from block bodies, 1 watched: {bodies:.2f}s "
            f"({blocks / bodies:.0f} blocks/s), {found} deposits credited")
        chain.native_source = "auto"
        chain.save()
        # Logs only (no native transfers): what the native-transfer scan costs.
        chain.scan_native = False
        chain.save()
        logs_only, _ = watcher_backfill(chain, "logs-only", 1, hot, start)
        say(f"watcher backfill without native transfers (logs only), 1 watched: {logs_only:.2f}s "
            f"({blocks / logs_only:.0f} blocks/s)")
        chain.scan_native = True
        chain.save()

        samples = detect_latency(node, chain, hot)
        p50, p99 = statistics.median(samples), percentile(samples, 99)
        say(f"detection (mined -> deposit row + outbox event committed), {len(samples)} deposits, poll "
            f"{POLL_MS} ms + newHeads subscription: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(samples):.0f} ms")
    finally:
        node.anvil.stop()
    backfill = blocks / timings[1]
    raw = blocks / raw_seconds
    say(f"bench-chains: load average at the end {loadavg()}")
    say(f"chains: backfill_blocks_per_s={backfill:.0f} raw_blocks_per_s={raw:.0f} ratio={backfill / raw:.2f} "
        f"scale_100k={timings[100_000] / timings[1]:.2f} detect_p99_ms={p99:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
