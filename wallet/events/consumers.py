"""`/ws/v1/stream`: the authenticated, resumable event stream (protocol: docs/STREAM.md).

A socket authenticates (Authorization header, or `{"type": "auth", "token"}` within 5 seconds), then
subscribes to topics with the last `seq` it saw per stream. The server replays what it missed from the
outbox (`recovered: true`) or, on a fresh subscribe, sends a snapshot; then live events follow, in order,
without gaps or duplicates. The consumer keeps no channel of its own: `wallet.events.hub` fans events out.

A plain ASGI handler (`stream_app`), not a Channels consumer: one process holds 10,000 sockets, and
Channels' stack (middleware and router scope copies, `await_many_dispatch` with a task per receive, a
dispatch per message) kept about 60 more objects and several KB per socket alive, which made full garbage
collections long and memory per socket high (docs/BENCHMARKS.md). It speaks the same ASGI messages, so
Channels' `WebsocketCommunicator` tests it as before; the hub still uses the Channels layer.

Per socket, `StreamConsumer` has fixed slots, creates its queue and pending list only when needed, keeps
the user's id (not the user object), shares its topic prefixes with every socket of the same topics, and
holds no reference cycle (it is freed by reference counting when it closes, frozen by the collector or not).
A delivery is written to the transport at once; only when the transport pushes back does the socket queue
messages (bounded: the slow-consumer cap) and drain them in a task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Generator
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async

from tenants.auth.sessions import user_for_access_token
from tenants.channels import socket_auth
from wallet.core.context import tenant_var, user_id_var
from wallet.core.errors import ApiError
from wallet.core.jsonutil import dumps
from wallet.events.conf import stream_settings
from wallet.events.hub import encode_event, hub, public_stream
from wallet.events.streams import tenant_group, tenant_stream, user_group, user_stream

AUTH_TIMEOUT_SECONDS = 5.0
STREAM_PATH = "/ws/v1/stream"

# Close codes (docs/STREAM.md).
CLOSE_IDLE = 4000
CLOSE_SLOW_CONSUMER = 4008
CLOSE_BAD_MESSAGE = 4400
CLOSE_AUTH_FAILED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_RESYNC_REQUIRED = 4410
CLOSE_MESSAGE_TOO_BIG = 4413
CLOSE_TOKEN_EXPIRED = 4419
CLOSE_RATE_LIMITED = 4429

# topic -> (stream kind, event type prefixes)
TOPICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "balances": ("user", ("account.", "balances.")),
    "transactions": ("user", ("transfer.", "hold.", "tx.")),
    "deposits": ("user", ("deposit.",)),
    "sagas": ("user", ("saga.",)),
    "kyc": ("user", ("kyc.",)),
    "branding": ("tenant", ("branding.",)),
}

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_background: set[asyncio.Future] = set()


def _spawn(coroutine: Any) -> asyncio.Future:
    """Run a coroutine in the background, keeping a reference (the loop only keeps weak ones)."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _now_iso() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


# Subscriptions are few distinct topic sets: every socket with the same topics shares one answer.
_prefix_cache: dict[frozenset[str], tuple[frozenset[str], dict[str, tuple[str, ...]]]] = {}


def _prefixes(topics: list[str]) -> tuple[frozenset[str], dict[str, tuple[str, ...]]]:
    key = frozenset(topics)
    cached = _prefix_cache.get(key)
    if cached is None:
        kinds = {TOPICS[t][0] for t in key}
        cached = (key, {kind: tuple(p for t in sorted(key) if TOPICS[t][0] == kind for p in TOPICS[t][1])
                        for kind in kinds})
        _prefix_cache[key] = cached
    return cached


class _Resume:
    """Await the rest of a coroutine that was started by hand (`coro.send(None)`) and suspended at `step`.

    A delivery drives the transport's send coroutine itself: it finishes at once while the transport
    accepts writes (no task, no scheduling); only when it suspends (the transport pushed back) does a
    task take over from where it stopped. (What Python 3.12's eager tasks do.)"""

    __slots__ = ("coro", "step")

    def __init__(self, coro: Any, step: Any) -> None:
        self.coro, self.step = coro, step

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, step = self.coro, self.step
        self.coro = self.step = None
        while True:
            try:
                value = yield step
            except BaseException as exc:
                try:
                    step = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                step = coro.send(value)
            except StopIteration as stop:
                return stop.value


