"""The websocket clients of bench/stream.py: one process holds thousands of real `websockets` connections.

A client process is started by the benchmark with multiprocessing ("spawn": it imports no Django) and
obeys commands sent over its end of a Pipe (read by a thread, run on the event loop, answered in order of
completion; the benchmark sends one command at a time):

- `("connect", url, app_key, [(index, token), ...], concurrency, compression)`: open the sockets with the
  `X-App-Key` and `Authorization: Bearer` headers, wait for `ready`, subscribe to balances, transactions and
  branding, wait for `subscribed` and the balances `snapshot`; answers `(opened, errors, seconds)`.
- `("stats",)`: counters (open sockets, events, deliveries per burst, missing and duplicate seqs, closes).
- `("latency",)`: the (transfer id, receive time) of every `transfer.completed` received since the last call.
- `("pings",)`: the receive times of the server's heartbeat `ping`s since the last call.
- `("positions",)`: per socket, its user index and the last seq it got of each stream (to compare with the
  stream heads in the database: events lost at the end show up only there).
- `("close",)`: close every socket (normal close, 1000) and answer how many were open.
- `("stop",)`: leave.

Each socket checks that the seqs of each stream follow each other from the position the server
announced in `subscribed` (with balances, transactions and branding subscribed, every user and tenant
event is for the socket, so seqs must be contiguous): a jump counts the missing seqs, an old seq a
duplicate. Receive times are `time.time()` (the same clock as the commit times of the benchmark).

Per-connection client memory is kept small: no compression by default (the server then keeps no deflate
context either; the benchmark can turn it on), a small receive queue and no client-side keepalive pings
(the server's protocol pings are answered by the library). Because the stream closes a socket that sends
nothing for STREAM_IDLE_TIMEOUT_SECONDS (60) even while it receives events (the server only pings an
idle socket), each socket also sends `{"type": "pong"}` when it has sent nothing for KEEPALIVE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

KEEPALIVE_SECONDS = 30.0
SUBSCRIBE = orjson.dumps({"type": "subscribe", "topics": ["balances", "transactions", "branding"]}).decode()
PONG = '{"type":"pong"}'


class Socket:
    __slots__ = ("closed_code", "index", "last_sent", "positions", "task", "ws")

    def __init__(self, index: int, ws: ClientConnection) -> None:
        self.index = index
        self.ws = ws
        self.positions: dict[str, int] = {}
        self.last_sent = time.monotonic()
        self.closed_code: int | None = None
        self.task: asyncio.Task | None = None


class Client:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sockets: list[Socket] = []
        self.events = 0
        self.missing = 0
        self.duplicates = 0
        self.unexpected_closes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.bursts: dict[int, list[float]] = {}  # burst -> [count, first receive, last receive]
        self.latency: list[tuple[str, float]] = []
        self.pings: list[float] = []  # receive times of the server's heartbeat pings
        self.closing = False
        self.stopped = asyncio.Event()

    # --- commands ---------------------------------------------------------------------------------------
    def read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread: blocking reads of the pipe, each command handed to the event loop."""
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(self.stopped.set)
                return
            loop.call_soon_threadsafe(lambda c=command: asyncio.ensure_future(self.run_command(c)))
            if command[0] == "stop":
                return

    async def run_command(self, command: tuple) -> None:
        name = command[0]
        try:
            if name == "connect":
                answer: Any = await self.connect_all(*command[1:])
            elif name == "stats":
                answer = self.stats()
            elif name == "latency":
                answer, self.latency = self.latency, []
            elif name == "pings":
                answer, self.pings = self.pings, []
            elif name == "positions":
                answer = [(s.index, s.positions, s.closed_code) for s in self.sockets]
            elif name == "close":
                answer = await self.close_all()
            elif name == "stop":
                self.conn.send(("ok", None))
                self.stopped.set()
                return
            else:
                raise ValueError(f"unknown command {name!r}")
            self.conn.send(("ok", answer))
        except Exception as exc:  # reported to the benchmark, which fails the run
            self.conn.send(("error", f"{type(exc).__name__}: {exc}"))

    def stats(self) -> dict[str, Any]:
        return {
            "open": sum(1 for s in self.sockets if s.closed_code is None),
            "events": self.events,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "unexpected_closes": dict(self.unexpected_closes),
            "errors": dict(self.errors),
            "bursts": {b: list(v) for b, v in self.bursts.items()},
        }

    # --- sockets ----------------------------------------------------------------------------------------
    async def connect_all(self, url: str, app_key: str, users: list[tuple[int, str]], concurrency: int,
                          compression: str | None) -> tuple[int, dict[str, int], float]:
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}

        async def one(index: int, token: str) -> None:
            async with gate:
                try:
                    socket = await self.open_one(url, app_key, index, token, compression)
                except Exception as exc:
                    key = f"{type(exc).__name__}: {str(exc)[:120]}"
                    errors[key] = errors.get(key, 0) + 1
                    return
            self.sockets.append(socket)

        await asyncio.gather(*(one(index, token) for index, token in users))
        opened = len(users) - sum(errors.values())
        return opened, errors, time.monotonic() - started

    async def open_one(self, url: str, app_key: str, index: int, token: str, compression: str | None) -> Socket:
        ws = await connect(url, additional_headers={"X-App-Key": app_key, "Authorization": f"Bearer {token}"},
                           compression=compression, user_agent_header=None, proxy=None, open_timeout=120,
                           ping_interval=None, close_timeout=5, max_queue=32, max_size=1 << 20)
        try:
            ready = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            if ready.get("type") != "ready":
                raise RuntimeError(f"expected ready, got {ready}")
            await ws.send(SUBSCRIBE)
            socket = Socket(index, ws)
            subscribed = None
            while True:  # subscribed, then the snapshot (a ping may come in between)
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                kind = message.get("type")
                if kind == "subscribed":
                    subscribed = message
                    socket.positions = dict(message["positions"])
                elif kind == "snapshot" and subscribed is not None:
                    break
                elif kind == "ping":
                    await ws.send(PONG)
                elif "." in kind and subscribed is not None:
                    self.on_event(socket, message, time.time())  # a live event before the snapshot: count it
                else:
                    raise RuntimeError(f"unexpected message while subscribing: {message}")
        except BaseException:
            await ws.close()
            raise
        socket.last_sent = time.monotonic()
        socket.task = asyncio.ensure_future(self.read(socket))
        return socket

    def on_event(self, socket: Socket, message: dict[str, Any], now: float) -> None:
        self.events += 1
        stream, seq = message["stream"], message["seq"]
        last = socket.positions.get(stream, 0)
        if seq == last + 1:
            socket.positions[stream] = seq
        elif seq > last + 1:
            self.missing += seq - last - 1
            socket.positions[stream] = seq
        else:
            self.duplicates += 1
        kind = message["type"]
        if kind == "transfer.completed":
            self.latency.append((message["data"]["id"], now))
        elif kind.startswith("branding."):
            burst = message["data"].get("burst")
            if burst is not None:
                entry = self.bursts.get(burst)
                if entry is None:
                    self.bursts[burst] = [1, now, now]
                else:
                    entry[0] += 1
                    entry[2] = now

    async def read(self, socket: Socket) -> None:
        ws = socket.ws
        loads = orjson.loads
        try:
            async for raw in ws:
                now = time.time()
                message = loads(raw)
                kind = message["type"]
                if "." in kind:
                    self.on_event(socket, message, now)
                elif kind == "ping":
                    self.pings.append(now)
                    socket.last_sent = time.monotonic()
                    await ws.send(PONG)
                elif kind == "error":
                    key = f"error {message.get('code')}"
                    self.errors[key] = self.errors.get(key, 0) + 1
        except ConnectionClosed:
            pass
        except Exception as exc:
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            self.errors[key] = self.errors.get(key, 0) + 1
        received = ws.close_code if ws.close_code is not None else 1006
        socket.closed_code = received
        if not self.closing:
            key = str(received)
            self.unexpected_closes[key] = self.unexpected_closes.get(key, 0) + 1

    async def keepalive(self) -> None:
        """Send a message on every socket that has sent nothing for KEEPALIVE_SECONDS (spread out)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for socket in self.sockets:
                if socket.closed_code is None and now - socket.last_sent > KEEPALIVE_SECONDS:
                    socket.last_sent = now + random.uniform(-5, 0)  # spread the next round
                    with contextlib.suppress(Exception):
                        await socket.ws.send(PONG)

    async def close_all(self) -> int:
        self.closing = True
        open_sockets = [s for s in self.sockets if s.closed_code is None]
        gate = asyncio.Semaphore(256)

        async def one(socket: Socket) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await socket.ws.close()

        await asyncio.gather(*(one(s) for s in open_sockets))
        tasks = [s.task for s in self.sockets if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        self.sockets = []
        self.closing = False
        return len(open_sockets)


async def _main(conn: Connection) -> None:
    client = Client(conn)
    loop = asyncio.get_running_loop()
    threading.Thread(target=client.read_commands, args=(loop,), daemon=True).start()
    keepalive = asyncio.ensure_future(client.keepalive())
    await client.stopped.wait()
    keepalive.cancel()
    with contextlib.suppress(Exception):
        await client.close_all()


def client_main(conn: Connection) -> None:
    """The entry point of a client process (multiprocessing, spawn)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # plain asyncio works too, with more client CPU per message
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_main(conn))
    conn.close()
    sys.stdout.flush()
    os._exit(0)


# --- the Redis tap -----------------------------------------------------------------------------------------


def tap_main(conn: Connection, redis_url: str, pattern: str) -> None:
    """A process that PSUBSCRIBEs to the pub/sub layer's group channels (`pattern`) and notes when each
    `transfer.completed` was published (first sighting per transfer id): commit -> publish is the relay's part
    of the latency, publish -> receipt the stream process's. Commands: `("take",)` answers and forgets the
    (transfer id, publish time) pairs; `("stop",)` leaves."""
    import msgpack
    import redis

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(pattern)
    seen: dict[str, float] = {}
    while True:
        message = pubsub.get_message(timeout=0.05)
        if message is not None and message.get("type") == "pmessage":
            now = time.time()
            try:
                event = msgpack.unpackb(message["data"], raw=False)["event"]
            except Exception:
                event = None
            if event and event.get("type") == "transfer.completed":
                seen.setdefault(event["data"]["id"], now)
        if conn.poll(0):
            command = conn.recv()
            if command[0] == "take":
                conn.send(("ok", list(seen.items())))
                seen = {}
            else:
                conn.send(("ok", None))
                break
    pubsub.close()
    client.close()
    conn.close()
