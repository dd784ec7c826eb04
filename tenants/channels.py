"""Tenant and user resolution for websocket (ASGI) scopes.

The app key comes from the `X-App-Key` header or, for browsers that cannot set headers, the `app_key`
query parameter (it is public). An access token is accepted only in the `Authorization` header here;
consumers also accept it in the first message. A token in the URL is refused: URLs end up in logs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from tenants.auth.sessions import user_for_access_token
from tenants.middleware import resolve_app_tenant
from wallet.core.context import tenant_var, user_id_var
from wallet.core.errors import ApiError

URL_TOKEN_PARAMS = {"token", "access_token", "access", "jwt", "authorization"}


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


@database_sync_to_async
def _resolve(app_key: str | None, token: str | None) -> tuple[Any, Any, Any]:
    tenant = resolve_app_tenant(app_key)
    if token is None:
        return tenant, None, None
    user, claims = user_for_access_token(tenant=tenant, token=token)
    return tenant, user, claims


class TenantAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await super().__call__(scope, receive, send)
        headers = _headers(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        scope = dict(scope)
        scope.update(tenant=None, user=None, auth_claims=None, auth_error=None, origin=headers.get("origin"))
        if URL_TOKEN_PARAMS & {key.lower() for key in query}:
            scope["auth_error"] = "token_in_url"
            return await super().__call__(scope, receive, send)
        app_key = headers.get("x-app-key") or (query.get("app_key") or [None])[0]
        token = None
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" and value.strip() else ""
        try:
            if token == "":
                from tenants.errors import TokenInvalid

                raise TokenInvalid()
            tenant, user, claims = await _resolve(app_key, token)
        except ApiError as error:
            scope["auth_error"] = error.code
            return await super().__call__(scope, receive, send)
        scope.update(tenant=tenant, user=user, auth_claims=claims)
        tenant_token = tenant_var.set(tenant)
        user_token = user_id_var.set(str(user.pk) if user else None)
        try:
            return await super().__call__(scope, receive, send)
        finally:
            user_id_var.reset(user_token)
            tenant_var.reset(tenant_token)
