"""DRF authentication: `Authorization: Bearer <access token>` within the app key's tenant."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from tenants.auth.sessions import user_for_access_token
from tenants.errors import AppKeyMissing, TokenInvalid
from tenants.models import User
from wallet.core.context import user_id_var


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
