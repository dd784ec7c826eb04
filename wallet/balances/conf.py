"""Settings of the balances app, read where they are used (defaults documented in docs/BALANCES.md).

Each is `getattr(settings, NAME, <environment variable or default>)`, so tests override them with the
`settings` fixture and deployments with the environment.
"""

from __future__ import annotations

import os

from django.conf import settings


def _float(name: str, default: float) -> float:
    value = getattr(settings, name, None)
    if value is None:
        raw = os.environ.get(name, "")
        value = float(raw) if raw else default
    return float(value)


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


def _str(name: str, default: str) -> str:
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, "") or default
    return str(value)


def source_timeout() -> float:
    """Seconds a source may take before it is cut and reported stale/unavailable (default 0.5)."""
    return _float("BALANCES_SOURCE_TIMEOUT_SECONDS", 0.5)


def price_timeout() -> float:
    """Seconds the price/FX provider may take (default 0.5)."""
    return _float("BALANCES_PRICE_TIMEOUT_SECONDS", 0.5)


def link_timeout() -> float:
    """Seconds the banking provider may take to verify an account being linked (default 5)."""
    return _float("BALANCES_LINK_TIMEOUT_SECONDS", 5.0)


def fresh_seconds() -> int:
    """How long a cached aggregate is served without calling providers, when no event moved (default 60)."""
    return _int("BALANCES_FRESH_SECONDS", 60)


def head_check_seconds() -> float:
    """How long a process reuses the user's stream head it read for a warm read (default 1; 0: read it on
    every request). A change committed by another process shows within this; by the same process at once."""
    return _float("BALANCES_HEAD_CHECK_SECONDS", 1.0)


def keep_seconds() -> int:
    """How long a cached aggregate is kept for `stale` answers (last known values) (default 86400)."""
    return _int("BALANCES_KEEP_SECONDS", 86_400)


def rates_fresh_seconds() -> int:
    """How long fetched exchange rates are reused (default 60)."""
    return _int("BALANCES_RATES_FRESH_SECONDS", 60)


def refresh_seconds() -> float:
    """Interval of the scheduled refresh of users with external sources (default 30)."""
    return _float("BALANCES_REFRESH_SECONDS", 30.0)


def refresh_debounce_seconds() -> float:
    """How long after a ledger change or a deposit the event-driven refresh of the user runs; further
    changes of the user meanwhile are taken in by the same refresh (default 1)."""
    return _float("BALANCES_REFRESH_DEBOUNCE_SECONDS", 1.0)


def breaker_failures() -> int:
    """Consecutive failures that open a provider's circuit (default 5)."""
    return _int("BALANCES_BREAKER_FAILURES", 5)


def breaker_reset_seconds() -> float:
    """Seconds an open circuit waits before letting one probe through (half-open) (default 30)."""
    return _float("BALANCES_BREAKER_RESET_SECONDS", 30.0)


def async_mode() -> str:
    """How a sync (WSGI) view runs the concurrent fetch: `loop` (one event loop thread per process,
    the default) or `run` (`asyncio.run` per request)."""
    return _str("BALANCES_ASYNC_MODE", "loop")


def default_currency() -> str:
    """Display currency of a user who has not chosen one (default USD)."""
    return _str("BALANCES_DEFAULT_CURRENCY", "USD").upper()


def credential_keys() -> str:
    """Comma-separated Fernet keys (first encrypts, all decrypt); empty: derived from SECRET_KEY (dev only)."""
    return _str("BALANCES_CREDENTIAL_KEYS", "")


def config_cache_seconds() -> float:
    """How long a process reuses a tenant's provider configs (default 5; a change applies within it)."""
    return _float("BALANCES_CONFIG_CACHE_SECONDS", 5.0)