class StreamConsumer:
    """One socket of the stream."""

    __slots__ = (
        "_send",
        "auth_timer",
        "closing",
        "due_slot",
        "exp",
        "joined",
        "last_ping",
        "last_received",
        "live_bytes",
        "live_count",
        "pending",
        "positions",
        "prefixes",
        "queue",
        "refilled_at",
        "replaying",
        "tenant",
        "tokens",
        "topics",
        "user_id",
    )

    def __init__(self, send: Send) -> None:
        self._send: Send | None = send
        self.tenant: Any = None
        self.user_id: Any = None
        self.exp: int | None = None
        self.topics: frozenset[str] = frozenset()
        self.prefixes: dict[str, tuple[str, ...]] = {}
        self.joined: dict[str, str] | None = None
        self.positions: dict[str, int] = {}
        # (text, live), only while the transport pushes back: only live messages count against the buffer
        # cap; a catch-up is bounded by STREAM_REPLAY_MAX_EVENTS instead, so a client far behind is not
        # mistaken for a slow one.
        self.queue: collections.deque[tuple[str, bool]] | None = None
        self.live_count = 0
        self.live_bytes = 0
        self.closing = False
        self.replaying = False
        self.pending: list[tuple[str, int, dict[str, Any], str | None]] | None = None
        self.last_received = self.last_ping = self.refilled_at = time.monotonic()
        self.tokens = stream_settings().rate_burst
        self.auth_timer: asyncio.TimerHandle | None = None
        self.due_slot = 0

    # --- the ASGI connection --------------------------------------------------------------------------------
    async def serve(self, scope: dict[str, Any], receive: Receive) -> None:
        try:
            await self.connect(scope)
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.receive(message.get("text"), message.get("bytes"))
                elif kind == "websocket.disconnect":
                    break
        finally:
            await self.disconnect()

    async def connect(self, scope: dict[str, Any]) -> None:
        auth = await socket_auth(scope)
        await self._send({"type": "websocket.accept"})  # type: ignore[misc]
        _release_handshake(self._send, scope)
        conf = stream_settings()
        await hub.attach(self, due=self.last_received + min(conf.heartbeat, conf.idle_timeout))
        tenant = auth.tenant
        if auth.error is not None or tenant is None:
            code = auth.error or "app_key_missing"
            close = CLOSE_FORBIDDEN if code == "tenant_suspended" else CLOSE_AUTH_FAILED
            await self._close_with(close, code)
            return
        self.tenant = tenant
        tenant_var.set(tenant)
        if auth.origin and auth.origin not in (tenant.allowed_origins or []):
            await self._close_with(CLOSE_FORBIDDEN, "origin_not_allowed")
            return
        if auth.user is not None:
            self._authenticated(auth.user, auth.claims)  # type: ignore[arg-type]
        else:
            self.auth_timer = asyncio.get_running_loop().call_later(conf.auth_timeout, self._auth_deadline)

    def _auth_deadline(self) -> None:
        self.auth_timer = None
        if self.user_id is None and not self.closing:
            _spawn(self._close_with(CLOSE_AUTH_TIMEOUT, "auth_timeout"))

    def _authenticated(self, user: Any, claims: dict[str, Any]) -> None:
        first = self.user_id is None
        self.user_id, self.exp = user.pk, int(claims["exp"])
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        # The hub looks at the socket next when a heartbeat is due; sooner if the token expires before that.
        conf = stream_settings()
        hub.schedule(self, min(time.monotonic() + self.exp - time.time() + 0.001,
                               self.last_received + min(conf.heartbeat, conf.idle_timeout)))
        if first:
            user_id_var.set(str(user.pk))
            self._send_now({"type": "ready", "user": str(user.pk), "tenant": self.tenant.slug,
                            "expires_at": self.exp, "topics": sorted(TOPICS)})
        else:
            self._send_now({"type": "auth_ok", "expires_at": self.exp})

    async def disconnect(self) -> None:
        if self._send is None:
            return
        self.closing = True
        if self.due_slot:  # attached (not when the handshake failed before the accept)
            hub.detach(self)
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        if self.joined:
            joined, self.joined = self.joined, None
            await hub.leave(self, streams=joined)
        self.queue = self.pending = None
        self._send = None

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        """Send a message to the client (Channels' signature)."""
        if text_data is not None:
            await self._send({"type": "websocket.send", "text": text_data})  # type: ignore[misc]
        elif bytes_data is not None:
            await self._send({"type": "websocket.send", "bytes": bytes_data})  # type: ignore[misc]
        if close:
            await self.close()

    async def close(self, code: int | None = None) -> None:
        message: dict[str, Any] = {"type": "websocket.close"}
        if code is not None:
            message["code"] = code
        await self._send(message)  # type: ignore[misc]

    async def _close_with(self, code: int, error: str, **extra: Any) -> None:
        if self.closing or self._send is None:
            return
        self.closing = True
        if self.queue:
            self.queue.clear()
        with contextlib.suppress(Exception):  # the peer may already be gone
            await self.send(text_data=dumps({"type": "error", "code": error, **extra}).decode())
        with contextlib.suppress(Exception):
            await self.close(code=code)

    # --- client messages ------------------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        conf = stream_settings()
        now = time.monotonic()
        self.last_received = now
        size = len(text_data or "") + len(bytes_data or b"")
        if size > conf.max_message_bytes:
            await self._close_with(CLOSE_MESSAGE_TOO_BIG, "message_too_big")
            return
        self.tokens = min(conf.rate_burst, self.tokens + (now - self.refilled_at) * conf.rate_per_second)
        self.refilled_at = now
        if self.tokens < 1:
            await self._close_with(CLOSE_RATE_LIMITED, "rate_limited")
            return
        self.tokens -= 1
        if self.user_id is not None and (text_data == '{"type":"pong"}' or text_data == '{"type": "pong"}'):
            return  # the answer to a heartbeat: the commonest message, spared the parse
        try:
            message = json.loads(text_data if text_data is not None else bytes_data or b"")
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._close_with(CLOSE_BAD_MESSAGE, "bad_message")
            return
        kind = message["type"]
        if kind == "auth":
            await self._on_auth(message)
        elif self.user_id is None:
            await self._close_with(CLOSE_AUTH_FAILED, "auth_required")
        elif kind == "subscribe":
            await self._on_subscribe(message)
        elif kind == "ping":
            self._send_now({"type": "pong", "ts": _now_iso()})
        elif kind == "pong":
            pass
        else:
            self._send_now({"type": "error", "code": "unknown_message_type"})

    async def _on_auth(self, message: dict[str, Any]) -> None:
        token = message.get("token")
        if not isinstance(token, str):
            await self._close_with(CLOSE_AUTH_FAILED, "token_invalid")
            return
        try:
            user, claims = await database_sync_to_async(user_for_access_token)(tenant=self.tenant, token=token)
        except ApiError as error:
            code = CLOSE_TOKEN_EXPIRED if error.code == "token_expired" else CLOSE_AUTH_FAILED
            await self._close_with(code, error.code)
            return
        if self.user_id is not None and user.pk != self.user_id:
            await self._close_with(CLOSE_AUTH_FAILED, "token_user_mismatch")
            return
        if not self.closing:
            self._authenticated(user, claims)

    # --- subscribe, snapshot and replay ---------------------------------------------------------------------
    async def _on_subscribe(self, message: dict[str, Any]) -> None:
        topics = message.get("topics")
        positions = message.get("positions") or {}
        if (not isinstance(topics, list) or not topics or not all(t in TOPICS for t in topics)
                or not isinstance(positions, dict)
                or not all(k in ("user", "tenant") and isinstance(v, int) and v >= 0 for k, v in positions.items())):
            self._send_now({"type": "error", "code": "bad_subscription", "topics": sorted(TOPICS)})
            return
        tenant, user_id = self.tenant, self.user_id
        self.topics, self.prefixes = _prefixes(topics)
        wanted = {}
        if "user" in self.prefixes:
            wanted[user_stream(user_id)] = user_group(tenant.pk, user_id)
        if "tenant" in self.prefixes:
            wanted[tenant_stream(tenant.pk)] = tenant_group(tenant.pk)
        # Join first and hold live events back, so nothing published during the catch-up is missed.
        self.replaying, self.pending = True, []
        joined = self.joined or {}
        added = {s: g for s, g in wanted.items() if s not in joined}
        removed = {s: g for s, g in joined.items() if s not in wanted}
        if removed:
            await hub.leave(self, streams=removed)
        if added:
            await hub.join(self, streams=added)
        self.joined = dict(wanted)
        catch_up = await database_sync_to_async(_catch_up)(
            tenant=tenant, user_id=user_id, streams=list(wanted), positions=positions,
            snapshot="balances" in self.topics, replay_max=stream_settings().replay_max_events)
        if self.closing:
            return
        for stream, outcome in catch_up["streams"].items():
            if outcome["resync"]:
                await self._close_with(CLOSE_RESYNC_REQUIRED, "resync_required", stream=public_stream(stream),
                                       head=outcome["head"])
                return
            self.positions[stream] = outcome["position"]
        self._send_now({"type": "subscribed", "topics": sorted(self.topics),
                        "positions": {public_stream(s): o["head"] for s, o in catch_up["streams"].items()}})
        if catch_up.get("snapshot") is not None:
            self._send_now({"type": "snapshot", "topic": "balances", "stream": "user",
                            "seq": catch_up["streams"][user_stream(user_id)]["head"], "data": catch_up["snapshot"]})
        for stream, outcome in catch_up["streams"].items():
            for event in outcome["events"]:
                self._accept(stream, event["seq"], event, None, recovered=True)
        await self._release_pending()

    async def _release_pending(self) -> None:
        while not self.closing:
            pending, self.pending = self.pending or [], []
            gap = None
            for stream, seq, event, encoded in pending:
                position = self.positions.get(stream, 0)
                if seq <= position:
                    continue
                if seq > position + 1:
                    gap = stream
                    self.pending = [(s, q, e, c) for s, q, e, c in pending if q > position or s != stream]
                    break
                self._accept(stream, seq, event, encoded)
            if gap is None and not self.pending:
                self.replaying, self.pending = False, None
                return
            if gap is not None:
                await self._repair(gap)

    async def _repair(self, stream: str) -> None:
        """A live event arrived ahead of the position: fetch the missing ones from the outbox."""
        events = await database_sync_to_async(_events_after)(tenant=self.tenant, stream=stream,
                                                             after=self.positions.get(stream, 0))
        for event in events:
            if event["seq"] == self.positions.get(stream, 0) + 1:
                self._accept(stream, event["seq"], event, None, recovered=True)

    # --- delivery -------------------------------------------------------------------------------------------
    def offer(self, stream: str, seq: int, event: dict[str, Any], encoded: str) -> None:
        """Called by the hub for each live event of a stream this socket follows (never blocks)."""
        if self.closing:
            return
        if self.replaying:
            self.pending.append((stream, seq, event, encoded))  # type: ignore[union-attr]
            if len(self.pending) > stream_settings().buffer_max_messages:  # type: ignore[arg-type]
                _spawn(self._close_with(CLOSE_SLOW_CONSUMER, "slow_consumer"))
            return
        position = self.positions.get(stream, 0)
        if seq <= position:
            return  # already delivered (the relay is at least once)
        if seq > position + 1:
            self.replaying = True
            self.pending = [(stream, seq, event, encoded)]
            _spawn(self._release_pending())
            return
        self._accept(stream, seq, event, encoded)

    def _accept(self, stream: str, seq: int, event: dict[str, Any], encoded: str | None,
                *, recovered: bool = False) -> None:
        self.positions[stream] = seq
        if not event["type"].startswith(self.prefixes.get(public_stream(stream), ())):
            return  # not a subscribed topic: the position moves on, nothing is sent
        text = encoded if encoded is not None and not recovered else encode_event(event, recovered=recovered)
        self._enqueue(text, live=not recovered)

    def _enqueue(self, text: str, *, live: bool = True) -> None:
        if self.closing:
            return
        queue = self.queue
        if queue is None:
            # Nothing waiting: write now. The send coroutine completes without suspending unless the transport
            # pushed back (its buffer is over the high-water mark); then a task finishes it and drains the queue.
            coroutine = self.send(text_data=text)
            try:
                step = coroutine.send(None)
            except StopIteration:
                return
            except Exception:  # the peer is gone: the disconnect follows
                self.closing = True
                return
            self.queue = collections.deque()
            self.live_count = self.live_bytes = 0
            _spawn(self._drain(coroutine, step))
            return
        queue.append((text, live))
        if live:
            self.live_count += 1
            self.live_bytes += len(text)
            conf = stream_settings()
            if self.live_count > conf.buffer_max_messages or self.live_bytes > conf.buffer_max_bytes:
                _spawn(self._close_with(CLOSE_SLOW_CONSUMER, "slow_consumer"))

    async def _drain(self, coroutine: Any, step: Any) -> None:
        try:
            await _Resume(coroutine, step)
            while self.queue and not self.closing:
                text, live = self.queue.popleft()
                if live:
                    self.live_count -= 1
                    self.live_bytes -= len(text)
                await self.send(text_data=text)
        except Exception:
            self.closing = True
        finally:
            self.queue = None

    def _send_now(self, message: dict[str, Any]) -> None:
        self._enqueue(dumps(message).decode())

    def tick(self, now: float) -> float | None:
        """Heartbeat, idle timeout and token expiry, run by the hub when due; returns when to look again."""
        if self.closing:
            return None
        conf = stream_settings()
        silent = now - self.last_received
        if silent > conf.idle_timeout:
            _spawn(self._close_with(CLOSE_IDLE, "idle_timeout"))
            return None
        left = None
        if self.exp is not None:
            left = self.exp - time.time()
            if left < 0:
                _spawn(self._close_with(CLOSE_TOKEN_EXPIRED, "token_expired"))
                return None
        # Ping when the client has been silent (not when we have): its pong is what keeps a socket that only
        # receives from reaching the idle timeout.
        if silent > conf.heartbeat and now - self.last_ping > conf.heartbeat:
            self.last_ping = now
            self._send_now({"type": "ping", "ts": _now_iso()})
        # The next look: when the next ping is due, a random 0-10% later, so that sockets that connected (or
        # were pinged) together drift apart instead of being pinged together for ever.
        again = min(self.last_received + conf.idle_timeout,
                    max(self.last_received, self.last_ping) + conf.heartbeat * (1 + 0.1 * random.random()))
        if left is not None:
            again = min(again, now + left + 0.001)
        return again


