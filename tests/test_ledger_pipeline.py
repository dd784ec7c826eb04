"""The group commit's batch in psycopg's pipeline mode (wallet/core/bulk.py `pipeline`, `SentQuery`;
wallet/ledger/groupcommit.py `execute_batch`): fewer round trips, the same results."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction

from tenants.models import Tenant, User
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from wallet.core.bulk import SentQuery, commit_in_pipeline, hot_cursor, in_pipeline, pipeline, pipelined_atomic
from wallet.events.models import OutboxEvent
from wallet.ledger import groupcommit
from wallet.ledger.models import Transfer
from wallet.ledger.verify import ledger_verify

on_postgresql = pytest.mark.skipif("postgresql" not in settings.DATABASES["default"]["ENGINE"],
                                   reason="PostgreSQL only: pipeline mode is psycopg's")


def _jobs(tenant: Tenant, senders: list[User], recipient: str, prefix: str, amount: int = 7
          ) -> list[groupcommit.TransferJob]:
    from wallet.ledger.selectors import tenant_asset_by_code_cached

    policy = tenant_asset_by_code_cached(tenant=tenant, code="USD")
    return [groupcommit.TransferJob(
        claim=groupcommit.ClaimRequest(user=sender, key=f"{prefix}-{index}", fingerprint="f", method="POST",
                                       path="/api/v1/transfers"),
        viewer=sender,
        order=groupcommit.TransferOrder(sender=sender, recipient=recipient, amount=amount, memo=f"{prefix}-{index}",
                                        policy=policy))
        for index, sender in enumerate(senders)]


@pytest.fixture
def senders(tenant_a: Tenant) -> list[User]:
    enable(tenant_a, "USD")
    UserFactory(tenant=tenant_a, email="payee@example.com")
    users = [UserFactory(tenant=tenant_a, email=f"sender{i}@example.com") for i in range(40)]
    for user in users:
        fund(user, 1_000)
    return users


def test_sent_queries_are_read_in_any_order(db: Any) -> None:
    with transaction.atomic(), pipeline(connection):
        first = SentQuery(connection, "SELECT %s + 1", [1])
        second = SentQuery(connection, "SELECT %s * 3", [5])
        assert second.fetchone() == (15,)
        assert first.fetchall() == [(2,)]
        assert in_pipeline(connection) == (connection.vendor == "postgresql")
    assert not in_pipeline(connection)


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_an_error_in_the_pipeline_reaches_the_caller_and_rolls_back(tenant_a: Tenant) -> None:
    from django.db import DatabaseError

    from wallet.events.models import StreamCursor

    with pytest.raises(DatabaseError), transaction.atomic(), pipeline(connection):
        SentQuery(connection, "INSERT INTO events_streamcursor (tenant_id, stream, last_seq) VALUES (%s, %s, 1)",
                  [tenant_a.pk, "tenant"])
        SentQuery(connection, "SELECT 1 / %s", [0]).fetchall()
    assert not in_pipeline(connection)
    assert not StreamCursor.all_tenants.filter(tenant=tenant_a, stream="tenant").exists()
    with connection.cursor() as cursor:  # the connection is usable again
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fail", ["python", "sql"])
def test_a_pipelined_atomic_block_that_fails_rolls_back_and_leaves_the_connection_as_django_expects(
        tenant_a: Tenant, fail: str) -> None:
    from django.db import DatabaseError

    from wallet.events.models import StreamCursor

    with pytest.raises(RuntimeError if fail == "python" else DatabaseError), pipelined_atomic(connection):
        SentQuery(connection, "INSERT INTO events_streamcursor (tenant_id, stream, last_seq) VALUES (%s, %s, 1) "
                              "RETURNING last_seq", [tenant_a.pk, "tenant"]).fetchall()
        if fail == "python":
            raise RuntimeError("the block fails")
        SentQuery(connection, "SELECT 1 / %s", [0]).fetchall()
    assert not in_pipeline(connection) and not connection.in_atomic_block
    assert connection.get_autocommit() and connection.connection.autocommit
    assert not StreamCursor.all_tenants.filter(tenant=tenant_a, stream="tenant").exists()
    with connection.cursor() as cursor:  # usable again, in autocommit
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_pipelined_atomic_block_sends_begin_with_its_first_read(tenant_a: Tenant) -> None:
    """One round trip for BEGIN and the first read, then the COMMIT (with its Sync); psycopg alone waits for
    its BEGIN first, and for a closing Sync after the COMMIT (`bulk.commit_in_pipeline` skips it).
    The callbacks run after the commit, and autocommit is back as Django expects it, inside the block (off)
    and after it (on)."""
    from wallet.events.models import StreamCursor

    committed: list[bool] = []
    after: list[bool] = []

    def block(explicit: bool, stream: str) -> None:
        with (pipelined_atomic(connection) if explicit else _atomic_pipeline()):
            SentQuery(connection, "INSERT INTO events_streamcursor (tenant_id, stream, last_seq) "
                                  "VALUES (%s, %s, 1) RETURNING last_seq", [tenant_a.pk, stream]).fetchall()
            transaction.on_commit(lambda: committed.append(True))
            commit_in_pipeline(connection)
        after.append(connection.get_autocommit())

    # This block ends with a read: libpq still reports the connection idle (its last ReadyForQuery was before
    # BEGIN), so `commit_in_pipeline` syncs first. A transfer batch ends with its writes unread: no Sync
    # (`test_a_pipelined_batch_takes_fewer_round_trips`).
    assert _round_trips(lambda: block(True, "tenant")) == 3
    assert _round_trips(lambda: block(False, "tenant-2")) == 3
    assert committed == [True, True] and after == [True, True]
    assert connection.connection.autocommit
    assert set(StreamCursor.all_tenants.filter(tenant=tenant_a).values_list("stream", flat=True)) >= {
        "tenant", "tenant-2"}
    with pipelined_atomic(connection):  # the outermost block: psycopg in autocommit, Django's flag off
        assert connection.connection.autocommit and not connection.get_autocommit()
        with pipelined_atomic(connection):  # an inner block is a plain savepoint with a pipeline
            pass
        assert connection.connection.autocommit and not connection.get_autocommit()
    assert connection.connection.autocommit and connection.get_autocommit()


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pending", [False, True])
def test_commit_in_pipeline_has_committed_when_it_returns(tenant_a: Tenant, pending: bool) -> None:
    """The group committer answers its requests when `commit_in_pipeline` returns True: another connection
    must see the transaction's rows by then, whether the block ends with a statement still unread (a transfer
    batch) or with everything read (libpq then reports the connection idle and psycopg's own `commit()`
    would send no COMMIT)."""
    from django.db import connections as all_connections

    from wallet.events.models import StreamCursor

    stream = f"committed-{pending}"
    seen: list[bool] = []
    other = all_connections.create_connection("default")
    try:
        with pipelined_atomic(connection):
            SentQuery(connection, "INSERT INTO events_streamcursor (tenant_id, stream, last_seq) "
                                  "VALUES (%s, %s, 1) RETURNING last_seq", [tenant_a.pk, stream]).fetchall()
            if pending:
                with hot_cursor(connection) as cursor:
                    cursor.execute("UPDATE events_streamcursor SET last_seq = 2 WHERE stream = %s", [stream])
            assert commit_in_pipeline(connection)
            with other.cursor() as cursor:
                cursor.execute("SELECT last_seq FROM events_streamcursor WHERE stream = %s", [stream])
                seen.append(cursor.fetchall() == [(2 if pending else 1,)])
    finally:
        other.close()
    assert seen == [True]
    assert StreamCursor.all_tenants.get(stream=stream).last_seq == (2 if pending else 1)
    assert connection.connection.autocommit and connection.get_autocommit()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_after_commit_in_pipeline_the_connection_has_left_pipeline_mode(tenant_a: Tenant) -> None:
    """`commit_in_pipeline` leaves pipeline mode without a Sync: a statement after it (which the docstring
    forbids, but nothing prevents) runs at once, in autocommit, not in a pipeline that would leave it open
    in an implicit transaction."""
    from django.db import connections as all_connections

    other = all_connections.create_connection("default")
    try:
        with pipelined_atomic(connection):
            SentQuery(connection, "INSERT INTO events_streamcursor (tenant_id, stream, last_seq) "
                                  "VALUES (%s, %s, 1) RETURNING last_seq", [tenant_a.pk, "after"]).fetchall()
            assert commit_in_pipeline(connection)
            assert not in_pipeline(connection) and connection.connection._pipeline is None
            with hot_cursor(connection) as cursor:
                cursor.execute("UPDATE events_streamcursor SET last_seq = 5 WHERE stream = %s", ["after"])
            with other.cursor() as cursor:
                cursor.execute("SELECT last_seq FROM events_streamcursor WHERE stream = %s", ["after"])
                assert cursor.fetchall() == [(5,)]
    finally:
        other.close()
    assert connection.connection.autocommit and connection.get_autocommit()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_commit_in_pipeline_refuses_a_failed_transaction(tenant_a: Tenant) -> None:
    """An error caught inside the block leaves the transaction failed: its COMMIT would be a ROLLBACK that
    reports no error, so `commit_in_pipeline` raises instead of returning True."""
    from django.db import DatabaseError

    from wallet.events.models import StreamCursor

    with pytest.raises(DatabaseError, match="failed before its COMMIT"), pipelined_atomic(connection):
        SentQuery(connection, "INSERT INTO events_streamcursor (tenant_id, stream, last_seq) "
                              "VALUES (%s, %s, 1) RETURNING last_seq", [tenant_a.pk, "failed"]).fetchall()
        with pytest.raises(DatabaseError):
            SentQuery(connection, "SELECT 1 / 0").fetchall()
        commit_in_pipeline(connection)
    assert not StreamCursor.all_tenants.filter(stream="failed").exists()
    assert connection.connection.autocommit and connection.get_autocommit()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_failing_pipeline_exit_is_raised_also_inside_an_except_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg's exit logs and swallows its own failure when told an exception is in flight: the block's own
    exception, never one its caller happens to be handling (the group committer retries inside `except`)."""
    from django.db import DatabaseError

    def failing_exit_gen(self: psycopg.Pipeline) -> Any:
        raise psycopg.OperationalError("the closing Sync failed")
        yield  # a generator, as psycopg's own

    monkeypatch.setattr(psycopg.Pipeline, "_exit_gen", failing_exit_gen)
    try:
        raise ValueError("being handled by the caller")
    except ValueError:
        with pytest.raises(DatabaseError, match="closing Sync failed"), transaction.atomic(), pipeline(connection):
            SentQuery(connection, "SELECT 1").fetchall()
    monkeypatch.undo()
    assert not in_pipeline(connection) and connection.connection._pipeline is None


