"""Branding: one editable draft per tenant, numbered immutable releases, content-addressed uploads, build
tokens for CI, the build hook and its deliveries."""

from __future__ import annotations

import hashlib

from django.db import models
from django.utils import timezone

from tenants.scoping import TenantOwned
from wallet.core.ids import uuid7


def asset_upload_to(instance: BrandingAsset, filename: str) -> str:
    # Content-addressed: the path is the tenant and the SHA-256; the uploaded file name is not used.
    return f"branding/{instance.tenant_id.hex}/{instance.sha256[:2]}/{instance.sha256}{instance.extension}"


class BrandingAsset(TenantOwned):
    """An uploaded file (PNG, SVG, TTF, OTF), stored once per tenant under its SHA-256."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    sha256 = models.CharField(max_length=64)
    media_type = models.CharField(max_length=40)
    usage = models.CharField(max_length=32, help_text="What it was checked for when uploaded.")
    size = models.PositiveIntegerField()
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    original_name = models.CharField(max_length=200, blank=True)
    file = models.FileField(upload_to=asset_upload_to, max_length=200)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("-created_at",)
        constraints = [models.UniqueConstraint(fields=["tenant", "sha256"], name="branding_asset_unique_sha")]

    def __str__(self) -> str:
        return f"{self.usage} {self.sha256[:12]} ({self.media_type})"

    @property
    def extension(self) -> str:
        return {"image/png": ".png", "image/svg+xml": ".svg", "font/ttf": ".ttf", "font/otf": ".otf"}.get(
            self.media_type, ".bin")


class BrandingDraft(TenantOwned):
    """The tenant's editable branding (a JSON document, see `branding.document.BrandDocument`)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    content = models.JSONField(default=dict)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant"], name="branding_one_draft_per_tenant")]
        verbose_name = "branding draft"

    def __str__(self) -> str:
        name = (self.content.get("identity") or {}).get("display_name") if isinstance(self.content, dict) else None
        return f"Draft: {name or 'untitled'}"


class BrandingRelease(TenantOwned):
    """A published, immutable branding release. `content` is a `ReleaseDocument`; the bundle and the
    runtime answer are derived from it alone."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    number = models.PositiveIntegerField()
    content = models.JSONField()
    content_hash = models.CharField(max_length=64, help_text="SHA-256 of the canonical JSON of the content.")
    published_by = models.ForeignKey("tenants.User", on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    published_by_repr = models.CharField(max_length=320, blank=True)
    published_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-number",)
        constraints = [models.UniqueConstraint(fields=["tenant", "number"], name="branding_release_number_unique")]
        indexes = [models.Index(fields=["tenant", "-number"])]

    def __str__(self) -> str:
        return f"Release {self.number} ({self.content_hash[:12]})"

    @property
    def etag(self) -> str:
        return f'"r{self.number}-{self.content_hash[:20]}"'


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class BuildToken(TenantOwned):
    """A read-only token that lets a tenant's CI fetch its branding bundles. Only its SHA-256 is stored."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    label = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="The token's first characters, to tell "
                              "tokens apart.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by_repr = models.CharField(max_length=320, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.label or 'build token'})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class BuildHook(TenantOwned):
    """Where a release is announced to the tenant's build pipeline (a POST signed per Standard Webhooks)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, editable=False, help_text="whsec_... (Standard Webhooks)")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant"], name="branding_one_hook_per_tenant")]

    def __str__(self) -> str:
        return self.url


class HookDelivery(TenantOwned):
    """One release's delivery to the build hook: created with the release, updated by the task."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    release = models.OneToOneField(BrandingRelease, on_delete=models.CASCADE, related_name="hook_delivery")
    url = models.URLField(max_length=500)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name_plural = "hook deliveries"

    def __str__(self) -> str:
        return f"{self.release} -> {self.url} ({self.status})"
