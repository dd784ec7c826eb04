"""Authentication backends: by (tenant, email) for app users and tenant staff."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from tenants.models import Tenant, User


class TenantEmailBackend(ModelBackend):
    """`authenticate(request, tenant=..., email=..., password=...)`; tenant None means platform staff.

    Runs the password hasher for unknown emails as well, so that timing does not reveal which emails
    have accounts.
    """

    def authenticate(  # type: ignore[override]
        self, request: HttpRequest | None, tenant: Tenant | None = None, email: str | None = None,
        password: str | None = None, **kwargs: Any,
    ) -> User | None:
        if email is None or password is None or "username" in kwargs:
            return None
        user = (
            User.objects.filter(tenant=tenant, email__iexact=email.strip()).select_related("tenant").first()
        )
        if user is None:
            User().set_password(password)  # equalise timing with the wrong-password path
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None
