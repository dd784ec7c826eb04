"""The outbox relay: publishes committed events to the channel layer, in seq order per stream, at least once.

How it works
- A batch reads up to `limit` unpublished rows in (tenant, stream, seq) order from the partial index of
  unpublished rows, publishes each with `group_send` (user streams to `u.<tenant hex>.<user hex>`, tenant
  streams to `t.<tenant hex>`), then marks them published. A crash between the two re-publishes them
  (consumers deduplicate by event id, or by seq); a failure part-way marks only what was sent.
- Order within a stream: `events_emit` holds a stream's cursor row lock until commit, so seq N+1 never
  becomes visible before seq N. Reading in (stream, seq) order therefore always yields a gap-free prefix of
  each stream's unpublished events, and they are sent in that order.
- One relay at a time per database: a PostgreSQL session advisory lock (taken on the connection that does
  the work, so losing the connection loses the lock and the work together), or a process-local lock on
  other databases (SQLite is the single-process embedded default). A relay that cannot get the lock
  publishes nothing (`relay_once` returns 0) and `relay_forever` waits as a standby.
- `relay_forever` keeps a position between batches and wraps around, so a backlog is worked through
  round-robin over streams instead of always starting with the same streams.
- On the channels_redis pub/sub layer, a batch is published with one pipelined round trip per Redis shard
  (same channel names and serialisation as `group_send`); any other layer gets one `group_send` per event.

Where it runs (`OUTBOX_RELAY_IN_PROCESS`, default: on when `REDIS_URL` is unset)
- Embedded (on): the on-commit hook of `events_emit` wakes a daemon thread of the committing process, started
  lazily, which publishes soon after the commit without making the request wait. The in-memory channel
  layer is not thread-safe, so that thread hands the `group_send` calls to the event loop that serves the
  websockets (captured from the committing request, or given with `register_delivery_loop()`).
- Production (off): `manage.py relay_outbox` runs `relay_forever` in its own process. `events_emit` sends a
  `pg_notify` in its transaction (delivered at commit) and the relay LISTENs, with a poll every
  `OUTBOX_POLL_SECONDS` as a fallback. Behind PgBouncer it needs a session-pooled connection (LISTEN and
  session advisory locks). NOTIFY serialises commits (see `OUTBOX_NOTIFY` in `wallet.events.conf`).
- Any `relay_forever` without LISTEN in the committing process is woken by the on-commit hook too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC
from typing import Any, NamedTuple

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL
from django.utils import timezone

from wallet.core.bulk import pg_array
from wallet.events import conf
from wallet.events.models import OutboxEvent
from wallet.events.streams import group_for_stream

__all__ = [
    "PublishedEvent",
    "RelayInTransactionError",
    "register_delivery_loop",
    "register_publish_listener",
    "relay_forever",
    "relay_once",
    "stop_in_process_relay",
    "wake_relay",
]

logger = logging.getLogger("wallet.events.relay")

MESSAGE_TYPE = "stream.event"
PUBLISH_TIMEOUT_SECONDS = 30.0
_MARK_CHUNK = 500
_MAX_BACKOFF_SECONDS = 30.0

# A batch position: the (tenant id, stream, seq) of the last row of the previous batch.
Position = tuple[Any, str, int]


class RelayInTransactionError(RuntimeError):
    """The relay was called inside a transaction: it publishes committed events only."""


# --- single-runner lock ------------------------------------------------------------------------------------

_process_runner_lock = threading.Lock()


def _connection() -> BaseDatabaseWrapper:
    return connections[router.db_for_write(OutboxEvent)]


@contextlib.contextmanager
def _runner_lock(connection: BaseDatabaseWrapper) -> Iterator[bool]:
    """Yield whether this caller is the one relay allowed to run now (and hold that until the block ends)."""
    if connection.vendor != "postgresql":
        acquired = _process_runner_lock.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                _process_runner_lock.release()
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [conf.RELAY_ADVISORY_LOCK_KEY])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [conf.RELAY_ADVISORY_LOCK_KEY])
            except Exception:
                # A broken connection: closing it is what releases a session lock for sure.
                logger.warning("could not release the relay lock; closing the connection", exc_info=True)
                connection.close()


# --- event loops -------------------------------------------------------------------------------------------

_thread_state = threading.local()
_delivery_loop: asyncio.AbstractEventLoop | None = None


def register_delivery_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Tell an in-process relay which event loop serves this process's websockets (default: the running
    one), so that it publishes to an in-memory channel layer from that loop, thread-safely. A consumer may
    call it in `connect()`; the on-commit hook also captures the loop of the request that committed."""
    global _delivery_loop
    _delivery_loop = loop or asyncio.get_running_loop()


