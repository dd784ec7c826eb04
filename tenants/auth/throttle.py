"""Fixed-window login throttles per (tenant, email) and per client IP, in the shared cache."""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from tenants.errors import TooManyAttempts
from tenants.models import Tenant


def client_ip(request: HttpRequest) -> str:
    """The client address, trusting exactly `NUM_PROXIES` hops of X-Forwarded-For."""
    if settings.NUM_PROXIES:
        forwarded = [p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()]
        if len(forwarded) >= settings.NUM_PROXIES:
            return forwarded[-settings.NUM_PROXIES]
    return request.META.get("REMOTE_ADDR", "unknown")


def _hit(key: str, limit: int, window: int) -> int | None:
    """Count one attempt; return seconds to wait when over the limit, else None."""
    now = time.time()
    bucket = int(now // window)
    full_key = f"login-throttle:{key}:{bucket}"
    cache.add(full_key, 0, timeout=window + 1)
    try:
        count = cache.incr(full_key)
    except ValueError:  # expired between add and incr
        cache.set(full_key, 1, timeout=window + 1)
        count = 1
    if count > limit:
        return int(window - (now % window)) + 1
    return None


def login_throttle(*, request: HttpRequest, tenant: Tenant, email: str) -> None:
    """Raise 429 `too_many_attempts` (with Retry-After) when either limit is exceeded."""
    window = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    account = hashlib.sha256(f"{tenant.pk}:{email.strip().lower()}".encode()).hexdigest()[:32]
    waits = [
        _hit(f"acct:{account}", settings.LOGIN_THROTTLE_PER_ACCOUNT, window),
        _hit(f"ip:{client_ip(request)}", settings.LOGIN_THROTTLE_PER_IP, window),
    ]
    wait = max((w for w in waits if w is not None), default=None)
    if wait is not None:
        error = TooManyAttempts(retry_after=wait)
        error.headers["Retry-After"] = str(wait)
        raise error
