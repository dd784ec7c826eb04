"""Writes of branding: the draft, uploads, publishing a release, build tokens and the build hook."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from branding import conf, runtime
from branding.errors import BrandingInvalid, BrandingUnchanged
from branding.models import (
    BrandingAsset,
    BrandingDraft,
    BrandingRelease,
    BuildHook,
    BuildToken,
    HookDelivery,
    hash_token,
)
from branding.release import content_hash, release_content
from branding.selectors import asset_loader, build_hook_get
from branding.typed import Problem
from branding.validation import check_document, check_upload, is_public_address
from tenants.models import Tenant, User
from wallet.events.services import EventSpec, events_emit, tenant_stream

RELEASED_EVENT = "branding.released"


def _actor_repr(actor: User | None, fallback: str = "system") -> str:
    return actor.email if actor is not None else fallback


def branding_draft_update(*, tenant: Tenant, content: dict[str, Any], actor: User | None = None) -> BrandingDraft:
    """Replace the tenant's draft document (created on first use). A draft may be incomplete; it is
    validated in full when published (and on demand with `branding_draft_check`)."""
    if not isinstance(content, dict):
        raise BrandingInvalid([Problem("/", "invalid_type", "The draft is a JSON object.")])
    with transaction.atomic():
        draft = BrandingDraft.objects.for_tenant(tenant).select_for_update().first()
        if draft is None:
            draft = BrandingDraft.all_tenants.create(tenant=tenant, content=content, updated_by=actor)
        else:
            draft.content = content
            draft.updated_by = actor
            draft.updated_at = timezone.now()
            draft.save(update_fields=["content", "updated_by", "updated_at"])
    return draft


def branding_asset_upload(*, tenant: Tenant, usage: str, data: bytes, filename: str = "") -> BrandingAsset:
    """Check an upload for `usage` and store it content-addressed; uploading the same bytes again returns
    the existing asset. Raises `BrandingInvalid` with a pointer to `/file`."""
    checked = check_upload(usage, data)
    if checked.problems:
        raise BrandingInvalid(checked.problems)
    sha = hashlib.sha256(data).hexdigest()
    existing = BrandingAsset.objects.for_tenant(tenant).filter(sha256=sha).first()
    if existing is not None:
        return existing
    asset = BrandingAsset(tenant=tenant, sha256=sha, media_type=checked.media_type or "application/octet-stream",
                          usage=usage, size=len(data), width=checked.width, height=checked.height,
                          original_name=filename[:200])
    try:
        with transaction.atomic():
            asset.file.save(asset_upload_to_name(asset), ContentFile(data), save=False)
            asset.save()
    except IntegrityError:  # the same bytes uploaded concurrently
        return BrandingAsset.objects.for_tenant(tenant).get(sha256=sha)
    return asset


def asset_upload_to_name(asset: BrandingAsset) -> str:
    return f"{asset.sha256}{asset.extension}"


def branding_draft_check(*, tenant: Tenant, content: dict[str, Any] | None = None) -> list[Problem]:
    """Every problem of the draft (or of `content`), as it would be reported on publish."""
    if content is None:
        draft = BrandingDraft.objects.for_tenant(tenant).first()
        content = draft.content if draft is not None else {}
    return check_document(content, asset_loader(tenant=tenant)).problems


@transaction.atomic(durable=True)
def branding_release_publish(*, tenant: Tenant, actor: User | None = None,
                             actor_repr: str | None = None) -> BrandingRelease:
    """Validate the draft and freeze it as the next numbered release, in one transaction that also emits
    `branding.released` to the tenant's stream (outbox) and records the build-hook delivery; the hook
    POST is sent after commit.

    Raises `BrandingInvalid` (422, a pointer per failing field), `BrandingUnchanged` (409) when the
    draft equals the latest release.
    """
    draft = BrandingDraft.objects.for_tenant(tenant).select_for_update().first()
    checked = check_document(draft.content if draft is not None else {}, asset_loader(tenant=tenant))
    if checked.problems or checked.document is None or checked.schemes is None:
        raise BrandingInvalid(checked.problems or [Problem("/", "required", "There is no draft to publish.")])
    content = release_content(checked.document, checked.schemes)
    digest = content_hash(content)
    latest = BrandingRelease.objects.for_tenant(tenant).order_by("-number").first()
    if latest is not None and latest.content_hash == digest:
        raise BrandingUnchanged(f"Release {latest.number} already has this content.")
    number = (BrandingRelease.objects.for_tenant(tenant).aggregate(n=Max("number"))["n"] or 0) + 1
    release = BrandingRelease.all_tenants.create(
        tenant=tenant, number=number, content=content, content_hash=digest, published_by=actor,
        published_by_repr=actor_repr or _actor_repr(actor),
    )
    events_emit(tenant=tenant, events=[EventSpec(
        stream=tenant_stream(tenant.pk), type=RELEASED_EVENT,
        data={"release": number, "content_hash": digest, "etag": release.etag},
    )])
    hook = build_hook_get(tenant=tenant)
    if hook is not None and hook.enabled:
        delivery = HookDelivery.all_tenants.create(tenant=tenant, release=release, url=hook.url)
        from branding.tasks import deliver_release_hook

        transaction.on_commit(
            lambda: deliver_release_hook.apply_async(kwargs={"tenant_id": str(tenant.pk),
                                                             "delivery_id": str(delivery.pk)}),
            robust=True,
        )
    # Forget the cached runtime answer now and again at commit (a request in between may re-cache the
    # old release; other processes pick the new one up within BRANDING_RUNTIME_CACHE_SECONDS).
    runtime.forget(tenant.pk)
    transaction.on_commit(lambda: runtime.forget(tenant.pk))
    return release


# --- build tokens -----------------------------------------------------------------------------------------


def build_token_create(*, tenant: Tenant, label: str = "", actor_repr: str = "") -> tuple[BuildToken, str]:
    """A new read-only build token; returns the row and the token itself (shown once, stored hashed)."""
    raw = "bbt_" + secrets.token_urlsafe(32)
    token = BuildToken.all_tenants.create(tenant=tenant, label=label[:100], token_hash=hash_token(raw),
                                          prefix=raw[:12], created_by_repr=actor_repr[:320])
    return token, raw


def build_token_revoke(*, tenant: Tenant, token: BuildToken) -> BuildToken:
    """Revoke one of the tenant's build tokens (idempotent)."""
    if token.tenant_id != tenant.pk:
        raise ValueError("token of another tenant")
    BuildToken.all_tenants.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


