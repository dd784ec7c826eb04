"""DRF authentication: `Authorization: Bearer <access token>` within the app key's tenant."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from tenants.auth.sessions import user_for_access_token
from tenants.errors import AppKeyMissing, TokenInvalid
from tenants.models import User
from wallet.core.context import user_id_var
from wallet.core.errors import ApiError


class AccessTokenAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, dict[str, Any]] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenInvalid("Use 'Authorization: Bearer <access token>'.")
        tenant = getattr(request._request, "tenant", None)
        if tenant is None:
            raise AppKeyMissing()
        user, claims = user_for_access_token(tenant=tenant, token=token.strip())
        user_id_var.set(str(user.pk))
        return user, claims

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def bearer_user(request: HttpRequest) -> User | None:
    """For the plain Django views that serve a hot route's common request without DRF's dispatch: the user
    of a well-formed `Authorization: Bearer` header, as `AccessTokenAuthentication` finds it (same helper,
    same per-process caches), or None for anything else (no tenant, no or bad header, invalid token), for
    which the view hands the request to its DRF view, which answers with the usual problem+json error."""
    tenant = getattr(request, "tenant", None)
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if tenant is None or scheme.lower() != "bearer" or not token:
        return None
    try:
        user, _ = user_for_access_token(tenant=tenant, token=token)
    except ApiError:
        return None
    user_id_var.set(str(user.pk))
    request.user = user  # the request log reads it, as after DRF's authentication
    return user
