"""The stream end to end: a real websocket client (`websockets`) against real servers started as processes.

A. Embedded (`manage.py serve`: SQLite, in-memory channel layer, in-process relay), on a temporary database:
   live delivery of an HTTP transfer, isolation between users and tenants, resume after a disconnect,
   browser origins; and, on a second embedded server with a small per-socket buffer cap and a small
   socket send buffer, a reader that stops reading (slow consumer, 4008) and its resume.
B. Production-like (PostgreSQL + Redis): two stream processes, one `relay_outbox` process and one HTTP
   process on a database created for the test; each socket of a user gets every event once, in order,
   whatever process it is on.

Communicator-level protocol details are in tests/test_stream_protocol.py; this file proves the same
promises hold across real processes, sockets and buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.stream_e2e_helpers import (
    PYTHON,
    Server,
    assert_quiet,
    collect_events,
    collect_transfers,
    free_port,
    http_client,
    open_stream,
    provision,
    read_events,
    read_until_closed,
    seqs,
    server_env,
    start_all,
    stop_all,
    subscribe,
    transfer,
)

pytestmark = pytest.mark.timeout(240)

TOPICS = ["balances", "transactions"]
ONE, TWO = "e2e-one", "e2e-two"
ONE_ORIGIN, TWO_ORIGIN = "https://app.e2e-one.example", "https://app.e2e-two.example"
SLOW_CAP_MESSAGES = 16
MEMO = "m" * 200  # the longest memo: bigger events fill the slow reader's pipe with fewer transfers

CLOSE_SLOW_CONSUMER = 4008
CLOSE_FORBIDDEN = 4403


def _uvicorn(extra: list[str]) -> list[str]:
    from wallet.events.conf import STREAM_UVICORN_FLAGS

    return [PYTHON, "-m", "uvicorn", "wallet.asgi:application", *extra, *STREAM_UVICORN_FLAGS,
            "--lifespan", "off", "--log-level", "warning", "--no-access-log"]


# --- A. embedded ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A migrated, provisioned temporary SQLite database served by `manage.py serve`, plus a copy of it
    served by a second embedded server (uvicorn on an inherited listening socket with a small send buffer,
    `tests.stream_e2e_settings` for a small per-socket buffer cap) for the slow-consumer tests."""
    tmp = tmp_path_factory.mktemp("stream_e2e_embedded")
    db = tmp / "db.sqlite3"
    # CHAINS_DEV_CHAIN=0: the stream needs no chain, and a dev chain would take port 8545 from a `make run`.
    env = server_env(VAR_DIR=str(tmp), DATABASE_URL=f"sqlite:///{db}", CHAINS_DEV_CHAIN="0",
                     DJANGO_SETTINGS_MODULE="wallet.settings.development")
    data = provision(env, {"migrate": True, "tenants": [
        {"slug": ONE, "name": "E2E One", "allowed_origins": [ONE_ORIGIN], "users": [
            {"email": "alice@one.example", "fund": "5000.00"},
            {"email": "bob@one.example", "fund": "10.00"},
            {"email": "carol@one.example"},
            {"email": "slow@one.example", "fund": "10.00"},
        ]},
        {"slug": TWO, "name": "E2E Two", "allowed_origins": [TWO_ORIGIN], "users": [
            {"email": "dave@two.example", "fund": "100.00"},
            {"email": "erin@two.example"},
        ]},
    ]})
    slow_db = tmp / "slow.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(slow_db)) as target:
        source.backup(target)

    # The kernel sizes a loopback socket's send buffer to megabytes; a reader that stops reading is noticed
    # (the server's transport pauses writing) only once that is full. Accepted sockets inherit SO_SNDBUF from
    # the listening socket, so a small one here makes the slow-reader test need ~100 KB instead of ~3 MB.
    listener = socket.socket()
    servers: list[Server] = []
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        slow_env = server_env(VAR_DIR=str(tmp / "slow"), DATABASE_URL=f"sqlite:///{slow_db}",
                              DJANGO_SETTINGS_MODULE="tests.stream_e2e_settings",
                              E2E_STREAM_BUFFER_MAX_MESSAGES=str(SLOW_CAP_MESSAGES),
                              E2E_STREAM_BUFFER_MAX_BYTES="65536")
        port = free_port()
        servers = [
            Server("serve", [PYTHON, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp,
                   port=port),
            Server("slow", _uvicorn(["--fd", str(listener.fileno())]), slow_env, tmp,
                   port=listener.getsockname()[1], pass_fds=(listener.fileno(),)),
        ]
        start_all(servers)
        yield SimpleNamespace(serve=servers[0], slow=servers[1], one=data["tenants"][ONE], two=data["tenants"][TWO])
    finally:
        stop_all(servers)
        listener.close()


def _token(tenant: dict, email: str) -> str:
    return tenant["users"][email]["token"]


async def _open(server: Server, tenant: dict, email: str, **kwargs: Any):
    return await open_stream(server.ws, tenant["app_key"], _token(tenant, email), **kwargs)


async def test_an_http_transfer_reaches_the_recipients_socket_live(embedded: SimpleNamespace) -> None:
    one, serve = embedded.one, embedded.serve
    bob = await _open(serve, one, "bob@one.example")
    alice = await _open(serve, one, "alice@one.example")
    try:
        _, bob_snapshot = await subscribe(bob, TOPICS)
        await subscribe(alice, TOPICS)
        async with http_client() as http:
            sent = await transfer(http, serve.http, one["app_key"], _token(one, "alice@one.example"),
                                  "bob@one.example", 1234)
        received = await collect_events(bob, 2, timeout=3)
        assert [e["type"] for e in received] == ["account.balance_changed", "transfer.completed"]
        assert seqs(received) == [bob_snapshot["seq"] + 1, bob_snapshot["seq"] + 2]
        completed = received[1]
        assert completed["stream"] == "user" and "recovered" not in completed
        assert completed["data"]["id"] == sent["id"]
        assert (completed["data"]["amount"], completed["data"]["asset"], completed["data"]["direction"]) == (
            "1234", "USD", "in")
        before = {a["asset"]: int(a["posted"]) for a in bob_snapshot["data"]["accounts"]}
        assert int(received[0]["data"]["posted"]) == before["USD"] + 1234
        out = await collect_events(alice, 2, timeout=3)  # the sender's socket gets its side too
        assert out[1]["data"]["id"] == sent["id"] and out[1]["data"]["direction"] == "out"
    finally:
        await bob.close()
        await alice.close()


async def test_other_users_and_tenants_events_never_arrive(embedded: SimpleNamespace) -> None:
    one, two, serve = embedded.one, embedded.two, embedded.serve
    bob = await _open(serve, one, "bob@one.example")
    carol = await _open(serve, one, "carol@one.example")  # same tenant, not a party
    dave = await _open(serve, two, "dave@two.example")  # another tenant
    erin = await _open(serve, two, "erin@two.example")
    sockets = [bob, carol, dave, erin]
    try:
        for ws in sockets:
            await subscribe(ws, TOPICS)
        async with http_client() as http:
            await transfer(http, serve.http, one["app_key"], _token(one, "alice@one.example"), "bob@one.example", 7)
            await transfer(http, serve.http, two["app_key"], _token(two, "dave@two.example"), "erin@two.example", 8)
        bob_events = await collect_events(bob, 2, timeout=3)
        assert bob_events[1]["type"] == "transfer.completed" and bob_events[1]["data"]["amount"] == "7"
        erin_events = await collect_events(erin, 2, timeout=5)
        assert erin_events[1]["data"]["amount"] == "8"
        # Both commits have been relayed and fanned out by now: anything for carol would be here.
        await asyncio.sleep(0.3)
        await assert_quiet(carol, 0.7)
        await assert_quiet(bob, 0.1)  # nothing of tenant two for bob either
        # dave sent 0.08: his own two events, and nothing of tenant one.
        dave_events = await collect_events(dave, 2, timeout=5)
        assert dave_events[1]["data"]["direction"] == "out" and dave_events[1]["data"]["amount"] == "8"
        await assert_quiet(dave, 0.1)
    finally:
        for ws in sockets:
            await ws.close()


async def test_reconnect_with_the_last_seq_replays_exactly_what_was_missed(embedded: SimpleNamespace) -> None:
    one, serve = embedded.one, embedded.serve
    alice_token = _token(one, "alice@one.example")
    async with http_client() as http:
        bob = await _open(serve, one, "bob@one.example")
        await subscribe(bob, TOPICS)
        await transfer(http, serve.http, one["app_key"], alice_token, "bob@one.example", 100)
        seen = await collect_events(bob, 2, timeout=3)
        last = seen[-1]["seq"]
        await bob.close()

        missed = [await transfer(http, serve.http, one["app_key"], alice_token, "bob@one.example", amount)
                  for amount in (101, 102, 103)]

        bob = await _open(serve, one, "bob@one.example")
        try:
            subscribed, snapshot = await subscribe(bob, TOPICS, {"user": last})
            assert snapshot is None
            assert subscribed["positions"]["user"] == last + 6
            replayed = await collect_events(bob, 6, timeout=5)
            assert seqs(replayed) == list(range(last + 1, last + 7))
            assert all(e.get("recovered") is True for e in replayed)
            assert [e["type"] for e in replayed] == ["account.balance_changed", "transfer.completed"] * 3
            assert [e["data"]["id"] for e in replayed[1::2]] == [t["id"] for t in missed]
            assert [e["data"]["amount"] for e in replayed[1::2]] == ["101", "102", "103"]

            live = await transfer(http, serve.http, one["app_key"], alice_token, "bob@one.example", 104)
            after = await collect_events(bob, 2, timeout=3)
            assert seqs(after) == [last + 7, last + 8]
            assert all("recovered" not in e for e in after)
            assert after[1]["data"]["id"] == live["id"]
            ids = [e["id"] for e in replayed + after]
            assert len(set(ids)) == len(ids)
            await assert_quiet(bob, 0.5)  # no duplicate of a replayed event arrives live
        finally:
            await bob.close()


async def test_browser_origins_are_checked_against_the_tenant(embedded: SimpleNamespace) -> None:
    one, serve = embedded.one, embedded.serve
    for origin in ("https://evil.example", TWO_ORIGIN):  # unknown, and another tenant's
        refused = await _open(serve, one, "bob@one.example", origin=origin, expect_ready=False)
        messages, code = await read_until_closed(refused, timeout=5)
        assert messages == [{"type": "error", "code": "origin_not_allowed"}], origin
        assert code == CLOSE_FORBIDDEN, origin

    allowed = await _open(serve, one, "bob@one.example", origin=ONE_ORIGIN)
    try:
        await subscribe(allowed, TOPICS)
        async with http_client() as http:
            await transfer(http, serve.http, one["app_key"], _token(one, "alice@one.example"), "bob@one.example", 5)
        assert (await collect_events(allowed, 2, timeout=3))[1]["data"]["amount"] == "5"
    finally:
        await allowed.close()


# --- A4. the slow reader -------------------------------------------------------------------------------------

PIPE_TARGET_BYTES = 115_000  # measured: the cut comes at ~87 KB (64 KiB transport + socket and client buffers + cap)
MAX_SLOW_TRANSFERS = 300


async def _cut_off_a_slow_reader(env: SimpleNamespace) -> dict[str, Any]:
    """`slow@` opens a normal socket and one that stops reading after `subscribed`/`snapshot`; transfers to
    `slow@` go on until the normal socket has received PIPE_TARGET_BYTES; then the slow socket reads
    everything the server had sent it, up to the close."""
    one, server = env.one, env.slow
    token = _token(one, "slow@one.example")
    loop = asyncio.get_running_loop()
    async with http_client() as http, contextlib.AsyncExitStack() as sockets:
        steady = await _open(server, one, "slow@one.example")
        sockets.push_async_callback(steady.close)
        _, snapshot = await subscribe(steady, TOPICS)

        raw = socket.socket()
        sockets.callback(raw.close)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        await loop.sock_connect(raw, ("127.0.0.1", server.port))
        # max_queue=1: the client library stops reading the socket once a message is waiting; no compression,
        # so the bytes on the wire are the bytes of the events.
        stalled = await open_stream(server.ws, one["app_key"], token, sock=raw, max_queue=1, compression=None)
        sockets.push_async_callback(stalled.close)
        _, stalled_snapshot = await subscribe(stalled, TOPICS)
        assert stalled_snapshot["seq"] == snapshot["seq"]

        delivered: list[dict] = []
        delivered_bytes = transfers = 0
        alice = _token(one, "alice@one.example")
        while delivered_bytes < PIPE_TARGET_BYTES and transfers < MAX_SLOW_TRANSFERS:
            await asyncio.gather(*(transfer(http, server.http, one["app_key"], alice, "slow@one.example", 1,
                                            memo=MEMO) for _ in range(4)))
            transfers += 4
            events = await collect_transfers(steady, 4, timeout=10)  # in lockstep: bursts stay below the cap
            delivered += events
            delivered_bytes += sum(len(json.dumps(e, separators=(",", ":"), ensure_ascii=False)) for e in events)
        assert seqs(delivered) == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(delivered)))
        assert sum(e["type"] == "transfer.completed" for e in delivered) == transfers

        messages, code = await read_until_closed(stalled, timeout=10)
        await assert_quiet(steady, 0.2)  # the reader that kept up is still there, with nothing pending
    return {"snapshot": snapshot, "delivered": delivered, "transfers": transfers, "messages": messages,
            "code": code}


