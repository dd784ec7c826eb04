"""`manage.py ledger_verify [--tenant SLUG]`: check hash chains, zero sums and balances; non-zero exit on
any mismatch."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import Tenant
from wallet.ledger.verify import ledger_verify


class Command(BaseCommand):
    help = "Verify the ledger of one tenant (or all): hash chain, zero-sum entries, balances."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="tenant slug (default: every tenant)")
        parser.add_argument("--json", action="store_true", help="print one JSON object per tenant")

    def handle(self, *args: Any, tenant: str | None, **options: Any) -> None:
        as_json = options["json"]
        tenants = Tenant.objects.filter(slug=tenant) if tenant else Tenant.objects.all()
        if tenant and not tenants.exists():
            raise CommandError(f"no tenant {tenant!r}")
        failed = False
        for item in tenants.order_by("slug"):
            report = ledger_verify(tenant=item)
            failed = failed or not report.ok
            if as_json:
                self.stdout.write(json.dumps({"tenant": report.tenant, "ok": report.ok, "entries": report.entries,
                                               "postings": report.postings, "accounts": report.accounts,
                                               "problems": report.problems}))
            else:
                status = "ok" if report.ok else "FAILED"
                self.stdout.write(f"{report.tenant}: {status} ({report.entries} entries, {report.postings} "
                                  f"postings, {report.accounts} accounts)")
                for text in report.problems:
                    self.stdout.write(f"  - {text}")
        if failed:
            raise CommandError("ledger verification failed")


