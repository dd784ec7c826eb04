"""Reads of the balances app. Every selector takes the tenant (and the user) explicitly."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from django.db import connections, router
from django.db.models import QuerySet

from tenants.models import Tenant, User
from tenants.scoping import access_by_id
from wallet.balances import conf
from wallet.balances.models import BalancePreference, LinkedBankAccount
from wallet.events.models import StreamCursor
from wallet.events.streams import USER_PREFIX, user_stream


def bank_account_list(*, tenant: Tenant, user: User) -> QuerySet[LinkedBankAccount]:
    """The user's active linked bank accounts, oldest first."""
    return (LinkedBankAccount.objects.for_tenant(tenant)
            .filter(user=user, status=LinkedBankAccount.Status.ACTIVE).order_by("created_at", "id"))


def access_bank_account(*, tenant: Tenant, user: User, bank_account_id: Any) -> LinkedBankAccount:
    """One of the user's own active linked accounts; 404 for anyone else's, a removed one or a bad id."""
    return access_by_id(LinkedBankAccount, tenant=tenant, object_id=bank_account_id,
                        queryset=bank_account_list(tenant=tenant, user=user))


def display_currency_of(*, tenant: Tenant, user: User) -> str:
    """The user's display currency (their preference, else `BALANCES_DEFAULT_CURRENCY`)."""
    chosen = list(BalancePreference.objects.for_tenant(tenant).filter(user=user)
                  .values_list("display_currency", flat=True)[:1])
    return chosen[0] if chosen else conf.default_currency()


_POSITION_SQL: dict[str, str] = {}


# Per-process copies of stream heads: (tenant hex, user hex) -> (head, when read (monotonic), mark then).
# `stream_heads_moved` (a commit listener of wallet.events: every commit of this process that wrote to a
# user's stream) gives the user a new mark, which voids the copy at once, even one being read meanwhile.
_heads: dict[tuple[str, str], tuple[int, float, int]] = {}
_marks: dict[tuple[str, str], int] = {}
_stamps = itertools.count(1)
_HEADS_MAX = 50_000


def stream_heads_moved(tenant_id: Any, streams: tuple[str, ...]) -> None:
    """Commit listener (registered in `BalancesConfig.ready`): this process committed events to `streams`
    of the tenant; forget its copies of those users' heads."""
    tenant_hex = getattr(tenant_id, "hex", None) or uuid.UUID(str(tenant_id)).hex
    if len(_marks) >= _HEADS_MAX:
        _marks.clear()
        _heads.clear()
    for stream in streams:
        if stream.startswith(USER_PREFIX):
            _marks[(tenant_hex, stream[len(USER_PREFIX):])] = next(_stamps)


def stream_heads_forget() -> None:
    _heads.clear()
    _marks.clear()


def stream_position(*, tenant: Tenant, user: User, max_age: float = 0.0, reread: bool = False) -> int:
    """The head of the user's event stream (0 before any event): one read on a unique index. Every ledger
    change of the user moves it (`account.balance_changed`), so a cached aggregate remembers it.

    With `max_age` > 0 (the warm read: `BALANCES_HEAD_CHECK_SECONDS`), a head this process read less than
    `max_age` seconds ago is reused, unless this process has committed events to the stream since
    (`stream_heads_moved`): a change committed by another process is seen within `max_age`, one committed
    by this process at once. Never inside a transaction (it may have written to the stream itself and its
    commit hooks have not run).

    Plain SQL on the hot path: the ORM's query building cost more than the query on a warm read."""
    alias = router.db_for_read(StreamCursor)
    connection = connections[alias]
    key = (tenant.pk.hex, user.pk.hex)
    mark = _marks.get(key, 0)
    cached = max_age > 0 and not connection.in_atomic_block
    if cached and not reread:
        hit = _heads.get(key)
        if hit is not None and hit[2] == mark and 0 <= time.monotonic() - hit[1] < max_age:
            return hit[0]
    read_at = time.monotonic()
    position = _read_position(connection, alias, tenant, user)
    if cached:
        if len(_heads) >= _HEADS_MAX:
            _heads.clear()
        _heads[key] = (position, read_at, mark)
    return position


def _read_position(connection: Any, alias: str, tenant: Tenant, user: User) -> int:
    sql = _POSITION_SQL.get(alias)
    if sql is None:
        quote = connection.ops.quote_name
        sql = (f"SELECT {quote('last_seq')} FROM {quote(StreamCursor._meta.db_table)} "  # noqa: S608
               f"WHERE {quote('tenant_id')} = %s AND {quote('stream')} = %s")
        _POSITION_SQL[alias] = sql
    tenant_id = StreamCursor._meta.get_field("tenant").get_db_prep_value(tenant.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_id, user_stream(user.pk)])
        row = cursor.fetchone()
    return int(row[0]) if row else 0