@transaction.atomic
def build_token_rotate(*, tenant: Tenant, label: str = "", actor_repr: str = "") -> tuple[BuildToken, str]:
    """Revoke every live build token of the tenant and create a new one."""
    BuildToken.objects.for_tenant(tenant).filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    return build_token_create(tenant=tenant, label=label, actor_repr=actor_repr)


# --- build hook -------------------------------------------------------------------------------------------


def hook_url_problems(url: str) -> list[Problem]:
    """Save-time checks of a hook URL (the connect-time check, on every delivery, is the one that counts)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    allowed = host in conf.hook_allow_hosts()
    if parts.scheme != "https" and not (allowed and parts.scheme == "http"):
        return [Problem("/url", "https_required", "A build hook URL must use https://.")]
    if not host or parts.username or parts.password:
        return [Problem("/url", "invalid_url", "An absolute URL with a host and no credentials.")]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    if not allowed and not is_public_address(address):
        return [Problem("/url", "address_not_allowed", "The hook may not target a private or local address.")]
    return []


def build_hook_set(*, tenant: Tenant, url: str, enabled: bool = True) -> BuildHook:
    """Set (or replace) the tenant's build hook. A new hook gets a fresh Standard Webhooks secret."""
    problems = hook_url_problems(url)
    if problems:
        raise BrandingInvalid(problems)
    with transaction.atomic():
        hook = BuildHook.objects.for_tenant(tenant).select_for_update().first()
        if hook is None:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            return BuildHook.all_tenants.create(tenant=tenant, url=url, secret=secret, enabled=enabled)
        hook.url, hook.enabled = url, enabled
        hook.save(update_fields=["url", "enabled"])
    return hook
