"""The hot-path helpers of the money core: set-based writes, plain-SQL lookups and per-process caches."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tenants.models import Tenant, User
from tests.factories import UserFactory
from tests.ledger_helpers import enable, fund
from wallet.core import bulk
from wallet.core.ids import uuid7
from wallet.ledger import selectors
from wallet.ledger.errors import AssetNotEnabled
from wallet.ledger.models import Account, Asset, Transfer
from wallet.ledger.services import transfer_create
from wallet.ledger.verify import ledger_verify


@pytest.mark.parametrize("count", [1, bulk.VALUES_MAX_ROWS, bulk.VALUES_MAX_ROWS + 1, bulk.DEFERRED_VALUES_MAX_ROWS,
                                   bulk.DEFERRED_VALUES_MAX_ROWS + 1, 300])
def test_transfers_are_written_the_same_by_insert_and_by_copy(tenant_a: Tenant, user_a: User, count: int) -> None:
    """Up to VALUES_MAX_ROWS rows go in one INSERT (DEFERRED_VALUES_MAX_ROWS when deferred to the batch's
    last statement), more with COPY (PostgreSQL); SQLite uses bulk_create.
    Either way every transfer lands once, balanced, and reads back equal to what was returned."""
    usd = enable(tenant_a, "USD")
    fund(user_a, 1_000_000)
    others = [UserFactory(tenant=tenant_a) for _ in range(5)]
    from wallet.ledger.services import TransferRequest, transfers_execute

    results = transfers_execute(tenant=tenant_a, requests=[
        TransferRequest(user_a, others[i % 5], usd, 10 + i, memo=f"m{i}") for i in range(count)])
    assert all(isinstance(r, Transfer) for r in results)
    stored = {t.pk: t for t in Transfer.all_tenants.filter(pk__in=[r.pk for r in results])}
    assert len(stored) == count
    for result in results:
        row = stored[result.pk]
        assert (row.amount, row.memo, row.sender_id, row.recipient_id, row.entry_id) == (
            result.amount, result.memo, result.sender_id, result.recipient_id, result.entry_id)
        assert row.created_at == result.created_at
    assert ledger_verify(tenant=tenant_a).ok


def test_loaded_instances_behave_as_read_from_the_database(tenant_a: Tenant, user_a: User) -> None:
    usd = enable(tenant_a, "USD")
    fund(user_a, 1_000)
    bob = UserFactory(tenant=tenant_a)
    transfer = transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=5)
    assert transfer._state.adding is False and transfer._state.db == "default"
    with pytest.raises(Exception):
        with transaction.atomic():
            transfer.save(force_insert=True)
    # related objects given to `loaded` cost no query
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert (transfer.sender, transfer.recipient, transfer.asset) == (user_a, bob, usd)
    assert len(queries) == 0
    assert bulk.loaded(Transfer, "default", {"id": uuid7()})._state.adding is False


def test_recipients_are_found_case_insensitively_and_only_in_their_tenant(tenant_a: Tenant, tenant_b: Tenant) -> None:
    bob = UserFactory(tenant=tenant_a, email="Bob.Smith@Example.com")
    User.objects.filter(pk=bob.pk).update(handle="Bobby")
    carol = UserFactory(tenant=tenant_b, email="carol@example.com")
    User.objects.filter(pk=carol.pk).update(handle="carol")
    texts = ["  bob.smith@EXAMPLE.com ", "@bobby", "BOBBY", "carol@example.com", "carol", "@carol", "", "@",
             "nobody@example.com"]
    found = selectors.transfer_parties_find(tenant=tenant_a, texts=texts).recipients
    assert found.keys() == {"  bob.smith@EXAMPLE.com ", "@bobby", "BOBBY"}
    bob_read = found["BOBBY"]
    assert bob_read == bob and all(user is bob_read for user in found.values())  # one object per user
    assert (bob_read.pk, bob_read.email, bob_read.tenant_id, bob_read.is_active) == (
        bob.pk, bob.email, tenant_a.pk, True)
    assert "password" not in bob_read.__dict__  # only what a transfer shows is read
    assert bob_read.date_joined == bob.date_joined  # the rest loads on first access
    User.objects.filter(pk=bob.pk).update(is_active=False)
    assert selectors.transfer_parties_find(tenant=tenant_a, texts=["bob.smith@example.com", "@bobby"]).recipients == {}
    assert selectors.recipient_lookup(" @Bob ") == ("handle", "bob")
    assert selectors.recipient_lookup("A@B.c") == ("email", "a@b.c")


def test_a_batchs_parties_and_their_accounts_come_from_one_query(tenant_a: Tenant, tenant_b: Tenant) -> None:
    usd, eur = enable(tenant_a, "USD"), enable(tenant_a, "EUR")
    alice, bob, dave = (UserFactory(tenant=tenant_a, email=f"{name}@example.com") for name in ("alice", "bob", "dave"))
    User.objects.filter(pk=bob.pk).update(handle="bob")
    idle = UserFactory(tenant=tenant_a, email="idle@example.com")  # a sender, made inactive below
    stranger = UserFactory(tenant=tenant_b, email="stranger@example.com")
    fund(alice, 100)
    fund(bob, 100)
    fund(idle, 100)
    fund(alice, 100, "EUR")
    User.objects.filter(pk=idle.pk).update(is_active=False)
    accounts = {(user.pk, asset.pk): user_account_id(user, asset) for user, asset in
                [(alice, usd), (bob, usd), (idle, usd), (alice, eur)]}
    with CaptureQueriesContext(connection) as queries:
        parties = selectors.transfer_parties_find(
            tenant=tenant_a, texts=["bob@example.com", "@BOB", "dave@example.com", "idle@example.com",
                                    "stranger@example.com", "ghost@example.com"],
            asset_ids=[usd.pk, eur.pk], sender_ids=[alice.pk, idle.pk, stranger.pk])
    assert len(queries) == 1
    assert parties.recipients == {"bob@example.com": bob, "@BOB": bob, "dave@example.com": dave}
    # bob and dave have no EUR account, dave none at all: only existing accounts come back; never the
    # stranger's (another tenant), whichever list names them
    assert parties.accounts == accounts


def test_the_policy_cache_sees_this_processes_changes_at_once(tenant_a: Tenant) -> None:
    enable(tenant_a, "USD", max_per_transfer=100)
    assert selectors.tenant_asset_by_code_cached(tenant=tenant_a, code="usd").max_per_transfer == 100
    enable(tenant_a, "USD", max_per_transfer=50)  # a save: the signal clears the cache
    assert selectors.tenant_asset_by_code_cached(tenant=tenant_a, code="USD").max_per_transfer == 50
    policy = selectors.tenant_asset_by_code(tenant=tenant_a, code="USD")
    policy.enabled = False
    policy.save()
    with pytest.raises(AssetNotEnabled):
        selectors.tenant_asset_by_code_cached(tenant=tenant_a, code="USD")


def test_the_policy_cache_expires(tenant_a: Tenant, settings, monkeypatch: pytest.MonkeyPatch) -> None:
    enable(tenant_a, "USD", max_per_transfer=100)
    assert selectors.tenant_asset_by_code_cached(tenant=tenant_a, code="USD").max_per_transfer == 100
    # a change the signals do not see (another process, or a queryset update)
    type(selectors.tenant_asset_by_code(tenant=tenant_a, code="USD")).all_tenants.filter(
        tenant=tenant_a).update(max_per_transfer=7)
    assert selectors.tenant_asset_by_code_cached(tenant=tenant_a, code="USD").max_per_transfer == 100
    settings.LEDGER_POLICY_CACHE_SECONDS = 0
    assert selectors.tenant_asset_by_code_cached(tenant=tenant_a, code="USD").max_per_transfer == 7


def test_native_placeholders_number_django_style_parameters() -> None:
    assert bulk.native_placeholders("SELECT %s, x FROM t WHERE a = %s") == "SELECT $1, x FROM t WHERE a = $2"
    assert bulk.native_placeholders("SELECT 1") == "SELECT 1"
    for sql in ("SELECT '%%' || %s", "SELECT %(name)s"):
        with pytest.raises(ValueError, match="positional"):
            bulk.native_placeholders(sql)


def test_the_hot_cursor_behaves_like_djangos(tenant_a: Tenant) -> None:
    """Errors are Django's exception classes, execute wrappers and query logging see the statement, and on
    PostgreSQL a short statement is prepared once per connection (and a long one is not)."""
    from django.db import IntegrityError
    from django.test.utils import CaptureQueriesContext

    seen: list[str] = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    sql = "SELECT slug FROM tenants_tenant WHERE id = %s"
    with connection.execute_wrapper(wrapper), CaptureQueriesContext(connection) as queries, \
            bulk.hot_cursor(connection) as cursor:
        cursor.execute(sql, [tenant_a.pk if connection.vendor == "postgresql" else tenant_a.pk.hex])
        assert cursor.fetchone() == ("tenant-a",)
    assert seen == [sql]
    assert [q["sql"] for q in queries.captured_queries][-1].startswith("SELECT slug FROM tenants_tenant")
    with pytest.raises(IntegrityError), transaction.atomic(), bulk.hot_cursor(connection) as cursor:
        cursor.execute("INSERT INTO tenants_tenant (id) VALUES (NULL)")
    if connection.vendor != "postgresql":
        return
    long_sql = "SELECT %s" + " + 0" * (bulk.PREPARE_MAX_LENGTH // 4) + " AS n"
    with bulk.hot_cursor(connection) as cursor:
        cursor.execute(sql, [tenant_a.pk])
        cursor.execute(long_sql, [1])
        assert cursor.fetchone() == (1,)
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert "SELECT slug FROM tenants_tenant WHERE id = $1" in prepared
    assert not any(statement.startswith("SELECT $1 + 0") for statement in prepared)


def user_account_id(user: User, asset: Asset) -> object:
    return Account.all_tenants.get(tenant=user.tenant, user=user, asset=asset, kind=Account.Kind.USER).pk


def test_account_ids_read_in_a_transaction_are_cached_only_once_it_commits(
        tenant_a: Tenant, user_a: User, django_capture_on_commit_callbacks: Any) -> None:
    """`known` ids (the group commit's parties query) may come from rows an outer transaction created: a
    rollback must not leave them in the per-process cache."""
    from wallet.ledger import services

    usd = enable(tenant_a, "USD")
    key = (tenant_a.pk, user_a.pk, usd.pk)
    services._USER_ACCOUNT_IDS.pop(key, None)
    known = {(user_a.pk, usd.pk): uuid7()}
    with pytest.raises(RuntimeError), transaction.atomic():
        assert services.user_accounts_ensure(tenant=tenant_a, pairs=[(user_a.pk, usd.pk)], known=known) == known
        raise RuntimeError("rolled back")
    assert key not in services._USER_ACCOUNT_IDS
    with django_capture_on_commit_callbacks(execute=True):
        services.user_accounts_ensure(tenant=tenant_a, pairs=[(user_a.pk, usd.pk)], known=known)
        assert key not in services._USER_ACCOUNT_IDS
    assert services._USER_ACCOUNT_IDS[key] == known[(user_a.pk, usd.pk)]
    services._USER_ACCOUNT_IDS.pop(key, None)


def test_an_empty_handle_names_nobody(tenant_a: Tenant) -> None:
    """"@" is an empty handle: not the sender (or anyone) whose handle column is empty."""
    sender = UserFactory(tenant=tenant_a, email="sender@example.com")
    User.objects.filter(pk=sender.pk).update(handle="")
    parties = selectors.transfer_parties_find(tenant=tenant_a, texts=["@", "@@", " "], sender_ids=[sender.pk])
    assert parties.recipients == {}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks are PostgreSQL's")
def test_accounts_are_locked_before_the_ledger_head_and_the_locked_rows_need_no_timestamps(tenant_a: Tenant) -> None:
    """Every ledger transaction locks accounts, then the head, then the stream cursors: an account asked for
    once the head is locked is refused (it could deadlock with a transfer batch)."""
    from tests.ledger_helpers import account
    from wallet.ledger.engine import LedgerBatch

    enable(tenant_a, "USD")
    first, second = UserFactory(tenant=tenant_a), UserFactory(tenant=tenant_a)
    fund(first, 500)
    fund(second, 1)
    mine_id, theirs_id = account(first).pk, account(second).pk
    with transaction.atomic():
        batch = LedgerBatch(tenant_a)
        with CaptureQueriesContext(connection) as queries:
            locked = batch.lock([mine_id], head=True)
        assert batch.head is not None and batch.head.seq >= 2  # the two fundings' entries
        lock_sql = queries.captured_queries[0]["sql"]
        assert "FOR UPDATE" in lock_sql and "created_at" not in lock_sql
        assert "ledger_ledgerhead" in queries.captured_queries[1]["sql"] and len(queries.captured_queries) == 2
        mine = locked[mine_id]
        assert (mine.posted, mine.held, mine.asset.code) == (500, 0, "USD")
        assert mine.get_deferred_fields() == {"created_at", "updated_at"}
        batch.lock([mine_id])  # already locked: nothing to do
        with pytest.raises(RuntimeError, match="before the ledger head"):
            batch.lock([theirs_id])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="array literals are PostgreSQL's")
@pytest.mark.django_db
def test_pg_array_reads_back_as_the_values_given() -> None:
    import uuid

    texts = ["", "NULL", "plain", 'quote " inside', "back\\slash", "a,b", "{braces}", "  spaces  ", "ünï 😀",
             "new\nline", "\\\"", None]
    blobs = [b"", bytes(range(256)), b'{"id": "x"}', None]
    ids = [uuid.uuid4(), None]
    numbers = [0, -1, 2**63 - 1, None]
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[], %s::bytea[], %s::uuid[], %s::bigint[]",
                       [bulk.pg_array(texts), bulk.pg_array(blobs), bulk.pg_array(ids), bulk.pg_array(numbers)])
        got_texts, got_blobs, got_ids, got_numbers = cursor.fetchone()
    assert got_texts == texts
    assert [bytes(b) if b is not None else None for b in got_blobs] == blobs
    assert got_ids == ids and got_numbers == numbers
    assert bulk.pg_array([]) == "{}"
    with pytest.raises(TypeError):
        bulk.pg_array([1.5])
