"""ASGI entry point: websockets (the stream) and, in the embedded default, HTTP too.

The stream (`/ws/v1/stream`) is a plain ASGI handler (`wallet.events.consumers.stream_app`), routed here
without Channels' router and middleware stack, which kept scope copies and coroutines alive per socket
(docs/ARCHITECTURE.md, "Events and the stream"). Run the stream process with
`--ws-per-message-deflate false` (docs/STREAM.md).
"""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet.settings.development")
django_asgi_app = get_asgi_application()

from wallet.events.consumers import STREAM_PATH, stream_app  # noqa: E402


async def _refuse(receive: Any, send: Any) -> None:
    """A websocket to any other path: refused before the handshake completes (HTTP 403)."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1000})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        if scope["path"] == STREAM_PATH:
            return await stream_app(scope, receive, send)
        return await _refuse(receive, send)
    return await django_asgi_app(scope, receive, send)
