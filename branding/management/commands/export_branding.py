"""`manage.py export_branding <tenant> [--release N] (--out DIR | --zip FILE)`: write a release's bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from branding.bundle import write_directory, write_zip
from branding.errors import BrandingNotPublished
from branding.export import release_bundle_files
from branding.selectors import release_current, release_get
from tenants.models import Tenant
from wallet.core.context import tenant_scope
from wallet.core.errors import NotFound


class Command(BaseCommand):
    help = "Export a tenant's branding release (default: the latest) as a directory or a reproducible zip."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="tenant slug")
        parser.add_argument("--release", type=int, default=None, help="release number (default: latest)")
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--out", type=Path, help="directory to write the bundle's files into")
        target.add_argument("--zip", type=Path, help="zip file to write")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant {options['tenant']!r}")
        with tenant_scope(tenant):
            try:
                release = (release_get(tenant=tenant, number=options["release"]) if options["release"]
                           else release_current(tenant=tenant))
            except (NotFound, BrandingNotPublished) as exc:
                raise CommandError(f"{tenant.slug}: no such release ({exc.detail})") from exc
            files = release_bundle_files(tenant=tenant, release=release)
        if options["zip"]:
            options["zip"].parent.mkdir(parents=True, exist_ok=True)
            write_zip(files, options["zip"])
            where = options["zip"]
        else:
            write_directory(files, options["out"])
            where = options["out"]
        self.stdout.write(f"{tenant.slug} release {release.number}: {len(files)} files -> {where}")
