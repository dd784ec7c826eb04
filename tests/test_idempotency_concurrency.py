"""Races on one Idempotency-Key, against real PostgreSQL (and Redis): exactly one effect, always.

Each thread has its own test client and its own database connection (closed when the thread ends). The
effect is held open for a moment so that the other requests really arrive while it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.db import connections

from tenants.models import Tenant, User
from tests import idempotency_views
from tests.conftest import AppClient, app_key_of
from tests.idempotency_views import effect_count
from wallet.idempotency.locks import reset_fast_locks
from wallet.idempotency.models import IdempotencyRecord

pytestmark = [
    pytest.mark.urls("tests.idempotency_views"),
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.skipif(
        "postgresql" not in settings.DATABASES["default"]["ENGINE"],
        reason="PostgreSQL only: SQLite serialises writers (IMMEDIATE transactions), so there is no race to test",
    ),
    pytest.mark.timeout(60),
]

WIDGETS = "/api/v1/test/widgets"
BODY = json.dumps({"name": "blue widget"})
KEY = "race-8e03978e-40d5-43e8-bc93-6894a57f9324"


@dataclass(frozen=True)
class Answer:
    status: int
    content: bytes
    replayed: bool

    @property
    def code(self) -> str | None:
        return json.loads(self.content).get("code") if self.status >= 400 else None


@pytest.fixture(autouse=True)
def _clean_idempotency_state() -> Iterator[None]:
    reset_fast_locks()
    idempotency_views.EFFECT_HOOK = None
    yield
    idempotency_views.EFFECT_HOOK = None
    reset_fast_locks()


def signed_in_clients(tenant: Tenant, user: User, count: int) -> list[AppClient]:
    clients = []
    for _ in range(count):
        client = AppClient(app_key_of(tenant))
        client.login_as(user)
        clients.append(client)
    return clients


def post_concurrently(clients: list[AppClient]) -> tuple[list[threading.Thread], list[Answer], list[BaseException]]:
    """Start one thread per client; they all POST the same request at the same moment."""
    answers: list[Answer] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients))

    def worker(client: AppClient) -> None:
        try:
            barrier.wait(timeout=10)
            response = client.post(WIDGETS, data=BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY=KEY)
            answers.append(Answer(response.status_code, response.content,
                                  response.get("Idempotent-Replayed") == "true"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    return threads, answers, errors


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def effect_held_open(seconds: float) -> Callable[[], None]:
    def hold() -> None:
        time.sleep(seconds)

    return hold


def assert_one_effect(answers: list[Answer], total: int) -> Answer:
    """Exactly one request ran; every other one got its replay or 409 in flight. Returns the first."""
    assert len(answers) == total
    originals = [a for a in answers if a.status == 201 and not a.replayed]
    assert len(originals) == 1
    original = originals[0]
    for answer in answers:
        if answer is original:
            continue
        if answer.status == 201:
            assert answer.replayed is True
            assert answer.content == original.content
        else:
            assert (answer.status, answer.code) == (409, "idempotency_key_in_flight")
    assert effect_count() == 1
    assert IdempotencyRecord.all_tenants.count() == 1
    return original


def test_fifty_concurrent_identical_posts_make_exactly_one_effect(tenant_a: Tenant, user_a: User) -> None:
    clients = signed_in_clients(tenant_a, user_a, 50)
    idempotency_views.EFFECT_HOOK = effect_held_open(0.3)

    threads, answers, errors = post_concurrently(clients)
    join(threads)

    assert errors == []
    original = assert_one_effect(answers, 50)
    assert sum(1 for a in answers if a.status == 409) >= 1  # the race really happened
    retry = clients[0].post(WIDGETS, data=BODY, content_type="application/json", HTTP_IDEMPOTENCY_KEY=KEY)
    assert (retry.status_code, retry.content, retry["Idempotent-Replayed"]) == (201, original.content, "true")


# --- Redis stopped while the first request runs ------------------------------------------------------------


def _redis_dir() -> Path:
    return Path(os.environ["SERVICES_DIR"]) / "redis"


def _redis_port() -> str:
    return (_redis_dir() / "port").read_text().strip()


def _redis_answers(port: str) -> bool:
    result = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", port, "ping"], capture_output=True, text=True,
                            timeout=5, check=False)
    return result.stdout.strip() == "PONG"


def _wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _start_redis(port: str) -> None:
    """Start Redis exactly as .ci/services does, so later tests find it as before."""
    directory = _redis_dir()
    subprocess.run(
        ["redis-server", "--port", port, "--bind", "127.0.0.1", "--daemonize", "yes", "--dir", str(directory),
         "--pidfile", str(directory / "redis.pid"), "--logfile", str(directory / "redis.log"), "--save", "",
         "--appendonly", "no"],
        check=True, capture_output=True, timeout=30,
    )
    _wait_for(lambda: _redis_answers(port), 30)


def _services_redis_in_use() -> bool:
    if not (settings.REDIS_URL and os.environ.get("SERVICES_DIR") and (_redis_dir() / "port").exists()):
        return False
    return str(urlparse(settings.REDIS_URL).port) == _redis_port()


@pytest.mark.redis
def test_redis_stopped_mid_race_still_makes_exactly_one_effect(tenant_a: Tenant, user_a: User) -> None:
    if not _services_redis_in_use():
        pytest.skip("needs the Redis of .ci/services (SERVICES_DIR) as REDIS_URL")
    port = _redis_port()
    clients = signed_in_clients(tenant_a, user_a, 55)
    first_effect_running, finish_first_effect = threading.Event(), threading.Event()

    def hold_until_told() -> None:
        first_effect_running.set()
        finish_first_effect.wait(20)

    idempotency_views.EFFECT_HOOK = hold_until_told
    try:
        # Wave 1 races with Redis up: one request runs its effect and holds the key.
        wave1, answers1, errors1 = post_concurrently(clients[:25])
        assert first_effect_running.wait(10)
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", port, "shutdown", "nosave"], capture_output=True,
                       timeout=10, check=False)
        _wait_for(lambda: not _redis_answers(port))

        # Wave 2 arrives with Redis gone while the first request still runs: the database must refuse it.
        wave2, answers2, errors2 = post_concurrently(clients[25:50])
        join(wave2)
        finish_first_effect.set()
        join(wave1)

        # Wave 3 retries after the first request committed, Redis still down: replays from the database.
        wave3, answers3, errors3 = post_concurrently(clients[50:])
        join(wave3)
    finally:
        finish_first_effect.set()
        if not _redis_answers(port):
            _start_redis(port)

    assert errors1 == errors2 == errors3 == []
    assert_one_effect(answers1 + answers2 + answers3, 55)
    assert [(a.status, a.code) for a in answers2] == [(409, "idempotency_key_in_flight")] * 25
    assert all(a.status == 201 and a.replayed for a in answers3)
    assert _redis_answers(port)
