"""The websocket stream endpoint `/ws/v1/stream` (authentication handshake; events come with the
outbox, see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from tenants.auth.sessions import user_for_access_token
from wallet.core.errors import ApiError

AUTH_TIMEOUT_SECONDS = 5.0

# Close codes (4000-4999 are application codes).
CLOSE_AUTH_FAILED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_TOKEN_EXPIRED = 4419


class StreamConsumer(AsyncJsonWebsocketConsumer):
    """Authenticates the socket: an Authorization header (native apps) or `{"type": "auth", "token"}` as
    the first message within 5 seconds (browsers)."""

    auth_timer: asyncio.Task | None = None

    async def connect(self) -> None:
        error = self.scope.get("auth_error")
        if error is not None and error != "token_invalid":
            await self.accept()
            code = CLOSE_FORBIDDEN if error == "tenant_suspended" else CLOSE_AUTH_FAILED
            await self.send_json({"type": "error", "code": error})
            await self.close(code=code)
            return
        if error == "token_invalid" or (self.scope.get("tenant") is None):
            await self.accept()
            await self.send_json({"type": "error", "code": error or "app_key_missing"})
            await self.close(code=CLOSE_AUTH_FAILED)
            return
        await self.accept()
        if self.scope.get("user") is not None:
            await self._ready()
        else:
            self.auth_timer = asyncio.ensure_future(self._auth_deadline())

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(AUTH_TIMEOUT_SECONDS)
        if self.scope.get("user") is None:
            await self.send_json({"type": "error", "code": "auth_timeout"})
            await self.close(code=CLOSE_AUTH_TIMEOUT)

    async def _ready(self) -> None:
        user = self.scope["user"]
        await self.send_json({"type": "ready", "user": str(user.pk), "tenant": self.scope["tenant"].slug})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "code": "bad_message"})
            return
        kind = content.get("type")
        if self.scope.get("user") is None:
            if kind != "auth" or not isinstance(content.get("token"), str):
                await self.send_json({"type": "error", "code": "auth_required"})
                await self.close(code=CLOSE_AUTH_FAILED)
                return
            try:
                user, claims = await database_sync_to_async(user_for_access_token)(
                    tenant=self.scope["tenant"], token=content["token"]
                )
            except ApiError as error:
                await self.send_json({"type": "error", "code": error.code})
                await self.close(code=CLOSE_TOKEN_EXPIRED if error.code == "token_expired" else CLOSE_AUTH_FAILED)
                return
            self.scope["user"], self.scope["auth_claims"] = user, claims
            if self.auth_timer is not None:
                self.auth_timer.cancel()
            await self._ready()
            return
        if kind == "ping":
            await self.send_json({"type": "pong"})
            return
        await self.send_json({"type": "error", "code": "unknown_message_type"})

    async def disconnect(self, code: int) -> None:
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.auth_timer
