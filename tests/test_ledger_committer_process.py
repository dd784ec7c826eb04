"""The transfer committer in a process of its own (wallet/ledger/committer_process.py): a real child process,
started by the first transfer, committing to the test database."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction

from tenants.models import Tenant, User
from tests.factories import UserFactory
from tests.ledger_helpers import balance, enable, fund
from tests.test_idempotency_concurrency import signed_in_clients
from tests.test_ledger_groupcommit import _concurrently, _post
from wallet.core.errors import ApiError, error_class
from wallet.events import services as event_services
from wallet.events.streams import user_stream
from wallet.ledger import committer_process, groupcommit
from wallet.ledger.models import Transfer
from wallet.ledger.verify import ledger_verify

pytestmark = [
    pytest.mark.skipif("postgresql" not in settings.DATABASES["default"]["ENGINE"],
                       reason="PostgreSQL only: the committer process needs a database another process can use"),
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(120),
]


@pytest.fixture(autouse=True)
def process_mode(settings: Any) -> Iterator[None]:
    settings.LEDGER_GROUP_COMMIT_PROCESS = True
    settings.OUTBOX_RELAY_IN_PROCESS = False
    yield
    groupcommit.committers_stop()


def _host() -> Any:
    host = committer_process._host
    assert host is not None, "no committer process runs"
    return host


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def run() -> None:
        try:
            answers.append(call())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a job's frame has gone whole to the committer process."""
    done = threading.Event()
    real = committer_process._Host.send

    def send(self: Any, payload: bytes) -> bool:
        went = real(self, payload)
        if went:
            done.set()
        return went

    monkeypatch.setattr(committer_process._Host, "send", send)
    return done