def _atomic_pipeline() -> Any:
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(transaction.atomic())
    stack.enter_context(pipeline(connection))
    return stack


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("count", [3, 40])  # 40: 160 events and 80 postings, past COPY's threshold
def test_a_pipelined_batch_writes_what_a_plain_one_does(tenant_a: Tenant, senders: list[User], count: int,
                                                        pipelined: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from wallet.ledger import services

    if not pipelined:
        monkeypatch.setattr(groupcommit, "PIPELINE_MAX_JOBS", 0)
    commits: list[bool] = []
    real_commit = groupcommit.commit_in_pipeline

    def spy(conn: Any) -> bool:
        commits.append(real_commit(conn))
        return commits[-1]

    monkeypatch.setattr(groupcommit, "commit_in_pipeline", spy)
    services._USER_ACCOUNT_IDS.clear()
    jobs = _jobs(tenant_a, senders[:count], "payee@example.com", "p")
    events_before = OutboxEvent.all_tenants.count()
    outcomes = groupcommit.execute_batch(tenant_a, jobs)
    assert commits == [pipelined]  # COMMIT went with the last statement
    assert [outcome.status for outcome in outcomes] == [201] * count
    assert Transfer.all_tenants.filter(memo__startswith="p-").count() == count
    # per transfer: transfer.completed for each party, account.balance_changed for each sender; the payee's
    # balance event is one for the whole batch
    assert OutboxEvent.all_tenants.count() - events_before == 3 * count + 1
    assert all(balance(sender)[0] == 1_000 - 7 for sender in senders[:count])
    assert ledger_verify(tenant=tenant_a).ok
    # the on_commit callbacks ran: the payee's account, created by the batch, is cached
    payee = User.objects.get(tenant=tenant_a, email="payee@example.com")
    assert any(key[1] == payee.pk for key in services._USER_ACCOUNT_IDS)
    # replayed from the stored answers
    again = groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[:count], "payee@example.com", "p"))
    assert [(o.status, o.body, o.replayed) for o in again] == [(o.status, o.body, True) for o in outcomes]


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_failing_last_statement_commits_nothing(tenant_a: Tenant, senders: list[User],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The last statement and COMMIT share a round trip: when the statement fails, the COMMIT is skipped and
    the error reaches the batch (which the group committer then retries job by job)."""
    from django.db import DatabaseError

    from wallet.core.context import all_tenants_scope
    from wallet.idempotency.models import IdempotencyRecord
    from wallet.ledger import services

    real = groupcommit.idempotency_complete_many

    def failing(completions: Any, defer: Any = None) -> None:
        real(completions, defer=defer)
        defer.append(("UPDATE idempotency_idempotencyrecord SET response_status = 1 / 0 WHERE id = %s",
                      [completions[0].claim.record_id]))

    monkeypatch.setattr(groupcommit, "idempotency_complete_many", failing)
    services._USER_ACCOUNT_IDS.clear()
    with pytest.raises(DatabaseError, match="division by zero"):
        groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[:3], "payee@example.com", "f"))
    assert not Transfer.all_tenants.filter(memo__startswith="f-").exists()
    with all_tenants_scope():
        assert not IdempotencyRecord.objects.filter(key__startswith="f-").exists()
    assert services._USER_ACCOUNT_IDS == {}  # no on_commit callback ran (read before `balance` fills it)
    assert all(balance(sender)[0] == 1_000 for sender in senders[:3])
    assert ledger_verify(tenant=tenant_a).ok
    monkeypatch.setattr(groupcommit, "idempotency_complete_many", real)
    outcomes = groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[:3], "payee@example.com", "f"))
    assert [outcome.status for outcome in outcomes] == [201] * 3  # the keys were never stored: they run now


def _round_trips(run: Any) -> int:
    """How many times the client waited for the server while `run()` ran: in libpq's protocol trace, each
    switch from messages the client sent (F) to messages it received (B)."""
    import tempfile

    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            run()
        finally:
            pgconn.untrace()
        trace.seek(0)
        directions = [line.split("\t", 1)[0] for line in trace.read().splitlines() if line]
    return sum(1 for pair in itertools.pairwise(directions) if pair == ("F", "B"))


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_pipelined_batch_takes_fewer_round_trips(tenant_a: Tenant, senders: list[User],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN with the claim and the parties' query (`bulk.pipelined_atomic`: psycopg alone would wait for its
    BEGIN); the accounts' lock with the ledger head's; the writes (the stream cursors' upsert among them) with
    COMMIT: three, where one statement at a time takes seven. (psycopg's closing Sync after the COMMIT, a
    fourth, is skipped: `bulk.commit_in_pipeline`.)"""
    groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[:2], "payee@example.com", "warm"))  # caches
    outcomes: list[Any] = []
    pipelined = _round_trips(lambda: outcomes.extend(
        groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[2:5], "payee@example.com", "pipelined"))))
    monkeypatch.setattr(groupcommit, "PIPELINE_MAX_JOBS", 0)
    plain = _round_trips(lambda: outcomes.extend(
        groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[5:8], "payee@example.com", "plain"))))
    assert [outcome.status for outcome in outcomes] == [201] * 6
    assert (pipelined, plain) == (3, 7)
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_closing_sync_that_fails_after_commit_keeps_the_batch(tenant_a: Tenant, senders: list[User],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """After the COMMIT, `commit_in_pipeline` leaves pipeline mode without a Sync. If libpq refuses (a result
    still pending), psycopg's own exit does it at the block's end, with its Sync; if that fails too, the
    batch still stands: an error after the COMMIT must not turn it into a rollback (Django's) and a retry
    (the group committer's). Before the COMMIT, the same failure is the batch's."""
    from django.db import DatabaseError

    real_exit, real_dunder_exit = psycopg.Pipeline._exit, psycopg.Pipeline.__exit__
    refused: list[int] = []

    def refusing_once(self: psycopg.Pipeline, exc: BaseException | None) -> None:
        if not refused:  # as libpq's refusal does in psycopg's `_exit`: the level is lowered, then it raises
            refused.append(self.level)
            self.level -= 1
            raise psycopg.OperationalError("cannot exit pipeline mode with uncollected results")
        real_exit(self, exc)

    monkeypatch.setattr(psycopg.Pipeline, "_exit", refusing_once)
    with caplog.at_level("WARNING", logger="wallet.core.bulk"):
        outcomes = groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[:3], "payee@example.com", "u"))
    assert refused == [1] and [outcome.status for outcome in outcomes] == [201] * 3
    assert "leaving pipeline mode at once after a COMMIT was refused" in caplog.text
    assert not in_pipeline(connection) and connection.connection._pipeline is None
    assert Transfer.all_tenants.filter(memo__startswith="u-").count() == 3

    def failing_dunder_exit(self: psycopg.Pipeline, *exc: Any) -> None:
        real_dunder_exit(self, *exc)
        raise psycopg.OperationalError("the connection broke after COMMIT")

    refused.clear()
    caplog.clear()
    monkeypatch.setattr(psycopg.Pipeline, "__exit__", failing_dunder_exit)
    with caplog.at_level("WARNING", logger="wallet.core.bulk"):
        outcomes = groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[3:6], "payee@example.com", "s"))
    assert refused == [1] and [outcome.status for outcome in outcomes] == [201] * 3
    assert "closing a pipeline failed after its COMMIT succeeded" in caplog.text
    monkeypatch.undo()
    connection.close_if_unusable_or_obsolete()  # as the committer does before its next batch
    assert Transfer.all_tenants.filter(memo__startswith="s-").count() == 3
    assert ledger_verify(tenant=tenant_a).ok
    # before the COMMIT, the same failure is the batch's
    monkeypatch.setattr(psycopg.Pipeline, "__exit__", failing_dunder_exit)
    monkeypatch.setattr(groupcommit, "commit_in_pipeline", lambda connection: False)
    with pytest.raises(DatabaseError, match="broke after COMMIT"):
        groupcommit.execute_batch(tenant_a, _jobs(tenant_a, senders[6:9], "payee@example.com", "t"))
    monkeypatch.undo()
    connection.close_if_unusable_or_obsolete()
    assert not Transfer.all_tenants.filter(memo__startswith="t-").exists()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_tenants_first_batch_with_nothing_to_record_creates_no_ledger_head(tenant_a: Tenant) -> None:
    """A tenant without entries has no head: a pipelined batch whose transfers are all refused locks none and
    creates none; the first entry creates it."""
    from wallet.ledger.models import LedgerHead

    enable(tenant_a, "USD")
    UserFactory(tenant=tenant_a, email="payee@example.com")
    broke = [UserFactory(tenant=tenant_a, email=f"broke{i}@example.com") for i in range(2)]
    outcomes = groupcommit.execute_batch(tenant_a, _jobs(tenant_a, broke, "payee@example.com", "first"))
    assert [outcome.status for outcome in outcomes] == [409, 409]
    assert not LedgerHead.objects.filter(tenant=tenant_a).exists()
    fund(broke[0], 50)  # the tenant's first entry
    outcomes = groupcommit.execute_batch(tenant_a, _jobs(tenant_a, broke[:1], "payee@example.com", "then"))
    assert [outcome.status for outcome in outcomes] == [201]
    assert LedgerHead.objects.get(tenant=tenant_a).seq == 2
    assert ledger_verify(tenant=tenant_a).ok
