"""`manage.py create_tenant SLUG --name NAME [--admin-email EMAIL]`: onboard a tenant from a script.

Prints one JSON object on stdout: slug, name, tenant id, app key and, with --admin-email, the owner's
email and a generated password (shown once).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from tenants import services
from tenants.models import Membership, Tenant


class Command(BaseCommand):
    help = "Create a tenant with an app key (and optionally its owner); prints JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--admin-email", help="create the tenant's owner with this email")

    def handle(self, *args: Any, slug: str, name: str, admin_email: str | None, **options: Any) -> None:
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"tenant {slug!r} already exists")
        try:
            with transaction.atomic():
                tenant, key = services.tenant_create(slug=slug, name=name, actor_repr="manage.py create_tenant")
                out: dict[str, Any] = {"slug": tenant.slug, "name": tenant.name, "tenant_id": str(tenant.pk),
                                       "app_key": key.key}
                if admin_email:
                    user, password = services.staff_create(tenant=tenant, email=admin_email,
                                                           role=Membership.Role.OWNER)
                    out["admin"] = {"email": user.email, "password": password, "role": "owner"}
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {', '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except Exception as exc:
            if exc.__class__.__name__ in {"PasswordTooWeak", "EmailTaken"}:
                raise CommandError(str(exc)) from exc
            raise
        self.stdout.write(json.dumps(out))
