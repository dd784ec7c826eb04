"""`/ws/v1/stream`: the authenticated, resumable event stream (protocol: docs/STREAM.md).

A socket authenticates (Authorization header, or `{"type": "auth", "token"}` within 5 seconds), then
subscribes to topics with the last `seq` it saw per stream. The server replays what it missed from the
outbox (`recovered: true`) or, on a fresh subscribe, sends a snapshot; then live events follow, in order,
without gaps or duplicates. The consumer keeps no channel of its own: `wallet.events.hub` fans events out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from tenants.auth.sessions import user_for_access_token
from wallet.core.errors import ApiError
from wallet.core.jsonutil import dumps
from wallet.events.hub import encode_event, hub, public_stream
from wallet.events.streams import tenant_group, tenant_stream, user_group, user_stream

AUTH_TIMEOUT_SECONDS = 5.0

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
    "transactions": ("user", ("transfer.", "hold.")),
    "deposits": ("user", ("deposit.",)),
    "sagas": ("user", ("saga.",)),
    "kyc": ("user", ("kyc.",)),
    "branding": ("tenant", ("branding.",)),
}


_background: set[asyncio.Future] = set()


def _spawn(coroutine: Any) -> asyncio.Future:
    """Run a coroutine in the background, keeping a reference (the loop only keeps weak ones)."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _now_iso() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


