"""Races on POST /api/v1/transfers with one Idempotency-Key (PostgreSQL, Redis): exactly one transfer."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from django.conf import settings
from django.db import connections

from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from tests.test_idempotency_concurrency import (
    _redis_answers,
    _redis_port,
    _services_redis_in_use,
    _start_redis,
    _wait_for,
    signed_in_clients,
)
from wallet.idempotency.locks import reset_fast_locks
from wallet.ledger.models import Transfer
from wallet.ledger.verify import ledger_verify

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("postgresql" not in settings.DATABASES["default"]["ENGINE"],
                       reason="PostgreSQL only: SQLite serialises writers, so there is no race to test"),
    pytest.mark.timeout(90),
]

BODY = json.dumps({"recipient": "bob@example.com", "asset": "USD", "amount": "700", "memo": "race"})


@pytest.fixture(autouse=True)
def _fresh_fast_locks():
    reset_fast_locks()
    yield
    reset_fast_locks()


def _race(clients: list[AppClient], key: str) -> list[tuple[int, bytes, bool]]:
    answers: list[tuple[int, bytes, bool]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients))

    def worker(client: AppClient) -> None:
        try:
            barrier.wait(timeout=10)
            response = client.post("/api/v1/transfers", data=BODY, content_type="application/json",
                                   HTTP_IDEMPOTENCY_KEY=key)
            answers.append((response.status_code, response.content, response.get("Idempotent-Replayed") == "true"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return answers


def _assert_one(answers: list[tuple[int, bytes, bool]]) -> None:
    originals = [a for a in answers if a[0] == 201 and not a[2]]
    assert len(originals) == 1
    for status, content, replayed in answers:
        if status == 201 and replayed:
            assert content == originals[0][1]
        elif status != 201:
            assert (status, json.loads(content)["code"]) == (409, "idempotency_key_in_flight")


@pytest.fixture
def payer(tenant_a: Tenant) -> User:
    enable(tenant_a, "USD")
    user = UserFactory(tenant=tenant_a, email="payer@example.com")
    UserFactory(tenant=tenant_a, email="bob@example.com")
    fund(user, 100_000)
    return user


def test_fifty_identical_transfer_posts_move_money_once(tenant_a: Tenant, payer: User) -> None:
    answers = _race(signed_in_clients(tenant_a, payer, 50), "pay-rent-november")
    assert len(answers) == 50
    _assert_one(answers)
    assert Transfer.all_tenants.count() == 1
    assert balance(payer)[0] == 100_000 - 700
    assert ledger_verify(tenant=tenant_a).ok


def test_the_same_key_from_another_user_or_tenant_is_independent(tenant_a: Tenant, tenant_b: Tenant,
                                                                 payer: User) -> None:
    other = UserFactory(tenant=tenant_a, email="other@example.com")
    fund(other, 1_000)
    enable(tenant_b, "USD")
    foreign = UserFactory(tenant=tenant_b, email="payer@example.com")
    UserFactory(tenant=tenant_b, email="bob@example.com")
    fund(foreign, 1_000)
    answers = {}
    for label, (tenant, user) in {"payer": (tenant_a, payer), "other": (tenant_a, other),
                                  "foreign": (tenant_b, foreign)}.items():
        client = signed_in_clients(tenant, user, 1)[0]
        response = client.post("/api/v1/transfers", data=BODY, content_type="application/json",
                               HTTP_IDEMPOTENCY_KEY="same-key")
        answers[label] = response
    assert {label: r.status_code for label, r in answers.items()} == {"payer": 201, "other": 201, "foreign": 201}
    assert not any(r.get("Idempotent-Replayed") for r in answers.values())
    assert len({r.json()["id"] for r in answers.values()}) == 3
    assert Transfer.all_tenants.count() == 3


@pytest.mark.redis
def test_with_redis_stopped_mid_test_still_exactly_one_transfer(tenant_a: Tenant, payer: User) -> None:
    if not _services_redis_in_use():
        pytest.skip("needs the Redis of .ci/services (SERVICES_DIR) as REDIS_URL")
    port = _redis_port()
    first = _race(signed_in_clients(tenant_a, payer, 20), "before-redis-stops")
    _assert_one(first)
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", port, "shutdown", "nosave"], capture_output=True,
                   timeout=10, check=False)
    try:
        _wait_for(lambda: not _redis_answers(port))
        second = _race(signed_in_clients(tenant_a, payer, 30), "after-redis-stopped")
    finally:
        if not _redis_answers(port):
            _start_redis(port)
    _assert_one(second)
    assert Transfer.all_tenants.count() == 2
    assert balance(payer)[0] == 100_000 - 1_400
    assert ledger_verify(tenant=tenant_a).ok
