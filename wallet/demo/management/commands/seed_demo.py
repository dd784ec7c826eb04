"""`manage.py seed_demo`: the demo tenant for `make run` (idempotent: running it twice changes nothing).

Creates tenant `demo` with an app key, two app users (funded once, in USD and EUR), a tenant owner for
the admin, and a platform superuser; enables USD, EUR and the local dev chain's ETH; configures the
sandbox bank and price providers and links a sandbox bank account for the first user. Passwords are fixed
development values and the command refuses to run in production.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from branding.demo import seed_sample_branding
from tenants import services
from tenants.models import AppKey, Membership, Tenant, User
from wallet.balances import services as balances
from wallet.balances.models import LinkedBankAccount, ProviderConfig
from wallet.ledger import services as ledger
from wallet.ledger.models import Asset, JournalEntry

DEMO_ASSETS = {"USD": 100_000, "EUR": 50_000, "ETH:31337": 0}  # asset -> starting balance (smallest unit)

DEMO_BANK_ACCOUNT = "sandbox-demo-checking"  # the sandbox bank knows every "sandbox-..." id

DEMO = {
    "slug": "demo",
    "name": "Demo Wallet",
    "app_user": ("alice@demo.example", "demo-password-alice"),
    "second_user": ("bob@demo.example", "demo-password-bob"),
    "owner": ("owner@demo.example", "demo-password-owner"),
    "superuser": ("admin@platform.example", "demo-password-admin"),
}


class Command(BaseCommand):
    help = "Seed the demo tenant, users and app key (development only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the credentials as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if getattr(settings, "PRODUCTION", False):
            raise CommandError("seed_demo refuses to run with production settings")
        with transaction.atomic():
            tenant = Tenant.objects.filter(slug=DEMO["slug"]).first()
            if tenant is None:
                tenant, _ = services.tenant_create(slug=DEMO["slug"], name=DEMO["name"],
                                                   actor_repr="manage.py seed_demo")
            key = AppKey.all_tenants.filter(tenant=tenant, revoked_at__isnull=True).order_by("created_at").first()
            if key is None:
                key = services.app_key_create(tenant=tenant, label="demo")
            for code in DEMO_ASSETS:
                ledger.tenant_asset_enable(tenant=tenant, asset=Asset.objects.get(code=code))
            for email, password in (DEMO["app_user"], DEMO["second_user"]):
                user = User.objects.filter(tenant=tenant, email__iexact=email).first()
                if user is None:
                    user = services.user_create(tenant=tenant, email=email, password=password,
                                                handle=email.split("@")[0])
                if not JournalEntry.all_tenants.filter(tenant=tenant, reference=f"fund:{user.pk}").exists():
                    for code, amount in DEMO_ASSETS.items():
                        if amount:
                            ledger.sandbox_fund(tenant=tenant, user=user, asset=Asset.objects.get(code=code),
                                                amount=amount, memo="Demo starting balance")
            # Balances: the sandbox bank and price table (no network), and a linked bank account for alice.
            for kind in (ProviderConfig.Kind.BANKING, ProviderConfig.Kind.PRICES):
                ProviderConfig.all_tenants.get_or_create(tenant=tenant, kind=kind,
                                                         defaults={"provider": ProviderConfig.Provider.SANDBOX})
            alice = User.objects.get(tenant=tenant, email__iexact=DEMO["app_user"][0])
            if not LinkedBankAccount.all_tenants.filter(tenant=tenant, user=alice).exists():
                balances.bank_account_link(tenant=tenant, user=alice, account_ref=DEMO_BANK_ACCOUNT)
            # The local dev chain (`make run` starts it): registered and offered, with deposit addresses.
            from chains.devchain import devchain_seed

            devchain_seed(tenant=tenant)
            owner_email, owner_password = DEMO["owner"]
            if not User.objects.filter(tenant=tenant, email__iexact=owner_email).exists():
                services.staff_create(tenant=tenant, email=owner_email, role=Membership.Role.OWNER,
                                      password=owner_password)
            su_email, su_password = DEMO["superuser"]
            if not User.objects.filter(tenant__isnull=True, email__iexact=su_email).exists():
                User.objects.create_superuser(username="admin", email=su_email, password=su_password)
        # Branding: a sample draft and, the first time, release 1 (publishing is its own durable transaction).
        seed_sample_branding(tenant=tenant, app_key=key.key)
        creds = {
            "tenant": tenant.slug,
            "app_key": key.key,
            "app_user": {"email": DEMO["app_user"][0], "password": DEMO["app_user"][1], "handle": "alice",
                         "funded": {"USD": "1000.00", "EUR": "500.00"},
                         "linked_bank_account": DEMO_BANK_ACCOUNT},
            "second_app_user": {"email": DEMO["second_user"][0], "password": DEMO["second_user"][1]},
            "tenant_owner": {"organisation": tenant.slug, "email": owner_email, "password": owner_password},
            "platform_admin": {"username": "admin", "password": su_password},
        }
        if options["json"]:
            self.stdout.write(json.dumps(creds))
            return
        self.stdout.write(json.dumps(creds, indent=2))
