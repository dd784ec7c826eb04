"""The stream protocol through Channels' communicator: subscribe, snapshot, live events, resume, resync,
topics, slow consumers, token expiry and browser origins."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tenants.auth.sessions import session_start
from tenants.models import Tenant, User
from tests.conftest import app_key_of
from tests.factories import UserFactory
from tests.ledger_helpers import enable, fund
from wallet.asgi import application
from wallet.events import consumers
from wallet.events.hub import hub
from wallet.events.models import OutboxEvent
from wallet.events.relay import relay_once
from wallet.ledger import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

@pytest.fixture(autouse=True)
def _no_gc_tuning(settings):
    """The hub tunes the garbage collector of a stream process (`GcPolicy`); not of the test process."""
    settings.STREAM_GC_TUNE = False



@pytest.fixture(autouse=True)
def _relay_by_hand(settings):
    """These tests relay explicitly (`relay_once`), so that what reaches a socket, and when, is theirs."""
    from wallet.events.relay import stop_in_process_relay

    settings.OUTBOX_RELAY_IN_PROCESS = False
    stop_in_process_relay()
    yield
    stop_in_process_relay()


@pytest.fixture
def money(tenant_a: Tenant, user_a: User) -> dict:
    usd = enable(tenant_a, "USD")
    bob = UserFactory(tenant=tenant_a, email="bob@example.com")
    fund(user_a, 100_000)
    return {"usd": usd, "alice": user_a, "bob": bob, "tenant": tenant_a}


@database_sync_to_async
def _token(user: User) -> str:
    return session_start(user=user).access


@database_sync_to_async
def _pay(money: dict, amount: int, sender: str = "alice", recipient: str = "bob") -> None:
    services.transfer_create(tenant=money["tenant"], sender=money[sender], recipient=money[recipient],
                             asset=money["usd"], amount=amount)


@database_sync_to_async
def _relay() -> None:
    while relay_once(limit=500):
        pass


@database_sync_to_async
def _key(tenant: Tenant) -> str:
    return app_key_of(tenant)


async def _open(user: User, *, headers: list | None = None, token: str | None = None) -> WebsocketCommunicator:
    token = token or await _token(user)
    base = [(b"x-app-key", (await _key(user.tenant)).encode()), (b"authorization", f"Bearer {token}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/v1/stream", headers=base + (headers or []))
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=3))["type"] == "ready"
    return communicator


async def _subscribe(communicator: WebsocketCommunicator, topics: list[str], positions: dict | None = None) -> dict:
    await communicator.send_json_to({"type": "subscribe", "topics": topics, "positions": positions or {}})
    subscribed = await communicator.receive_json_from(timeout=5)
    assert subscribed["type"] == "subscribed", subscribed
    return subscribed


async def _events(communicator: WebsocketCommunicator, count: int) -> list[dict]:
    out = []
    while len(out) < count:
        message = await communicator.receive_json_from(timeout=5)
        if message["type"] != "ping":
            out.append(message)
    return out


async def test_fresh_subscribe_gets_a_snapshot_then_live_events_in_order(money: dict) -> None:
    communicator = await _open(money["bob"])
    subscribed = await _subscribe(communicator, ["balances", "transactions"])
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot" and snapshot["topic"] == "balances"
    assert snapshot["seq"] == subscribed["positions"]["user"] == 0
    assert snapshot["data"] == {"accounts": []}

    await _pay(money, 250)
    await _relay()
    balance, transfer = await _events(communicator, 2)
    assert [(balance["stream"], balance["seq"], balance["type"]), (transfer["seq"], transfer["type"])] == [
        ("user", 1, "account.balance_changed"), (2, "transfer.completed")]
    assert balance["data"]["available"] == "250" and transfer["data"]["direction"] == "in"
    assert set(balance) == {"id", "stream", "seq", "type", "ts", "data"}
    await communicator.disconnect()


async def test_reconnect_with_last_seq_replays_exactly_what_was_missed(money: dict) -> None:
    communicator = await _open(money["bob"])
    await _subscribe(communicator, ["balances", "transactions"])
    await communicator.receive_json_from(timeout=5)  # snapshot
    await _pay(money, 1)
    await _relay()
    seen = await _events(communicator, 2)
    last = seen[-1]["seq"]
    await communicator.disconnect()

    for amount in (10, 20, 30):
        await _pay(money, amount)
    await _relay()

    again = await _open(money["bob"])
    await _subscribe(again, ["balances", "transactions"], {"user": last})
    replayed = await _events(again, 6)
    assert [e["seq"] for e in replayed] == list(range(last + 1, last + 7))
    assert all(e.get("recovered") is True for e in replayed)
    assert [e["data"]["amount"] for e in replayed if e["type"] == "transfer.completed"] == ["10", "20", "30"]
    await _pay(money, 40)
    await _relay()
    live = await _events(again, 2)
    assert [e["seq"] for e in live] == [last + 7, last + 8]
    assert "recovered" not in live[0]
    assert await again.receive_nothing(timeout=0.3)
    await again.disconnect()


async def test_topics_filter_what_is_sent(money: dict) -> None:
    communicator = await _open(money["bob"])
    await _subscribe(communicator, ["transactions"])
    await _pay(money, 5)
    await _pay(money, 6)
    await _relay()
    events = await _events(communicator, 2)
    assert [(e["type"], e["seq"]) for e in events] == [("transfer.completed", 2), ("transfer.completed", 4)]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_other_users_and_tenants_events_never_arrive(money: dict, tenant_b: Tenant, user_b: User) -> None:
    await database_sync_to_async(enable)(tenant_b, "USD")
    await database_sync_to_async(fund)(user_b, 100)
    carol = await database_sync_to_async(UserFactory)(tenant=money["tenant"], email="carol@example.com")
    communicator = await _open(carol)
    await _subscribe(communicator, ["balances", "transactions"])
    await communicator.receive_json_from(timeout=5)  # snapshot
    await _pay(money, 7)
    await _relay()
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_a_position_beyond_history_requires_a_resync(money: dict) -> None:
    await _pay(money, 3)
    await _relay()
    await database_sync_to_async(lambda: OutboxEvent.all_tenants.all().delete())()
    communicator = await _open(money["bob"])
    await communicator.send_json_to({"type": "subscribe", "topics": ["balances"], "positions": {"user": 0}})
    await communicator.receive_json_from(timeout=5)  # the error message
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close",
                                                            "code": consumers.CLOSE_RESYNC_REQUIRED}


async def test_a_slow_consumer_is_cut_off_and_resumes_without_a_gap(money: dict, settings, monkeypatch) -> None:
    settings.STREAM_BUFFER_MAX_MESSAGES = 3
    communicator = await _open(money["bob"])
    await _subscribe(communicator, ["balances", "transactions"])
    await communicator.receive_json_from(timeout=5)  # snapshot

    import asyncio

    original_send = consumers.StreamConsumer.send

    async def slow_send(self, text_data=None, bytes_data=None, close=False):  # a reader that does not keep up
        await asyncio.sleep(0.5)
        await original_send(self, text_data=text_data, bytes_data=bytes_data, close=close)

    monkeypatch.setattr(consumers.StreamConsumer, "send", slow_send)
    for amount in (1, 2, 3, 4):
        await _pay(money, amount)
    await _relay()
    received = []
    while True:
        output = await communicator.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            assert output["code"] == consumers.CLOSE_SLOW_CONSUMER
            break
        received.append(output)
    monkeypatch.setattr(consumers.StreamConsumer, "send", original_send)
    import json

    seqs = [json.loads(o["text"])["seq"] for o in received if "seq" in json.loads(o["text"])]
    last = max(seqs) if seqs else 0
    again = await _open(money["bob"])
    await _subscribe(again, ["balances", "transactions"], {"user": last})
    rest = await _events(again, 8 - last)
    assert [e["seq"] for e in rest] == list(range(last + 1, 9))
    await again.disconnect()


async def test_token_expiry_closes_unless_a_fresh_token_arrives(money: dict, settings) -> None:
    settings.JWT_ACCESS_TTL = timedelta(seconds=1)
    hub.tick_seconds = 0.2
    try:
        kept = await _open(money["bob"])
        expiring = await _open(money["bob"])
        settings.JWT_ACCESS_TTL = timedelta(minutes=5)
        await kept.send_json_to({"type": "auth", "token": await _token(money["bob"])})
        assert (await kept.receive_json_from(timeout=3))["type"] == "auth_ok"
        message = await expiring.receive_json_from(timeout=5)
        assert message == {"type": "error", "code": "token_expired"}
        assert (await expiring.receive_output(timeout=3))["code"] == consumers.CLOSE_TOKEN_EXPIRED
        await kept.send_json_to({"type": "ping"})
        assert (await kept.receive_json_from(timeout=3))["type"] == "pong"
        await kept.disconnect()
    finally:
        hub.tick_seconds = None


async def test_browser_origins_are_checked_against_the_tenant(money: dict) -> None:
    tenant = money["tenant"]
    tenant.allowed_origins = ["https://app.tenant-a.example"]
    await database_sync_to_async(tenant.save)()
    from tenants.selectors import app_key_cache

    app_key_cache.clear()
    allowed = await _open(money["bob"], headers=[(b"origin", b"https://app.tenant-a.example")])
    await allowed.disconnect()
    token = await _token(money["bob"])
    refused = WebsocketCommunicator(application, "/ws/v1/stream", headers=[
        (b"x-app-key", (await _key(tenant)).encode()), (b"authorization", f"Bearer {token}".encode()),
        (b"origin", b"https://evil.example")])
    connected, _ = await refused.connect()
    assert connected
    assert await refused.receive_json_from(timeout=3) == {"type": "error", "code": "origin_not_allowed"}
    assert (await refused.receive_output(timeout=3))["code"] == consumers.CLOSE_FORBIDDEN


async def test_limits_on_client_messages(money: dict, settings) -> None:
    settings.STREAM_MAX_MESSAGE_BYTES = 100
    communicator = await _open(money["bob"])
    await communicator.send_to(text_data="x" * 101)
    assert (await communicator.receive_json_from(timeout=3))["code"] == "message_too_big"
    assert (await communicator.receive_output(timeout=3))["code"] == consumers.CLOSE_MESSAGE_TOO_BIG
    settings.STREAM_RATE_BURST = 3
    flood = await _open(money["bob"])
    for _ in range(5):
        await flood.send_json_to({"type": "ping"})
    codes = []
    while True:
        output = await flood.receive_output(timeout=3)
        if output["type"] == "websocket.close":
            assert output["code"] == consumers.CLOSE_RATE_LIMITED
            break
        codes.append(output)
    bad = await _open(money["bob"])
    await bad.send_to(text_data="{not json")
    assert (await bad.receive_json_from(timeout=3))["code"] == "bad_message"


async def test_a_client_that_answers_pings_stays_and_a_silent_one_is_closed(money: dict, settings) -> None:
    settings.STREAM_HEARTBEAT_SECONDS = 0.3
    settings.STREAM_IDLE_TIMEOUT_SECONDS = 1.2
    hub.tick_seconds = 0.1
    try:
        polite = await _open(money["bob"])
        silent = await _open(money["bob"])
        import asyncio

        deadline = asyncio.get_running_loop().time() + 2.5
        pings = 0
        while asyncio.get_running_loop().time() < deadline:
            message = await polite.receive_json_from(timeout=2)
            if message["type"] == "ping":
                pings += 1
                await polite.send_json_to({"type": "pong"})
        assert pings >= 2
        await polite.send_json_to({"type": "ping"})
        assert (await polite.receive_json_from(timeout=2))["type"] in ("pong", "ping")
        outputs = []
        while True:
            output = await silent.receive_output(timeout=3)
            outputs.append(output)
            if output["type"] == "websocket.close":
                break
        assert outputs[-1]["code"] == consumers.CLOSE_IDLE
        await polite.disconnect()
    finally:
        hub.tick_seconds = None


async def test_a_closed_socket_is_freed_without_the_garbage_collector(money: dict) -> None:
    """The GC policy freezes settled sockets: that only frees memory if a closed socket holds no reference
    cycle (reference counting alone frees it)."""
    import asyncio
    import gc

    gc.collect()
    gc.disable()
    try:
        communicator = await _open(money["bob"])
        await _subscribe(communicator, ["balances", "transactions", "branding"])
        await communicator.receive_json_from(timeout=5)  # snapshot
        await communicator.send_json_to({"type": "ping"})
        await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        await asyncio.sleep(0.05)
        hub.wheel.clear()  # the timing wheel lets go of a closed socket at its next due tick
        del communicator
        assert [o for o in gc.get_objects() if isinstance(o, consumers.StreamConsumer)] == []
    finally:
        gc.enable()
