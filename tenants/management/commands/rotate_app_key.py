"""`manage.py rotate_app_key SLUG [--revoke-previous]`: issue a new app key; prints JSON."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants import services
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Issue a new app key for a tenant. Previous keys stay live unless --revoke-previous."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--revoke-previous", action="store_true",
                            help="revoke the tenant's other keys at once (apps built with them stop working)")
        parser.add_argument("--label", default="")

    def handle(self, *args: Any, slug: str, revoke_previous: bool, label: str, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"no tenant {slug!r}")
        new_key, previous = services.app_key_rotate(tenant=tenant, revoke_previous=revoke_previous, label=label)
        self.stdout.write(json.dumps({
            "slug": tenant.slug,
            "app_key": new_key.key,
            "previous_keys": [{"id": str(k.pk), "key": k.key, "revoked": revoke_previous} for k in previous],
        }))