@pytest.fixture(scope="module")
def slow_cut(embedded: SimpleNamespace) -> dict[str, Any]:
    return asyncio.run(_cut_off_a_slow_reader(embedded))


def test_a_reader_that_stops_reading_is_cut_off_as_a_slow_consumer(slow_cut: dict[str, Any]) -> None:
    messages, snapshot = slow_cut["messages"], slow_cut["snapshot"]
    events = [m for m in messages if "." in m["type"]]
    others = [m for m in messages if "." not in m["type"] and m["type"] != "ping"]
    assert slow_cut["code"] == CLOSE_SLOW_CONSUMER, (
        f"close code {slow_cut['code']} after {slow_cut['transfers']} transfers, {len(events)} events read: "
        f"{others}")
    assert others == [{"type": "error", "code": "slow_consumer"}]
    # What it did get is a gap-free prefix of its stream, and it did miss the rest.
    assert seqs(events) == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(events)))
    assert len(events) < len(slow_cut["delivered"]) - SLOW_CAP_MESSAGES


async def test_the_cut_off_reader_resumes_from_its_last_seq_without_a_gap(embedded: SimpleNamespace,
                                                                         slow_cut: dict[str, Any]) -> None:
    one, server = embedded.one, embedded.slow
    events = [m for m in slow_cut["messages"] if "." in m["type"]]
    last = events[-1]["seq"] if events else slow_cut["snapshot"]["seq"]
    expected = [e for e in slow_cut["delivered"] if e["seq"] > last]
    assert len(expected) > SLOW_CAP_MESSAGES  # what was queued when it was cut, at least
    resumed = await _open(server, one, "slow@one.example")
    try:
        subscribed, _ = await subscribe(resumed, TOPICS, {"user": last})
        assert subscribed["positions"]["user"] == slow_cut["delivered"][-1]["seq"]
        replayed, others, code = await read_events(resumed, len(expected), timeout=10)
        assert (len(replayed), others, code) == (len(expected), [], None), (
            f"resuming {len(expected)} events behind (more than STREAM_BUFFER_MAX_MESSAGES={SLOW_CAP_MESSAGES}): "
            f"got {len(replayed)} replayed events, then {others}, close code {code}")
        assert [e["id"] for e in replayed] == [e["id"] for e in expected]
        assert all(e.get("recovered") is True for e in replayed)
        # ... and the resumed socket stays: live events follow.
        async with http_client() as http:
            await transfer(http, server.http, one["app_key"], _token(one, "alice@one.example"), "slow@one.example", 2)
        live, others, code = await read_events(resumed, 2, timeout=5)
        assert (seqs(live), others, code) == ([expected[-1]["seq"] + 1, expected[-1]["seq"] + 2], [], None), (
            f"after catching up {len(expected)} events (more than STREAM_BUFFER_MAX_MESSAGES={SLOW_CAP_MESSAGES}) "
            f"the resumed socket got {seqs(live)}, then {others}, close code {code}")
    finally:
        await resumed.close()


