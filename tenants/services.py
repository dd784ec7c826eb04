"""Writes of tenancy data: tenants, app keys, users, memberships, audit entries."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.auth.sessions import TokenPair, session_start, sessions_revoke_all
from tenants.errors import EmailTaken, HandleTaken, PasswordTooWeak, WrongPassword
from tenants.models import AppKey, AuditLogEntry, Membership, Tenant, User
from tenants.selectors import app_key_cache
from wallet.core.context import request_id_var

logger = logging.getLogger("tenants")


def _check_password_strength(password: str, user: User) -> None:
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise PasswordTooWeak(
            errors=[{"pointer": "/password", "code": e.code or "weak", "detail": str(e.message % (e.params or {}))}
                    for e in exc.error_list]
        ) from exc


def audit_record(
    *, tenant: Tenant | None, actor: User | None, action: str, obj: Any = None, object_type: str = "",
    changes: dict[str, Any] | None = None, ip: str | None = None, actor_repr: str = "",
) -> AuditLogEntry:
    """Append one audit entry (admin changes and operator commands)."""
    if obj is not None and not object_type:
        object_type = obj._meta.label
    return AuditLogEntry.objects.create(
        tenant=tenant, actor=actor, actor_repr=actor_repr or (actor.email if actor else "system"),
        action=action, object_type=object_type,
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "", changes=changes or {},
        request_id=request_id_var.get() or "", ip=ip,
    )


def tenant_create(*, slug: str, name: str, actor_repr: str = "system") -> tuple[Tenant, AppKey]:
    """Create a tenant with its first app key."""
    with transaction.atomic():
        tenant = Tenant(slug=slug, name=name)
        tenant.full_clean()
        tenant.save()
        key = AppKey.all_tenants.create(tenant=tenant, label="initial")
        audit_record(tenant=tenant, actor=None, actor_repr=actor_repr, action="tenant.create", obj=tenant)
    return tenant, key


def tenant_set_status(*, tenant: Tenant, status: str, actor: User | None = None) -> Tenant:
    with transaction.atomic():
        Tenant.objects.filter(pk=tenant.pk).update(status=status, updated_at=timezone.now())
        tenant.status = status
        audit_record(tenant=tenant, actor=actor, action=f"tenant.{status}", obj=tenant)
    app_key_cache.clear()
    return tenant


def app_key_create(*, tenant: Tenant, label: str = "") -> AppKey:
    return AppKey.all_tenants.create(tenant=tenant, label=label)


def app_key_revoke(*, tenant: Tenant, app_key: AppKey) -> AppKey:
    """Revoke one key; apps built with it stop working (within TENANT_CACHE_SECONDS)."""
    AppKey.all_tenants.filter(pk=app_key.pk, tenant_id=tenant.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    app_key.refresh_from_db()
    app_key_cache.clear()
    return app_key


def app_key_rotate(*, tenant: Tenant, revoke_previous: bool = False, label: str = "") -> tuple[AppKey,
                                                                                               list[AppKey]]:
    """Issue a new key. Previous keys stay live (shipped apps still use them) unless `revoke_previous`."""
    with transaction.atomic():
        previous = list(AppKey.all_tenants.select_for_update().filter(tenant=tenant, revoked_at__isnull=True))
        new_key = AppKey.all_tenants.create(tenant=tenant, label=label or "rotated")
        if revoke_previous and previous:
            AppKey.all_tenants.filter(pk__in=[k.pk for k in previous]).update(revoked_at=timezone.now())
        audit_record(tenant=tenant, actor=None, action="app_key.rotate", obj=new_key,
                     changes={"revoked_previous": revoke_previous, "previous": [str(k.pk) for k in previous]})
    app_key_cache.clear()
    return new_key, previous


def user_create(*, tenant: Tenant | None, email: str, password: str | None, display_name: str = "",
                is_staff: bool = False, handle: str | None = None) -> User:
    """Create a user of `tenant`; email (and handle) unique per tenant ignoring case (database constraints)."""
    email = User.objects.normalize_email(email.strip())
    handle = handle.strip().lower() if handle else None
    user = User(tenant=tenant, email=email, display_name=display_name, is_staff=is_staff, handle=handle)
    if password is None:
        user.set_unusable_password()
    else:
        _check_password_strength(password, user)
        user.set_password(password)
    if User.objects.filter(tenant=tenant, email__iexact=email).exists():
        raise EmailTaken()
    if handle and User.objects.filter(tenant=tenant, handle__iexact=handle).exists():
        raise HandleTaken()
    try:
        with transaction.atomic():
            user.save()
    except IntegrityError as exc:  # a concurrent registration won the race
        if handle and User.objects.filter(tenant=tenant, handle__iexact=handle).exists():
            raise HandleTaken() from exc
        raise EmailTaken() from exc
    return user


def user_register(*, tenant: Tenant, email: str, password: str, display_name: str = "",
                  handle: str | None = None) -> User:
    """Self-service sign-up from the app."""
    return user_create(tenant=tenant, email=email, password=password, display_name=display_name, handle=handle)


def user_change_password(*, user: User, current_password: str, new_password: str,
                         user_agent: str = "") -> TokenPair:
    """Change the password, end every session (and every access token), and open a fresh session."""
    if not user.check_password(current_password):
        raise WrongPassword()
    _check_password_strength(new_password, user)
    with transaction.atomic():
        user.set_password(new_password)
        user.auth_epoch += 1
        user.save(update_fields=["password", "auth_epoch"])
        sessions_revoke_all(user=user, reason="password_change")
        return session_start(user=user, user_agent=user_agent)


def staff_create(*, tenant: Tenant, email: str, role: str, password: str | None = None,
                 actor: User | None = None) -> tuple[User, str | None]:
    """Create a staff member of `tenant` with a role. Returns the user and a generated password if none
    was given (shown once to the operator)."""
    generated = None
    if password is None:
        generated = secrets.token_urlsafe(18)
        password = generated
    with transaction.atomic():
        user = user_create(tenant=tenant, email=email, password=password, is_staff=True)
        membership = Membership.all_tenants.create(tenant=tenant, user=user, role=role)
        audit_record(tenant=tenant, actor=actor, action="staff.create", obj=membership,
                     changes={"role": role, "email": user.email})
    return user, generated
