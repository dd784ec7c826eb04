"""What the HTTP adapters share: an httpx.AsyncClient with a timeout on every call, and the mapping of
transport failures and error statuses to the provider exception tree."""

from __future__ import annotations

from typing import Any

import httpx

from wallet.balances.providers.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    error_for_status,
)


class HttpAdapter:
    """Base of the real adapters. `transport` is for tests (httpx.MockTransport); production uses httpx's."""

    name = "http"

    def __init__(self, *, base_url: str, headers: dict[str, str], timeout: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=transport,
                                         timeout=httpx.Timeout(timeout), follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    def error_detail(self, response: httpx.Response) -> str:
        return response.text[:200]

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` and return its JSON; raises a ProviderError for anything else."""
        try:
            response = await self._client.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"no answer within {self.timeout:g}s", provider=self.name) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"{type(exc).__name__}: {exc}", provider=self.name) from exc
        if response.status_code >= 400:
            raise error_for_status(response.status_code, self.error_detail(response), provider=self.name)
        try:
            return self.parse(response)
        except ProviderError:
            raise
        except ValueError as exc:
            raise ProviderBadResponse(f"not JSON: {exc}", provider=self.name) from exc

    def parse(self, response: httpx.Response) -> Any:
        return response.json()