def _wait_for(condition: Callable[[], Any], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_transfers_commit_in_the_committer_process_and_each_lands_once(tenant_a: Tenant,
                                                                       payers: list[User]) -> None:
    assert committer_process.enabled()
    clients = [signed_in_clients(tenant_a, payer, 1)[0] for payer in payers]
    answers = _concurrently([lambda c=c, i=i: _post(c, f"p{i}") for i, c in enumerate(clients)])
    assert [a.status_code for a in answers] == [201] * len(payers)
    host = _host()
    assert host.proc.poll() is None and host.ready
    with open(f"/proc/{host.proc.pid}/cmdline", "rb") as cmdline:
        assert b"wallet.ledger.committer_process import serve" in cmdline.read()
    assert Transfer.all_tenants.filter(memo__startswith="p").count() == len(payers)
    assert {a.json()["id"] for a in answers} == {
        str(pk) for pk in Transfer.all_tenants.filter(memo__startswith="p").values_list("id", flat=True)}
    for payer in payers:
        assert balance(payer)[0] == 10_000 - 100
    # Replays and refusals come back as the group commit gives them.
    again = _post(clients[0], "p0")
    assert (again.status_code, again.content, again["Idempotent-Replayed"]) == (201, answers[0].content, "true")
    short = _post(clients[1], "too-much", amount="999999")
    assert short.status_code == 409 and short.json()["code"] == "insufficient_funds"
    assert short.json()["available"] == str(10_000 - 100)
    assert ledger_verify(tenant=tenant_a).ok


def test_two_tenants_share_the_committer_process_and_see_nothing_of_each_other(
        tenant_a: Tenant, tenant_b: Tenant, payers: list[User]) -> None:
    """One committer process, one committer per tenant in it: the same email and the same Idempotency-Key
    in two tenants are two accounts and two transfers."""
    enable(tenant_b, "USD")
    payer_b = UserFactory(tenant=tenant_b, email=payers[0].email)
    UserFactory(tenant=tenant_b, email="bob@example.com")
    fund(payer_b, 5_000)
    client_a = signed_in_clients(tenant_a, payers[0], 1)[0]
    client_b = signed_in_clients(tenant_b, payer_b, 1)[0]
    answers = _concurrently([lambda: _post(client_a, "same-key"), lambda: _post(client_b, "same-key", "300")])
    assert [a.status_code for a in answers] == [201, 201]
    assert not any(a.get("Idempotent-Replayed") for a in answers)
    assert set(Transfer.all_tenants.filter(memo="same-key").values_list("tenant_id", "amount")) == {
        (tenant_a.pk, 100), (tenant_b.pk, 300)}
    assert _host().proc.poll() is None
    assert balance(payers[0])[0] == 10_000 - 100 and balance(payer_b)[0] == 5_000 - 300
    assert ledger_verify(tenant=tenant_a).ok and ledger_verify(tenant=tenant_b).ok


def test_an_error_raised_in_the_committer_process_reaches_the_client_as_its_problem(
        tenant_a: Tenant, payers: list[User]) -> None:
    """A key reused with another body is refused in the committer process (an error, not a stored answer):
    its class travels back even though it is not importable by its name."""
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    assert _post(client, "k", amount="100").status_code == 201
    reused = _post(client, "k", amount="200")
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"


def test_this_process_hears_of_the_commits_before_the_answer(tenant_a: Tenant, payers: list[User]) -> None:
    """The commit listeners of the web server process (the balances app's stream heads) are told of the
    committer process's commits before the waiting request is answered: a balance read after the answer
    sees the transfer."""
    heard: list[tuple[Any, tuple[str, ...], int]] = []

    def listener(tenant_id: Any, streams: tuple[str, ...]) -> None:
        # Told in this process, by the reader thread, while the job still waits for its answer.
        host = committer_process._host
        heard.append((tenant_id, streams, len(host.pending) if host is not None else 0))

    event_services.register_commit_listener(listener)
    try:
        client = signed_in_clients(tenant_a, payers[0], 1)[0]
        heard.clear()  # the sign-in and the funding committed here
        assert _post(client, "told").status_code == 201
        assert any(tenant_id == tenant_a.pk and user_stream(payers[0].pk) in streams and waiting == 1
                   for tenant_id, streams, waiting in heard), heard
    finally:
        event_services._commit_listeners.remove(listener)


def test_a_committer_process_that_dies_answers_503_and_the_next_transfer_starts_another(
        tenant_a: Tenant, payers: list[User], sent: threading.Event) -> None:
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    assert _post(client, "first").status_code == 201
    host = _host()
    os.kill(host.proc.pid, signal.SIGSTOP)  # it gets the next job, but does not run it
    sent.clear()
    thread, answers = _in_thread(lambda: _post(client, "lost"))
    assert sent.wait(30)
    os.kill(host.proc.pid, signal.SIGKILL)
    thread.join(30)
    assert answers[0].status_code == 503 and answers[0].json()["code"] == "outcome_unknown"
    assert answers[0]["Retry-After"] == "1"
    # The retry with the same key runs it, in a new committer process.
    retry = _post(client, "lost")
    assert retry.status_code == 201 and not retry.get("Idempotent-Replayed")
    assert _host() is not host and host.proc.returncode == -signal.SIGKILL
    assert Transfer.all_tenants.filter(memo="lost").count() == 1
    assert balance(payers[0])[0] == 10_000 - 200
    assert ledger_verify(tenant=tenant_a).ok


def test_a_request_the_committer_process_does_not_answer_in_time_answers_503_and_the_retry_replays(
        tenant_a: Tenant, payers: list[User], settings: Any) -> None:
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    assert _post(client, "first").status_code == 201  # the committer process has started
    host = _host()
    settings.LEDGER_GROUP_COMMIT_WAIT_SECONDS = 1
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        slow = _post(client, "slow")
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)
    assert slow.status_code == 503 and slow.json()["code"] == "outcome_unknown"
    assert committer_process._host is None and host.retired  # it gets no more jobs
    # It was sent whole: the retired process runs it once it can, answers (dropped: nobody waits), and exits.
    settings.LEDGER_GROUP_COMMIT_WAIT_SECONDS = 30
    assert host.proc.wait(30) == 0
    assert Transfer.all_tenants.filter(memo="slow").count() == 1
    retry = _post(client, "slow")  # in a new committer process
    assert retry.status_code == 201 and retry["Idempotent-Replayed"] == "true"
    assert _host() is not host
    assert Transfer.all_tenants.filter(memo="slow").count() == 1
    assert balance(payers[0])[0] == 10_000 - 200


