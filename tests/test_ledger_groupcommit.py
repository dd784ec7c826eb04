"""Group commit of POST /api/v1/transfers (wallet/ledger/groupcommit.py): concurrent requests of one process
share transactions, each is answered only after its batch commits, and Idempotency-Key semantics hold."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.db import connections

from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.ledger_helpers import balance, terminate_own_backend
from tests.test_idempotency_concurrency import signed_in_clients
from wallet.ledger import groupcommit
from wallet.ledger.api.serializers import TransferOutputSerializer
from wallet.ledger.models import Asset, Transfer
from wallet.ledger.services import transfer_create
from wallet.ledger.verify import ledger_verify

on_postgresql = pytest.mark.skipif("postgresql" not in settings.DATABASES["default"]["ENGINE"],
                                   reason="PostgreSQL only: SQLite serialises writers")


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the size of every batch, and holds each batch 50 ms so that the next one gathers."""
    sizes: list[int] = []
    real = groupcommit.execute_batch

    def recording(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        sizes.append(len(jobs))
        threading.Event().wait(0.05)
        return real(tenant, jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", recording)
    return sizes


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = calls[index]()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return results


def _post(client: AppClient, key: str, amount: str = "100", recipient: str = "bob@example.com") -> Any:
    body = json.dumps({"recipient": recipient, "asset": "USD", "amount": amount, "memo": key})
    return client.post("/api/v1/transfers", data=body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


def test_the_response_body_is_what_the_serializer_gives(db: Any, tenant_a: Tenant, payers: list[User]) -> None:
    bob = User.objects.get(tenant=tenant_a, email="bob@example.com")
    transfer = transfer_create(tenant=tenant_a, sender=payers[0], recipient=bob,
                               asset=Asset.objects.get(code="USD"), amount=123, memo="m")
    transfer = Transfer.all_tenants.select_related("sender", "recipient", "asset").get(pk=transfer.pk)
    for viewer in (payers[0], bob):
        expected = TransferOutputSerializer(transfer, context={"user": viewer}).data
        assert groupcommit.transfer_body(transfer, viewer) == json.loads(json.dumps(expected))


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_concurrent_transfers_share_transactions_and_each_lands_once(
        tenant_a: Tenant, payers: list[User], batch_sizes: list[int]) -> None:
    clients = [signed_in_clients(tenant_a, payer, 1)[0] for payer in payers]
    responses = _concurrently([lambda c=c, i=i: _post(c, f"key-{i}") for i, c in enumerate(clients)])
    assert [r.status_code for r in responses] == [201] * len(payers)
    assert max(batch_sizes) > 1, batch_sizes  # some requests were committed together
    assert sum(batch_sizes) == len(payers)
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == len(payers)
    stored = Transfer.all_tenants.filter(memo__startswith="key-").values_list("id", flat=True)
    assert {str(i) for i in stored} == ids
    for payer in payers:
        assert balance(payer)[0] == 10_000 - 100
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_one_refusal_in_a_batch_does_not_touch_the_others(tenant_a: Tenant, payers: list[User],
                                                          batch_sizes: list[int]) -> None:
    clients = [signed_in_clients(tenant_a, payer, 1)[0] for payer in payers[:6]]
    amounts = ["100", "100", "999999", "100", "100", "100"]  # the third payer has 10,000
    responses = _concurrently([lambda c=c, a=a, i=i: _post(c, f"k{i}", a)
                               for i, (c, a) in enumerate(zip(clients, amounts, strict=True))])
    assert [r.status_code for r in responses] == [201, 201, 409, 201, 201, 201]
    assert responses[2].json()["code"] == "insufficient_funds"
    # the refusal is the key's answer: replayed byte for byte
    again = _post(clients[2], "k2", "999999")
    assert (again.status_code, again.content, again["Idempotent-Replayed"]) == (409, responses[2].content, "true")
    assert balance(payers[2])[0] == 10_000
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_the_same_key_twice_in_the_queue_runs_once_and_replays(tenant_a: Tenant, payers: list[User],
                                                              batch_sizes: list[int]) -> None:
    clients = signed_in_clients(tenant_a, payers[0], 8)
    responses = _concurrently([lambda c=c: _post(c, "same") for c in clients])
    originals = [r for r in responses if r.status_code == 201 and not r.get("Idempotent-Replayed")]
    assert len(originals) == 1
    for response in responses:
        if response is not originals[0]:
            assert response.status_code in (201, 409)
            if response.status_code == 201:
                assert response.content == originals[0].content
    assert Transfer.all_tenants.filter(memo="same").count() == 1
    assert balance(payers[0])[0] == 10_000 - 100


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_failing_batch_is_retried_one_job_at_a_time(tenant_a: Tenant, payers: list[User],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = groupcommit.transfers_execute
    calls: list[int] = []

    def flaky(*, tenant: Tenant, requests: list[Any], **kwargs: Any) -> list[Any]:
        calls.append(len(requests))
        if len(requests) > 1:
            raise RuntimeError("the database went away mid-batch")
        threading.Event().wait(0.05)
        return real(tenant=tenant, requests=requests, **kwargs)

    monkeypatch.setattr(groupcommit, "transfers_execute", flaky)
    clients = [signed_in_clients(tenant_a, payer, 1)[0] for payer in payers[:6]]
    responses = _concurrently([lambda c=c, i=i: _post(c, f"f{i}") for i, c in enumerate(clients)])
    assert [r.status_code for r in responses] == [201] * 6
    assert any(size > 1 for size in calls), calls
    assert Transfer.all_tenants.filter(memo__startswith="f").count() == 6
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_failing_batch_logs_its_tenant_and_requests_and_each_retry_runs_under_its_request_id(
        tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The committer thread has no request of its own: a failed batch's log line names the tenant and the
    ids of the requests it carried, and each job run again alone runs (and logs) under its request's id."""
    from wallet.core.context import request_id_var

    real = groupcommit.transfers_execute
    alone_under: list[str | None] = []

    def flaky(*, tenant: Tenant, requests: list[Any], **kwargs: Any) -> list[Any]:
        if len(requests) > 1:
            raise RuntimeError("the database went away mid-batch")
        alone_under.append(request_id_var.get())
        return real(tenant=tenant, requests=requests, **kwargs)

    batches_under: list[str | None] = []

    def gather(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        if len(jobs) > 1:  # a batch runs under no request's id (none left behind by a retry alone)
            batches_under.append(request_id_var.get())
        threading.Event().wait(0.05)  # the next batch gathers the others
        return real_batch(tenant, jobs)

    real_batch = groupcommit.execute_batch
    monkeypatch.setattr(groupcommit, "transfers_execute", flaky)
    monkeypatch.setattr(groupcommit, "execute_batch", gather)
    clients = [signed_in_clients(tenant_a, payer, 1)[0] for payer in payers[:6]]
    ids = [f"req{i}-{uuid.uuid4().hex[:8]}" for i in range(6)]

    def post(client: AppClient, i: int) -> Any:
        body = json.dumps({"recipient": "bob@example.com", "asset": "USD", "amount": "100", "memo": f"g{i}"})
        return client.post("/api/v1/transfers", data=body, content_type="application/json",
                           HTTP_IDEMPOTENCY_KEY=f"g{i}", HTTP_X_REQUEST_ID=ids[i])

    with caplog.at_level("ERROR", logger="wallet.ledger.groupcommit"):
        responses = _concurrently([lambda c=c, i=i: post(c, i) for i, c in enumerate(clients)])
    assert [r.status_code for r in responses] == [201] * 6, responses[0].content
    assert [r["X-Request-ID"] for r in responses] == ids
    failed = [r for r in caplog.records if "running each alone" in r.getMessage()]
    assert failed, [r.getMessage() for r in caplog.records]
    logged: list[str] = []
    for record in failed:
        assert record.tenant == tenant_a.slug  # type: ignore[attr-defined]
        assert len(record.request_ids) > 1  # type: ignore[attr-defined]
        logged.extend(record.request_ids)  # type: ignore[attr-defined]
    # every request that was in a failed batch was run again alone, under its own id, once (a batch that
    # held one job from the start ran under none: the committer thread's)
    assert sorted(logged) == sorted(rid for rid in alone_under if rid is not None)
    assert set(logged) <= set(ids)
    assert batches_under and set(batches_under) == {None}


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_batch_failing_after_its_answers_were_built_is_retried_and_answers_what_committed(
        tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers are built before the ledger's last statement, and stored by it: when that statement
    fails, nothing of the batch stays, and each job, retried alone, is decided and answered again."""
    from wallet.ledger.engine import LedgerBatch

    real = LedgerBatch._run_deferred
    failed: list[int] = []
    seen_jobs: list[Any] = []
    real_batch = groupcommit.execute_batch

    def failing_once(self: LedgerBatch) -> None:
        if len(self.drafts) > 1 and not failed:
            failed.append(len(self.drafts))
            raise RuntimeError("the connection broke in the batch's last statement")
        real(self)

    def watching(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        seen_jobs.extend((job, job.order, job.refusal) for job in jobs)
        threading.Event().wait(0.05)
        return real_batch(tenant, jobs)

    monkeypatch.setattr(LedgerBatch, "_run_deferred", failing_once)
    monkeypatch.setattr(groupcommit, "execute_batch", watching)
    clients = [signed_in_clients(tenant_a, payer, 1)[0] for payer in payers[:6]]
    calls = [lambda c=c, i=i: _post(c, f"g{i}", recipient="nobody@example.com" if i == 0 else "bob@example.com")
             for i, c in enumerate(clients)]
    responses = _concurrently(calls)
    assert failed, "no batch of more than one transfer formed"
    assert [r.status_code for r in responses] == [404] + [201] * 5
    assert all((job.order, job.refusal) == (order, refusal) for job, order, refusal in seen_jobs)
    committed = {str(t.pk) for t in Transfer.all_tenants.filter(memo__startswith="g")}
    assert committed == {json.loads(r.content)["id"] for r in responses[1:]}
    for client, response, i in zip(clients, responses, range(6), strict=True):
        replay = _post(client, f"g{i}", recipient="nobody@example.com" if i == 0 else "bob@example.com")
        assert replay.status_code == response.status_code and replay["Idempotent-Replayed"] == "true"
        if response.status_code == 201:
            assert replay.content == response.content
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
@pytest.mark.parametrize("committed", [False, True])
def test_a_connection_lost_in_a_batch_answers_503_and_a_retry_with_the_key_tells_what_happened(
        committed: bool, tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The connection breaks before anything is sent, or after the COMMIT ran but before its answer came
    back: either way the client is told 503 `outcome_unknown`, and its retry with the same key
    runs the transfer once, or replays the one that committed."""
    from django.db import OperationalError

    broken = {"on": True}
    real_commit = groupcommit.commit_in_pipeline
    real_batch = groupcommit.execute_batch

    def commit_then_lose_the_answer(connection: Any) -> bool:
        done = real_commit(connection)
        if broken["on"]:
            raise OperationalError("server closed the connection unexpectedly")
        return done

    def lose_the_connection_first(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        if broken["on"]:
            raise OperationalError("connection failed: Connection refused")
        return real_batch(tenant, jobs)

    if committed:
        monkeypatch.setattr(groupcommit, "commit_in_pipeline", commit_then_lose_the_answer)
    else:
        monkeypatch.setattr(groupcommit, "execute_batch", lose_the_connection_first)
    monkeypatch.setattr(groupcommit, "_connection_lost", lambda used: broken["on"])
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    with caplog.at_level("ERROR", logger="wallet.ledger.groupcommit"):
        response = _post(client, "lost")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["code"] == "outcome_unknown"
    (logged,) = [r for r in caplog.records if "the database connection failed" in r.getMessage()]
    assert logged.tenant == tenant_a.slug  # type: ignore[attr-defined]
    assert logged.request_ids == [response["X-Request-ID"]]  # type: ignore[attr-defined]
    assert Transfer.all_tenants.filter(memo="lost").count() == (1 if committed else 0)
    broken["on"] = False
    retry = _post(client, "lost")
    assert retry.status_code == 201
    assert retry.get("Idempotent-Replayed") == ("true" if committed else None)
    assert Transfer.all_tenants.filter(memo="lost").count() == 1
    assert balance(payers[0])[0] == 10_000 - 100
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_a_committer_whose_backend_is_killed_answers_503_and_the_retry_runs_once(
        tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch) -> None:
    """No stub: the committer's PostgreSQL backend is terminated in the middle of a batch. Django replaces the
    broken connection as the batch's block ends; the batch still answers 503 `outcome_unknown`, and the
    retry with the same key runs the transfer once."""
    real = groupcommit.transfers_execute
    killed: list[int] = []

    def killing_once(*, tenant: Tenant, requests: list[Any], **kwargs: Any) -> list[Any]:
        if not killed:
            killed.append(terminate_own_backend())
        return real(tenant=tenant, requests=requests, **kwargs)

    monkeypatch.setattr(groupcommit, "transfers_execute", killing_once)
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    response = _post(client, "killed")
    assert killed and response.status_code == 503 and response.json()["code"] == "outcome_unknown"
    assert Transfer.all_tenants.filter(memo="killed").count() == 0
    retry = _post(client, "killed")
    assert retry.status_code == 201 and not retry.get("Idempotent-Replayed")
    assert Transfer.all_tenants.filter(memo="killed").count() == 1
    assert balance(payers[0])[0] == 10_000 - 100
    assert ledger_verify(tenant=tenant_a).ok


@on_postgresql
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
def test_an_error_of_a_job_alone_is_a_500_and_nothing_is_stored(tenant_a: Tenant, payers: list[User],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = groupcommit.transfers_execute
    broken = {"on": True}

    def failing(*, tenant: Tenant, requests: list[Any], **kwargs: Any) -> list[Any]:
        if broken["on"]:
            raise RuntimeError("boom")
        return real(tenant=tenant, requests=requests, **kwargs)

    monkeypatch.setattr(groupcommit, "transfers_execute", failing)
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    client.raise_request_exception = False
    assert _post(client, "retry-me").status_code == 500
    broken["on"] = False
    response = _post(client, "retry-me")  # nothing was stored: the retry runs
    assert response.status_code == 201 and not response.get("Idempotent-Replayed")
    assert balance(payers[0])[0] == 10_000 - 100


def _job(key: str) -> groupcommit.TransferJob:
    user = User(pk=uuid.uuid4())
    return groupcommit.TransferJob(
        claim=groupcommit.ClaimRequest(user=user, key=key, fingerprint="f", method="POST",
                                       path="/api/v1/transfers"), viewer=user)


def test_a_request_no_batch_takes_in_time_leaves_the_queue_and_answers_503(
        settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A committer that hangs (here: in its first batch) must not hold the others forever."""
    settings.LEDGER_GROUP_COMMIT_WAIT_SECONDS = 0.2
    started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def hanging(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        batches.append([job.claim.key for job in jobs])
        started.set()
        release.wait(10)
        return [groupcommit.Outcome(status=201)] * len(jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", hanging)
    tenant = Tenant(pk=uuid.uuid4())
    committer = groupcommit.GroupCommitter()
    outcomes: list[Any] = []
    thread = threading.Thread(target=lambda: outcomes.append(committer.submit(tenant, _job("first"))))
    thread.start()
    try:
        assert started.wait(10)
        outcome = committer.submit(tenant, _job("stuck"))
    finally:
        release.set()
        thread.join(10)
    assert isinstance(outcome.error, groupcommit.TransferQueueTimeout)
    assert outcome.error.status == 503 and outcome.error.headers["Retry-After"] == "1"
    assert list(committer._queue) == []  # it left the queue: no later batch will run it
    assert outcomes[0].status == 201
    committer.stop(10)
    assert batches == [["first"]]


def test_the_committer_thread_takes_what_queued_while_a_batch_ran_and_ends_when_idle(
        settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.LEDGER_GROUP_COMMIT_IDLE_SECONDS = 0.2
    first_started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []
    threads_seen: set[str] = set()

    def recording(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        batches.append(sorted(job.claim.key for job in jobs))
        threads_seen.add(threading.current_thread().name)
        if len(batches) == 1:
            first_started.set()
            release.wait(10)
        return [groupcommit.Outcome(status=200 + len(jobs))] * len(jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", recording)
    tenant = Tenant(pk=uuid.uuid4())
    committer = groupcommit.GroupCommitter()
    outcomes: dict[str, Any] = {}

    def submit(key: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: outcomes.__setitem__(key, committer.submit(tenant, _job(key))))
        thread.start()
        return thread

    threads = [submit("a")]
    assert first_started.wait(10)
    threads += [submit(key) for key in ("b", "c", "d")]
    deadline = time.monotonic() + 10
    while len(committer._queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(10)
    assert batches == [["a"], ["b", "c", "d"]]
    assert {key: outcome.status for key, outcome in outcomes.items()} == {"a": 201, "b": 203, "c": 203, "d": 203}
    assert threads_seen == {"transfer-committer"}
    serving = committer._thread
    assert serving is not None
    serving.join(5)  # idle for LEDGER_GROUP_COMMIT_IDLE_SECONDS: it ends
    assert not serving.is_alive() and committer._thread is None
    assert committer.submit(tenant, _job("e")).status == 201  # a new thread starts
    committer.stop(10)
    assert committer._thread is None


@pytest.mark.django_db
def test_a_transfer_submitted_inside_a_transaction_runs_there_alone(
        tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's transaction is not the committer's to commit: the job runs in it, in the caller's thread."""
    threads: list[str] = []
    real = groupcommit.execute_batch

    def recording(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        threads.append(threading.current_thread().name)
        return real(tenant, jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", recording)
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    assert _post(client, "inside").status_code == 201
    assert threads == [threading.current_thread().name]
    assert groupcommit.committer_for(tenant_a)._thread is None


@pytest.mark.parametrize("value", [
    datetime(2026, 11, 23, 4, 5, 6, 789012, tzinfo=UTC),
    datetime(2026, 11, 23, 4, 5, 6, tzinfo=UTC),  # no microseconds: isoformat leaves them out
    datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/Paris")),
])
@pytest.mark.parametrize("zone", [None, "Asia/Kolkata"])
def test_the_batch_renders_datetimes_as_drf_does(value: datetime, zone: str | None) -> None:
    from django.utils import timezone
    from rest_framework import serializers

    with timezone.override(zone) if zone else contextlib.nullcontext():
        assert groupcommit._render_datetime(value) == serializers.DateTimeField().to_representation(value)


@pytest.mark.parametrize("why", ["every committer slot is taken", "the thread cannot start"])
def test_without_a_committer_thread_a_transfer_runs_alone_in_its_request_thread(
        why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def recording(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        threads.append(threading.current_thread().name)
        return [groupcommit.Outcome(status=201)] * len(jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", recording)
    slots = threading.BoundedSemaphore(0 if why.startswith("every") else 1)
    monkeypatch.setattr(groupcommit, "_slots", slots)
    if why.startswith("the thread"):
        def failing_start(self: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", failing_start)
    committer = groupcommit.GroupCommitter()
    outcome = committer.submit(Tenant(pk=uuid.uuid4()), _job("alone"))
    assert outcome.status == 201 and threads == [threading.current_thread().name]
    assert committer._thread is None and list(committer._queue) == []
    if why.startswith("the thread"):
        assert slots.acquire(blocking=False)  # the slot was given back


@pytest.mark.parametrize("lost", [False, True])
def test_a_batch_that_fails_with_an_operational_error_is_retried_alone_unless_the_connection_is_lost(
        lost: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadlock or a lock timeout (OperationalError on a live connection) is retried job by job; a lost
    connection fails every job alike, without a retry per job."""
    from django.db import OperationalError

    calls: list[int] = []

    def failing_once(tenant: Tenant, jobs: list[Any]) -> list[Any]:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise OperationalError("deadlock detected" if not lost else "server closed the connection")
        return [groupcommit.Outcome(status=201)] * len(jobs)

    monkeypatch.setattr(groupcommit, "execute_batch", failing_once)
    monkeypatch.setattr(groupcommit, "_connection_lost", lambda used: lost)
    batch = [_job("a"), _job("b")]
    groupcommit.GroupCommitter()._run(Tenant(pk=uuid.uuid4()), batch)
    if lost:
        assert calls == [2] and all(isinstance(job.outcome.error, groupcommit.OutcomeUnknown) for job in batch)
    else:
        assert calls == [2, 1, 1] and [job.outcome.status for job in batch] == [201, 201]


def test_a_transfer_arriving_while_an_idle_committer_closes_its_connection_starts_another(
        settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle committer gives up its place before it closes its connection: a job submitted meanwhile is
    not queued behind a thread that is ending (it would wait LEDGER_GROUP_COMMIT_WAIT_SECONDS for a 503)."""
    settings.LEDGER_GROUP_COMMIT_IDLE_SECONDS = 0.05
    settings.LEDGER_GROUP_COMMIT_WAIT_SECONDS = 5
    closing, release = threading.Event(), threading.Event()

    class SlowToClose:
        in_atomic_block = False

        def close(self) -> None:
            if not closing.is_set():
                closing.set()
                release.wait(10)

        def close_if_unusable_or_obsolete(self) -> None:
            pass

    monkeypatch.setattr(groupcommit, "connection", SlowToClose())
    monkeypatch.setattr(groupcommit, "execute_batch",
                        lambda tenant, jobs: [groupcommit.Outcome(status=201)] * len(jobs))
    tenant = Tenant(pk=uuid.uuid4())
    committer = groupcommit.GroupCommitter()
    assert committer.submit(tenant, _job("first")).status == 201
    assert closing.wait(5)  # the first thread is idle and closing its connection
    try:
        started = time.monotonic()
        assert committer.submit(tenant, _job("second")).status == 201
        assert time.monotonic() - started < 2
    finally:
        release.set()
    committer.stop(10)
