"""Tenant and user resolution for websocket (ASGI) scopes.

The app key comes from the `X-App-Key` header or, for browsers that cannot set headers, the `app_key`
query parameter (it is public). An access token is accepted only in the `Authorization` header here;
consumers also accept it in the first message. A token in the URL is refused: URLs end up in logs.

`socket_auth(scope)` answers once per connection, without copying the scope or its headers (the stream
holds 10,000 sockets per process: every copy kept per socket counts). `TenantAuthMiddleware` puts the same
answer in a copy of the scope for Channels-style consumers.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from tenants.auth.sessions import user_for_access_token
from tenants.middleware import resolve_app_tenant
from wallet.core.context import tenant_var, user_id_var
from wallet.core.errors import ApiError

URL_TOKEN_PARAMS = {"token", "access_token", "access", "jwt", "authorization"}


class SocketAuth(NamedTuple):
    tenant: Any = None  # the app key's tenant (shared: cached per app key)
    user: Any = None  # the token's user, when an Authorization header came
    claims: dict[str, Any] | None = None
    error: str | None = None  # the error code to close with
    origin: str | None = None  # the Origin header (browsers)


@database_sync_to_async
def _resolve(app_key: str | None, token: str | None) -> tuple[Any, Any, Any]:
    tenant = resolve_app_tenant(app_key)
    if token is None:
        return tenant, None, None
    user, claims = user_for_access_token(tenant=tenant, token=token)
    return tenant, user, claims


async def socket_auth(scope: dict[str, Any]) -> SocketAuth:
    """The tenant (app key), the user (bearer token) and the origin of a websocket handshake, or the error."""
    app_key = authorization = origin = None
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"x-app-key":
            app_key = value.decode("latin-1")
        elif lowered == b"authorization":
            authorization = value.decode("latin-1")
        elif lowered == b"origin":
            origin = value.decode("latin-1")
    query_string = scope.get("query_string", b"")
    if query_string:
        for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            lowered = key.lower()
            if lowered in URL_TOKEN_PARAMS:
                return SocketAuth(error="token_in_url", origin=origin)
            if key == "app_key" and not app_key:
                app_key = value
    token = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" and value.strip() else ""
    try:
        if token == "":
            from tenants.errors import TokenInvalid

            raise TokenInvalid()
        tenant, user, claims = await _resolve(app_key or None, token)
    except ApiError as error:
        return SocketAuth(error=error.code, origin=origin)
    return SocketAuth(tenant=tenant, user=user, claims=claims, origin=origin)


class TenantAuthMiddleware(BaseMiddleware):
    """`scope["tenant"]`, `["user"]`, `["auth_claims"]`, `["auth_error"]`, `["origin"]` for the inner app."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await super().__call__(scope, receive, send)
        auth = await socket_auth(scope)
        scope = dict(scope, tenant=auth.tenant, user=auth.user, auth_claims=auth.claims, auth_error=auth.error,
                     origin=auth.origin)
        tenant_token = tenant_var.set(auth.tenant)
        user_token = user_id_var.set(str(auth.user.pk) if auth.user else None)
        try:
            return await super().__call__(scope, receive, send)
        finally:
            user_id_var.reset(user_token)
            tenant_var.reset(tenant_token)