# `manage.py serve`'s in-process scheduler fails every 30 s on `ledger.expire_holds_all` (NotRegistered: the
# task modules are never imported in that process); a separate bug, reported, not what this file tests.
KNOWN_UNRELATED = ('"name": "wallet.scheduler"',)


def test_the_embedded_servers_logged_no_errors(embedded: SimpleNamespace) -> None:
    """Nothing failed silently inside the servers (a crashed consumer task, a relay error, an ASGI error)."""
    for server in (embedded.serve, embedded.slow):
        assert server.errors(ignore=KNOWN_UNRELATED) == [], server.log_tail(60)


# --- B. several processes: PostgreSQL + Redis ----------------------------------------------------------------

def _cluster_skip_reason() -> str | None:
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        return "needs PostgreSQL: DATABASE_URL is not a postgres:// URL (run under .ci/with-services)"
    if not os.environ.get("REDIS_URL"):
        return "needs Redis for the cross-process channel layer: REDIS_URL is unset (run under .ci/with-services)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A fresh database on the test PostgreSQL server, migrated and provisioned; two stream processes, one
    relay process and one HTTP process with production settings; all stopped and the database dropped after."""
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    import psycopg

    admin_url, redis_url = os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
    name = f"stream_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    servers: list[Server] = []
    try:
        tmp = tmp_path_factory.mktemp("stream_e2e_cluster")
        url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
        common = {"DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": secrets.token_urlsafe(50),
                  "VAR_DIR": str(tmp)}
        data = provision(server_env(**common, DJANGO_SETTINGS_MODULE="wallet.settings.development"), {
            "migrate": True, "tenants": [{"slug": "e2e-cluster", "name": "E2E Cluster", "users": [
                {"email": "target@cluster.example"}, {"email": "other@cluster.example"},
                *({"email": f"payer{i}@cluster.example", "fund": "1000.00"} for i in range(4)),
            ]}]})
        env = server_env(**common, DJANGO_SETTINGS_MODULE="wallet.settings.production", DEBUG="0",
                         ALLOWED_HOSTS="127.0.0.1,localhost", SECURE_SSL_REDIRECT="0")
        ports = [free_port() for _ in range(3)]
        servers = [
            Server("stream1", _uvicorn(["--host", "127.0.0.1", "--port", str(ports[0])]), env, tmp, port=ports[0]),
            Server("stream2", _uvicorn(["--host", "127.0.0.1", "--port", str(ports[1])]), env, tmp, port=ports[1]),
            Server("http", _uvicorn(["--host", "127.0.0.1", "--port", str(ports[2])]), env, tmp, port=ports[2]),
            Server("relay", [PYTHON, "manage.py", "relay_outbox"], env, tmp, ready_text="outbox relay running"),
        ]
        start_all(servers)
        yield SimpleNamespace(stream1=servers[0], stream2=servers[1], http=servers[2], relay=servers[3],
                              tenant=data["tenants"]["e2e-cluster"])
    finally:
        stop_all(servers)
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_each_stream_process_delivers_every_event_once_in_order(cluster: SimpleNamespace) -> None:
    tenant = cluster.tenant
    on_1 = await _open(cluster.stream1, tenant, "target@cluster.example")
    on_2 = await _open(cluster.stream2, tenant, "target@cluster.example")
    try:
        _, snapshot_1 = await subscribe(on_1, TOPICS)
        _, snapshot_2 = await subscribe(on_2, TOPICS)
        assert snapshot_1["seq"] == snapshot_2["seq"]
        start = snapshot_1["seq"]
        async with http_client() as http:
            made = await asyncio.gather(*(
                transfer(http, cluster.http.http, tenant["app_key"], _token(tenant, f"payer{i % 4}@cluster.example"),
                         "target@cluster.example", 100 + i) for i in range(20)))
        got_1, got_2 = await asyncio.gather(collect_transfers(on_1, 20, timeout=20),
                                            collect_transfers(on_2, 20, timeout=20))
        assert seqs(got_1) == list(range(start + 1, start + 1 + len(got_1)))
        assert [(e["id"], e["seq"]) for e in got_2] == [(e["id"], e["seq"]) for e in got_1]
        completed = [e["data"]["id"] for e in got_1 if e["type"] == "transfer.completed"]
        assert sorted(completed) == sorted(t["id"] for t in made)
        await asyncio.gather(assert_quiet(on_1, 0.5), assert_quiet(on_2, 0.5))  # no duplicates later
    finally:
        await on_1.close()
        await on_2.close()


async def test_a_process_without_sockets_at_commit_time_still_delivers_after(cluster: SimpleNamespace) -> None:
    """Events committed while only process 2 had a socket of the user reach that user on process 1 too:
    replayed from the outbox on subscribe, then live through process 1's own channel-layer membership."""
    tenant = cluster.tenant
    key, payer = tenant["app_key"], _token(tenant, "payer0@cluster.example")
    async with http_client() as http:
        on_2 = await _open(cluster.stream2, tenant, "other@cluster.example")
        try:
            _, snapshot = await subscribe(on_2, TOPICS)
            for amount in (11, 12, 13):
                await transfer(http, cluster.http.http, key, payer, "other@cluster.example", amount)
            seen_2 = await collect_events(on_2, 6, timeout=10)

            on_1 = await _open(cluster.stream1, tenant, "other@cluster.example")
            try:
                await subscribe(on_1, TOPICS, {"user": snapshot["seq"]})
                replayed = await collect_events(on_1, 6, timeout=10)
                assert [(e["id"], e["seq"]) for e in replayed] == [(e["id"], e["seq"]) for e in seen_2]
                assert all(e.get("recovered") is True for e in replayed)
                live = await transfer(http, cluster.http.http, key, payer, "other@cluster.example", 14)
                live_1, live_2 = await asyncio.gather(collect_events(on_1, 2, timeout=10),
                                                      collect_events(on_2, 2, timeout=10))
                assert seqs(live_1) == seqs(live_2) == [snapshot["seq"] + 7, snapshot["seq"] + 8]
                assert live_1[1]["data"]["id"] == live["id"] and "recovered" not in live_1[1]
            finally:
                await on_1.close()
        finally:
            await on_2.close()


def test_the_cluster_logged_no_errors(cluster: SimpleNamespace) -> None:
    for server in (cluster.stream1, cluster.stream2, cluster.http, cluster.relay):
        assert server.errors() == [], f"{server.name}:\n{server.log_tail(60)}"
