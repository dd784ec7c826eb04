"""`manage.py branding_build_token <tenant> [--label L] [--rotate] [--revoke PREFIX] [--list]`."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from branding import services
from branding.selectors import build_token_list
from tenants.models import Tenant
from wallet.core.context import tenant_scope


class Command(BaseCommand):
    help = ("Create (default), rotate (revoke all, create one), revoke or list a tenant's read-only branding "
            "build tokens. A new token is printed once; only its hash is stored.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="tenant slug")
        parser.add_argument("--label", default="", help="what the token is for (e.g. 'github actions')")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--rotate", action="store_true", help="revoke every live token, then create one")
        action.add_argument("--revoke", metavar="PREFIX", help="revoke the live token whose prefix is this")
        action.add_argument("--list", action="store_true", help="list tokens (prefixes only)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant {options['tenant']!r}")
        with tenant_scope(tenant):
            if options["list"]:
                for token in build_token_list(tenant=tenant):
                    state = "revoked" if token.revoked_at else "live"
                    self.stdout.write(f"{token.prefix}  {state:7}  {token.label}  {token.created_at:%Y-%m-%d}")
                return
            if options["revoke"]:
                token = build_token_list(tenant=tenant).filter(prefix=options["revoke"],
                                                               revoked_at__isnull=True).first()
                if token is None:
                    raise CommandError(f"no live token with prefix {options['revoke']!r}")
                services.build_token_revoke(tenant=tenant, token=token)
                self.stdout.write(f"revoked {token.prefix}")
                return
            create = services.build_token_rotate if options["rotate"] else services.build_token_create
            token, raw = create(tenant=tenant, label=options["label"], actor_repr="manage.py branding_build_token")
        self.stdout.write(json.dumps({"tenant": tenant.slug, "prefix": token.prefix, "token": raw}))
