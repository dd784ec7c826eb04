"""Reads of idempotency records. The tenant is always explicit."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.db import connections, router

from tenants.models import Tenant, User
from wallet.idempotency.models import IdempotencyRecord
from wallet.idempotency.sql import quote_identifier as _quote

_COLUMNS = ("id", "fingerprint", "response_status", "response_body", "response_content_type", "response_location")


@dataclass(frozen=True)
class KeyRecord:
    """What answering a key needs of its record."""

    id: int
    fingerprint: str
    response_status: int | None
    response_body: bytes
    response_content_type: str
    response_location: str

    @property
    def is_complete(self) -> bool:
        return self.response_status is not None


@functools.cache
def _record_sql() -> str:
    meta = IdempotencyRecord._meta
    columns = ", ".join(_quote(meta.get_field(name).column) for name in _COLUMNS)
    where = " AND ".join(f"{_quote(meta.get_field(name).column)} = %s" for name in ("tenant", "user", "key"))
    # Identifiers come from the model and are quoted; every value is a query parameter.
    return f"SELECT {columns} FROM {_quote(meta.db_table)} WHERE {where}"  # noqa: S608


def idempotency_record_get(*, tenant: Tenant, user: User, key: str) -> KeyRecord | None:
    """The record of `key` for (tenant, user), committed or written by this transaction, or None.

    Raw SQL on the unique index: every retry and every duplicate runs this, and the ORM's query
    compilation and model building cost twice the round trip itself.
    """
    connection = connections[router.db_for_read(IdempotencyRecord) or "default"]
    meta = IdempotencyRecord._meta
    params = [meta.get_field(name).get_db_prep_value(value, connection)
              for name, value in (("tenant", tenant.pk), ("user", user.pk), ("key", key))]
    with connection.cursor() as cursor:
        cursor.execute(_record_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None
    record_id, fingerprint, status, body, content_type, location = row
    return KeyRecord(id=record_id, fingerprint=fingerprint, response_status=status, response_body=bytes(body),
                     response_content_type=content_type, response_location=location)
