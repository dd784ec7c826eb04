"""Reads of branding data. Every selector takes the tenant explicitly."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from django.db.models import QuerySet
from django.utils import timezone

from branding.errors import AssetCorrupt, BrandingNotPublished, BuildTokenInvalid
from branding.models import BrandingAsset, BrandingDraft, BrandingRelease, BuildHook, BuildToken, hash_token
from tenants.models import Tenant
from wallet.core.errors import NotFound


def draft_get(*, tenant: Tenant) -> BrandingDraft | None:
    """The tenant's draft, if one was started."""
    return BrandingDraft.objects.for_tenant(tenant).first()


def release_list(*, tenant: Tenant) -> QuerySet[BrandingRelease]:
    return BrandingRelease.objects.for_tenant(tenant).order_by("-number")


def release_current(*, tenant: Tenant) -> BrandingRelease:
    """The tenant's latest release; `BrandingNotPublished` (404) when there is none."""
    release = release_list(tenant=tenant).first()
    if release is None:
        raise BrandingNotPublished()
    return release


def release_get(*, tenant: Tenant, number: int) -> BrandingRelease:
    """Release `number` of `tenant`; 404 `not_found` for a missing one (or another tenant's)."""
    release = BrandingRelease.objects.for_tenant(tenant).filter(number=number).first()
    if release is None:
        raise NotFound()
    return release


def asset_get(*, tenant: Tenant, sha256: str) -> BrandingAsset | None:
    return BrandingAsset.objects.for_tenant(tenant).filter(sha256=sha256).first()


def asset_bytes(*, tenant: Tenant, sha256: str) -> bytes | None:
    """The bytes of the tenant's upload with this SHA-256 (checked against it), or None."""
    asset = asset_get(tenant=tenant, sha256=sha256)
    if asset is None:
        return None
    with asset.file.open("rb") as handle:
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise AssetCorrupt(f"Stored file {asset.file.name} does not match its SHA-256.")
    return data


def asset_loader(*, tenant: Tenant) -> Callable[[str], bytes | None]:
    """A memoising `sha256 -> bytes | None` reader of the tenant's uploads."""
    cache: dict[str, bytes | None] = {}

    def load(sha256: str) -> bytes | None:
        if sha256 not in cache:
            cache[sha256] = asset_bytes(tenant=tenant, sha256=sha256)
        return cache[sha256]

    return load


def build_token_authenticate(*, tenant: Tenant, raw: str) -> BuildToken:
    """The live build token of `tenant` with this value; `BuildTokenInvalid` (401) otherwise (another
    tenant's token included)."""
    token = BuildToken.objects.for_tenant(tenant).filter(token_hash=hash_token(raw), revoked_at__isnull=True).first()
    if token is None:
        raise BuildTokenInvalid()
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        BuildToken.all_tenants.filter(pk=token.pk).update(last_used_at=now)  # coarse, to spare writes
    return token


def build_token_list(*, tenant: Tenant) -> QuerySet[BuildToken]:
    return BuildToken.objects.for_tenant(tenant)


def build_hook_get(*, tenant: Tenant) -> BuildHook | None:
    return BuildHook.objects.for_tenant(tenant).first()
