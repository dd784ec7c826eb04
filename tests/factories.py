"""factory-boy factories that create rows through the services (never around them)."""

from __future__ import annotations

from typing import Any

import factory

from tenants import services
from tenants.models import Tenant, User

DEFAULT_PASSWORD = "correct-horse-battery"


class TenantFactory(factory.Factory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())

    @classmethod
    def _create(cls, model_class: type[Tenant], *args: Any, **kwargs: Any) -> Tenant:
        tenant, _ = services.tenant_create(slug=kwargs["slug"], name=kwargs["name"])
        return tenant


class UserFactory(factory.Factory):
    class Meta:
        model = User

    tenant = factory.SubFactory(TenantFactory)
    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = DEFAULT_PASSWORD
    display_name = ""

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        return services.user_create(tenant=kwargs["tenant"], email=kwargs["email"], password=kwargs["password"],
                                    display_name=kwargs["display_name"])
