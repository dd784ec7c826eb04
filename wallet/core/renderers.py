"""A DRF JSON renderer on orjson (several times faster than the standard library's encoder)."""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import JSONRenderer

from wallet.core.jsonutil import dumps


class FastJSONRenderer(JSONRenderer):
    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: dict[str, Any] | None = None) -> bytes:
        if data is None:
            return b""
        return dumps(data)
