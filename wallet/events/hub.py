"""The stream hub: one channel-layer membership per process, fanned out locally to the sockets.

Every stream process (and the embedded server) runs one `StreamHub` on its event loop. It owns ONE channel
of the channel layer and adds it to each group (`u.<tenant>.<user>`, `t.<tenant>`) that has at least one
local socket, so the layer carries each event once per process, not once per socket. A single reader task
takes the relay's `stream.event` messages off that channel, encodes each event once, and offers it to the
sockets that follow its stream. A socket never makes the reader wait: each has a bounded queue and drains it
in a short-lived task of its own; one that falls behind its cap is closed as a slow consumer and resumes
from its last `seq` (the outbox replays what it missed).

Why not one channel per socket (Channels' default): measured here, the per-consumer channel and receive
loop cost memory and CPU per socket, and the core Redis layer dropped bursts at 1,000 sockets
(docs/BENCHMARKS.md). Heartbeats and idle checks run in one periodic task for all sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from channels.layers import InMemoryChannelLayer, get_channel_layer

from wallet.core.jsonutil import dumps

logger = logging.getLogger("wallet.events.hub")


class Subscriber(Protocol):
    """What the hub needs of a socket (implemented by `StreamConsumer`)."""

    def offer(self, stream: str, seq: int, event: dict[str, Any], encoded: str) -> None: ...

    def tick(self, now: float) -> None: ...


class StreamHub:
    def __init__(self, *, tick_seconds: float = 5.0) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.layer: Any = None
        self.channel: str | None = None
        self.by_stream: dict[str, set[Subscriber]] = {}
        self.group_members: dict[str, int] = {}
        self.subscribers: set[Subscriber] = set()
        self._reader: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self.tick_seconds = tick_seconds
        self.delivered = 0

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # a new loop (tests create one per test): start afresh on it
            self.__init__(tick_seconds=self.tick_seconds)  # type: ignore[misc]
            self.loop = loop
            self._lock = asyncio.Lock()
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

    async def attach(self, subscriber: Subscriber) -> None:
        """Count a socket in: it gets heartbeats, idle and token-expiry checks from now on."""
        await self._ensure_started()
        self.subscribers.add(subscriber)

    def detach(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def join(self, subscriber: Subscriber, *, streams: dict[str, str]) -> None:
        """Follow `streams` (stream name -> channel-layer group) for `subscriber`."""
        await self._ensure_started()
        self.subscribers.add(subscriber)
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
        members = self.by_stream.get(event["stream"])
        if not members:
            return 0
        encoded = encode_event(event, recovered=False)
        for subscriber in list(members):
            subscriber.offer(event["stream"], event["seq"], event, encoded)
        self.delivered += len(members)
        return len(members)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            now = time.monotonic()
            for subscriber in list(self.subscribers):
                try:
                    subscriber.tick(now)
                except Exception:
                    logger.exception("stream hub: tick failed for a socket")


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

__all__: list[str] = ["StreamHub", "Subscriber", "encode_event", "hub", "public_stream"]
