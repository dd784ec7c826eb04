"""Reads of the money core. Every selector takes the tenant (and, for user data, the user) explicitly."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connections, router
from django.db.models import Q, QuerySet

from tenants.models import Tenant, User
from tenants.scoping import access_by_id
from wallet.core.bulk import SentQuery, model_from_row, pg_array
from wallet.ledger.errors import AssetNotEnabled, UnknownAsset
from wallet.ledger.models import Account, Asset, Hold, Posting, TenantAsset, Transfer


def tenant_asset_list(*, tenant: Tenant) -> QuerySet[TenantAsset]:
    return TenantAsset.objects.for_tenant(tenant).filter(enabled=True).select_related("asset")


def tenant_asset_by_code(*, tenant: Tenant, code: str) -> TenantAsset:
    """The tenant's policy row for the asset with this code (with the asset), in one query; distinct
    errors for an unknown asset and one the tenant does not offer."""
    code = code.strip().upper()
    policy = (TenantAsset.objects.for_tenant(tenant).filter(asset__code=code, enabled=True)
              .select_related("asset").first())
    if policy is not None:
        return policy
    if Asset.objects.filter(code=code).exists():
        raise AssetNotEnabled(asset=code)
    raise UnknownAsset(asset=code)


# (tenant id, code) -> (policy, monotonic time read). Read on every transfer; a change made in this
# process is seen at once (signals clear it), one made elsewhere within POLICY_CACHE_SECONDS.
_POLICIES: dict[tuple[Any, str], tuple[TenantAsset, float]] = {}


def tenant_asset_by_code_cached(*, tenant: Tenant, code: str) -> TenantAsset:
    """`tenant_asset_by_code`, cached per process for `LEDGER_POLICY_CACHE_SECONDS` (default 2)."""
    key = (tenant.pk, code.strip().upper())
    hit = _POLICIES.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < getattr(settings, "LEDGER_POLICY_CACHE_SECONDS", 2.0):
        return hit[0]
    policy = tenant_asset_by_code(tenant=tenant, code=code)
    if len(_POLICIES) > 10_000:
        _POLICIES.clear()
    _POLICIES[key] = (policy, now)
    return policy


def policy_cache_clear(**_: Any) -> None:
    _POLICIES.clear()


def asset_enabled_by_code(*, tenant: Tenant, code: str) -> Asset:
    """The asset with this code if the tenant offers it; distinct errors for unknown and not offered."""
    return tenant_asset_by_code(tenant=tenant, code=code).asset


def account_list(*, tenant: Tenant, user: User) -> QuerySet[Account]:
    return (Account.objects.for_tenant(tenant).filter(user=user, kind=Account.Kind.USER)
            .select_related("asset").order_by("asset__code"))


def access_account(*, tenant: Tenant, user: User, account_id: Any) -> Account:
    """One of the user's own accounts; 404 for anyone else's (same tenant or not)."""
    return access_by_id(Account, tenant=tenant, object_id=account_id,
                        queryset=Account.all_tenants.filter(user=user).select_related("asset"))


def account_get(*, tenant: Tenant, account_id: Any) -> Account:
    """An account of the tenant by id (services already proved it belongs to the caller)."""
    return Account.objects.for_tenant(tenant).select_related("asset").get(pk=account_id)


def account_postings(*, tenant: Tenant, account: Account, since: datetime | None = None,
                     until: datetime | None = None, kinds: list[str] | None = None) -> QuerySet[Posting]:
    queryset = Posting.objects.for_tenant(tenant).filter(account=account).select_related("entry", "asset")
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    if until is not None:
        queryset = queryset.filter(created_at__lt=until)
    if kinds:
        queryset = queryset.filter(entry__kind__in=kinds)
    return queryset


def transfer_list(*, tenant: Tenant, user: User) -> QuerySet[Transfer]:
    return (Transfer.objects.for_tenant(tenant).filter(Q(sender=user) | Q(recipient=user))
            .select_related("asset", "sender", "recipient"))


def access_transfer(*, tenant: Tenant, user: User, transfer_id: Any) -> Transfer:
    return access_by_id(Transfer, tenant=tenant, object_id=transfer_id,
                        queryset=transfer_list(tenant=tenant, user=user))


def hold_list(*, tenant: Tenant, user: User) -> QuerySet[Hold]:
    return Hold.objects.for_tenant(tenant).filter(account__user=user).select_related("account__asset")


def access_hold(*, tenant: Tenant, user: User, hold_id: Any) -> Hold:
    return access_by_id(Hold, tenant=tenant, object_id=hold_id, queryset=hold_list(tenant=tenant, user=user))


# What a transfer reads of its recipient (the id, and the counterparty shown to the sender); any other
# field is loaded by Django on first access, as for `.only()`. The password hash, for one, never is.
_USER_FIELDS = tuple(User._meta.get_field(name) for name in
                     ("id", "tenant", "email", "handle", "display_name", "is_active"))
_TENANT_FIELD = User._meta.get_field("tenant")
_ACTIVE_COLUMN = [field.name for field in _USER_FIELDS].index("is_active")
# lower(...) = ...: the form the unique indexes are built on (iexact's UPPER would scan). Plain SQL: it runs
# on every transfer batch, and the ORM's compilation cost more than the query.
_USER_TABLE, _ACCOUNT_TABLE = User._meta.db_table, Account._meta.db_table
_ID_FIELD = User._meta.get_field("id")
_ASSET_ID_FIELD = Account._meta.get_field("asset")
_USER_COLUMNS = ", ".join(field.column for field in _USER_FIELDS)
_PARTY_COLUMNS = (", ".join(f"u.{field.column}" for field in _USER_FIELDS)
                  + ", lower(u.email), lower(u.handle), a.asset_id, a.id")
# The parties of a batch of transfers: recipients by email or handle (active users only), senders by id,
# and their existing user accounts in the batch's assets (none: one row with NULLs). One arm per index
# (an OR of the three would scan the tenant's users).
_PARTIES_SQL_TEMPLATE = (
    f"WITH u AS (SELECT {_USER_COLUMNS} FROM {_USER_TABLE} "  # noqa: S608 (constant names)
    "WHERE tenant_id = %s AND is_active AND lower(email) {emails} "
    f"UNION SELECT {_USER_COLUMNS} FROM {_USER_TABLE} "
    "WHERE tenant_id = %s AND is_active AND handle IS NOT NULL AND lower(handle) {handles} "
    f"UNION SELECT {_USER_COLUMNS} FROM {_USER_TABLE} WHERE tenant_id = %s AND id {{senders}}) "
    f"SELECT {_PARTY_COLUMNS} FROM u "
    f"LEFT JOIN {_ACCOUNT_TABLE} a ON a.tenant_id = u.tenant_id AND a.user_id = u.id AND a.kind = 'user' "
    "AND a.asset_id {assets}"
)
_PARTIES_SQL = _PARTIES_SQL_TEMPLATE.format(emails="= ANY(%s::text[])", handles="= ANY(%s::text[])",
                                            senders="= ANY(%s::uuid[])", assets="= ANY(%s::uuid[])")


def recipient_lookup(text: str) -> tuple[str, str]:
    """How a transfer's `recipient` text is looked up: ("email", lowered) when it has an @ after its first
    character, else ("handle", lowered, without a leading @)."""
    text = text.strip()
    if "@" in text[1:]:
        return "email", text.lower()
    return "handle", text.lstrip("@").lower()


@dataclass(frozen=True)
class TransferParties:
    recipients: dict[str, User]  # by recipient text (see `recipient_lookup`); unknown texts are left out
    accounts: dict[tuple[UUID, UUID], UUID]  # (user id, asset id) -> existing user account id


def transfer_parties_find(*, tenant: Tenant, texts: Iterable[str], asset_ids: Sequence[UUID] = (),
                          sender_ids: Sequence[UUID] = ()) -> TransferParties:
    """For a batch of transfers, in one query: the active users of the tenant that its recipient texts name
    (email or handle, see `recipient_lookup`), and the existing user accounts in `asset_ids` of those
    recipients and of `sender_ids` (the group commit resolves a whole batch's parties at once; the ledger
    then locks those accounts without looking them up again). Users read here carry only what a transfer
    shows of its counterparty; any other field loads on first access, as for `.only()`."""
    return transfer_parties_send(tenant=tenant, texts=texts, asset_ids=asset_ids, sender_ids=sender_ids).result()


def transfer_parties_send(*, tenant: Tenant, texts: Iterable[str], asset_ids: Sequence[UUID] = (),
                          sender_ids: Sequence[UUID] = ()) -> PendingParties:
    """`transfer_parties_find` in two steps: this sends the query, `.result()` reads it (in a
    `bulk.pipeline`, statements sent in between share its round trip)."""
    lookups = {text: recipient_lookup(text) for text in texts}
    emails = sorted({value for column, value in lookups.values() if column == "email" and value})
    handles = sorted({value for column, value in lookups.values() if column == "handle" and value})
    senders = sorted(set(sender_ids))
    assets = sorted(set(asset_ids))
    if not emails and not handles and not senders:
        return PendingParties(tenant, lookups, None, None)
    connection = connections[router.db_for_read(User) or "default"]
    tenant_value = _TENANT_FIELD.get_db_prep_value(tenant.pk, connection)
    if connection.vendor == "postgresql":
        sql, params = _PARTIES_SQL, [tenant_value, pg_array(emails), tenant_value, pg_array(handles), tenant_value,
                                     pg_array(senders), pg_array(assets)]
    else:  # no arrays: IN lists (an empty one matches nothing)
        def marks(values: Sequence[Any]) -> str:
            return ", ".join(["%s"] * len(values)) or "NULL"
        sql = _PARTIES_SQL_TEMPLATE.format(emails=f"IN ({marks(emails)})", handles=f"IN ({marks(handles)})",
                                           senders=f"IN ({marks(senders)})", assets=f"IN ({marks(assets)})")
        params = [tenant_value, *emails, tenant_value, *handles, tenant_value,
                  *(_ID_FIELD.get_db_prep_value(u, connection) for u in senders),
                  *(_ASSET_ID_FIELD.get_db_prep_value(a, connection) for a in assets)]
    return PendingParties(tenant, lookups, connection, SentQuery(connection, sql, params))


class PendingParties:
    """The parties of `transfer_parties_send`, read with `result()` (once)."""

    def __init__(self, tenant: Tenant, lookups: dict[str, tuple[str, str]], connection: Any,
                 sent: SentQuery | None) -> None:
        self._tenant, self._lookups, self._connection, self._sent = tenant, lookups, connection, sent

    def result(self) -> TransferParties:
        if self._connection is None:
            return TransferParties({}, {})
        assert self._sent is not None, "result() reads the parties once"
        rows, self._sent = self._sent.fetchall(), None
        tenant, lookups, connection = self._tenant, self._lookups, self._connection
        width = len(_USER_FIELDS)
        wanted = {lookup for lookup in lookups.values() if lookup[1]}  # non-empty emails and handles
        by_key: dict[tuple[str, str], User] = {}
        accounts: dict[tuple[UUID, UUID], UUID] = {}
        built: set[Any] = set()
        for row in rows:
            user_id = _as_uuid(row[0])
            if row[width + 2] is not None:
                accounts[(user_id, _as_uuid(row[width + 2]))] = _as_uuid(row[width + 3])
            if user_id in built:
                continue
            built.add(user_id)
            keys = [key for key in (("email", row[width]), ("handle", row[width + 1])) if key in wanted]
            if not row[_ACTIVE_COLUMN]:
                keys = []
            if not keys:  # a sender only (or inactive): no user object needed
                continue
            user = model_from_row(connection, User, _USER_FIELDS, row[:width], {"tenant": tenant})
            for key in keys:
                by_key[key] = user
        recipients = {text: by_key[lookup] for text, lookup in lookups.items() if lookup in by_key}
        return TransferParties(recipients, accounts)


def _as_uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