def _release_handshake(send: Any, scope: dict[str, Any]) -> None:
    """Let go of what the server keeps of the handshake once the socket is accepted (about 5 KB per socket).

    uvicorn's websockets-sansio protocol keeps the upgrade request and its response (their `Headers`) for the
    connection's life but reads neither after the accept; the scope's raw headers were read by `socket_auth`.
    """
    protocol = getattr(send, "__self__", None)
    if type(protocol).__name__ == "WebSocketsSansIOProtocol" and getattr(protocol, "handshake_complete", False):
        protocol.request = None
        protocol.response = None
    scope["headers"] = []


async def stream_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI application of `/ws/v1/stream` (websocket scopes only)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await StreamConsumer(send).serve(scope, receive)


# --- database work (run in a thread) -------------------------------------------------------------------------
def _event_dict(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "stream": row.stream, "seq": row.seq, "type": row.type,
            "ts": row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"), "data": row.data}


def _events_after(*, tenant: Any, stream: str, after: int) -> list[dict[str, Any]]:
    from wallet.events.selectors import events_after

    return [_event_dict(row) for row in events_after(tenant=tenant, stream=stream, after_seq=after, limit=1000)]


def _stream_heads(*, tenant: Any, streams: list[str]) -> dict[str, int]:
    """The head of each stream (0 for one without events), in one query (what `stream_head` reads)."""
    from wallet.events.models import StreamCursor

    found = dict(StreamCursor.objects.for_tenant(tenant).filter(stream__in=streams).values_list("stream", "last_seq"))
    return {stream: found.get(stream) or 0 for stream in streams}


def _catch_up(*, tenant: Any, user_id: Any, streams: list[str], positions: dict[str, int], snapshot: bool,
              replay_max: int) -> dict[str, Any]:
    """Per stream: the head, the client's position and the events it missed (or that it needs a resync);
    plus the balances snapshot when asked and the client has no position for its user stream."""
    from wallet.events.selectors import events_after

    out: dict[str, Any] = {"streams": {}, "snapshot": None}
    heads = _stream_heads(tenant=tenant, streams=streams)
    for stream in streams:
        head = heads[stream]
        kind = public_stream(stream)
        position = positions.get(kind)
        outcome = {"head": head, "position": head, "events": [], "resync": False}
        if position is not None and position < head:
            missed = head - position
            rows = events_after(tenant=tenant, stream=stream, after_seq=position, limit=min(replay_max, 1000))
            if missed > replay_max or not rows or rows[0].seq != position + 1:
                outcome["resync"] = True  # beyond the kept history (purged, or too many)
            else:
                outcome["events"] = [_event_dict(row) for row in rows]
                outcome["position"] = position
        elif position is not None and position > head:
            outcome["resync"] = True  # a position from the future: the client's state is not ours
        out["streams"][stream] = outcome
        if snapshot and kind == "user" and position is None:
            out["snapshot"] = _balances_snapshot(tenant=tenant, user_id=user_id)
    return out


def _balances_snapshot(*, tenant: Any, user_id: Any) -> dict[str, Any]:
    from wallet.ledger.engine import balance_payload
    from wallet.ledger.selectors import account_list

    # `account_list` filters on the user foreign key, which takes the id as well as the object.
    return {"accounts": [balance_payload(account) for account in account_list(tenant=tenant, user=user_id)]}
