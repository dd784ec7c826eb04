"""Sign-in sessions: access tokens, rotating single-use refresh tokens, reuse detection, revocation."""

from __future__ import annotations

import copy
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tenants.auth.jwt import issue_access_token, verify_access_token
from tenants.errors import RefreshTokenReused, TokenInvalid, TokenRevoked, TokenTenantMismatch
from tenants.models import AuthSession, RefreshToken, Tenant, User
from wallet.core.bulk import hot_cursor, model_from_row


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
            RefreshToken.all_tenants.select_for_update(of=("self",))
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
            auth_state_cache.discard(session_id=session.pk)
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
    auth_state_cache.discard(session_id=session_id)


def session_revoke_by_refresh(*, tenant: Tenant, refresh_token: str) -> None:
    row = RefreshToken.all_tenants.filter(token_hash=_hash(refresh_token), tenant_id=tenant.pk).first()
    if row is None:
        raise TokenInvalid("Unknown refresh token.")
    session_revoke(tenant=tenant, session_id=row.session_id)


def sessions_revoke_all(*, user: User, reason: str) -> None:
    AuthSession.all_tenants.filter(user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoke_reason=reason
    )
    auth_state_cache.discard(user_id=user.pk)


class _AuthStateCache:
    """Per-process memory of (session, user) pairs found live, for `AUTH_CACHE_SECONDS` (default 2 s).

    Authenticated requests then need no query at all. A revocation, password change or deactivation
    clears the entry at once in the process that made it, and every other process stops accepting the
    session within `AUTH_CACHE_SECONDS`; set it to 0 to check the database on every request.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str, str], tuple[float, User]] = {}
        self._next_sweep = 0.0

    def get(self, key: tuple[str, str, str]) -> User | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        return copy.copy(entry[1])  # callers may change their copy; the cached one stays as loaded

    def put(self, key: tuple[str, str, str], user: User) -> None:
        ttl = settings.AUTH_CACHE_SECONDS
        if ttl <= 0:
            return
        now = time.monotonic()
        if now >= self._next_sweep:
            # Expired entries go at most one TTL after expiring: a long-lived process (the stream's, with
            # thousands of sockets authenticated once) does not keep a user copy per socket forever.
            self._entries = {k: v for k, v in list(self._entries.items()) if v[0] >= now}
            self._next_sweep = now + max(ttl, 1.0)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (now + ttl, copy.copy(user))

    def discard(self, *, session_id: Any = None, user_id: Any = None) -> None:
        session_id = str(session_id) if session_id is not None else None
        user_id = str(user_id) if user_id is not None else None
        for key in [k for k in self._entries if k[0] == session_id or k[1] == user_id]:
            self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


auth_state_cache = _AuthStateCache()

_LIVE_USER_SQL: str | None = None


def _user_with_live_session(*, user_id: str, tenant: Tenant, session_id: str) -> User | None:
    """The active user of `tenant` with `session_live` set, in one pre-built query, built into a model
    instance as the ORM would (this runs for each active token about every AUTH_CACHE_SECONDS per process;
    building the query, then the instance, through the ORM cost more than executing it)."""
    global _LIVE_USER_SQL
    if _LIVE_USER_SQL is None:
        user_table = connection.ops.quote_name(User._meta.db_table)
        session_table = connection.ops.quote_name(AuthSession._meta.db_table)
        columns = ", ".join(f"u.{connection.ops.quote_name(f.column)}" for f in User._meta.concrete_fields)
        _LIVE_USER_SQL = (
            f"SELECT {columns}, EXISTS (SELECT 1 FROM {session_table} s WHERE s.id = %s AND s.user_id = u.id"  # noqa: S608 (identifiers from model metadata)
            f" AND s.revoked_at IS NULL) AS session_live FROM {user_table} u"
            " WHERE u.id = %s AND u.tenant_id = %s AND u.is_active"
        )
    pk = User._meta.pk
    try:
        params = [pk.get_db_prep_value(pk.to_python(value), connection)
                  for value in (session_id, user_id, tenant.pk)]
    except Exception:
        return None
    with hot_cursor(connection) as cursor:
        cursor.execute(_LIVE_USER_SQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    user = model_from_row(connection, User, User._meta.concrete_fields, row[:-1])
    user.session_live = bool(row[-1])
    return user


def user_for_access_token(*, tenant: Tenant, token: str) -> tuple[User, dict[str, Any]]:
    """Resolve a bearer token to its user within `tenant`, in one query.

    Refuses another tenant's token, a revoked session, an inactive user, and tokens minted before the
    user's last password change (auth epoch).
    """
    claims = verify_access_token(token)
    if claims["tid"] != str(tenant.pk):
        raise TokenTenantMismatch()
    key = (claims["sid"], claims["sub"], claims["tid"])
    user = auth_state_cache.get(key)
    if user is None:
        user = _user_with_live_session(user_id=claims["sub"], tenant=tenant, session_id=claims["sid"])
        if user is None or not user.session_live:
            raise TokenRevoked()
        auth_state_cache.put(key, user)
    if user.auth_epoch != claims["ep"]:
        raise TokenRevoked()
    user.tenant = tenant  # already loaded and checked: spare a query
    return user, claims
