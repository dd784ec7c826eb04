"""The outbox's write side: `events_emit` (sequence numbers, transactions, validation, statement count),
the replay selectors and the purge of published events."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from tenants.models import Tenant, User
from tests.factories import UserFactory
from wallet.core.ids import uuid7
from wallet.events import services
from wallet.events.models import OutboxEvent, StreamCursor
from wallet.events.selectors import events_after, stream_head
from wallet.events.services import (
    EventSpec,
    InvalidEventError,
    InvalidStreamError,
    TransactionRequiredError,
    events_emit,
    events_purge_published,
    tenant_stream,
    user_stream,
)


@pytest.fixture(autouse=True)
def _relay_out_of_process(settings: Any) -> None:
    # These tests look at rows; no in-process relay thread may publish them meanwhile.
    settings.OUTBOX_RELAY_IN_PROCESS = False


def seqs_of(tenant: Tenant, stream: str) -> list[int]:
    return list(OutboxEvent.all_tenants.filter(tenant=tenant, stream=stream).order_by("seq")
                .values_list("seq", flat=True))


def emit(tenant: Tenant, *specs: EventSpec) -> list[OutboxEvent]:
    with transaction.atomic():
        return events_emit(tenant=tenant, events=list(specs))


# --- sequence numbers --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_seqs_start_at_1_and_are_contiguous_per_stream_in_the_order_given(tenant_a: Tenant, user_a: User) -> None:
    # given a user stream and the tenant stream, interleaved in one call
    mine, everyone = user_stream(user_a.pk), tenant_stream(tenant_a.pk)
    # when
    rows = emit(tenant_a, EventSpec(mine, "a.one", {"n": 1}), EventSpec(everyone, "t.one", {}),
                EventSpec(mine, "a.two", {"n": 2}), EventSpec(mine, "a.three", {"n": 3}))
    # then
    assert [(row.stream, row.seq, row.type) for row in rows] == [
        (mine, 1, "a.one"), (everyone, 1, "t.one"), (mine, 2, "a.two"), (mine, 3, "a.three"),
    ]
    stored = OutboxEvent.all_tenants.filter(tenant=tenant_a).order_by("stream", "seq")
    assert [(e.id, e.stream, e.seq, e.type, e.data) for e in stored] == sorted(
        [(r.id, r.stream, r.seq, r.type, r.data) for r in rows], key=lambda r: (r[1], r[2]))
    assert all(e.published_at is None for e in stored)
    assert all(isinstance(row.id, uuid.UUID) and row.id.version == 7 for row in rows)
    assert dict(StreamCursor.all_tenants.filter(tenant=tenant_a).values_list("stream", "last_seq")) == {
        mine: 3, everyone: 1,
    }


@pytest.mark.django_db
def test_a_later_call_continues_each_stream_where_it_stopped(tenant_a: Tenant, user_a: User) -> None:
    # given
    stream = user_stream(user_a.pk)
    emit(tenant_a, EventSpec(stream, "x", {}), EventSpec(stream, "x", {}))
    # when
    rows = emit(tenant_a, EventSpec(stream, "y", {}))
    # then
    assert [row.seq for row in rows] == [3]
    assert seqs_of(tenant_a, stream) == [1, 2, 3]


@pytest.mark.django_db
def test_seqs_are_per_tenant_and_per_stream(tenant_a: Tenant, tenant_b: Tenant, user_a: User) -> None:
    # given the same user stream name in two tenants (ids are global, but the counter is per tenant)
    stream = user_stream(user_a.pk)
    other = user_stream(uuid.uuid4())
    emit(tenant_a, EventSpec(stream, "x", {}), EventSpec(stream, "x", {}))
    # when
    in_b = emit(tenant_b, EventSpec(stream, "x", {}))
    other_in_a = emit(tenant_a, EventSpec(other, "x", {}))
    # then
    assert [row.seq for row in in_b] == [1]
    assert [row.seq for row in other_in_a] == [1]
    assert seqs_of(tenant_a, stream) == [1, 2]
    assert seqs_of(tenant_b, stream) == [1]


@pytest.mark.django_db
def test_emit_returns_saved_rows_and_stores_data_as_django_json_renders_it(tenant_a: Tenant, user_a: User) -> None:
    # given data with values JSON lacks (stored as DjangoJSONEncoder renders them, on every database)
    ident = uuid.UUID("0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee")
    data = {"amount": "1500", "decimals": 2, "account": ident, "rate": Decimal("1.50"),
            "at": datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "wei": 10**30, "nested": {"ok": [True, None]}}
    # when
    (row,) = emit(tenant_a, EventSpec(user_stream(user_a), "account.balance_changed", data))
    # then
    stored = OutboxEvent.all_tenants.get(pk=row.pk)
    assert stored.tenant_id == tenant_a.pk
    assert stored.data == {"amount": "1500", "decimals": 2, "account": str(ident), "rate": "1.50",
                           "at": "2025-01-02T03:04:05.678Z", "wei": 10**30, "nested": {"ok": [True, None]}}
    assert (stored.stream, stored.seq, stored.type, stored.created_at, stored.published_at) == (
        row.stream, row.seq, row.type, row.created_at, None)
    assert row._state.adding is False
    assert row.tenant is tenant_a


# --- transactions ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_emit_outside_a_transaction_raises_and_writes_nothing(tenant_a: Tenant, user_a: User) -> None:
    # given a connection in autocommit (no atomic block)
    assert not connection.in_atomic_block
    # when / then
    with pytest.raises(TransactionRequiredError):
        events_emit(tenant=tenant_a, events=[EventSpec(user_stream(user_a), "x", {})])
    assert OutboxEvent.all_tenants.count() == 0
    assert StreamCursor.all_tenants.count() == 0


class Boom(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_leaves_no_events_and_no_gap(tenant_a: Tenant, user_a: User) -> None:
    # given two committed events, then a transaction with three more that rolls back
    stream = user_stream(user_a)
    emit(tenant_a, EventSpec(stream, "kept", {}), EventSpec(stream, "kept", {}))
    with pytest.raises(Boom), transaction.atomic():
        events_emit(tenant=tenant_a, events=[EventSpec(stream, "lost", {})] * 3)
        raise Boom
    assert seqs_of(tenant_a, stream) == [1, 2]
    # when the next transaction commits
    rows = emit(tenant_a, EventSpec(stream, "next", {}))
    # then it takes seq 3: no gap
    assert [row.seq for row in rows] == [3]
    assert list(OutboxEvent.all_tenants.order_by("seq").values_list("seq", "type")) == [
        (1, "kept"), (2, "kept"), (3, "next"),
    ]


@pytest.mark.django_db
def test_a_rolled_back_savepoint_leaves_no_gap(tenant_a: Tenant, user_a: User) -> None:
    # given
    stream = user_stream(user_a)
    with transaction.atomic():
        events_emit(tenant=tenant_a, events=[EventSpec(stream, "a", {})])
        with pytest.raises(Boom), transaction.atomic():
            events_emit(tenant=tenant_a, events=[EventSpec(stream, "lost", {})])
            raise Boom
        # when
        rows = events_emit(tenant=tenant_a, events=[EventSpec(stream, "b", {})])
    # then
    assert [row.seq for row in rows] == [2]
    assert list(OutboxEvent.all_tenants.order_by("seq").values_list("seq", "type")) == [(1, "a"), (2, "b")]


@pytest.mark.django_db
def test_the_relay_wake_up_is_registered_once_per_transaction(
    tenant_a: Tenant, user_a: User, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    # given / when three emits in one transaction
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        for _ in range(3):
            events_emit(tenant=tenant_a, events=[EventSpec(user_stream(user_a), "x", {})])
    # then one on-commit hook
    assert callbacks == [services._after_commit]


# --- statements per call -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_batch_costs_a_fixed_number_of_statements(tenant_a: Tenant, django_assert_num_queries: Any) -> None:
    # given 100 events over 60 streams (the shape of a ledger batch)
    users = [uuid.uuid4() for _ in range(59)]
    specs = [EventSpec(user_stream(users[i % 59]), "account.balance_changed", {"i": i}) for i in range(99)]
    specs.append(EventSpec(tenant_stream(tenant_a), "tenant.stats", {}))
    # the cursor upsert (which also sends pg_notify on PostgreSQL) and the event insert
    # when / then
    with transaction.atomic():
        with django_assert_num_queries(2):
            rows = events_emit(tenant=tenant_a, events=specs)
        with django_assert_num_queries(2):  # a second call in the same transaction does not notify again
            events_emit(tenant=tenant_a, events=specs[:10])
    assert len(rows) == 100
    assert OutboxEvent.all_tenants.count() == 110


@pytest.mark.django_db
def test_an_empty_list_writes_nothing(tenant_a: Tenant, django_assert_num_queries: Any) -> None:
    with transaction.atomic(), django_assert_num_queries(0):
        assert events_emit(tenant=tenant_a, events=[]) == []


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("stream", ["user:", "user:XYZ", f"account:{'a' * 32}", f"user:{'A' * 32}",
                                    f"user:{'a' * 32} ", ""])
def test_a_malformed_stream_is_refused(tenant_a: Tenant, stream: str) -> None:
    with transaction.atomic(), pytest.raises(InvalidStreamError):
        events_emit(tenant=tenant_a, events=[EventSpec(stream, "x", {})])
    assert OutboxEvent.all_tenants.count() == 0


@pytest.mark.django_db
def test_another_tenants_stream_is_refused_and_nothing_is_written(tenant_a: Tenant, tenant_b: Tenant,
                                                                  user_a: User) -> None:
    # given a valid event first, then tenant B's stream in tenant A's call
    specs = [EventSpec(user_stream(user_a), "x", {}), EventSpec(tenant_stream(tenant_b), "x", {})]
    # when / then
    with transaction.atomic(), pytest.raises(InvalidStreamError, match="is not the stream of tenant"):
        events_emit(tenant=tenant_a, events=specs)
    assert OutboxEvent.all_tenants.count() == 0
    assert StreamCursor.all_tenants.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(("event_type", "data"), [("", {}), ("x" * 101, {}), ("x", []), ("x", None),
                                                  ("x", {"not json": object()})])
def test_a_bad_type_or_data_is_refused(tenant_a: Tenant, user_a: User, event_type: str, data: Any) -> None:
    with transaction.atomic(), pytest.raises(InvalidEventError):
        events_emit(tenant=tenant_a, events=[EventSpec(user_stream(user_a), event_type, data)])
    assert OutboxEvent.all_tenants.count() == 0


def test_stream_names() -> None:
    ident = uuid.UUID("0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee")
    assert user_stream(ident) == "user:0190aaaabbbb7ccc8dddeeeeeeeeeeee"
    assert user_stream(str(ident)) == f"user:{ident.hex}"
    assert tenant_stream(ident) == f"tenant:{ident.hex}"


# --- replay selectors --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_events_after_and_stream_head(tenant_a: Tenant, tenant_b: Tenant, user_a: User) -> None:
    # given five events in A's user stream and one in B under the same stream name
    stream = user_stream(user_a)
    emit(tenant_a, *[EventSpec(stream, f"e{n}", {"n": n}) for n in range(1, 6)])
    emit(tenant_b, EventSpec(stream, "other", {}))
    # when / then
    assert [(e.seq, e.type) for e in events_after(tenant=tenant_a, stream=stream, after_seq=2, limit=2)] == [
        (3, "e3"), (4, "e4"),
    ]
    assert [e.seq for e in events_after(tenant=tenant_a, stream=stream, after_seq=0, limit=100)] == [1, 2, 3, 4, 5]
    assert events_after(tenant=tenant_a, stream=stream, after_seq=5, limit=100) == []
    assert [e.type for e in events_after(tenant=tenant_b, stream=stream, after_seq=0, limit=100)] == ["other"]
    assert stream_head(tenant=tenant_a, stream=stream) == 5
    assert stream_head(tenant=tenant_b, stream=stream) == 1
    assert stream_head(tenant=tenant_a, stream=user_stream(uuid.uuid4())) == 0


# --- purge -------------------------------------------------------------------------------------------------


def uuid7_at(moment: datetime) -> Callable[[], uuid.UUID]:
    """A uuid7 factory whose ids carry `moment` as their time."""
    def make() -> uuid.UUID:
        fresh = uuid7().int & ((1 << 80) - 1)
        return uuid.UUID(int=(int(moment.timestamp() * 1000) << 80) | fresh)
    return make


@pytest.mark.django_db
def test_purge_deletes_old_published_events_beyond_the_newest_per_stream(
    tenant_a: Tenant, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: keep 72 hours, and the newest 2 of every stream whatever their age
    settings.OUTBOX_RETENTION_HOURS = 72
    settings.OUTBOX_RETAIN_PER_STREAM = 2
    old, recent = (UserFactory(tenant=tenant_a) for _ in range(2))
    unpublished = UserFactory(tenant=tenant_a)
    monkeypatch.setattr(services, "uuid7", uuid7_at(timezone.now() - timedelta(hours=73)))
    emit(tenant_a, *[EventSpec(user_stream(old), "x", {})] * 5)                 # old, published
    emit(tenant_a, *[EventSpec(user_stream(unpublished), "x", {})] * 4)         # old, never published
    monkeypatch.setattr(services, "uuid7", uuid7_at(timezone.now() - timedelta(hours=71)))
    emit(tenant_a, *[EventSpec(user_stream(recent), "x", {})] * 5)              # recent, published
    OutboxEvent.all_tenants.exclude(stream=user_stream(unpublished)).update(published_at=timezone.now())
    # when
    deleted = events_purge_published()
    # then: only the old stream's seq 1-3 go (its seq 4-5 are the newest two)
    assert deleted == 3
    assert seqs_of(tenant_a, user_stream(old)) == [4, 5]
    assert seqs_of(tenant_a, user_stream(unpublished)) == [1, 2, 3, 4]
    assert seqs_of(tenant_a, user_stream(recent)) == [1, 2, 3, 4, 5]
    # replay from before the retained tail shows the gap; the head still counts purged events
    assert [e.seq for e in events_after(tenant=tenant_a, stream=user_stream(old), after_seq=0, limit=10)] == [4, 5]
    assert stream_head(tenant=tenant_a, stream=user_stream(old)) == 5
    # and a second run finds nothing more
    assert events_purge_published() == 0


@pytest.mark.django_db
def test_purge_works_in_batches(tenant_a: Tenant, user_a: User, monkeypatch: pytest.MonkeyPatch) -> None:
    # given 7 old published events of which the newest 1 is kept
    monkeypatch.setattr(services, "uuid7", uuid7_at(timezone.now() - timedelta(days=10)))
    emit(tenant_a, *[EventSpec(user_stream(user_a), "x", {})] * 7)
    OutboxEvent.all_tenants.update(published_at=timezone.now())
    # when
    deleted = events_purge_published(older_than=timedelta(hours=1), keep_per_stream=1, batch_size=2)
    # then
    assert deleted == 6
    assert seqs_of(tenant_a, user_stream(user_a)) == [7]


@pytest.mark.django_db
def test_the_purge_task_runs_the_service(tenant_a: Tenant, user_a: User, monkeypatch: pytest.MonkeyPatch,
                                         settings: Any) -> None:
    from wallet.events.tasks import purge_published

    settings.OUTBOX_RETAIN_PER_STREAM = 0
    monkeypatch.setattr(services, "uuid7", uuid7_at(timezone.now() - timedelta(days=4)))
    emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
    OutboxEvent.all_tenants.update(published_at=timezone.now())
    # when
    result = purge_published.apply()
    # then
    assert result.get() == 1
    assert OutboxEvent.all_tenants.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="LISTEN/NOTIFY is PostgreSQL's")
def test_a_commit_with_events_notifies_the_relay_once_and_a_rollback_not_at_all(tenant_a: Tenant) -> None:
    import psycopg
    from django.conf import settings as django_settings

    from wallet.events import conf

    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}, autocommit=True) as listener:
        listener.execute(f"LISTEN {conf.notify_channel()}")
        assert conf.relay_in_process() is False and django_settings.OUTBOX_NOTIFY is not False

        def received(seconds: float) -> int:
            return sum(1 for _ in listener.notifies(timeout=seconds))

        with transaction.atomic():
            events_emit(tenant=tenant_a, events=[EventSpec(tenant_stream(tenant_a), "tenant.one", {})])
            events_emit(tenant=tenant_a, events=[EventSpec(tenant_stream(tenant_a), "tenant.two", {})])
        assert received(1.0) == 1
        with pytest.raises(RuntimeError), transaction.atomic():
            events_emit(tenant=tenant_a, events=[EventSpec(tenant_stream(tenant_a), "tenant.three", {})])
            raise RuntimeError("rolled back")
        assert received(0.5) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="deferred writes and LISTEN/NOTIFY are PostgreSQL's")
def test_deferred_events_take_their_seqs_from_the_cursor_upsert_and_notify_once(tenant_a: Tenant,
                                                                                user_a: User) -> None:
    """With `defer` and `returning=False` (the ledger's way), the cursors' upsert and the insert are appended to
    the caller's statements: nothing runs before `execute_together`, then one statement writes both, each
    event's seq read from its stream's upsert, and the NOTIFY goes with it."""
    import psycopg

    from wallet.core.bulk import execute_together
    from wallet.events import conf

    mine, everyone = user_stream(user_a.pk), tenant_stream(tenant_a.pk)
    emit(tenant_a, EventSpec(mine, "before", {}))  # the stream's cursor exists: its upsert updates it
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}, autocommit=True) as listener:
        listener.execute(f"LISTEN {conf.notify_channel()}")
        with transaction.atomic():
            deferred: list[Any] = []
            rows = events_emit(tenant=tenant_a, returning=False, defer=deferred, events=[
                EventSpec(mine, "a.one", {"n": 1}), EventSpec(everyone, "t.one", {"big": 2**70}),
                EventSpec(mine, "a.two", {"n": 2}), EventSpec(mine, "a.three", {"n": 3})])
            assert rows == [] and OutboxEvent.all_tenants.count() == 1  # nothing ran yet
            execute_together(connection, [("SELECT 1 WHERE false", []), *deferred])
        assert sum(1 for _ in listener.notifies(timeout=1.0)) == 1
    stored = list(OutboxEvent.all_tenants.filter(tenant=tenant_a).order_by("stream", "seq")
                  .values_list("stream", "seq", "type", "data"))
    assert sorted(stored) == sorted([
        (mine, 1, "before", {}), (mine, 2, "a.one", {"n": 1}), (mine, 3, "a.two", {"n": 2}),
        (mine, 4, "a.three", {"n": 3}), (everyone, 1, "t.one", {"big": 2**70})])
    assert dict(StreamCursor.all_tenants.filter(tenant=tenant_a).values_list("stream", "last_seq")) == {
        mine: 4, everyone: 1}


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="deferred writes are PostgreSQL's")
def test_a_named_statement_alone_is_refused() -> None:
    from wallet.core.bulk import NamedStatement, execute_together

    with pytest.raises(ValueError, match="named statement alone"):
        execute_together(connection, [NamedStatement("SELECT 1", [], "x")])


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="deferred writes are PostgreSQL's")
def test_a_second_deferred_emit_into_the_same_statement_is_refused(tenant_a: Tenant, user_a: User) -> None:
    with transaction.atomic():
        deferred: list[Any] = []
        events_emit(tenant=tenant_a, returning=False, defer=deferred,
                    events=[EventSpec(user_stream(user_a.pk), "a.one", {})])
        with pytest.raises(RuntimeError, match="one deferred events_emit per statement"):
            events_emit(tenant=tenant_a, returning=False, defer=deferred,
                        events=[EventSpec(user_stream(user_a.pk), "a.two", {})])
