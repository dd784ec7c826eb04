"""Tenants, their app keys, users, staff memberships, auth sessions and the audit log."""

from __future__ import annotations

import secrets

from django.contrib.auth.models import AbstractBaseUser, PermissionsMixin
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from tenants.scoping import TenantOwned
from wallet.core.ids import uuid7

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$",
    "A slug is 1-50 lowercase letters, digits and inner hyphens.",
)


handle_validator = RegexValidator(
    r"^[a-z0-9_]{3,30}$", "A handle is 3-30 lowercase letters, digits and underscores."
)


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    slug = models.CharField(max_length=50, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Browser origins allowed to call the API and open the stream (native apps send no Origin).
    allowed_origins = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("slug",)

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


def new_app_key() -> str:
    return "app_" + secrets.token_urlsafe(24)


class AppKey(TenantOwned):
    """A public key baked into a tenant's app build. Several may be live at once (rotation)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    key = models.CharField(max_length=64, unique=True, default=new_app_key, editable=False)
    label = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["tenant", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.key[:12]}… ({self.label or 'app key'})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class UserManager(DjangoUserManager):
    """Django's auth machinery (sessions, createsuperuser) needs an unscoped manager on the user model;
    API code reaches users only through `tenants.selectors`, which always take the tenant."""

    def create_superuser(self, username: str, email: str | None = None, password: str | None = None,
                         **extra_fields: object) -> User:
        extra_fields.setdefault("tenant", None)
        return super().create_superuser(username, email, password, **extra_fields)


def login_key(tenant_id: object | None, email: str) -> str:
    """The internal unique username: tenant id and case-folded email."""
    return f"{tenant_id or 'platform'}/{email.strip().lower()}"


class User(AbstractBaseUser, PermissionsMixin):
    """An end user of one tenant's app, or a staff member. Email is unique per tenant, ignoring case."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="users",
        help_text="Empty only for platform operators (superusers).",
    )
    username = models.CharField(max_length=320, unique=True, editable=False)
    email = models.EmailField(max_length=254)
    display_name = models.CharField(max_length=150, blank=True)
    # A public name other users of the tenant can send money to (unique per tenant, ignoring case).
    handle = models.CharField(max_length=30, null=True, blank=True, validators=[handle_validator])  # noqa: DJ001 (NULL: no handle, outside the unique constraint)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May log into the admin.")
    date_joined = models.DateTimeField(default=timezone.now)
    # Bumped when the password changes or all sessions are revoked: older access tokens stop working.
    auth_epoch = models.PositiveIntegerField(default=0, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "username"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["email"]

    class Meta:
        ordering = ("email",)
        constraints = [
            models.UniqueConstraint(Lower("email"), "tenant", name="user_email_unique_per_tenant"),
            models.UniqueConstraint(
                Lower("email"), condition=models.Q(tenant__isnull=True), name="user_email_unique_platform"
            ),
            models.UniqueConstraint(Lower("handle"), "tenant", condition=models.Q(handle__isnull=False),
                                    name="user_handle_unique_per_tenant"),
        ]

    def __str__(self) -> str:
        return self.email

    def save(self, *args: object, **kwargs: object) -> None:
        if not self.username:
            self.username = login_key(self.tenant_id, self.email)
        super().save(*args, **kwargs)


class Membership(TenantOwned):
    """A staff member's role in a tenant (for the admin)."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        SUPPORT = "support", "Support"
        VIEWER = "viewer", "Viewer"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="membership")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("user__email",)

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


ROLE_RANK = {
    Membership.Role.VIEWER: 0, Membership.Role.SUPPORT: 1, Membership.Role.ADMIN: 2, Membership.Role.OWNER: 3,
}


class AuthSession(TenantOwned):
    """One sign-in: the family of refresh tokens it rotates through. Access tokens carry its id (`sid`)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="auth_sessions")
    created_at = models.DateTimeField(default=timezone.now)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=32, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "revoked_at"])]


class RefreshToken(TenantOwned):
    """A single-use refresh token; only its SHA-256 is stored."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    session = models.ForeignKey(AuthSession, on_delete=models.CASCADE, related_name="refresh_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)


class AuditLogEntry(models.Model):
    """Who changed what through the admin (or an operator command). Append-only."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    actor = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor_repr = models.CharField(max_length=320)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.actor_repr} {self.action} {self.object_type} {self.object_repr}"
