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
from django.db import connection, connections, transaction

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
    return OutboxEvent.all_tenants.filter(published_at__isnull=True).count()


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


def test_relay_refuses_to_run_inside_a_transaction(tenant_a: Tenant, user_a: User) -> None:
    # given a committed event
    emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
    # when / then
    with transaction.atomic(), pytest.raises(RelayInTransactionError):
        relay_once()
    assert unpublished() == 1


def test_a_group_without_listeners_still_marks_events_published(tenant_a: Tenant, user_a: User) -> None:
    emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
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


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_relay_forever_publishes_what_commits_while_it_runs(tenant_a: Tenant, user_a: User) -> None:
    # given a running relay: on PostgreSQL woken by NOTIFY (polling only every 30 s), elsewhere by polling
    channel = subscribe(user_group(tenant_a.pk, user_a.pk))
    emit(tenant_a, EventSpec(user_stream(user_a), "before", {}))
    stop = threading.Event()
    poll = 30.0 if connection.vendor == "postgresql" else 0.05
    thread = threading.Thread(target=relay_forever, args=(stop,), kwargs={"poll_seconds": poll})
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
    assert seqs(received(channel)) == []


# --- in process (embedded default) -------------------------------------------------------------------------


async def test_in_process_the_commit_wakes_a_relay_thread_that_delivers_to_this_loop(
    tenant_a: Tenant, user_a: User, settings: Any
) -> None:
    # given the embedded mode and a listener on this event loop (as a websocket consumer would be)
    settings.OUTBOX_RELAY_IN_PROCESS = True
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(user_group(tenant_a.pk, user_a.pk), channel)

    def commit_in_a_request_thread() -> tuple[OutboxEvent, str | None]:
        row = emit(tenant_a, EventSpec(user_stream(user_a), "account.credited", {"amount": "5"}))[0]
        return row, OutboxEvent.all_tenants.filter(pk=row.pk).values_list("published_at", flat=True)[0]

    try:
        # when
        row, published_at_on_return = await database_sync_to_async(commit_in_a_request_thread)()
        message = await asyncio.wait_for(layer.receive(channel), 2)
        # then: the committing thread did not publish; the relay thread did, soon after
        assert published_at_on_return is None
        assert message == expected_message(row)
        assert relay._daemon is not None and relay._daemon[0].is_alive()
        await sync_to_async(stop_in_process_relay)()
        assert await database_sync_to_async(unpublished)() == 0
    finally:
        await close_executor_connection()


def test_out_of_process_mode_starts_no_thread(tenant_a: Tenant, user_a: User) -> None:
    # given OUTBOX_RELAY_IN_PROCESS off (the fixture)
    # when
    emit(tenant_a, EventSpec(user_stream(user_a), "x", {}))
    # then
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
async def test_through_the_redis_pubsub_layer(tenant_a: Tenant, user_a: User, settings: Any) -> None:
    # given the production channel layer and a subscriber on this loop
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                           "CONFIG": {"hosts": [os.environ["REDIS_URL"]],
                                                      "prefix": f"test{uuid.uuid4().hex[:8]}"}}}
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(user_group(tenant_a.pk, user_a.pk), channel)
    try:
        rows = await database_sync_to_async(emit)(tenant_a, *[EventSpec(user_stream(user_a), "x", {"n": n})
                                                              for n in range(20)])
        # when
        published = await database_sync_to_async(relay_once)()
        # then
        messages = [await asyncio.wait_for(layer.receive(channel), 2) for _ in rows]
        assert published == 20
        assert messages == [expected_message(row) for row in rows]
    finally:
        await layer.flush()
        await close_executor_connection()
