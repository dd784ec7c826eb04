"""`manage.py balances_configure <tenant slug> <banking|prices> <provider> [--option k=v ...]`: set a
tenant's provider. Credentials come from the environment variable named by `--credentials-env` (a JSON
object), never from the command line (which other users of the machine can read)."""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenants.models import Tenant
from wallet.balances.crypto import credentials_encrypt
from wallet.balances.models import ProviderConfig


def _option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CommandError(f"--option takes key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


class Command(BaseCommand):
    help = "Configure a tenant's banking or price provider."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant")
        parser.add_argument("kind", choices=ProviderConfig.Kind.values)
        parser.add_argument("provider", choices=ProviderConfig.Provider.values)
        parser.add_argument("--option", action="append", default=[], help="key=value (value parsed as JSON)")
        parser.add_argument("--credentials-env", default="", help="name of an env var holding the credentials JSON")
        parser.add_argument("--disable", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant {options['tenant']!r}")
        values = dict(_option(text) for text in options["option"])
        defaults: dict[str, Any] = {"provider": options["provider"], "options": values,
                                    "enabled": not options["disable"], "updated_at": timezone.now()}
        if options["credentials_env"]:
            raw = os.environ.get(options["credentials_env"], "")
            try:
                credentials = json.loads(raw) if raw else {}
            except ValueError as exc:
                raise CommandError(f"{options['credentials_env']} is not JSON") from exc
            defaults["credentials_encrypted"] = credentials_encrypt(credentials)
        config, _ = ProviderConfig.all_tenants.update_or_create(tenant=tenant, kind=options["kind"], defaults=defaults)
        self.stdout.write(json.dumps({"tenant": tenant.slug, "kind": config.kind, "provider": config.provider,
                                      "options": config.options, "has_credentials": config.has_credentials}))
