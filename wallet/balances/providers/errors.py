"""One exception tree for every provider adapter: retryable (timeouts, 5xx, rate limits) vs terminal (4xx).

The `code` is what the balances API reports for an unavailable or stale source, so it is stable.
Only retryable errors count against a provider's circuit breaker: a terminal error says something about
one request (an unknown account), not about the provider's health.
"""

from __future__ import annotations

from typing import ClassVar


class ProviderError(Exception):
    """Base of every error an adapter raises."""

    code: ClassVar[str] = "provider_error"
    retryable: ClassVar[bool] = False

    def __init__(self, detail: str = "", *, provider: str = "", status: int | None = None) -> None:
        self.detail = detail or self.code
        self.provider = provider
        self.status = status
        super().__init__(f"{provider or 'provider'}: {self.detail}")


class RetryableProviderError(ProviderError):
    """Worth trying again later: the provider is slow, down or rate limiting."""

    code = "provider_unavailable"
    retryable = True


class ProviderTimeout(RetryableProviderError):
    code = "provider_timeout"


class ProviderUnavailable(RetryableProviderError):
    """5xx, connection refused or reset."""

    code = "provider_unavailable"


class ProviderRateLimited(RetryableProviderError):
    code = "provider_rate_limited"


class CircuitOpen(RetryableProviderError):
    """Not called at all: the provider's circuit is open after repeated failures."""

    code = "provider_circuit_open"


class TerminalProviderError(ProviderError):
    """Trying again will not help without a change on our side."""

    code = "provider_rejected"


class ProviderAuthFailed(TerminalProviderError):
    """401/403: the tenant's credentials are missing, wrong or lack a scope."""

    code = "provider_auth_failed"


class ProviderNotFound(TerminalProviderError):
    code = "provider_not_found"


class ProviderBadRequest(TerminalProviderError):
    code = "provider_bad_request"


class ProviderBadResponse(TerminalProviderError):
    """The provider answered 2xx with a payload we cannot read."""

    code = "provider_bad_response"


class ProviderNotConfigured(TerminalProviderError):
    code = "provider_not_configured"


def error_for_status(status: int, detail: str, *, provider: str) -> ProviderError:
    """Map an HTTP error status to our tree (documented statuses of Unit and CoinGecko)."""
    if status in (401, 403):
        return ProviderAuthFailed(detail, provider=provider, status=status)
    if status == 404:
        return ProviderNotFound(detail, provider=provider, status=status)
    if status == 408:
        return ProviderTimeout(detail, provider=provider, status=status)
    if status == 429:
        return ProviderRateLimited(detail, provider=provider, status=status)
    if status >= 500:
        return ProviderUnavailable(detail, provider=provider, status=status)
    return ProviderBadRequest(detail, provider=provider, status=status)