def _capture_delivery_loop() -> None:
    """Remember the event loop that the committing code runs under (ASGI), if any."""
    global _delivery_loop
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        from asgiref.sync import SyncToAsync

        threadlocal = SyncToAsync.threadlocal
        same_process = getattr(threadlocal, "main_event_loop_pid", None) == os.getpid()
        loop = getattr(threadlocal, "main_event_loop", None) if same_process else None
    if loop is not None and not loop.is_closed():
        _delivery_loop = loop


def _own_loop() -> asyncio.AbstractEventLoop:
    """This thread's persistent event loop (a channel layer keeps its connections per loop)."""
    loop = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_state.loop = loop
    return loop


def _run_on_a_loop(layer: Any, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` to its end: on the websockets' loop for an in-memory layer (its queues wake their
    readers without locks, so only from their own loop), on this thread's own loop otherwise."""
    target = _delivery_loop
    if isinstance(layer, InMemoryChannelLayer) and target is not None and target.is_running():
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not target:
            future = asyncio.run_coroutine_threadsafe(coroutine, target)
            try:
                future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise
            return
    _own_loop().run_until_complete(asyncio.wait_for(coroutine, PUBLISH_TIMEOUT_SECONDS))


# --- listeners of published events ----------------------------------------------------------------------


class PublishedEvent(NamedTuple):
    """A committed event the relay has just published (what a publish listener gets)."""

    tenant_id: Any
    stream: str
    seq: int
    type: str
    data: Any


PublishListener = Callable[[list[PublishedEvent]], None]
_publish_listeners: list[PublishListener] = []


def register_publish_listener(listener: PublishListener) -> None:
    """Call `listener(events)` in the relay's process after each published batch (in stream order), so that
    other apps can react to committed events (e.g. schedule a task). It runs in the relay's thread: it
    must be quick (hand real work to a task) and must not raise (exceptions are logged, never retried)."""
    if listener not in _publish_listeners:
        _publish_listeners.append(listener)


def _tell_listeners(rows: Sequence[tuple]) -> None:
    if not _publish_listeners or not rows:
        return
    events = [PublishedEvent(row[1], row[2], row[3], row[4], row[5]) for row in rows]
    for listener in list(_publish_listeners):
        try:
            listener(events)
        except Exception:
            logger.exception("publish listener failed", extra={"listener": getattr(listener, "__name__", "?")})


# --- one batch ---------------------------------------------------------------------------------------------

_COLUMNS = ("id", "tenant_id", "stream", "seq", "type", "data", "created_at")


def _fetch_batch(connection: BaseDatabaseWrapper, limit: int, after: Position | None) -> list[tuple]:
    """Up to `limit` unpublished rows after `after`, in (tenant, stream, seq) order (the partial index)."""
    queryset = OutboxEvent.all_tenants.using(connection.alias).filter(published_at__isnull=True)
    if after is not None:
        quote = connection.ops.quote_name
        tenant_id = OutboxEvent._meta.get_field("tenant").get_db_prep_value(after[0], connection)
        # A row-value comparison (PostgreSQL, SQLite), so that the index range starts at the position. Only
        # quoted constant column names are interpolated; the values are parameters.
        queryset = queryset.filter(RawSQL(  # noqa: S611
            f"({quote('tenant_id')}, {quote('stream')}, {quote('seq')}) > (%s, %s, %s)",
            (tenant_id, after[1], after[2]), output_field=BooleanField(),
        ))
    return list(queryset.order_by("tenant_id", "stream", "seq").values_list(*_COLUMNS)[:limit])


def _timestamp(moment: Any) -> str:
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _message(row: tuple) -> tuple[str, dict[str, Any]]:
    event_id, tenant_id, stream, seq, event_type, data, created_at = row
    event = {"id": str(event_id), "stream": stream, "seq": seq, "type": event_type, "ts": _timestamp(created_at),
             "data": data}
    return group_for_stream(tenant_id.hex, stream), {"type": MESSAGE_TYPE, "event": event}


async def _publish(layer: Any, messages: Sequence[tuple[str, dict[str, Any]]], sent: list[int]) -> None:
    """Send in order; `sent[0]` counts the messages the layer has taken (read after a failure)."""
    shards = _pubsub_shards(layer, messages)
    if shards is not None:
        await _publish_pipelined(shards, sent)
        return
    for group, message in messages:
        await layer.group_send(group, message)
        sent[0] += 1


def _pubsub_shards(layer: Any, messages: Sequence[tuple[str, dict[str, Any]]]) -> dict[Any, list] | None:
    """For a channels_redis pub/sub layer (4.x internals, checked): the messages as its `group_send` would
    publish them (channel name, serialised payload), grouped by shard. None for any other layer."""
    if type(layer).__name__ != "RedisPubSubChannelLayer" or not hasattr(layer, "_get_layer"):
        return None
    loop_layer = layer._get_layer()
    if not (hasattr(loop_layer, "_get_group_channel_name") and hasattr(loop_layer, "_get_shard")):
        return None
    shards: dict[Any, list[tuple[str, bytes]]] = {}
    for group, message in messages:
        name = loop_layer._get_group_channel_name(group)
        shard = loop_layer._get_shard(name)
        if not all(hasattr(shard, attribute) for attribute in ("_lock", "_ensure_redis")):
            return None
        shards.setdefault(shard, []).append((name, layer.serialize(message)))
    return shards


async def _publish_pipelined(shards: dict[Any, list[tuple[str, bytes]]], sent: list[int]) -> None:
    """Publish with one pipelined round trip per shard instead of one per message (~25x faster).

    A group always maps to the same shard and a pipeline keeps its order, so each stream stays in order.
    On a failure nothing counts as sent: the whole batch goes again (at least once).
    """
    total = 0
    for shard, items in shards.items():
        async with shard._lock:
            shard._ensure_redis()
            pipeline = shard._redis.pipeline(transaction=False)
            for name, payload in items:
                pipeline.publish(name, payload)
            await pipeline.execute()
        total += len(items)
    sent[0] = total


def _mark_published(connection: BaseDatabaseWrapper, ids: Sequence[Any]) -> None:
    """Set `published_at` on the rows `ids`: on PostgreSQL one statement with one array parameter."""
    now = timezone.now()
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote(OutboxEvent._meta.db_table)} SET {quote('published_at')} = %s "  # noqa: S608
                f"WHERE {quote('id')} = ANY(%s::uuid[])",
                [now, pg_array(ids)],
            )
        return
    manager = OutboxEvent.all_tenants.using(connection.alias)
    for start in range(0, len(ids), _MARK_CHUNK):
        manager.filter(id__in=ids[start:start + _MARK_CHUNK]).update(published_at=now)


def _relay_batch(connection: BaseDatabaseWrapper, limit: int, after: Position | None) -> tuple[int, Position | None]:
    """Publish and mark one batch; return its size and the position to continue from (None: wrap around)."""
    rows = _fetch_batch(connection, limit, after)
    if not rows:
        return 0, None
    messages = [_message(row) for row in rows]
    ids = [row[0] for row in rows]
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured (CHANNEL_LAYERS)")
    sent = [0]
    try:
        _run_on_a_loop(layer, _publish(layer, messages, sent))
    except BaseException:
        # Keep what was sent; the rest (in order, per stream) goes out next time.
        if sent[0]:
            try:
                _mark_published(connection, ids[:sent[0]])
            except Exception:
                logger.warning("could not mark the sent part of a failed batch; it will be sent again",
                               exc_info=True)
            else:
                _tell_listeners(rows[:sent[0]])
        raise
    _mark_published(connection, ids)
    _tell_listeners(rows)
    last = rows[-1]
    return len(rows), ((last[1], last[2], last[3]) if len(rows) == limit else None)


def relay_once(*, limit: int = 500) -> int:
    """Publish up to `limit` committed, unpublished events (in seq order within each stream), mark them
    published, and return how many were published: 0 when there were none or when another relay holds the
    lock. Must run outside a transaction (`RelayInTransactionError`)."""
    connection = _connection()
    if connection.in_atomic_block:
        raise RelayInTransactionError("relay_once must run outside transaction.atomic()")
    with _runner_lock(connection) as acquired:
        if not acquired:
            return 0
        count, _ = _relay_batch(connection, limit, None)
        return count


# --- the long-running relay --------------------------------------------------------------------------------

_wake_event = threading.Event()


def _drain(connection: BaseDatabaseWrapper, stop_event: threading.Event, batch_size: int,
           position: Position | None, between_batches: Callable[[], None] | None = None,
           ) -> tuple[int, Position | None, bool]:
    """Relay batches until a full pass from the start finds less than a batch. Returns (published,
    position, whether this relay held the lock)."""
    total = 0
    with _runner_lock(connection) as acquired:
        if not acquired:
            return 0, None, False
        while not stop_event.is_set():
            from_start = position is None
            count, position = _relay_batch(connection, batch_size, position)
            total += count
            if from_start and position is None:
                break
            if between_batches is not None:
                between_batches()
    return total, position, True


def _discard_notifications(connection: BaseDatabaseWrapper) -> None:
    """Drop the notifications that arrived meanwhile (psycopg keeps them): the scan under way covers them,
    and under sustained load a drain can last long enough for them to pile up."""
    for _ in connection.connection.notifies(timeout=0):
        pass


def _wait_for_notify(connection: BaseDatabaseWrapper, seconds: float, stop_event: threading.Event) -> None:
    """Wait up to `seconds` for a NOTIFY on the relay's connection, waking at least twice a second to
    look at `stop_event`; then drop any backlog of notifications (the next scan covers them all)."""
    pg_connection = connection.connection
    deadline = time.monotonic() + seconds
    while not stop_event.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if any(True for _ in pg_connection.notifies(timeout=min(remaining, 0.5), stop_after=1)):
            break
    _discard_notifications(connection)


def _wait_for_wake(seconds: float, stop_event: threading.Event) -> bool:
    """Wait up to `seconds` for the process-local wake-up, looking at `stop_event` at least twice a second;
    True when woken."""
    deadline = time.monotonic() + seconds
    while not stop_event.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if _wake_event.wait(min(remaining, 0.5)):
            return True
    return False


def relay_forever(stop_event: threading.Event, *, poll_seconds: float | None = None, listen: bool | None = None,
                  batch_size: int | None = None, active: Callable[[], bool] | None = None) -> None:
    """Relay until `stop_event` is set: drain, then wait for a wake-up, a NOTIFY or the poll interval.

    `listen` (default: on PostgreSQL unless `OUTBOX_RELAY_IN_PROCESS`) LISTENs for `events_emit`'s
    NOTIFY; otherwise it waits on the process-local wake-up that the on-commit hook sets. `poll_seconds`
    defaults to `OUTBOX_POLL_SECONDS`; `batch_size` to `OUTBOX_RELAY_BATCH_SIZE`. While `active()` returns
    False it touches nothing (the in-process relay when its setting is turned off). Errors are logged and
    retried with a capped exponential backoff on a fresh connection. Closes its connection when it returns.
    """
    poll = conf.poll_seconds() if poll_seconds is None else poll_seconds
    batch = batch_size or conf.relay_batch_size()
    failures = 0
    connection = _connection()
    try:
        while not stop_event.is_set():
            try:
                _serve(connection, stop_event, poll, listen, batch, active)
                failures = 0
            except Exception:
                failures += 1
                delay = min(_MAX_BACKOFF_SECONDS, 0.1 * 2 ** (failures - 1))
                logger.exception("outbox relay failed; retrying", extra={"retry_in_seconds": delay})
                connection.close()
                stop_event.wait(delay)
    finally:
        connection.close()


def _serve(connection: BaseDatabaseWrapper, stop_event: threading.Event, poll: float, listen: bool | None,
           batch: int, active: Callable[[], bool] | None) -> None:
    use_listen = listen if listen is not None else (
        connection.vendor == "postgresql" and not conf.relay_in_process()
    )
    if use_listen:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {connection.ops.quote_name(conf.notify_channel())}")
    position: Position | None = None
    standby_logged = False
    while not stop_event.is_set():
        if active is not None and not active():
            _wait_for_wake(poll, stop_event)
            _wake_event.clear()
            continue
        _wake_event.clear()  # before the scan: a wake-up during it makes the next wait return at once
        published, position, held = _drain(connection, stop_event, batch, position,
                                           (lambda: _discard_notifications(connection)) if use_listen else None)
        if not held and not standby_logged:
            logger.info("another relay holds the outbox lock; standing by")
        standby_logged = not held
        if published:
            logger.debug("outbox relayed", extra={"published": published})
        if use_listen:
            _wait_for_notify(connection, poll, stop_event)
        else:
            woken = _wait_for_wake(poll, stop_event)
            if not woken and connection.vendor != "postgresql":
                connection.close()  # idle: an embedded relay holds no connection between polls


# --- the in-process relay (embedded default) ---------------------------------------------------------------

_daemon_lock = threading.Lock()
_daemon: tuple[threading.Thread, threading.Event] | None = None


def wake_relay() -> None:
    """The on-commit hook of `events_emit`: wake any relay running in this process (`relay_forever`
    without LISTEN) and, in the embedded mode, start the in-process relay thread if needed. Returns at
    once; never publishes in the caller's thread."""
    if conf.relay_in_process():
        _capture_delivery_loop()
        _ensure_daemon()
    _wake_event.set()


def _ensure_daemon() -> None:
    global _daemon
    with _daemon_lock:
        if _daemon is not None and _daemon[0].is_alive():
            return
        stop_event = threading.Event()
        thread = threading.Thread(
            target=relay_forever, args=(stop_event,),
            kwargs={"listen": False, "active": conf.relay_in_process},
            name="outbox-relay", daemon=True,
        )
        thread.start()
        _daemon = (thread, stop_event)


def stop_in_process_relay(timeout: float = 5.0) -> None:
    """Stop the in-process relay thread, if one runs, and wait up to `timeout` for it (tests, shutdown).
    The next commit with events starts a fresh one."""
    global _daemon
    with _daemon_lock:
        daemon, _daemon = _daemon, None
    if daemon is not None:
        thread, stop_event = daemon
        stop_event.set()
        _wake_event.set()
        thread.join(timeout)


def _reset_after_fork() -> None:
    """A forked child has none of its parent's threads: forget them and their locks."""
    global _daemon, _process_runner_lock, _daemon_lock, _delivery_loop, _wake_event
    _daemon = None
    _delivery_loop = None
    _process_runner_lock = threading.Lock()
    _daemon_lock = threading.Lock()
    _wake_event = threading.Event()
    _thread_state.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
