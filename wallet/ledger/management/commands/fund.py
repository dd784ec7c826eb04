"""`manage.py fund TENANT EMAIL ASSET AMOUNT`: sandbox funding through a normal ledger entry.

AMOUNT is in the asset's display unit ("100.50" USD is 10050 cents); `--minor` takes the smallest unit.
Refused with production settings.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import Tenant, User
from wallet.core.errors import ApiError
from wallet.ledger import services
from wallet.ledger.models import Asset


def to_minor(text: str, decimals: int) -> int:
    """'100.50' with 2 decimals -> 10050; refuses more fraction digits than the asset has."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise CommandError(f"not an amount: {text!r}") from exc
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value() or scaled <= 0:
        raise CommandError(f"{text} is not a positive amount with at most {decimals} decimals")
    return int(scaled)


class Command(BaseCommand):
    help = "Credit a user from the tenant's sandbox external account (development and tests only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant")
        parser.add_argument("email")
        parser.add_argument("asset")
        parser.add_argument("amount")
        parser.add_argument("--minor", action="store_true", help="AMOUNT is in the smallest unit")

    def handle(self, *args: Any, tenant: str, email: str, asset: str, amount: str, minor: bool,
               **options: Any) -> None:
        if getattr(settings, "PRODUCTION", False):
            raise CommandError("sandbox funding is refused with production settings")
        tenant_row = Tenant.objects.filter(slug=tenant).first()
        if tenant_row is None:
            raise CommandError(f"no tenant {tenant!r}")
        user = User.objects.filter(tenant=tenant_row, email__iexact=email).first()
        if user is None:
            raise CommandError(f"no user {email!r} in {tenant}")
        asset_row = Asset.objects.filter(code=asset.upper()).first()
        if asset_row is None:
            raise CommandError(f"no asset {asset!r}")
        units = int(amount) if minor else to_minor(amount, asset_row.decimals)
        try:
            entry = services.sandbox_fund(tenant=tenant_row, user=user, asset=asset_row, amount=units)
        except ApiError as error:
            raise CommandError(f"{error.code}: {error.detail}") from error
        self.stdout.write(json.dumps({"tenant": tenant, "email": user.email, "asset": asset_row.code,
                                      "amount": str(units), "decimals": asset_row.decimals,
                                      "entry": str(entry.pk), "seq": entry.seq}))
