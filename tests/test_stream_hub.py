"""The stream hub's timing wheel, its garbage-collector policy, and the consumer's hand-driven sends."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from wallet.events import hub as hub_module
from wallet.events.consumers import _Resume
from wallet.events.hub import GcPolicy, StreamHub


class FakeSocket:
    def __init__(self, every: float | None) -> None:
        self.closing = False
        self.due_slot = 0
        self.every = every
        self.ticks: list[float] = []

    def offer(self, stream: str, seq: int, event: dict[str, Any], encoded: str) -> None:  # pragma: no cover
        pass

    def tick(self, now: float) -> float | None:
        self.ticks.append(now)
        return None if self.every is None else now + self.every


def _wheel(granularity: float = 1.0) -> StreamHub:
    hub = StreamHub()
    hub.granularity = granularity
    hub.current_slot = 100
    return hub


def test_a_tick_visits_only_the_sockets_that_are_due() -> None:
    hub = _wheel()
    soon, later = FakeSocket(every=20), FakeSocket(every=20)
    hub.schedule(soon, 101.5)  # due in the tick after 101.5 s
    hub.schedule(later, 115.0)
    hub.run_due(101.9)
    assert soon.ticks == [] and later.ticks == []
    hub.run_due(102.0)
    assert soon.ticks == [102.0] and later.ticks == []
    hub.run_due(116.0)
    assert later.ticks == [116.0] and soon.ticks == [102.0]  # soon's next look: the tick after 122 s
    hub.run_due(122.0)
    assert soon.ticks == [102.0]
    hub.run_due(123.0)
    assert soon.ticks == [102.0, 123.0]
    # Everything left in the wheel is in the future: one entry per socket.
    assert sum(len(bucket) for bucket in hub.wheel.values()) == 2


def test_rescheduling_earlier_leaves_a_stale_entry_that_is_skipped_and_closed_sockets_drop_out() -> None:
    hub = _wheel()
    socket, gone = FakeSocket(every=None), FakeSocket(every=5)
    hub.schedule(socket, 120.0)
    hub.schedule(socket, 103.0)  # e.g. a token that expires before the next heartbeat
    hub.schedule(gone, 103.0)
    gone.closing = True
    hub.run_due(104.0)
    assert socket.ticks == [104.0] and gone.ticks == []
    hub.run_due(121.0)
    assert socket.ticks == [104.0]  # the stale entry at 120 s did not tick it again
    assert hub.wheel == {}


def test_a_socket_never_lands_in_a_tick_that_has_passed() -> None:
    hub = _wheel()
    socket = FakeSocket(every=None)
    hub.schedule(socket, 50.0)
    assert socket.due_slot == 101
    hub.run_due(101.0)
    assert socket.ticks == [101.0]


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref:
    """A reference cycle that is garbage at once: only a collection that sees it frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_the_gc_policy_freezes_at_start_and_collects_then_freezes_while_sockets_connect(settings,
                                                                                        restore_gc) -> None:
    settings.STREAM_GC_TUNE = True
    settings.STREAM_GC_THRESHOLD = (40_000, 15, 50)
    settings.STREAM_GC_FREEZE_SECONDS = 10
    policy = GcPolicy()
    policy.start()
    assert policy.active and gc.get_freeze_count() > 0 and gc.get_threshold() == (40_000, 15, 50)
    started = policy.last_freeze
    frozen = gc.get_freeze_count()
    alive = [Node() for _ in range(100)]  # new, live objects (the sockets that connected)
    dead = _cycle()
    policy.connected = 2
    policy.tick(started + 5)
    assert policy.connected == 2 and dead() is not None  # not yet: 10 s between freezes
    policy.tick(started + 11)
    assert policy.connected == 0 and policy.last_freeze == started + 11
    assert dead() is None  # the garbage was collected, not frozen
    assert gc.get_freeze_count() >= frozen + len(alive)  # the live objects were frozen
    policy.tick(started + 30)  # nothing connected since: nothing to do
    assert policy.last_freeze == started + 11


def test_the_gc_policy_thaws_after_churn_only_when_asked(settings, restore_gc) -> None:
    settings.STREAM_GC_TUNE = True
    settings.STREAM_GC_THAW_CLOSED = 3
    policy = GcPolicy()
    policy.start()
    dead = _cycle()
    gc.freeze()  # garbage a freeze kept: only a thaw frees it
    policy.closed = 2
    policy.tick(policy.last_freeze + 1)
    assert dead() is not None
    policy.closed = 3
    policy.tick(policy.last_freeze + 2)
    assert dead() is None and policy.closed == 0
    settings.STREAM_GC_THAW_CLOSED = 0  # the default: never
    dead = _cycle()
    gc.freeze()
    policy.closed = 10_000
    policy.tick(policy.last_freeze + 3)
    assert dead() is not None


def test_the_gc_policy_does_nothing_when_turned_off(settings, restore_gc) -> None:
    settings.STREAM_GC_TUNE = False
    policy = GcPolicy()
    before = gc.get_threshold()
    policy.start()
    assert not policy.active and gc.get_threshold() == before


def test_the_module_policy_is_inactive_in_the_test_process() -> None:
    # The stream tests turn it off (their own fixtures): a test run must not freeze its own process.
    assert not hub_module.gc_policy.active


async def test_a_send_started_by_hand_is_finished_by_a_task_when_it_suspends() -> None:
    order: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def send(label: str, wait: bool) -> str:
        order.append(f"start {label}")
        if wait:
            await gate
            await asyncio.sleep(0)
        order.append(f"end {label}")
        return label

    quick = send("quick", wait=False)
    with pytest.raises(StopIteration):
        quick.send(None)  # completes without suspending: no task needed
    slow = send("slow", wait=True)
    step = slow.send(None)
    assert step is gate

    async def finish() -> str:
        return await _Resume(slow, step)

    task = asyncio.ensure_future(finish())
    await asyncio.sleep(0)
    assert not task.done()
    gate.set_result(None)
    assert await task == "slow"
    assert order == ["start quick", "end quick", "start slow", "end slow"]


async def test_a_cancelled_resume_cancels_the_send() -> None:
    cancelled = []

    async def send() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    coroutine = send()
    step = coroutine.send(None)

    async def finish() -> None:
        await _Resume(coroutine, step)

    task = asyncio.ensure_future(finish())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]
