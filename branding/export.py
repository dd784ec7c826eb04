"""Exporting a release: its bundle's files and reproducible zip (with a small per-process cache of zips)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from branding.bundle import bundle_files, zip_bytes
from branding.models import BrandingRelease
from branding.selectors import asset_loader
from tenants.models import Tenant

_zip_cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
_zip_lock = threading.Lock()
_ZIP_CACHE_ENTRIES = 8


def release_bundle_files(*, tenant: Tenant, release: BrandingRelease) -> dict[str, bytes]:
    """Every file of `release`'s bundle (the release must be `tenant`'s)."""
    if release.tenant_id != tenant.pk:
        raise ValueError("release of another tenant")
    return bundle_files(tenant_slug=tenant.slug, number=release.number, content_hash=release.content_hash,
                        content=release.content, load_asset=asset_loader(tenant=tenant))


def release_bundle_zip(*, tenant: Tenant, release: BrandingRelease) -> bytes:
    """The reproducible zip of `release`'s bundle. Releases are immutable, so zips are cached by release
    id and content hash (a few per process)."""
    key = (str(release.pk), release.content_hash)
    with _zip_lock:
        cached = _zip_cache.get(key)
        if cached is not None:
            _zip_cache.move_to_end(key)
            return cached
    data = zip_bytes(release_bundle_files(tenant=tenant, release=release))
    with _zip_lock:
        _zip_cache[key] = data
        while len(_zip_cache) > _ZIP_CACHE_ENTRIES:
            _zip_cache.popitem(last=False)
    return data


def clear_cache() -> None:
    with _zip_lock:
        _zip_cache.clear()
