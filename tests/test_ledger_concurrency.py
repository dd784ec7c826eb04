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


def test_large_batches_queue_on_the_tenant_writer_lock_and_mix_with_single_transfers(
        tenant_a: Tenant, settings) -> None:
    """Batches of LEDGER_WRITER_LOCK_MIN_BATCH or more transfers wait for the tenant's writer lock before
    they lock accounts; single transfers do not take it, and the two kinds together neither deadlock nor
    lose anything."""
    _require_postgres()
    import time

    from django.db import transaction

    from wallet.ledger.engine import tenant_writer_lock

    settings.LEDGER_WRITER_LOCK_MIN_BATCH = 4
    usd = enable(tenant_a, "USD")
    users = [UserFactory(tenant=tenant_a, email=f"w{i}@example.com") for i in range(6)]
    for user in users:
        fund(user, 10_000)

    # Another transaction holds the writer lock: a batch of 4 waits, a single transfer does not.
    holder_ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                tenant_writer_lock(tenant_a)
                holder_ready.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_ready.wait(10)
    done = threading.Event()

    def big_batch() -> None:
        try:
            requests = [services.TransferRequest(users[i], users[i + 1], usd, 1) for i in range(4)]
            assert all(isinstance(r, Transfer) for r in services.transfers_execute(tenant=tenant_a,
                                                                                requests=requests))
            done.set()
        finally:
            connections.close_all()

    batcher = threading.Thread(target=big_batch)
    batcher.start()
    single = services.transfer_create(tenant=tenant_a, sender=users[5], recipient=users[0], asset=usd, amount=7)
    assert single.pk is not None  # a single transfer went through while the writer lock was held
    time.sleep(0.3)
    assert not done.is_set()  # the batch is still waiting for the writer lock
    release.set()
    holder.join(10)
    batcher.join(10)
    assert done.is_set()

    # Mixed traffic: large batches and single transfers over the same accounts.
    def work(index: int) -> list:
        rng = random.Random(index)
        out = []
        for _ in range(6):
            if index % 2:
                pairs = [rng.sample(users, 2) for _ in range(8)]
                results = services.transfers_execute(tenant=tenant_a, requests=[
                    services.TransferRequest(s, r, usd, rng.randint(1, 50)) for s, r in pairs])
                out += [r.amount for r in results if isinstance(r, Transfer)]
            else:
                s, r = rng.sample(users, 2)
                out.append(services.transfer_create(tenant=tenant_a, sender=s, recipient=r, asset=usd,
                                                    amount=rng.randint(1, 50)).amount)
        return out

    results = _run(8, work)
    assert len(results) == 4 * 6 * 8 + 4 * 6
    assert sum(balance(u)[0] for u in users) == 60_000
    assert ledger_verify(tenant=tenant_a).ok


def test_a_large_batch_lets_its_writer_lock_go_whether_it_commits_or_fails(tenant_a: Tenant, settings,
                                                                           monkeypatch) -> None:
    """Outside any transaction, a large batch holds the writer lock at session level and releases it as the
    last statement before COMMIT; a batch that fails releases it after the rollback. Either way the session
    holds no advisory lock afterwards."""
    _require_postgres()
    from wallet.ledger.engine import LedgerBatch

    settings.LEDGER_WRITER_LOCK_MIN_BATCH = 2
    usd = enable(tenant_a, "USD")
    users = [UserFactory(tenant=tenant_a, email=f"s{i}@example.com") for i in range(3)]
    fund(users[0], 1_000)

    def advisory_locks_held() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            return cursor.fetchone()[0]

    requests = [services.TransferRequest(users[0], users[1], usd, 5),
                services.TransferRequest(users[0], users[2], usd, 6)]
    assert all(isinstance(r, Transfer) for r in services.transfers_execute(tenant=tenant_a, requests=requests))
    assert advisory_locks_held() == 0

    def broken_flush(self) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(LedgerBatch, "flush", broken_flush)
    with pytest.raises(RuntimeError, match="disk is full"):
        services.transfers_execute(tenant=tenant_a, requests=requests)
    assert advisory_locks_held() == 0
    monkeypatch.undo()
    settings.LEDGER_WRITER_LOCK_MIN_BATCH = 2
    assert balance(users[1])[0] == 5 and balance(users[2])[0] == 6  # the failed batch left nothing
    assert all(isinstance(r, Transfer) for r in services.transfers_execute(tenant=tenant_a, requests=requests))
    assert ledger_verify(tenant=tenant_a).ok
