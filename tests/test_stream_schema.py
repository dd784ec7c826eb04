"""Every message the stream sends matches its JSON Schema in docs/STREAM.md (the documented contract)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from jsonschema import Draft202012Validator

from tenants.auth.sessions import session_start
from tenants.models import Tenant, User
from tests.conftest import app_key_of
from tests.factories import UserFactory
from tests.ledger_helpers import enable, fund
from wallet.asgi import application
from wallet.events.consumers import TOPICS
from wallet.events.relay import relay_once, stop_in_process_relay
from wallet.ledger import services

DOC = Path(__file__).resolve().parent.parent / "docs" / "STREAM.md"

@pytest.fixture(autouse=True)
def _no_gc_tuning(settings):
    """The hub tunes the garbage collector of a stream process (`GcPolicy`); not of the test process."""
    settings.STREAM_GC_TUNE = False



def schemas() -> dict[str, dict]:
    blocks = re.findall(r"```json schema:(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {name: json.loads(body) for name, body in blocks}


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schemas()[name])


def test_every_schema_is_valid_and_every_message_kind_has_one() -> None:
    found = schemas()
    for schema in found.values():
        Draft202012Validator.check_schema(schema)
    assert set(found) == {"event", "ready", "auth_ok", "subscribed", "snapshot", "ping", "error", "client_auth",
                          "client_subscribe", "client_ping"}
    assert set(found["client_subscribe"]["properties"]["topics"]["items"]["enum"]) == set(TOPICS)


def _kind(message: dict) -> str:
    if "." in message["type"]:
        return "event"
    return {"pong": "ping"}.get(message["type"], message["type"])


@pytest.mark.django_db(transaction=True)
async def test_real_messages_match_their_schemas(tenant_a: Tenant, user_a: User, settings) -> None:
    settings.OUTBOX_RELAY_IN_PROCESS = False
    stop_in_process_relay()

    def setup() -> tuple[str, str, User]:
        usd = enable(tenant_a, "USD")
        bob = UserFactory(tenant=tenant_a, email="bob@example.com")
        fund(user_a, 1_000)
        fund(bob, 10)
        services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=5)
        return app_key_of(tenant_a), session_start(user=bob).access, bob

    key, token, _ = await database_sync_to_async(setup)()
    communicator = WebsocketCommunicator(application, f"/ws/v1/stream?app_key={key}")
    assert (await communicator.connect())[0]
    sent = [{"type": "auth", "token": token}, {"type": "subscribe", "topics": ["balances", "transactions"]},
            {"type": "ping"}]
    for message, name in zip(sent, ["client_auth", "client_subscribe", "client_ping"], strict=True):
        validator(name).validate(message)
    await communicator.send_json_to(sent[0])
    await communicator.send_json_to({**sent[1], "positions": {"user": 1}})
    await communicator.send_json_to(sent[2])
    await communicator.send_json_to({"type": "subscribe", "topics": ["weather"]})
    received = [await communicator.receive_json_from(timeout=5) for _ in range(6)]
    kinds = [_kind(m) for m in received]
    assert kinds == ["ready", "subscribed", "event", "event", "ping", "error"], received
    for message in received:
        validator(_kind(message)).validate(message)
    await communicator.send_json_to({"type": "auth", "token": token})
    validator("auth_ok").validate(await communicator.receive_json_from(timeout=5))
    fresh = WebsocketCommunicator(application, "/ws/v1/stream", headers=[
        (b"x-app-key", key.encode()), (b"authorization", f"Bearer {token}".encode())])
    assert (await fresh.connect())[0]
    await fresh.receive_json_from(timeout=5)
    await fresh.send_json_to({"type": "subscribe", "topics": ["balances"]})
    await fresh.receive_json_from(timeout=5)
    snapshot = await fresh.receive_json_from(timeout=5)
    validator("snapshot").validate(snapshot)
    assert [a["available"] for a in snapshot["data"]["accounts"]] == ["15"]
    await database_sync_to_async(relay_once)()
    await communicator.disconnect()
    await fresh.disconnect()


def test_the_event_schema_names_the_prefix_of_every_topic() -> None:
    pattern = schemas()["event"]["properties"]["type"]["pattern"]
    documented = set(re.match(r"\^\(([a-z_|]+)\)", pattern).group(1).split("|"))
    assert documented == {prefix.rstrip(".") for _, prefixes in TOPICS.values() for prefix in prefixes}
    assert "tx" in documented
    validator("event").validate({"id": "x", "stream": "user", "seq": 3, "type": "tx.included",
                                 "ts": "2026-11-22T18:00:00Z", "data": {}})
