"""The outbox relay: what it publishes, to which groups, in which order, at least once, one relay at a time,
in process (embedded) and as its own loop (LISTEN/NOTIFY on PostgreSQL), and through Redis pub/sub."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.db import OperationalError, connections, transaction

from tenants.models import Tenant, User
from tests.factories import UserFactory
from wallet.events import relay
from wallet.events.models import OutboxEvent
from wallet.events.relay import RelayInTransactionError, relay_forever, relay_once, stop_in_process_relay
from wallet.events.services import EventSpec, events_emit, tenant_stream, user_stream
from wallet.events.streams import tenant_group, user_group

pytestmark = pytest.mark.django_db(transaction=True)

IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10_000}}}


@pytest.fixture(autouse=True)
def _relay_under_test_control(settings: Any) -> Iterator[None]:
    """The in-memory channel layer, and no in-process relay thread unless a test starts one."""
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    settings.OUTBOX_RELAY_IN_PROCESS = False
    yield
    stop_in_process_relay()


def emit(tenant: Tenant, *specs: EventSpec) -> list[OutboxEvent]:
    with transaction.atomic():
        return events_emit(tenant=tenant, events=list(specs))


def subscribe(group: str) -> str:
    """A fresh channel of the in-memory layer, added to `group`."""
    layer = get_channel_layer()

    async def go() -> str:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        return channel

    return async_to_sync(go)()


def received(channel: str) -> list[dict[str, Any]]:
    """Everything waiting on `channel` (an in-memory channel: nothing arrives later)."""
    layer = get_channel_layer()

    async def go() -> list[dict[str, Any]]:
        messages = []
        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), 0.02))
            except TimeoutError:
                return messages

    return async_to_sync(go)()


def expected_message(row: OutboxEvent) -> dict[str, Any]:
    return {"type": "stream.event", "event": {
        "id": str(row.id), "stream": row.stream, "seq": row.seq, "type": row.type,
        "ts": row.created_at.isoformat().replace("+00:00", "Z"), "data": row.data,
    }}


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [message["event"]["seq"] for message in messages]


def unpublished() -> int:
    # SQLite's in-memory test database shares its cache between threads, and a table that another thread (a
    # relay) is writing answers "database table is locked" at once instead of waiting: ask again.
    for _ in range(100):
        try:
            return OutboxEvent.all_tenants.filter(published_at__isnull=True).count()
        except OperationalError as error:
            if "locked" not in str(error):
                raise
            time.sleep(0.01)
    raise AssertionError("the outbox table stayed locked")


def _close_connection() -> None:
    connections["default"].close()


# asgiref runs database_sync_to_async calls in one long-lived thread; end its connection when an async test is
# done, or PostgreSQL cannot drop the test database.
close_executor_connection = sync_to_async(_close_connection)


# --- publication -------------------------------------------------------------------------------------------


def test_relay_publishes_each_stream_in_seq_order_to_its_group(tenant_a: Tenant, tenant_b: Tenant,
                                                               user_a: User, user_b: User) -> None:
    # given a user's channel, another user's, the tenant's, and tenant B's user
    bob = UserFactory(tenant=tenant_a, email="bob-a@example.com")
    alice_channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    bob_channel = subscribe(user_group(tenant_a.pk, bob.pk))
    tenant_channel = subscribe(tenant_group(tenant_a.pk))
    b_channel = subscribe(user_group(tenant_b.pk, user_b.pk))
    first = emit(tenant_a, EventSpec(user_stream(user_a), "account.credited", {"amount": "10"}),
                 EventSpec(tenant_stream(tenant_a), "tenant.notice", {"text": "hi"}),
                 EventSpec(user_stream(bob), "account.debited", {"amount": "10"}))
    second = emit(tenant_a, EventSpec(user_stream(user_a), "account.debited", {"amount": "3"}),
                  EventSpec(user_stream(user_a), "transfer.completed", {}))
    in_b = emit(tenant_b, EventSpec(user_stream(user_b), "account.credited", {"amount": "1"}))
    # when
    published = relay_once()
    # then
    assert published == 6
    assert received(alice_channel) == [expected_message(row) for row in (first[0], second[0], second[1])]
    assert received(bob_channel) == [expected_message(first[2])]
    assert received(tenant_channel) == [expected_message(first[1])]
    assert received(b_channel) == [expected_message(in_b[0])]
    assert unpublished() == 0


def test_the_message_format(tenant_a: Tenant, user_a: User) -> None:
    # given
    channel = subscribe(f"u.{tenant_a.pk.hex}.{user_a.pk.hex}")
    (row,) = emit(tenant_a, EventSpec(user_stream(user_a), "account.balance_changed",
                                      {"balance": "1250", "decimals": 2}))
    # when
    relay_once()
    # then
    (message,) = received(channel)
    event = message["event"]
    assert message["type"] == "stream.event"
    assert set(event) == {"id", "stream", "seq", "type", "ts", "data"}
    assert event["id"] == str(row.id)
    assert event["stream"] == f"user:{user_a.pk.hex}"
    assert event["seq"] == 1
    assert event["type"] == "account.balance_changed"
    assert event["ts"].endswith("Z") and event["ts"].startswith(row.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert event["data"] == {"balance": "1250", "decimals": 2}


def test_a_second_relay_once_publishes_nothing_new(tenant_a: Tenant, user_a: User) -> None:
    # given everything already relayed
    channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    emit(tenant_a, *[EventSpec(user_stream(user_a), "x", {})] * 3)
    assert relay_once() == 3
    assert seqs(received(channel)) == [1, 2, 3]
    # when
    published = relay_once()
    # then
    assert published == 0
    assert received(channel) == []


def test_relay_once_takes_at_most_limit_and_the_rest_follows_in_order(tenant_a: Tenant, user_a: User) -> None:
    # given 7 events in one stream and 2 in another
    mine = subscribe(user_group(tenant_a.pk, user_a.pk))
    everyone = subscribe(tenant_group(tenant_a.pk))
    emit(tenant_a, *[EventSpec(user_stream(user_a), "x", {})] * 7, *[EventSpec(tenant_stream(tenant_a), "t", {})] * 2)
    # when
    counts = [relay_once(limit=4) for _ in range(4)]
    # then
    assert counts == [4, 4, 1, 0]
    assert seqs(received(mine)) == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(received(everyone)) == [1, 2]


def test_relay_refuses_to_run_inside_a_transaction_and_publishes_once_outside(tenant_a: Tenant,
                                                                               user_a: User) -> None:
    # given a committed event (of a group nobody listens to)
    emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
    # when / then: inside a transaction it refuses and publishes nothing
    with transaction.atomic(), pytest.raises(RelayInTransactionError):
        relay_once()
    assert unpublished() == 1
    # outside it publishes, listeners or not
    assert relay_once() == 1
    assert unpublished() == 0


# --- at least once -----------------------------------------------------------------------------------------


def test_a_crash_between_publish_and_mark_republishes_in_order_and_loses_nothing(
    tenant_a: Tenant, user_a: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given events of two streams, and a relay that dies after publishing, before marking
    mine = subscribe(user_group(tenant_a.pk, user_a.pk))
    everyone = subscribe(tenant_group(tenant_a.pk))
    rows = emit(tenant_a, *[EventSpec(user_stream(user_a), "x", {"n": n}) for n in range(4)],
                EventSpec(tenant_stream(tenant_a), "t", {}))

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before marking")

    monkeypatch.setattr(relay, "_mark_published", crash)
    with pytest.raises(RuntimeError, match="killed before marking"):
        relay_once()
    assert unpublished() == 5
    # when the relay runs again
    monkeypatch.undo()
    assert relay_once() == 5
    # then every event was delivered at least once, each run in seq order, and all are now published
    mine_ids = [str(row.id) for row in rows[:4]]
    assert [message["event"]["id"] for message in received(mine)] == mine_ids + mine_ids
    assert [message["event"]["id"] for message in received(everyone)] == [str(rows[4].id)] * 2
    assert unpublished() == 0
    assert relay_once() == 0


def test_a_publish_failure_part_way_keeps_what_was_sent_and_resumes_in_order(
    tenant_a: Tenant, user_a: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 5 events and a channel layer that fails on the third send
    channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    emit(tenant_a, *[EventSpec(user_stream(user_a), "x", {})] * 5)
    layer = get_channel_layer()
    real_group_send = layer.group_send
    calls = []

    async def flaky_group_send(group: str, message: dict[str, Any]) -> None:
        calls.append(message["event"]["seq"])
        if len(calls) == 3:
            raise ConnectionError("redis went away")
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", flaky_group_send)
    # when
    with pytest.raises(ConnectionError):
        relay_once()
    # then the two sent are marked, the rest is not
    assert list(OutboxEvent.all_tenants.filter(published_at__isnull=True).order_by("seq")
                .values_list("seq", flat=True)) == [3, 4, 5]
    # and the next run sends the rest, in order: each event exactly once overall
    assert relay_once() == 3
    assert seqs(received(channel)) == [1, 2, 3, 4, 5]
    assert calls == [1, 2, 3, 3, 4, 5]


# --- one relay at a time -----------------------------------------------------------------------------------


def test_only_one_relay_runs_at_a_time(tenant_a: Tenant, user_a: User) -> None:
    # given another relay holding the lock (in another thread, with its own connection)
    channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
    holding, release = threading.Event(), threading.Event()
    outcome: list[bool] = []

    def other_relay() -> None:
        try:
            with relay._runner_lock(connections["default"]) as acquired:
                outcome.append(acquired)
                holding.set()
                release.wait(5)
        finally:
            connections["default"].close()

    thread = threading.Thread(target=other_relay)
    thread.start()
    assert holding.wait(5)
    # when
    while_held = relay_once()
    release.set()
    thread.join(5)
    after = relay_once()
    # then
    assert outcome == [True]
    assert while_held == 0
    assert after == 1
    assert seqs(received(channel)) == [1]


# --- relay_forever -----------------------------------------------------------------------------------------


def wait_until(condition: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_relay_forever_publishes_what_commits_while_it_runs(tenant_a: Tenant, user_a: User) -> None:
    # given a running relay that polls only every 30 s: a commit wakes it (PostgreSQL: NOTIFY; elsewhere the
    # on-commit hook's process-local wake-up)
    channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    emit(tenant_a, EventSpec(user_stream(user_a), "before", {}))
    stop = threading.Event()
    thread = threading.Thread(target=relay_forever, args=(stop,), kwargs={"poll_seconds": 30.0})
    thread.start()
    try:
        assert wait_until(lambda: unpublished() == 0)
        # when
        started = time.monotonic()
        emit(tenant_a, EventSpec(user_stream(user_a), "after", {}), EventSpec(user_stream(user_a), "after", {}))
        # then
        assert wait_until(lambda: unpublished() == 0)
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert [message["event"]["type"] for message in received(channel)] == ["before", "after", "after"]


def test_relay_forever_works_through_a_backlog_batch_after_batch_keeping_each_stream_in_order(
    tenant_a: Tenant, user_a: User
) -> None:
    # given a backlog over three streams and a relay taking 2 events per batch (so it resumes mid-stream)
    bob = UserFactory(tenant=tenant_a, email="bob-a@example.com")
    channels = {stream: subscribe(group) for stream, group in (
        (user_stream(user_a), user_group(tenant_a.pk, user_a.pk)),
        (user_stream(bob), user_group(tenant_a.pk, bob.pk)),
        (tenant_stream(tenant_a), tenant_group(tenant_a.pk)),
    )}
    emit(tenant_a, *[EventSpec(user_stream(user_a), "a", {})] * 5, *[EventSpec(user_stream(bob), "b", {})] * 3)
    emit(tenant_a, *[EventSpec(tenant_stream(tenant_a), "t", {})] * 4, EventSpec(user_stream(user_a), "a", {}))
    stop = threading.Event()
    thread = threading.Thread(target=relay_forever, args=(stop,), kwargs={"poll_seconds": 30.0, "batch_size": 2})
    # when
    thread.start()
    try:
        assert wait_until(lambda: unpublished() == 0)
    finally:
        stop.set()
        thread.join(5)
    # then
    assert {stream: seqs(received(channel)) for stream, channel in channels.items()} == {
        user_stream(user_a): [1, 2, 3, 4, 5, 6], user_stream(bob): [1, 2, 3], tenant_stream(tenant_a): [1, 2, 3, 4],
    }


def test_a_batch_resumes_after_its_position_and_a_pass_wraps_around(tenant_a: Tenant, user_a: User) -> None:
    # given streams sorted as tenant:... < user:...; a first batch stops inside the tenant stream
    mine = subscribe(user_group(tenant_a.pk, user_a.pk))
    everyone = subscribe(tenant_group(tenant_a.pk))
    emit(tenant_a, *[EventSpec(tenant_stream(tenant_a), "t", {})] * 3, *[EventSpec(user_stream(user_a), "u", {})] * 2)
    stop = threading.Event()
    published, position, held = relay._drain(connections["default"], stop, 2, None)
    assert (published, position, held) == (5, None, True)
    assert seqs(received(everyone)) == [1, 2, 3]
    assert seqs(received(mine)) == [1, 2]
    # when a new tenant event commits (before the position in key order) and a pass starts mid-way
    emit(tenant_a, EventSpec(tenant_stream(tenant_a), "t", {}), EventSpec(user_stream(user_a), "u", {}))
    count, after = relay._relay_batch(connections["default"], 2, (tenant_a.pk, user_stream(user_a), 2))
    # then that batch takes only what follows the position; the next pass, from the start, takes the rest
    assert (count, after) == (1, None)
    assert seqs(received(mine)) == [3]
    assert relay._drain(connections["default"], stop, 2, None)[0] == 1
    assert seqs(received(everyone)) == [4]


# --- in process (embedded default) -------------------------------------------------------------------------


async def test_in_process_the_commit_wakes_a_relay_thread_that_delivers_to_this_loop(
    tenant_a: Tenant, user_a: User, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the embedded mode and a listener on this event loop (as a websocket consumer would be)
    settings.OUTBOX_RELAY_IN_PROCESS = True
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(user_group(tenant_a.pk, user_a.pk), channel)
    publishers: list[str] = []
    real_relay_batch = relay._relay_batch

    def recording_relay_batch(*args: Any, **kwargs: Any) -> Any:
        publishers.append(threading.current_thread().name)
        return real_relay_batch(*args, **kwargs)

    monkeypatch.setattr(relay, "_relay_batch", recording_relay_batch)
    try:
        # when a request thread commits an event
        (row,) = await database_sync_to_async(emit)(tenant_a, EventSpec(user_stream(user_a), "account.credited",
                                                                        {"amount": "5"}))
        message = await asyncio.wait_for(layer.receive(channel), 2)
        # then the relay thread (not the committing one) delivered it here, and marked it
        assert message == expected_message(row)
        assert set(publishers) == {"outbox-relay"}
        assert await sync_to_async(wait_until)(lambda: unpublished() == 0)
        await sync_to_async(stop_in_process_relay)()
        assert relay._daemon is None
    finally:
        await close_executor_connection()


@pytest.mark.django_db
def test_out_of_process_mode_starts_no_thread(tenant_a: Tenant, user_a: User,
                                              django_capture_on_commit_callbacks: Any) -> None:
    # given OUTBOX_RELAY_IN_PROCESS off (the fixture)
    # when the transaction's on-commit hooks run
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
    # then
    assert len(callbacks) == 1
    assert relay._daemon is None
    assert unpublished() == 1


# --- the command -------------------------------------------------------------------------------------------


def test_relay_outbox_once_publishes_everything_pending(tenant_a: Tenant, user_a: User) -> None:
    # given more events than one batch
    channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    emit(tenant_a, *[EventSpec(user_stream(user_a), "x", {})] * 7)
    out = StringIO()
    # when
    call_command("relay_outbox", "--once", "--batch-size", "3", stdout=out)
    # then
    assert out.getvalue() == "published 7 event(s)\n"
    assert seqs(received(channel)) == [1, 2, 3, 4, 5, 6, 7]


# --- Redis pub/sub -----------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (run under .ci/with-services)")
async def test_through_the_redis_pubsub_layer(tenant_a: Tenant, user_a: User, user_b: User, settings: Any) -> None:
    # given the production channel layer and subscribers on this loop: a user, the tenant, another tenant's user
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                           "CONFIG": {"hosts": [os.environ["REDIS_URL"]],
                                                      "prefix": f"test{uuid.uuid4().hex[:8]}"}}}
    layer = get_channel_layer()
    channels = {}
    for name, group in (("alice", user_group(tenant_a.pk, user_a.pk)), ("tenant", tenant_group(tenant_a.pk)),
                        ("bob", user_group(user_b.tenant_id, user_b.pk))):
        channels[name] = await layer.new_channel()
        await layer.group_add(group, channels[name])
    try:
        alice = await database_sync_to_async(emit)(
            tenant_a, *[EventSpec(user_stream(user_a), "x", {"n": n}) for n in range(30)])
        everyone = await database_sync_to_async(emit)(tenant_a, EventSpec(tenant_stream(tenant_a), "t", {}))
        bob = await database_sync_to_async(emit)(user_b.tenant, EventSpec(user_stream(user_b), "y", {}))
        # when
        published = await database_sync_to_async(relay_once)()
        # then: the pipelined publication is in use, and each group got its stream in order
        assert relay._pubsub_shards(layer, [("t.x", {"type": "x"})]) is not None
        assert published == 32
        assert [await asyncio.wait_for(layer.receive(channels["alice"]), 2) for _ in alice] == [
            expected_message(row) for row in alice]
        assert await asyncio.wait_for(layer.receive(channels["tenant"]), 2) == expected_message(everyone[0])
        assert await asyncio.wait_for(layer.receive(channels["bob"]), 2) == expected_message(bob[0])
    finally:
        await layer.flush()
        await close_executor_connection()
