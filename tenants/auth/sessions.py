"""Sign-in sessions: access tokens, rotating single-use refresh tokens, reuse detection, revocation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from tenants.auth.jwt import issue_access_token, verify_access_token
from tenants.errors import RefreshTokenReused, TokenInvalid, TokenRevoked, TokenTenantMismatch
from tenants.models import AuthSession, RefreshToken, Tenant, User


@dataclass(frozen=True)
class TokenPair:
    access: str
    access_expires_at: datetime
    refresh: str
    refresh_expires_at: datetime
    session_id: str

    def as_response(self) -> dict[str, Any]:
        now = timezone.now()
        return {
            "token_type": "Bearer",
            "access": self.access,
            "expires_in": int((self.access_expires_at - now).total_seconds()),
            "refresh": self.refresh,
            "refresh_expires_in": int((self.refresh_expires_at - now).total_seconds()),
        }


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_refresh(*, session: AuthSession) -> tuple[str, RefreshToken]:
    raw = "rt_" + secrets.token_urlsafe(32)
    row = RefreshToken.all_tenants.create(
        tenant_id=session.tenant_id, session=session, token_hash=_hash(raw),
        expires_at=timezone.now() + settings.JWT_REFRESH_TTL,
    )
    return raw, row


def _pair(*, user: User, session: AuthSession) -> TokenPair:
    raw, row = _new_refresh(session=session)
    access, access_expires = issue_access_token(
        user_id=str(user.pk), tenant_id=str(user.tenant_id), session_id=str(session.pk),
        auth_epoch=user.auth_epoch,
    )
    return TokenPair(access=access, access_expires_at=access_expires, refresh=raw,
                     refresh_expires_at=row.expires_at, session_id=str(session.pk))


def session_start(*, user: User, user_agent: str = "") -> TokenPair:
    """Open a session for a signed-in user and issue its first token pair."""
    with transaction.atomic():
        session = AuthSession.all_tenants.create(
            tenant_id=user.tenant_id, user=user, user_agent=user_agent[:300]
        )
        return _pair(user=user, session=session)


def session_refresh(*, tenant: Tenant, refresh_token: str) -> TokenPair:
    """Rotate a refresh token. A token presented a second time revokes its whole session (family)."""
    reused = False
    with transaction.atomic():
        row = (
            RefreshToken.all_tenants.select_for_update()
            .select_related("session", "session__user")
            .filter(token_hash=_hash(refresh_token))
            .first()
        )
        if row is None:
            raise TokenInvalid("Unknown refresh token.")
        if row.tenant_id != tenant.pk:
            raise TokenTenantMismatch()
        session = row.session
        now = timezone.now()
        if session.revoked_at is not None:
            raise TokenRevoked()
        if row.used_at is not None:
            # Someone replayed a rotated token: assume theft, end the session for everyone holding it.
            AuthSession.all_tenants.filter(pk=session.pk).update(revoked_at=now, revoke_reason="reuse")
            reused = True
        elif row.expires_at <= now or not session.user.is_active:
            raise TokenInvalid("The refresh token has expired.")
        else:
            RefreshToken.all_tenants.filter(pk=row.pk).update(used_at=now)
            AuthSession.all_tenants.filter(pk=session.pk).update(refreshed_at=now)
            return _pair(user=session.user, session=session)
    # Raised after the commit, so that the revocation above sticks.
    assert reused
    raise RefreshTokenReused()


def session_revoke(*, tenant: Tenant, session_id: Any, reason: str = "logout") -> None:
    """End one session: its refresh tokens and access tokens stop working at once."""
    AuthSession.all_tenants.filter(pk=session_id, tenant_id=tenant.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoke_reason=reason
    )


def session_revoke_by_refresh(*, tenant: Tenant, refresh_token: str) -> None:
    row = RefreshToken.all_tenants.filter(token_hash=_hash(refresh_token), tenant_id=tenant.pk).first()
    if row is None:
        raise TokenInvalid("Unknown refresh token.")
    session_revoke(tenant=tenant, session_id=row.session_id)


def sessions_revoke_all(*, user: User, reason: str) -> None:
    AuthSession.all_tenants.filter(user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoke_reason=reason
    )


def user_for_access_token(*, tenant: Tenant, token: str) -> tuple[User, dict[str, Any]]:
    """Resolve a bearer token to its user within `tenant`, in one query.

    Refuses another tenant's token, a revoked session, an inactive user, and tokens minted before the
    user's last password change (auth epoch).
    """
    claims = verify_access_token(token)
    if claims["tid"] != str(tenant.pk):
        raise TokenTenantMismatch()
    user = (
        User.objects.filter(pk=claims["sub"], tenant_id=tenant.pk, is_active=True)
        .annotate(
            session_live=Exists(
                AuthSession.all_tenants.filter(pk=claims["sid"], user_id=OuterRef("pk"),
                                               revoked_at__isnull=True)
            )
        )
        .first()
    )
    if user is None or not user.session_live or user.auth_epoch != claims["ep"]:
        raise TokenRevoked()
    user.tenant = tenant  # already loaded and checked: spare a query
    return user, claims
