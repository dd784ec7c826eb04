"""`manage.py balances_rotate_credentials`: re-encrypt every provider credential with the first key of
BALANCES_CREDENTIAL_KEYS (after putting a new key first); afterwards the old keys can be removed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from wallet.balances.crypto import InvalidToken, credentials_rotate_token
from wallet.balances.models import ProviderConfig


class Command(BaseCommand):
    help = "Re-encrypt stored provider credentials with the current primary key."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated = 0
        failed = []
        with transaction.atomic():
            rows = ProviderConfig.all_tenants.select_for_update().exclude(credentials_encrypted="").order_by("pk")
            for config in rows:
                try:
                    token = credentials_rotate_token(config.credentials_encrypted)
                except InvalidToken:
                    failed.append(str(config.pk))
                    continue
                ProviderConfig.all_tenants.filter(pk=config.pk).update(credentials_encrypted=token)
                rotated += 1
            if failed:
                raise CommandError(f"no configured key opens the credentials of {len(failed)} config(s): "
                                   f"{', '.join(failed)}; nothing was changed")
        self.stdout.write(f"rotated {rotated} credential(s)")
