"""Settings of the Idempotency-Key layer, read from Django settings with documented defaults.

Every value is read at call time (never cached at import), so `override_settings` and a settings change
apply at once. A value that would break a guarantee raises `ImproperlyConfigured`; the system check in
`wallet.idempotency.checks` reports the same problems at start-up.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: Keys are kept at least this long (the design promises 24 hours; shorter is refused).
MIN_TTL_HOURS = 24
DEFAULT_TTL_HOURS = 24
#: How long the fast (Redis) in-flight lock lives if its holder dies without releasing it.
DEFAULT_LOCK_TTL_SECONDS = 60.0
#: Socket timeout of the fast-lock Redis client: the lock is only a hint, so waiting long for it is wrong.
DEFAULT_REDIS_TIMEOUT_SECONDS = 0.25
#: After a Redis error, the fast lock is skipped (database path only) for this long in this process.
DEFAULT_REDIS_BACKOFF_SECONDS = 5.0
#: Rows deleted per statement by the purge task.
DEFAULT_PURGE_BATCH_SIZE = 5000


def _number(name: str, default: float, *, minimum: float, kind: type[int] | type[float]) -> float:
    raw = getattr(settings, name, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from exc
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}.")
    return value


def ttl() -> timedelta:
    """How long a key's record is kept: `IDEMPOTENCY_TTL_HOURS` (default 24; below 24 is refused)."""
    hours = _number("IDEMPOTENCY_TTL_HOURS", DEFAULT_TTL_HOURS, minimum=MIN_TTL_HOURS, kind=int)
    return timedelta(hours=hours)


def lock_ttl_seconds() -> float:
    """Lifetime of the fast in-flight lock: `IDEMPOTENCY_LOCK_TTL_SECONDS` (default 60)."""
    return _number("IDEMPOTENCY_LOCK_TTL_SECONDS", DEFAULT_LOCK_TTL_SECONDS, minimum=1, kind=float)


def fast_lock_enabled() -> bool:
    """Whether the fast in-flight lock is used: `IDEMPOTENCY_FAST_LOCK` (default True).

    Off, every request goes straight to the database path, which alone keeps every guarantee (on
    PostgreSQL a duplicate still gets 409 at once from the advisory lock; on SQLite it waits for the first
    to commit and replays it). The fast lock costs two Redis round trips per request and saves a duplicate
    its database transaction.
    """
    value = getattr(settings, "IDEMPOTENCY_FAST_LOCK", True)
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def redis_url() -> str:
    """The Redis holding the fast locks: the project's `REDIS_URL` (empty: an in-process lock table)."""
    return getattr(settings, "REDIS_URL", "") or ""


def redis_timeout_seconds() -> float:
    """Connect and read timeout of the fast-lock client: `IDEMPOTENCY_REDIS_TIMEOUT_SECONDS` (0.25)."""
    return _number("IDEMPOTENCY_REDIS_TIMEOUT_SECONDS", DEFAULT_REDIS_TIMEOUT_SECONDS, minimum=0.001, kind=float)


def redis_backoff_seconds() -> float:
    """How long a process skips Redis after an error: `IDEMPOTENCY_REDIS_BACKOFF_SECONDS` (default 5)."""
    return _number("IDEMPOTENCY_REDIS_BACKOFF_SECONDS", DEFAULT_REDIS_BACKOFF_SECONDS, minimum=0, kind=float)


def purge_batch_size() -> int:
    """Rows deleted per statement by the purge: `IDEMPOTENCY_PURGE_BATCH_SIZE` (default 5000)."""
    return int(_number("IDEMPOTENCY_PURGE_BATCH_SIZE", DEFAULT_PURGE_BATCH_SIZE, minimum=1, kind=int))
