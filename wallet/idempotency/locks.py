"""The fast in-flight lock: a hint that lets a duplicate request be refused before it touches a transaction.

Nothing here is needed for correctness: the database (advisory lock on PostgreSQL, the write lock of an
IMMEDIATE transaction on SQLite, and the record's unique constraint everywhere) decides. So every Redis
error is caught, logged and answered with "unknown" (`None`), after which the caller takes the database
path; and after an error the process skips Redis for `IDEMPOTENCY_REDIS_BACKOFF_SECONDS`, so a Redis that
hangs costs one short timeout, not a timeout on every request.

With `REDIS_URL` set the lock lives in Redis (`SET idem:<tenant>:<user>:<sha256(key)> <token> NX PX <ttl>`,
released with a compare-and-delete script so a holder never frees a lock it no longer owns). Without it
(the embedded default) it lives in a table in this process, which is exact for the single-process server.
`IDEMPOTENCY_FAST_LOCK = False` turns it off: the database path alone then decides every request.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from wallet.idempotency import conf
from wallet.idempotency.fingerprint import key_digest

logger = logging.getLogger("wallet.idempotency")

_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def lock_name(*, tenant_id: Any, user_id: Any, key: str) -> str:
    """`idem:<tenant>:<user>:<sha256(key)>`: the key itself never leaves the database."""
    return f"idem:{tenant_id}:{user_id}:{key_digest(key)}"


class FastLock(Protocol):
    def acquire(self, name: str, token: str, ttl_seconds: float) -> bool | None:
        """True: acquired. False: someone holds it. None: the lock service is unavailable."""

    def release(self, name: str, token: str) -> None:
        """Free the lock if `token` still holds it; never raises."""


class DisabledFastLock:
    """`IDEMPOTENCY_FAST_LOCK` off: always "unknown", so every request takes the database path."""

    def acquire(self, name: str, token: str, ttl_seconds: float) -> bool | None:
        return None

    def release(self, name: str, token: str) -> None:
        return None


class LocalFastLock:
    """Locks in a table of this process (the embedded single-process server, and tests without Redis)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}
        self._mutex = threading.Lock()

    def acquire(self, name: str, token: str, ttl_seconds: float) -> bool | None:
        now = time.monotonic()
        with self._mutex:
            current = self._held.get(name)
            if current is not None and current[1] > now:
                return False
            self._held[name] = (token, now + ttl_seconds)
            return True

    def release(self, name: str, token: str) -> None:
        with self._mutex:
            current = self._held.get(name)
            if current is not None and current[0] == token:
                del self._held[name]


class RedisFastLock:
    """Locks in Redis, with short timeouts, no retries and a per-process back-off after an error."""

    def __init__(self, url: str, *, timeout: float, backoff: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.backoff = backoff
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._release_script = self._client.register_script(_RELEASE_SCRIPT)
        self._skip_until = 0.0

    @property
    def available(self) -> bool:
        """False while backing off after an error."""
        return time.monotonic() >= self._skip_until

    def _failed(self, operation: str, exc: Exception) -> None:
        self._skip_until = time.monotonic() + self.backoff
        logger.warning(
            "idempotency fast lock unavailable; using the database path",
            extra={"operation": operation, "error": f"{type(exc).__name__}: {exc}",
                   "backoff_seconds": self.backoff},
        )

    def acquire(self, name: str, token: str, ttl_seconds: float) -> bool | None:
        if not self.available:
            return None
        try:
            return bool(self._client.set(name, token, nx=True, px=max(1, int(ttl_seconds * 1000))))
        except Exception as exc:  # any client failure (connection, timeout, protocol): fall back, never fail
            self._failed("acquire", exc)
            return None

    def release(self, name: str, token: str) -> None:
        if not self.available:
            return  # the lock expires on its own
        try:
            self._release_script(keys=[name], args=[token])
        except Exception as exc:
            self._failed("release", exc)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


_backends: dict[tuple[str, float, float], FastLock] = {}
_backends_mutex = threading.Lock()
_local = LocalFastLock()
_disabled = DisabledFastLock()


def fast_lock_backend() -> FastLock:
    """The fast-lock backend for the current settings (one per Redis URL and options, per process)."""
    if not conf.fast_lock_enabled():
        return _disabled
    url = conf.redis_url()
    if not url:
        return _local
    options = (url, conf.redis_timeout_seconds(), conf.redis_backoff_seconds())
    backend = _backends.get(options)
    if backend is None:
        with _backends_mutex:
            backend = _backends.get(options)
            if backend is None:
                backend = RedisFastLock(url, timeout=options[1], backoff=options[2])
                _backends[options] = backend
    return backend


def reset_fast_locks() -> None:
    """Forget every backend (open clients, back-off state, local locks). For tests and settings changes."""
    global _local
    with _backends_mutex:
        for backend in _backends.values():
            if isinstance(backend, RedisFastLock):
                backend.close()
        _backends.clear()
        _local = LocalFastLock()


@contextlib.contextmanager
def fast_lock(*, tenant_id: Any, user_id: Any, key: str) -> Iterator[bool | None]:
    """Hold the fast lock of (tenant, user, key) for the block.

    Yields True (held by us), False (held by another request: it is in flight, or has just finished) or
    None (no answer from the lock service: decide on the database alone). Released on exit, which the
    caller places after its transaction has ended.
    """
    backend = fast_lock_backend()
    name = lock_name(tenant_id=tenant_id, user_id=user_id, key=key)
    token = secrets.token_hex(16)
    acquired = backend.acquire(name, token, conf.lock_ttl_seconds())
    try:
        yield acquired
    finally:
        if acquired:
            backend.release(name, token)