def test_committers_stop_ends_the_committer_process_after_it_answers(
        tenant_a: Tenant, payers: list[User], sent: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    assert _post(client, "one").status_code == 201
    host = _host()
    os.kill(host.proc.pid, signal.SIGSTOP)
    sent.clear()
    thread, answers = _in_thread(lambda: _post(client, "in-flight"))
    assert sent.wait(30)
    # From here the job is the committer process's: it may not run here.
    monkeypatch.setattr(committer_process, "_not_run", lambda *args: pytest.fail("ran here"))
    os.kill(host.proc.pid, signal.SIGCONT)
    groupcommit.committers_stop()  # the job sent before it is committed and answered
    thread.join(30)
    assert answers[0].status_code == 201
    assert host.proc.wait(10) == 0
    assert committer_process._host is None
    assert Transfer.all_tenants.filter(memo="in-flight").count() == 1


def test_a_job_that_does_not_go_whole_in_time_runs_here_and_the_process_is_retired(
        tenant_a: Tenant, payers: list[User], settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The committer process stops reading; a frame larger than the socket's buffer cannot go whole within
    the wait. The torn frame is never read as a job: it runs here, once; the retired process exits cleanly
    once it reads again, without running it."""
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    assert _post(client, "first").status_code == 201
    host = _host()
    settings.LEDGER_GROUP_COMMIT_WAIT_SECONDS = 1
    real_frame = committer_process._frame
    monkeypatch.setattr(committer_process, "_frame", lambda payload: real_frame(payload + b"\0" * 16_000_000))
    os.kill(host.proc.pid, signal.SIGSTOP)
    try:
        torn = _post(client, "torn")
    finally:
        os.kill(host.proc.pid, signal.SIGCONT)
    assert torn.status_code == 201 and not torn.get("Idempotent-Replayed")
    assert host.retired and committer_process._host is None
    assert host.proc.wait(30) == 0
    assert Transfer.all_tenants.filter(memo="torn").count() == 1
    assert balance(payers[0])[0] == 10_000 - 200
    assert ledger_verify(tenant=tenant_a).ok


def test_a_committer_process_that_cannot_start_django_leaves_transfers_to_this_process(
        tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch) -> None:
    """It exits before it is ready: the jobs sent to it were never read, so they run here; no other
    committer process is started for START_BACKOFF_SECONDS."""
    monkeypatch.setattr(committer_process, "_start_after", 0.0)  # restored so after the test: no back-off left
    monkeypatch.setattr(committer_process, "_MAIN", "import sys, time; time.sleep(0.5); sys.exit(3)")
    started: list[Any] = []
    real_start = committer_process._start

    def counting() -> Any:
        host = real_start()
        if host is not None:
            started.append(host)
        return host

    monkeypatch.setattr(committer_process, "_start", counting)
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    first = _post(client, "no-process")
    assert first.status_code == 201
    assert len(started) == 1 and started[0].proc.wait(10) == 3 and not started[0].ready
    _wait_for(lambda: committer_process._host is None)
    assert _post(client, "still-none").status_code == 201
    assert len(started) == 1  # backing off
    assert Transfer.all_tenants.filter(memo__in=["no-process", "still-none"]).count() == 2


def test_a_transfer_inside_a_transaction_and_one_without_a_process_run_here(
        tenant_a: Tenant, payers: list[User], monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in_clients(tenant_a, payers[0], 1)[0]
    with transaction.atomic():
        assert _post(client, "inside").status_code == 201
    assert committer_process._host is None  # none was started for it
    monkeypatch.setattr(committer_process, "_start", lambda: None)
    assert _post(client, "here").status_code == 201
    assert committer_process._host is None
    assert Transfer.all_tenants.filter(memo__in=["inside", "here"]).count() == 2


@pytest.mark.django_db(transaction=False)
def test_the_setting_is_ignored_while_the_relay_runs_in_process(settings: Any) -> None:
    settings.OUTBOX_RELAY_IN_PROCESS = True
    assert not committer_process.enabled()


@pytest.mark.django_db(transaction=False)
def test_errors_that_pickle_cannot_name_are_sent_as_what_renders_them() -> None:
    Made = error_class("made_up_refusal", 409, "Made up")
    error = Made("detail text", available="5")
    error.extra["detail"] = "an extra named like an argument"
    error.headers["Retry-After"] = "3"
    decoded = committer_process._decode(committer_process._encode(groupcommit.Outcome(error=error))).error
    assert isinstance(decoded, ApiError)
    assert (decoded.code, decoded.status, decoded.title, decoded.detail, decoded.extra, decoded.headers) == (
        "made_up_refusal", 409, "Made up", "detail text",
        {"available": "5", "detail": "an extra named like an argument"}, {"Retry-After": "3"})
    unpicklable = Made("x", callback=lambda: None)
    sent = committer_process._encode(groupcommit.Outcome(error=unpicklable))
    assert isinstance(committer_process._decode(sent).error, RuntimeError)
    other = committer_process._decode(committer_process._encode(groupcommit.Outcome(error=ValueError("x"))))
    assert isinstance(other.error, ValueError)  # importable: sent as it is
    local = type("Local", (Exception,), {})
    failed = committer_process._decode(committer_process._encode(groupcommit.Outcome(error=local("boom"))))
    assert isinstance(failed.error, RuntimeError) and "boom" in str(failed.error)
