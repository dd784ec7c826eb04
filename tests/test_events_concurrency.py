"""Concurrent emitters on PostgreSQL: per-stream seqs stay 1..N with no gap, duplicate or deadlock, and a
relay running meanwhile publishes every stream in order."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from tenants.models import Tenant
from wallet.core.bulk import execute_together
from wallet.events.models import OutboxEvent
from wallet.events.relay import relay_forever
from wallet.events.services import EventSpec, events_emit, tenant_stream, user_stream
from wallet.events.streams import group_for_stream

THREADS = 16
TRANSACTIONS_PER_THREAD = 15


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_emitters_get_gap_free_seqs_and_the_relay_keeps_each_stream_in_order(
    tenant_a: Tenant, settings: Any
) -> None:
    # given 7 streams (6 users and the tenant), a listener per stream, and a relay running
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer",
                                           "CONFIG": {"capacity": 10_000}}}
    settings.OUTBOX_RELAY_IN_PROCESS = False
    streams = [user_stream(uuid.uuid4()) for _ in range(6)] + [tenant_stream(tenant_a)]
    layer = get_channel_layer()
    channels: dict[str, str] = {}
    for stream in streams:
        channels[stream] = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group_for_stream(tenant_a.pk.hex, stream), channels[stream])
    stop_relay = threading.Event()
    relay_thread = threading.Thread(target=relay_forever, args=(stop_relay,), kwargs={"poll_seconds": 0.2})
    relay_thread.start()

    # when 16 threads (half of them deferring their writes, as the ledger does) each commit transactions
    # that emit to 2-4 overlapping streams, in random order
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    emitted = [0]
    lock = threading.Lock()

    def emitter(index: int) -> None:
        rng = random.Random(index)
        try:
            start.wait(10)
            for n in range(TRANSACTIONS_PER_THREAD):
                chosen = rng.sample(streams, rng.randint(2, 4))
                specs = [EventSpec(stream, "load.tick", {"thread": index, "n": n})
                         for stream in chosen for _ in range(rng.randint(1, 3))]
                rng.shuffle(specs)
                with transaction.atomic():
                    if index % 2:  # the ledger's way: the upsert and the insert deferred to one statement
                        deferred: list[Any] = []
                        events_emit(tenant=tenant_a, events=specs, returning=False, defer=deferred)
                        execute_together(connection, deferred)
                    else:
                        events_emit(tenant=tenant_a, events=specs)
                with lock:
                    emitted[0] += len(specs)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=emitter, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    deadline = time.monotonic() + 10
    while OutboxEvent.all_tenants.filter(published_at__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop_relay.set()
    relay_thread.join(10)

    # then: no error (a deadlock would raise), seqs 1..N per stream, all published, in order per stream
    assert errors == []
    assert not relay_thread.is_alive()
    assert OutboxEvent.all_tenants.count() == emitted[0]
    assert OutboxEvent.all_tenants.filter(published_at__isnull=True).count() == 0
    for stream in streams:
        stored = list(OutboxEvent.all_tenants.filter(tenant=tenant_a, stream=stream).order_by("seq")
                      .values_list("seq", "id"))
        assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
        assert len(stored) > 0
        received = async_to_sync(_drain)(layer, channels[stream])
        assert [(m["event"]["seq"], m["event"]["id"]) for m in received] == [(seq, str(i)) for seq, i in stored]


async def _drain(layer: Any, channel: str) -> list[dict[str, Any]]:
    messages = []
    while True:
        try:
            messages.append(await asyncio.wait_for(layer.receive(channel), 0.02))
        except TimeoutError:
            return messages
