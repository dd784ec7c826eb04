"""On PostgreSQL: 16 concurrent workers on a few hot accounts; concurrent transfers against a daily limit."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from django.db import connection, connections

from tenants.models import Tenant
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from wallet.core.errors import ApiError
from wallet.ledger import services
from wallet.ledger.models import Posting, Transfer
from wallet.ledger.verify import ledger_verify

pytestmark = [pytest.mark.django_db(transaction=True)]


def _require_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locking under real concurrency needs PostgreSQL (SQLite serialises all writers)")


def _run(workers: int, target) -> list:
    results: list = []
    lock = threading.Lock()

    def body(index: int) -> None:
        try:
            out = target(index)
            with lock:
                results.extend(out)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_sixteen_workers_on_hot_accounts_lose_nothing(tenant_a: Tenant) -> None:
    _require_postgres()
    usd = enable(tenant_a, "USD")
    users = [UserFactory(tenant=tenant_a, email=f"hot{i}@example.com") for i in range(4)]
    for user in users:
        fund(user, 5_000)

    def work(index: int) -> list:
        rng = random.Random(index)
        out = []
        for _ in range(25):
            sender, recipient = rng.sample(users, 2)
            amount = rng.randint(1, 700)
            try:
                transfer = services.transfer_create(tenant=tenant_a, sender=sender, recipient=recipient, asset=usd,
                                                    amount=amount)
                out.append(("ok", transfer.pk, sender.pk, recipient.pk, amount))
            except ApiError as error:
                out.append((error.code, None, sender.pk, recipient.pk, amount))
        return out

    results = _run(16, work)
    assert len(results) == 16 * 25
    codes = Counter(r[0] for r in results)
    assert set(codes) <= {"ok", "insufficient_funds"}  # no deadlock or serialization error reached a caller
    acknowledged = [r for r in results if r[0] == "ok"]
    # Every acknowledged transfer is in the ledger exactly once, with its entry.
    rows = Transfer.all_tenants.filter(tenant=tenant_a)
    assert sorted(str(t.pk) for t in rows) == sorted(str(r[1]) for r in acknowledged)
    assert Posting.all_tenants.filter(entry__transfer__in=rows).count() == 2 * len(acknowledged)
    # Money is conserved and balances follow from the acknowledged transfers.
    expected = {u.pk: 5_000 for u in users}
    for _, _, sender, recipient, amount in acknowledged:
        expected[sender] -= amount
        expected[recipient] += amount
    assert {u.pk: balance(u)[0] for u in users} == expected
    assert sum(expected.values()) == 20_000
    assert ledger_verify(tenant=tenant_a).ok


def test_concurrent_transfers_cannot_exceed_the_daily_limit(tenant_a: Tenant) -> None:
    _require_postgres()
    usd = enable(tenant_a, "USD", daily_limit=1_000)
    sender = UserFactory(tenant=tenant_a, email="spender@example.com")
    recipients = [UserFactory(tenant=tenant_a, email=f"r{i}@example.com") for i in range(4)]
    fund(sender, 100_000)

    def work(index: int) -> list:
        try:
            services.transfer_create(tenant=tenant_a, sender=sender, recipient=recipients[index % 4], asset=usd,
                                     amount=300)
            return ["ok"]
        except ApiError as error:
            return [error.code]

    results = _run(12, work)
    assert Counter(results) == {"ok": 3, "daily_limit_exceeded": 9}
    assert balance(sender)[0] == 100_000 - 900
    assert ledger_verify(tenant=tenant_a).ok
