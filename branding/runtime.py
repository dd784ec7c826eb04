"""The runtime branding answer and its per-process cache.

`GET /api/v1/branding` is hit by every app launch, mostly with `If-None-Match`. Each process keeps, per
tenant id, the current release's ETag and pre-encoded body for `BRANDING_RUNTIME_CACHE_SECONDS`; a
conditional request that matches is answered 304 from this cache before any query. Publishing clears
the entry in the publishing process at commit; other processes pick the new release up within the TTL.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from branding import conf


@dataclass(frozen=True)
class RuntimeEntry:
    expires: float
    etag: str | None  # None: the tenant has no release (cached too, so unpublished tenants cost no query)
    body: bytes


_entries: dict[Any, RuntimeEntry] = {}
_lock = threading.Lock()


def get(tenant_id: Any) -> RuntimeEntry | None:
    entry = _entries.get(tenant_id)
    if entry is not None and entry.expires > time.monotonic():
        return entry
    return None


def put(tenant_id: Any, etag: str | None, body: bytes) -> RuntimeEntry:
    entry = RuntimeEntry(time.monotonic() + conf.runtime_cache_seconds(), etag, body)
    with _lock:
        if len(_entries) > 10_000:
            _entries.clear()
        _entries[tenant_id] = entry
    return entry


def forget(tenant_id: Any) -> None:
    _entries.pop(tenant_id, None)


def clear() -> None:
    _entries.clear()


def runtime_body(release: Any) -> bytes:
    """The public runtime view of a release: what the app needs at run time (no build-only data)."""
    content = release.content
    brand = content["brand"]
    body = {
        "release": release.number,
        "content_hash": release.content_hash,
        "published_at": release.published_at.isoformat().replace("+00:00", "Z"),
        "identity": {k: brand["identity"][k] for k in ("display_name", "short_name", "url_scheme")},
        "colors": {"seed": brand["colors"]["seed"], "light": content["schemes"]["light"],
                   "dark": content["schemes"]["dark"]},
        "typography": {k: brand["typography"][k] for k in ("display_family", "body_family", "weights")},
        "shape": brand["shape"],
        "copy": brand["copy"],
        "features": brand["features"],
        "runtime": brand["runtime"],
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match (weak comparison): `*`, or any listed tag equal to ours."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False
