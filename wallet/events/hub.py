"""The stream hub: one channel-layer membership per process, fanned out locally to the sockets.

Every stream process (and the embedded server) runs one `StreamHub` on its event loop. It owns ONE channel
of the channel layer and adds it to each group (`u.<tenant>.<user>`, `t.<tenant>`) that has at least one
local socket, so the layer carries each event once per process, not once per socket. A single reader task
takes the relay's `stream.event` messages off that channel, encodes each event once, and offers it to the
sockets that follow its stream. A socket never makes the reader wait: it writes to its transport at once
while the client keeps up, and only when the transport pushes back does it queue (bounded) and drain in a
task of its own; one that falls behind its cap is closed as a slow consumer and resumes from its last `seq`
(the outbox replays what it missed).

Why not one channel per socket (Channels' default): measured here, the per-consumer channel and receive
loop cost memory and CPU per socket, and the core Redis layer dropped bursts at 1,000 sockets
(docs/BENCHMARKS.md).

Timers: heartbeats, idle and token-expiry checks run in one periodic task (`STREAM_TICK_SECONDS`, 1 s) that
visits only the sockets that are due: each socket sits in the bucket of the tick at which it next needs a
look (a timing wheel), and says when to look again. A tick therefore costs what is due (about
sockets / `STREAM_HEARTBEAT_SECONDS` per second), not a scan of every socket.

Garbage collection (`GcPolicy`): a full collection walks every object the collector tracks and stops the
event loop while it runs (1.1-1.4 s at 10k sockets with Channels' consumers). The stream process therefore
moves what has settled (Django, the imports, sockets that are connected) out of the collector's sight with
`gc.freeze()`, and raises the young thresholds; see `GcPolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer

from wallet.core.jsonutil import dumps
from wallet.events.conf import stream_settings

logger = logging.getLogger("wallet.events.hub")


class Subscriber(Protocol):
    """What the hub needs of a socket (implemented by `wallet.events.consumers.StreamConsumer`)."""

    closing: bool
    due_slot: int  # the wheel slot the hub last put it in (entries in other slots are stale)

    def offer(self, stream: str, seq: int, event: dict[str, Any], encoded: str) -> None: ...

    def tick(self, now: float) -> float | None:
        """Run the checks that are due; return when (`time.monotonic()`) to be looked at again, or None."""
        ...


class GcPolicy:
    """How the stream process keeps garbage collection from stopping the loop (once per process).

    A full collection walks every object the collector tracks: about 80 per socket (uvicorn's protocol,
    transport, queue and coroutines, and ours), so 0.5-1.4 s at 10k sockets on a quiet machine and 4 s at
    load 8, during which no event is delivered. So:

    - At start: `gc.collect()` then `gc.freeze()`: Django, the imports and the app's start-up state live for
      the process's life; frozen, no collection walks them again.
    - `gc.set_threshold(*STREAM_GC_THRESHOLD)` (50000, 20, 100): young collections every 50,000 net
      allocations instead of 700, so short-lived objects (a delivery's, a message's) die before they are
      promoted; in steady traffic (deliveries, pings) net allocations stay near zero and no collection runs.
    - Every `STREAM_GC_FREEZE_SECONDS` (5) while sockets connect: `gc.collect()`, which walks only what is
      not frozen yet (what the last seconds of connects created: a short pause, ~80 objects per new socket),
      then `gc.freeze()`, so that connected sockets, long-lived, leave the collector's sight; garbage is
      collected first, so a freeze keeps none. A closed socket is freed by reference counting, frozen or not:
      the consumer keeps no reference cycle (tests/test_stream_protocol.py), and with uvicorn a full
      collection after closing 10,000 sockets freed no object (bench-stream, "after closing every socket").
    - `STREAM_GC_THAW_CLOSED` (0: never): after that many closed sockets, `gc.unfreeze()`, a full collection
      and `gc.freeze()`, for deployments whose long-lived objects do die in cycles. It walks everything the
      process holds (4.2 s with 10k sockets at load 8, measured), so it is off by default.
    """

    def __init__(self) -> None:
        self.active = False
        self.last_freeze = 0.0
        self.connected = 0  # sockets attached since the last freeze
        self.closed = 0  # sockets closed since the last full collection

    def start(self) -> None:
        conf = stream_settings()
        if self.active or not conf.gc_tune:
            return
        self.active = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(*conf.gc_threshold)
        self.last_freeze = time.monotonic()
        logger.info("stream hub: gc frozen at start (%d objects), thresholds %s", gc.get_freeze_count(),
                    conf.gc_threshold)

    def tick(self, now: float) -> None:
        if not self.active:
            return
        conf = stream_settings()
        if conf.gc_thaw_closed and self.closed >= conf.gc_thaw_closed:
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.closed = self.connected = 0
            self.last_freeze = now
            logger.info("stream hub: full collection after %d closed sockets took %.0f ms", conf.gc_thaw_closed,
                        1000 * (time.perf_counter() - started))
        elif self.connected and now - self.last_freeze >= conf.gc_freeze_seconds:
            gc.collect()  # only what is not frozen: the sockets (and garbage) since the last freeze
            gc.freeze()
            self.connected = 0
            self.last_freeze = now


gc_policy = GcPolicy()


class StreamHub:
    def __init__(self, *, tick_seconds: float | None = None) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.layer: Any = None
        self.channel: str | None = None
        self.by_stream: dict[str, set[Subscriber]] = {}
        self.group_members: dict[str, int] = {}
        self.sockets = 0
        # The timing wheel: tick number -> the sockets to look at in that tick.
        self.wheel: dict[int, list[Subscriber]] = {}
        self.granularity = 1.0
        self.current_slot = 0
        self._reader: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        # None: STREAM_TICK_SECONDS (tests set a shorter one before their sockets connect).
        self.tick_seconds = tick_seconds
        self.delivered = 0

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a new loop (tests create one per test): start afresh on it
            self.__init__(tick_seconds=self.tick_seconds)  # type: ignore[misc]
            self.loop = loop
            self._lock = asyncio.Lock()
            self.granularity = self.tick_seconds or stream_settings().tick_seconds
            self.current_slot = int(time.monotonic() / self.granularity)
        if self.channel is None:
            async with self._lock:  # type: ignore[union-attr]
                if self.channel is None:
                    self.layer = get_channel_layer()
                    if isinstance(self.layer, InMemoryChannelLayer):
                        # The in-process relay must publish to an in-memory layer from this loop.
                        from wallet.events.relay import register_delivery_loop

                        register_delivery_loop(loop)
                    self.channel = await self.layer.new_channel("hub.")
                    self._reader = asyncio.ensure_future(self._read())
                    self._ticker = asyncio.ensure_future(self._tick())
                    gc_policy.start()

    async def attach(self, subscriber: Subscriber, *, due: float) -> None:
        """Count a socket in: it gets heartbeats, idle and token-expiry checks from `due` on."""
        await self._ensure_started()
        self.sockets += 1
        gc_policy.connected += 1
        self.schedule(subscriber, due)

    def detach(self, subscriber: Subscriber) -> None:
        """A socket closed (it leaves the timing wheel at its next due tick: `closing` is set)."""
        self.sockets -= 1
        gc_policy.closed += 1

    def schedule(self, subscriber: Subscriber, due: float) -> None:
        """Look at `subscriber` in the first tick after `due` (an earlier entry of it becomes stale)."""
        slot = max(int(due / self.granularity) + 1, self.current_slot + 1)
        subscriber.due_slot = slot
        bucket = self.wheel.get(slot)
        if bucket is None:
            self.wheel[slot] = [subscriber]
        else:
            bucket.append(subscriber)

    async def join(self, subscriber: Subscriber, *, streams: dict[str, str]) -> None:
        """Follow `streams` (stream name -> channel-layer group) for `subscriber`."""
        await self._ensure_started()
        for stream, group in streams.items():
            self.by_stream.setdefault(stream, set()).add(subscriber)
            count = self.group_members.get(group, 0)
            self.group_members[group] = count + 1
            if count == 0:
                await self.layer.group_add(group, self.channel)

    async def leave(self, subscriber: Subscriber, *, streams: dict[str, str]) -> None:
        for stream, group in streams.items():
            members = self.by_stream.get(stream)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.by_stream[stream]
            count = self.group_members.get(group, 0) - 1
            if count <= 0:
                self.group_members.pop(group, None)
                if self.channel is not None and self.loop is asyncio.get_running_loop():
                    with contextlib.suppress(Exception):
                        await self.layer.group_discard(group, self.channel)
            else:
                self.group_members[group] = count

    async def _read(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stream hub: channel layer receive failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if message.get("type") != "stream.event":
                continue
            self.dispatch(message["event"])

    def dispatch(self, event: dict[str, Any]) -> int:
        """Offer one relay event to every local socket following its stream; returns how many."""
        stream = event["stream"]
        members = self.by_stream.get(stream)
        if not members:
            return 0
        encoded = encode_event(event, recovered=False)
        seq = event["seq"]
        for subscriber in tuple(members):
            subscriber.offer(stream, seq, event, encoded)
        self.delivered += len(members)
        return len(members)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.granularity)
            now = time.monotonic()
            self.run_due(now)
            gc_policy.tick(now)

    def run_due(self, now: float) -> None:
        """Look at the sockets whose tick has come (each says when it wants the next look)."""
        current = int(now / self.granularity)
        due = sorted(slot for slot in self.wheel if slot <= current)
        self.current_slot = current
        for slot in due:
            for subscriber in self.wheel.pop(slot):
                if subscriber.closing or subscriber.due_slot != slot:
                    continue
                try:
                    again = subscriber.tick(now)
                except Exception:
                    logger.exception("stream hub: tick failed for a socket")
                    continue
                if again is not None:
                    self.schedule(subscriber, again)


def public_stream(stream: str) -> str:
    """`user:<hex>` -> `user`, `tenant:<hex>` -> `tenant`: what the client keeps a position for."""
    return stream.split(":", 1)[0]


def encode_event(event: dict[str, Any], *, recovered: bool) -> str:
    body = {"id": event["id"], "stream": public_stream(event["stream"]), "seq": event["seq"],
            "type": event["type"], "ts": event["ts"], "data": event["data"]}
    if recovered:
        body["recovered"] = True
    return dumps(body).decode()


hub = StreamHub()

__all__: list[str] = ["GcPolicy", "StreamHub", "Subscriber", "encode_event", "gc_policy", "hub", "public_stream"]
