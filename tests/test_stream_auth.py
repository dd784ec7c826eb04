"""Websocket tenant and user resolution (the stream's handshake) through Channels' communicator."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from tenants.auth.sessions import session_start
from tenants.models import User
from tests.conftest import app_key_of
from wallet.asgi import application
from wallet.events import consumers

pytestmark = pytest.mark.django_db(transaction=True)

@pytest.fixture(autouse=True)
def _no_gc_tuning(settings):
    """The hub tunes the garbage collector of a stream process (`GcPolicy`); not of the test process."""
    settings.STREAM_GC_TUNE = False



def _communicator(path: str = "/ws/v1/stream", headers: list[tuple[bytes, bytes]] | None = None):
    return WebsocketCommunicator(application, path, headers=headers or [])


async def _expect_close(communicator: WebsocketCommunicator, code: int, error: str) -> None:
    connected, _ = await communicator.connect()
    assert connected
    message = await communicator.receive_json_from(timeout=2)
    assert message == {"type": "error", "code": error}
    closed = await communicator.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": code}


async def test_header_token_authenticates(user_a: User) -> None:
    pair = await _pair(user_a)
    communicator = _communicator(headers=[(b"x-app-key", (await _key(user_a.tenant)).encode()),
                                          (b"authorization", f"Bearer {pair['access']}".encode())])
    connected, _ = await communicator.connect()
    assert connected
    ready = await communicator.receive_json_from(timeout=2)
    assert (ready["type"], ready["user"], ready["tenant"]) == ("ready", str(user_a.pk), "tenant-a")
    assert ready["expires_at"] > 0 and "balances" in ready["topics"]
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from(timeout=2))["type"] == "pong"
    await communicator.disconnect()


async def test_first_message_token_authenticates_with_app_key_in_query(user_a: User) -> None:
    pair = await _pair(user_a)
    communicator = _communicator(f"/ws/v1/stream?app_key={await _key(user_a.tenant)}")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "auth", "token": pair["access"]})
    assert (await communicator.receive_json_from(timeout=2))["type"] == "ready"
    await communicator.disconnect()


async def test_token_in_the_url_is_refused(user_a: User) -> None:
    pair = await _pair(user_a)
    key = await _key(user_a.tenant)
    await _expect_close(_communicator(f"/ws/v1/stream?app_key={key}&token={pair['access']}"),
                        consumers.CLOSE_AUTH_FAILED, "token_in_url")


async def test_another_tenants_token_is_refused(user_a: User, tenant_b) -> None:
    pair = await _pair(user_a)
    communicator = _communicator(headers=[(b"x-app-key", (await _key(tenant_b)).encode()),
                                          (b"authorization", f"Bearer {pair['access']}".encode())])
    await _expect_close(communicator, consumers.CLOSE_AUTH_FAILED, "token_tenant_mismatch")


async def test_another_tenants_token_in_first_message_is_refused(user_a: User, tenant_b) -> None:
    pair = await _pair(user_a)
    communicator = _communicator(headers=[(b"x-app-key", (await _key(tenant_b)).encode())])
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "auth", "token": pair["access"]})
    assert await communicator.receive_json_from(timeout=2) == {"type": "error", "code": "token_tenant_mismatch"}
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close",
                                                            "code": consumers.CLOSE_AUTH_FAILED}


async def test_missing_or_unknown_app_key_is_refused(db) -> None:
    await _expect_close(_communicator(), consumers.CLOSE_AUTH_FAILED, "app_key_missing")
    await _expect_close(_communicator(headers=[(b"x-app-key", b"app_nope")]), consumers.CLOSE_AUTH_FAILED,
                        "invalid_app_key")


async def test_no_auth_message_in_time_closes(user_a: User, settings) -> None:
    settings.STREAM_AUTH_TIMEOUT_SECONDS = 0.2
    communicator = _communicator(headers=[(b"x-app-key", (await _key(user_a.tenant)).encode())])
    await _expect_close(communicator, consumers.CLOSE_AUTH_TIMEOUT, "auth_timeout")


async def test_a_message_before_auth_closes(user_a: User) -> None:
    communicator = _communicator(headers=[(b"x-app-key", (await _key(user_a.tenant)).encode())])
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=2) == {"type": "error", "code": "auth_required"}


async def _key(tenant) -> str:
    from channels.db import database_sync_to_async

    return await database_sync_to_async(app_key_of)(tenant)


async def _pair(user: User) -> dict:
    from channels.db import database_sync_to_async

    return await database_sync_to_async(lambda: session_start(user=user).as_response())()
