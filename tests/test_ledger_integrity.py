"""Append-only journal, ledger_verify, sandbox funding command."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from tenants.models import Tenant, User
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from wallet.ledger import services
from wallet.ledger.models import Account, ImmutableRowError, JournalEntry, Posting


@pytest.fixture
def transfer(tenant_a: Tenant, user_a: User):
    usd = enable(tenant_a, "USD")
    fund(user_a, 1_000)
    bob = UserFactory(tenant=tenant_a, email="bob@example.com")
    return services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=100)


def test_the_orm_refuses_to_change_or_delete_entries_and_postings(transfer) -> None:
    entry = JournalEntry.all_tenants.get(pk=transfer.entry_id)
    entry.memo = "edited"
    with pytest.raises(ImmutableRowError):
        entry.save()
    posting = Posting.all_tenants.filter(entry=entry).first()
    with pytest.raises(ImmutableRowError):
        posting.delete()
    assert JournalEntry.all_tenants.get(pk=entry.pk).memo == ""


def test_raw_sql_update_or_delete_of_a_posting_fails_on_postgresql(transfer) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger exists on PostgreSQL only (SQLite is the embedded default)")
    posting = Posting.all_tenants.filter(entry_id=transfer.entry_id).first()
    for sql in ("UPDATE ledger_posting SET amount = amount + 1 WHERE id = %s",
                "DELETE FROM ledger_posting WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [posting.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE ledger_journalentry SET memo = 'x' WHERE id = %s", [transfer.entry_id])
    assert Posting.all_tenants.get(pk=posting.pk).amount == posting.amount


def test_a_negative_balance_is_refused_by_the_database_on_postgresql(transfer, user_a: User) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the CHECK constraint exists on PostgreSQL only")
    with pytest.raises(DatabaseError), transaction.atomic():
        Account.all_tenants.filter(user=user_a).update(posted=-1)


def _verify(*args: str) -> tuple[bool, str]:
    out = StringIO()
    try:
        call_command("ledger_verify", *args, stdout=out)
    except CommandError:
        return False, out.getvalue()
    return True, out.getvalue()


def test_ledger_verify_passes_on_a_clean_ledger(transfer, tenant_a: Tenant) -> None:
    ok, output = _verify("--tenant", "tenant-a", "--json")
    assert ok
    report = json.loads(output)
    assert report == {"tenant": "tenant-a", "ok": True, "entries": 2, "postings": 4, "accounts": 3,
                      "problems": []}


def _tamper(sql: str, params: list) -> None:
    """Change rows behind the application's back, as a database superuser could (triggers bypassed)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, params)
        finally:
            if connection.vendor == "postgresql":
                cursor.execute("SET session_replication_role = DEFAULT")


def test_ledger_verify_catches_a_changed_posting(transfer) -> None:
    posting = Posting.all_tenants.filter(entry_id=transfer.entry_id, amount=100).get()
    _tamper("UPDATE ledger_posting SET amount = %s WHERE id = %s", ["101", posting.pk])
    ok, output = _verify("--tenant", "tenant-a")
    assert not ok
    assert "postings do not sum to zero" in output
    assert "hash mismatch" in output
    assert "sum of postings" in output


def test_ledger_verify_catches_a_changed_memo_and_a_wrong_balance(transfer, user_a: User) -> None:
    _tamper("UPDATE ledger_journalentry SET memo = %s WHERE id = %s", ["forged", transfer.entry_id.hex
                                                                     if connection.vendor == "sqlite"
                                                                     else transfer.entry_id])
    Account.all_tenants.filter(user=user_a).update(posted=5)
    ok, output = _verify()
    assert not ok
    assert "hash mismatch" in output
    assert "posted 5 != sum of postings 900" in output


def test_fund_command_credits_through_a_normal_entry(tenant_a: Tenant, user_a: User) -> None:
    enable(tenant_a, "USD")
    out = StringIO()
    call_command("fund", "tenant-a", "ALICE@example.com", "usd", "12.34", stdout=out)
    result = json.loads(out.getvalue())
    assert result["amount"] == "1234" and result["decimals"] == 2
    assert balance(user_a) == (1234, 0, 1234)
    entry = JournalEntry.all_tenants.get(pk=result["entry"])
    assert entry.kind == "funding"
    with pytest.raises(CommandError, match="at most 2 decimals"):
        call_command("fund", "tenant-a", "alice@example.com", "USD", "0.001", stdout=StringIO())
    assert _verify("--tenant", "tenant-a")[0]


def test_fund_is_refused_in_production(tenant_a: Tenant, user_a: User, settings) -> None:
    enable(tenant_a, "USD")
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="production"):
        call_command("fund", "tenant-a", "alice@example.com", "USD", "1", stdout=StringIO())
    assert balance(user_a) == (0, 0, 0)


def test_ledger_verify_checks_the_tenant_and_asset_copied_onto_postings(transfer, tenant_a: Tenant,
                                                                        tenant_b: Tenant) -> None:
    """Postings carry their account's tenant and asset without a foreign-key constraint (hot parent rows):
    ledger_verify is what catches a posting filed under another tenant or asset."""
    eur = enable(tenant_a, "EUR")
    posting = Posting.all_tenants.filter(entry_id=transfer.entry_id, amount=100).get()
    ids = (lambda value: value.hex) if connection.vendor == "sqlite" else (lambda value: value)
    _tamper("UPDATE ledger_posting SET asset_id = %s WHERE id = %s", [ids(eur.pk), posting.pk])
    ok, output = _verify("--tenant", "tenant-a")
    assert not ok
    assert f"posting {posting.pk} of entry {transfer.entry_id}: tenant or asset differs" in output

    _tamper("UPDATE ledger_posting SET asset_id = %s, tenant_id = %s WHERE id = %s",
            [ids(posting.asset_id), ids(tenant_b.pk), posting.pk])
    ok, output = _verify("--tenant", "tenant-a")
    assert not ok
    assert f"posting {posting.pk} on one of the tenant's accounts is recorded under another tenant" in output
    ok, output = _verify("--tenant", "tenant-b")
    assert not ok
    assert f"posting {posting.pk} of entry {transfer.entry_id}: tenant or asset differs" in output


def test_ledger_verify_checks_a_transfers_parties_against_its_entry(transfer, tenant_a: Tenant) -> None:
    """Sender, recipient and asset of a transfer are not foreign-key constraints (hot parent rows):
    ledger_verify checks them against the accounts the transfer's entry moved."""
    assert _verify("--tenant", "tenant-a")[0]
    carol = UserFactory(tenant=tenant_a, email="carol@example.com")
    ids = (lambda value: value.hex) if connection.vendor == "sqlite" else (lambda value: value)
    _tamper("UPDATE ledger_transfer SET recipient_id = %s WHERE id = %s", [ids(carol.pk), ids(transfer.pk)])
    ok, output = _verify("--tenant", "tenant-a")
    assert not ok
    assert f"transfer {transfer.pk}: sender, recipient or asset differ" in output
    _tamper("UPDATE ledger_transfer SET recipient_id = %s, sender_id = %s WHERE id = %s",
            [ids(transfer.sender_id), ids(transfer.recipient_id), ids(transfer.pk)])
    assert not _verify("--tenant", "tenant-a")[0]  # swapped: the debited account is not the sender's
    _tamper("UPDATE ledger_transfer SET recipient_id = %s, sender_id = %s WHERE id = %s",
            [ids(transfer.recipient_id), ids(transfer.sender_id), ids(transfer.pk)])
    assert _verify("--tenant", "tenant-a")[0]
