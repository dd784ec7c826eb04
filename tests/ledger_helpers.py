"""Helpers for money tests: enable assets, fund users, read balances."""

from __future__ import annotations

from tenants.models import Tenant, User
from wallet.ledger import services
from wallet.ledger.models import Account, Asset


def asset(code: str) -> Asset:
    services.assets_catalogue_ensure()  # transactional tests flush the migration's rows
    return Asset.objects.get(code=code)


def enable(tenant: Tenant, code: str = "USD", *, max_per_transfer: int | None = None,
           daily_limit: int | None = None) -> Asset:
    row = asset(code)
    services.tenant_asset_enable(tenant=tenant, asset=row, max_per_transfer=max_per_transfer,
                                 daily_limit_per_user=daily_limit)
    return row


def fund(user: User, amount: int, code: str = "USD") -> None:
    services.sandbox_fund(tenant=user.tenant, user=user, asset=asset(code), amount=amount)


def account(user: User, code: str = "USD") -> Account:
    ids = services.user_accounts_ensure(tenant=user.tenant, pairs=[(user.pk, asset(code).pk)])
    return Account.all_tenants.select_related("asset").get(pk=next(iter(ids.values())))


def balance(user: User, code: str = "USD") -> tuple[int, int, int]:
    """(posted, held, available) of the user's account."""
    row = account(user, code)
    return row.posted, row.held, row.available


def terminate_own_backend() -> int:
    """End this thread's PostgreSQL backend from another connection, as a crash or a network cut would (the
    next statement on this connection fails with OperationalError); return the backend's pid."""
    from django.db import connection, connections

    pid = connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    return pid