class StreamConsumer(AsyncWebsocketConsumer):
    # No per-socket channel: the process-wide hub joins the groups and fans out.
    channel_layer_alias = "__stream_hub_only__"

    # --- connection -----------------------------------------------------------------------------------------
    async def connect(self) -> None:
        self.user = None
        self.claims: dict[str, Any] | None = None
        self.topics: set[str] = set()
        self.prefixes: dict[str, tuple[str, ...]] = {}
        self.joined: dict[str, str] = {}
        self.positions: dict[str, int] = {}
        # (text, live): only live messages count against the buffer cap; a catch-up is bounded by
        # STREAM_REPLAY_MAX_EVENTS instead, so a client far behind is not mistaken for a slow one.
        self.queue: collections.deque[tuple[str, bool]] = collections.deque()
        self.live_count = 0
        self.live_bytes = 0
        self.flushing = False
        self.closing = False
        self.replaying = False
        self.pending: list[tuple[str, int, dict[str, Any], str]] = []
        self.last_received = self.last_sent = time.monotonic()
        # A random phase, so that sockets that connected together are not all pinged in the same tick.
        self.last_ping = self.last_received - random.random() * _setting("STREAM_HEARTBEAT_SECONDS", 20)
        self.tokens = float(_setting("STREAM_RATE_BURST", 30))
        self.auth_timer: asyncio.TimerHandle | None = None
        await self.accept()
        await hub.attach(self)
        error = self.scope.get("auth_error")
        tenant = self.scope.get("tenant")
        if error is not None or tenant is None:
            code = error or "app_key_missing"
            close = CLOSE_FORBIDDEN if code == "tenant_suspended" else CLOSE_AUTH_FAILED
            await self._close_with(close, code)
            return
        origin = self.scope.get("origin")
        if origin and origin not in (tenant.allowed_origins or []):
            await self._close_with(CLOSE_FORBIDDEN, "origin_not_allowed")
            return
        if self.scope.get("user") is not None:
            await self._authenticated(self.scope["user"], self.scope["auth_claims"])
        else:
            self.auth_timer = asyncio.get_running_loop().call_later(
                _setting("STREAM_AUTH_TIMEOUT_SECONDS", AUTH_TIMEOUT_SECONDS), self._auth_deadline)

    def _auth_deadline(self) -> None:
        if self.user is None and not self.closing:
            _spawn(self._close_with(CLOSE_AUTH_TIMEOUT, "auth_timeout"))

    async def _authenticated(self, user: Any, claims: dict[str, Any]) -> None:
        first = self.user is None
        self.user, self.claims = user, claims
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None
        if first:
            await self._send_now({"type": "ready", "user": str(user.pk), "tenant": self.scope["tenant"].slug,
                                  "expires_at": claims["exp"], "topics": sorted(TOPICS)})
        else:
            await self._send_now({"type": "auth_ok", "expires_at": claims["exp"]})

    async def disconnect(self, code: int) -> None:
        self.closing = True
        hub.detach(self)
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if self.joined:
            await hub.leave(self, streams=self.joined)
            self.joined = {}
        self.queue.clear()

    async def _close_with(self, code: int, error: str, **extra: Any) -> None:
        if self.closing:
            return
        self.closing = True
        self.queue.clear()
        with contextlib.suppress(Exception):  # the peer may already be gone
            await self.send(text_data=dumps({"type": "error", "code": error, **extra}).decode())
        await self.close(code=code)

    # --- client messages ------------------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        now = time.monotonic()
        self.last_received = now
        size = len(text_data or "") + len(bytes_data or b"")
        if size > _setting("STREAM_MAX_MESSAGE_BYTES", 16_384):
            await self._close_with(CLOSE_MESSAGE_TOO_BIG, "message_too_big")
            return
        rate = _setting("STREAM_RATE_PER_SECOND", 10)
        self.tokens = min(float(_setting("STREAM_RATE_BURST", 30)), self.tokens + (now - self._last_refill()) * rate)
        self._refilled_at = now
        if self.tokens < 1:
            await self._close_with(CLOSE_RATE_LIMITED, "rate_limited")
            return
        self.tokens -= 1
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
        elif self.user is None:
            await self._close_with(CLOSE_AUTH_FAILED, "auth_required")
        elif kind == "subscribe":
            await self._on_subscribe(message)
        elif kind == "ping":
            await self._send_now({"type": "pong", "ts": _now_iso()})
        elif kind == "pong":
            pass
        else:
            await self._send_now({"type": "error", "code": "unknown_message_type"})

    def _last_refill(self) -> float:
        return getattr(self, "_refilled_at", self.last_received)

    async def _on_auth(self, message: dict[str, Any]) -> None:
        token = message.get("token")
        if not isinstance(token, str):
            await self._close_with(CLOSE_AUTH_FAILED, "token_invalid")
            return
        try:
            user, claims = await database_sync_to_async(user_for_access_token)(tenant=self.scope["tenant"],
                                                                              token=token)
        except ApiError as error:
            code = CLOSE_TOKEN_EXPIRED if error.code == "token_expired" else CLOSE_AUTH_FAILED
            await self._close_with(code, error.code)
            return
        if self.user is not None and user.pk != self.user.pk:
            await self._close_with(CLOSE_AUTH_FAILED, "token_user_mismatch")
            return
        await self._authenticated(user, claims)

    # --- subscribe, snapshot and replay ---------------------------------------------------------------------
    async def _on_subscribe(self, message: dict[str, Any]) -> None:
        topics = message.get("topics")
        positions = message.get("positions") or {}
        if (not isinstance(topics, list) or not topics or not all(t in TOPICS for t in topics)
                or not isinstance(positions, dict)
                or not all(k in ("user", "tenant") and isinstance(v, int) and v >= 0 for k, v in positions.items())):
            await self._send_now({"type": "error", "code": "bad_subscription", "topics": sorted(TOPICS)})
            return
        tenant, user = self.scope["tenant"], self.user
        kinds = {TOPICS[t][0] for t in topics}
        wanted = {}
        if "user" in kinds:
            wanted[user_stream(user.pk)] = user_group(tenant.pk, user.pk)
        if "tenant" in kinds:
            wanted[tenant_stream(tenant.pk)] = tenant_group(tenant.pk)
        self.topics = set(topics)
        self.prefixes = {kind: tuple(p for t in topics if TOPICS[t][0] == kind for p in TOPICS[t][1]) for kind in kinds}
        # Join first and hold live events back, so nothing published during the catch-up is missed.
        self.replaying, self.pending = True, []
        added = {s: g for s, g in wanted.items() if s not in self.joined}
        removed = {s: g for s, g in self.joined.items() if s not in wanted}
        if removed:
            await hub.leave(self, streams=removed)
        if added:
            await hub.join(self, streams=added)
        self.joined = dict(wanted)
        catch_up = await database_sync_to_async(_catch_up)(
            tenant=tenant, user=user, streams=list(wanted), positions=positions,
            snapshot="balances" in self.topics, replay_max=_setting("STREAM_REPLAY_MAX_EVENTS", 1000))
        for stream, outcome in catch_up["streams"].items():
            kind = public_stream(stream)
            if outcome["resync"]:
                await self._close_with(CLOSE_RESYNC_REQUIRED, "resync_required", stream=kind, head=outcome["head"])
                return
            self.positions[stream] = outcome["position"]
        await self._send_now({"type": "subscribed", "topics": sorted(self.topics),
                              "positions": {public_stream(s): o["head"] for s, o in catch_up["streams"].items()}})
        if catch_up.get("snapshot") is not None:
            await self._send_now({"type": "snapshot", "topic": "balances", "stream": "user",
                                  "seq": catch_up["streams"][user_stream(user.pk)]["head"],
                                  "data": catch_up["snapshot"]})
        for stream, outcome in catch_up["streams"].items():
            for event in outcome["events"]:
                self._accept(stream, event["seq"], event, None, recovered=True)
        await self._release_pending()

    async def _release_pending(self) -> None:
        while True:
            pending, self.pending = self.pending, []
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
                self.replaying = False
                return
            if gap is not None:
                await self._repair(gap)

    async def _repair(self, stream: str) -> None:
        """A live event arrived ahead of the position: fetch the missing ones from the outbox."""
        events = await database_sync_to_async(_events_after)(tenant=self.scope["tenant"], stream=stream,
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
            self.pending.append((stream, seq, event, encoded))
            if len(self.pending) > _setting("STREAM_BUFFER_MAX_MESSAGES", 1000):
                _spawn(self._close_with(CLOSE_SLOW_CONSUMER, "slow_consumer"))
            return
        position = self.positions.get(stream, 0)
        if seq <= position:
            return  # already delivered (the relay is at least once)
        if seq > position + 1:
            self.replaying = True
            self.pending.append((stream, seq, event, encoded))
            _spawn(self._release_pending())
            return
        self._accept(stream, seq, event, encoded)

    def _accept(self, stream: str, seq: int, event: dict[str, Any], encoded: str | None,
                *, recovered: bool = False) -> None:
        self.positions[stream] = seq
        kind = public_stream(stream)
        if not event["type"].startswith(self.prefixes.get(kind, ())):
            return  # not a subscribed topic: the position moves on, nothing is sent
        text = encoded if encoded is not None and not recovered else encode_event(event, recovered=recovered)
        self._enqueue(text, live=not recovered)

    def _enqueue(self, text: str, *, live: bool = True) -> None:
        if self.closing:
            return
        self.queue.append((text, live))
        if live:
            self.live_count += 1
            self.live_bytes += len(text)
            if (self.live_count > _setting("STREAM_BUFFER_MAX_MESSAGES", 1000)
                    or self.live_bytes > _setting("STREAM_BUFFER_MAX_BYTES", 1_048_576)):
                _spawn(self._close_with(CLOSE_SLOW_CONSUMER, "slow_consumer"))
                return
        if not self.flushing:
            self.flushing = True
            _spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self.queue and not self.closing:
                text, live = self.queue.popleft()
                if live:
                    self.live_count -= 1
                    self.live_bytes -= len(text)
                await self.send(text_data=text)
                self.last_sent = time.monotonic()
        except Exception:
            self.closing = True
        finally:
            self.flushing = False

    async def _send_now(self, message: dict[str, Any]) -> None:
        self._enqueue(dumps(message).decode())

    def tick(self, now: float) -> None:
        """Heartbeat, idle timeout and token expiry, run by the hub for every socket every few seconds."""
        if self.closing:
            return
        if now - self.last_received > _setting("STREAM_IDLE_TIMEOUT_SECONDS", 60):
            _spawn(self._close_with(CLOSE_IDLE, "idle_timeout"))
            return
        if self.claims is not None and self.claims["exp"] < time.time():
            _spawn(self._close_with(CLOSE_TOKEN_EXPIRED, "token_expired"))
            return
        heartbeat = _setting("STREAM_HEARTBEAT_SECONDS", 20)
        # Ping when the client has been silent (not when we have): its pong is what keeps a socket that only
        # receives from reaching the idle timeout.
        if now - self.last_received > heartbeat and now - self.last_ping > heartbeat:
            self.last_ping = now
            self._enqueue(dumps({"type": "ping", "ts": _now_iso()}).decode())


# --- database work (run in a thread) -------------------------------------------------------------------------
def _event_dict(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "stream": row.stream, "seq": row.seq, "type": row.type,
            "ts": row.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"), "data": row.data}


def _events_after(*, tenant: Any, stream: str, after: int) -> list[dict[str, Any]]:
    from wallet.events.selectors import events_after

    return [_event_dict(row) for row in events_after(tenant=tenant, stream=stream, after_seq=after, limit=1000)]


def _catch_up(*, tenant: Any, user: Any, streams: list[str], positions: dict[str, int], snapshot: bool,
              replay_max: int) -> dict[str, Any]:
    """Per stream: the head, the client's position and the events it missed (or that it needs a resync);
    plus the balances snapshot when asked and the client has no position for its user stream."""
    from wallet.events.selectors import events_after, stream_head

    out: dict[str, Any] = {"streams": {}, "snapshot": None}
    for stream in streams:
        head = stream_head(tenant=tenant, stream=stream)
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
            out["snapshot"] = _balances_snapshot(tenant=tenant, user=user)
    return out


def _balances_snapshot(*, tenant: Any, user: Any) -> dict[str, Any]:
    from wallet.ledger.engine import balance_payload
    from wallet.ledger.selectors import account_list

    return {"accounts": [balance_payload(account) for account in account_list(tenant=tenant, user=user)]}
