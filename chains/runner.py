"""The watcher's asyncio runtime: one loop per chain. Each loop ticks its `ChainWatcher` in a worker thread
(the ORM is synchronous), ticks again at once while it is behind the head, and otherwise sleeps for the
chain's poll interval or until a new head arrives over the websocket subscription (when the chain has a
websocket URL; polling stays on underneath, and catch-up from the cursor covers whatever a dropped
subscription missed). RPC failures back off and retry forever: catch-up has no time limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from django.db import close_old_connections

from chains.models import Chain
from chains.rpc import RpcError
from chains.watcher import ChainWatcher, TickResult

logger = logging.getLogger("chains.runner")


def _tick(watcher: ChainWatcher) -> TickResult:
    close_old_connections()
    try:
        return watcher.tick()
    finally:
        close_old_connections()


async def subscribe_heads(url: str, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Set `wake` on every new head from `eth_subscribe("newHeads")`; reconnect with backoff."""
    import websockets

    delay = 0.5
    while not stop.is_set():
        try:
            async with websockets.connect(url, open_timeout=5, max_size=2**22) as socket:
                await socket.send(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                                "params": ["newHeads"]}).decode())
                delay = 0.5
                async for _message in socket:
                    wake.set()
                    if stop.is_set():
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("head subscription lost; polling meanwhile", extra={"url": url, "error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 30)


async def watch_chain(chain: Chain, stop: asyncio.Event,
                      on_tick: Callable[[TickResult], None] | None = None) -> None:
    """Watch one chain until `stop` is set."""
    watcher = ChainWatcher(chain)
    wake = asyncio.Event()
    subscription = asyncio.create_task(subscribe_heads(chain.ws_url, wake, stop)) if chain.ws_url else None
    failures = 0
    try:
        while not stop.is_set():
            wake.clear()
            try:
                result = await asyncio.to_thread(_tick, watcher)
                failures = 0
            except RpcError as exc:
                failures += 1
                logger.warning("watcher tick failed; retrying", extra={"chain_id": chain.chain_id, "error": str(exc),
                                                                        "failures": failures})
                result = None
            except Exception:
                failures += 1
                logger.exception("watcher tick crashed; retrying", extra={"chain_id": chain.chain_id})
                result = None
            if on_tick is not None and result is not None:
                on_tick(result)
            if result is not None and result.behind:
                continue
            pause = watcher.chain.poll_interval_ms / 1000 * (2 ** min(failures, 5))
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            await asyncio.wait(waiters, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
    finally:
        if subscription is not None:
            subscription.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await subscription


async def watch_chains(chain_ids: Sequence[int] | None, stop: asyncio.Event) -> None:
    """One loop per enabled chain (or the chains named), until `stop` is set."""
    def load() -> list[Chain]:
        close_old_connections()
        queryset = Chain.objects.filter(enabled=True).select_related("native_asset")
        if chain_ids:
            queryset = queryset.filter(chain_id__in=list(chain_ids))
        return list(queryset)

    chains = await asyncio.to_thread(load)
    if not chains:
        logger.warning("no chain to watch", extra={"chain_ids": list(chain_ids or [])})
        return
    await asyncio.gather(*(watch_chain(chain, stop) for chain in chains))


class WatcherThread:
    """The watcher in a background thread of another process (`manage.py serve`, the embedded default)."""

    def __init__(self, chain_ids: Sequence[int] | None = None) -> None:
        self.chain_ids = chain_ids
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="chain-watcher", daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            self.ready.set()
            await watch_chains(self.chain_ids, self.stop_event)

        try:
            asyncio.run(main())
        except Exception:
            logger.exception("the chain watcher thread ended")

    def start(self) -> WatcherThread:
        self.thread.start()
        self.ready.wait(5)
        return self

    def stop(self, timeout: float = 10) -> None:
        if self.loop is not None and self.stop_event is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)


def run_forever(chain_ids: Sequence[int] | None) -> Any:
    """`manage.py watch_chains`: run until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await watch_chains(chain_ids, stop)

    asyncio.run(main())
