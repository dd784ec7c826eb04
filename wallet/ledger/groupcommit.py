"""Group commit for `POST /api/v1/transfers`: the transfers that a server process receives at the same
time share one database transaction, and none is answered before that transaction commits.

One `GroupCommitter` per tenant and process, with its own thread and database connection. A request
thread prepares its job (Idempotency-Key, fingerprint, and the validated order, with the recipient still a
text, or the refusal found while validating), queues it and waits. The committer thread takes every job
queued so far (up to `BATCH_MAX`), and in one transaction claims all their keys (one statement), finds
all their recipients and the parties' accounts (one query: `selectors.transfer_parties_send`), executes
all their transfers (`transfers_execute`: one lock of the accounts, one write of each table), stores
every response under its key (one statement) and commits; then it hands the outcome to each waiting
thread (after the on-commit callbacks, which also tell this process's balance reads that the stream heads
moved: a client that reads its balance after the answer sees the transfer) and takes the next batch at
once. While a batch runs, the next one gathers: the busier the server,
the larger the batches (TigerBeetle's batching, on PostgreSQL). A job submitted inside a transaction of the
caller runs there, alone; so does one whose process runs LEDGER_GROUP_COMMIT_MAX_COMMITTERS committer threads
already (each holds a database connection), in its request thread.

Guarantees are those of `@idempotent` (wallet/idempotency/api.py), per job:
- the record of a key and the effect commit together or not at all;
- a key already completed replays its response (`Idempotent-Replayed: true`); a key held by another
  transaction answers 409 `idempotency_key_in_flight`; a key of another request answers 422;
- refusals (insufficient funds, limits, unknown recipient, invalid body) are stored and replayed;
- two jobs with the same key never share a batch: the second waits for the next one and replays.
The Redis fast lock of `@idempotent` is skipped here: the claim statement's advisory lock and unique index
decide in the same round trip, and the batch would otherwise pay two Redis round trips per request.

If a batch fails as a whole (a database error), each of its jobs is retried alone in its own
transaction, so one bad request cannot fail its neighbours; an error of a job alone reaches that client
as a 500, with nothing stored (a retry with the same key runs again). If the database connection breaks
(or cannot be opened), the batch may or may not have committed: every job answers 503
`outcome_unknown` with `Retry-After`, and a retry with the same key replays what committed or
runs what did not. A request that no batch has taken
within LEDGER_GROUP_COMMIT_WAIT_SECONDS (30 s: its committer hangs) leaves the queue and answers 503
`transfer_queue_timeout` with `Retry-After`; nothing of it was done.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from tenants.models import Tenant, User
from wallet.core.bulk import Deferrable, commit_in_pipeline, pipelined_atomic
from wallet.core.context import request_id_var
from wallet.core.errors import PROBLEM_CONTENT_TYPE, ApiError, ServiceUnavailable, problem_body
from wallet.core.jsonutil import dumps
from wallet.idempotency.api import connection_lost, is_storable
from wallet.idempotency.errors import OutcomeUnknown
from wallet.idempotency.services import (
    Claim,
    ClaimRequest,
    Completion,
    StoredResponse,
    idempotency_claims_send,
    idempotency_complete_many,
)
from wallet.ledger.errors import RecipientNotFound
from wallet.ledger.models import TenantAsset, Transfer
from wallet.ledger.selectors import PendingParties, transfer_parties_send
from wallet.ledger.services import TransferRequest, transfers_execute

logger = logging.getLogger("wallet.ledger.groupcommit")

BATCH_MAX = 256
# Batches up to this size run in pipeline mode (see `execute_batch`).
PIPELINE_MAX_JOBS = 64


def wait_seconds() -> float:
    """How long a request waits for a batch to take it before answering 503 (a committer that hangs, e.g.
    on a dead database connection, must not hold every other transfer of the process forever)."""
    return float(getattr(settings, "LEDGER_GROUP_COMMIT_WAIT_SECONDS", 30.0))


def max_committers() -> int:
    """How many committer threads (each with its own database connection) a process runs at most."""
    return max(0, int(getattr(settings, "LEDGER_GROUP_COMMIT_MAX_COMMITTERS", 8)))  # 0: every transfer alone


def idle_seconds() -> float:
    """How long a tenant's committer thread waits for work before it ends (and closes its connection)."""
    return float(getattr(settings, "LEDGER_GROUP_COMMIT_IDLE_SECONDS", 10.0))


class TransferQueueTimeout(ServiceUnavailable):
    code = "transfer_queue_timeout"
    title = "The transfer could not be started in time; retry it with the same Idempotency-Key"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(retry_after=retry_after)
        self.headers["Retry-After"] = str(retry_after)


JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Outcome:
    """What the client gets: a response (fresh or replayed) or an error raised in its thread."""

    status: int = 0
    body: bytes = b""
    content_type: str = ""
    location: str = ""
    replayed: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class TransferOrder:
    """A validated transfer whose recipient is still a text (email or handle): the batch resolves the
    recipients of all its jobs in one query. `policy` is the asset's policy, or the error that looking it
    up gave (answered only when the recipient exists: an unknown recipient is reported first)."""

    sender: User
    recipient: str
    amount: int
    memo: str
    policy: TenantAsset | ApiError


@dataclass(eq=False)
class TransferJob:
    """One `POST /api/v1/transfers`: its key, and the transfer to make (an order) or its refusal."""

    claim: ClaimRequest
    viewer: User
    order: TransferOrder | None = None
    refusal: ApiError | None = None  # found while validating; stored as the key's answer
    request_id: str | None = None
    outcome: Outcome | None = None
    tenant: Tenant | None = None  # set when queued for the committer thread
    ticket: int = 0  # its number with the committer process, when one runs it (wallet/ledger/committer_process.py)
    event: threading.Event = field(default_factory=threading.Event)

    @property
    def identity(self) -> tuple[Any, str]:
        return (self.viewer.pk, self.claim.key)


_datetime = serializers.DateTimeField()


def _render_datetime(value: Any) -> str:
    """`_datetime.to_representation(value)` for an aware datetime, without DRF's per-call lookups (ISO 8601 in
    the current time zone, "Z" for UTC); DRF's own rendering when a project changes its format."""
    if api_settings.DATETIME_FORMAT != ISO_8601 or not settings.USE_TZ or value is None or value.tzinfo is None:
        return _datetime.to_representation(value)
    rendered = value.astimezone(timezone.get_current_timezone()).isoformat()
    return rendered[:-6] + "Z" if rendered.endswith("+00:00") else rendered


def transfer_body(transfer: Transfer, viewer: User) -> dict[str, Any]:
    """What `TransferOutputSerializer(transfer, context={"user": viewer}).data` gives, built directly
    (a test keeps the two equal)."""
    sent = transfer.sender_id == viewer.pk
    other = transfer.recipient if sent else transfer.sender
    return {
        "id": str(transfer.pk),
        "direction": "out" if sent else "in",
        "asset": transfer.asset.code,
        "decimals": transfer.asset.decimals,
        "amount": str(transfer.amount),
        "memo": transfer.memo,
        "status": transfer.status,
        "counterparty": {"id": str(other.pk), "display_name": other.display_name, "handle": other.handle},
        "entry_id": str(transfer.entry_id),
        "created_at": _render_datetime(transfer.created_at),
    }


def _problem(job: TransferJob, error: ApiError) -> Outcome:
    token = request_id_var.set(job.request_id)
    try:
        body = problem_body(code=error.code, status=error.status, title=error.title, detail=error.detail,
                            instance=job.claim.path, extra=error.extra)
    finally:
        request_id_var.reset(token)
    return Outcome(status=error.status, body=dumps(body), content_type=PROBLEM_CONTENT_TYPE)


def _replay(stored: StoredResponse) -> Outcome:
    return Outcome(status=stored.status, body=stored.body, content_type=stored.content_type,
                   location=stored.location, replayed=True)


def execute_batch(tenant: Tenant, jobs: list[TransferJob]) -> list[Outcome]:
    """Claim, execute and store the responses of `jobs` (distinct keys, one tenant) in one transaction.
    Jobs are not changed: a job retried after a failed batch is decided again, in its own transaction.

    Up to PIPELINE_MAX_JOBS jobs, the transaction runs in psycopg's pipeline mode (`bulk.pipelined_atomic`):
    BEGIN, the claim and the parties' query are sent together, then read (one round trip); the ledger locks
    the accounts with the head (one round trip), and its last statement, every write, goes with the COMMIT
    (one round trip), which also leaves pipeline mode (`bulk.commit_in_pipeline`: no closing Sync). Larger
    batches (rare over HTTP) keep COPY for their many rows, which pipeline mode lacks."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    pipelined = len(jobs) <= PIPELINE_MAX_JOBS
    with pipelined_atomic(connection) if pipelined else transaction.atomic():
        _used.raw = connection.connection  # for `_lost`: Django replaces a broken connection as the block ends
        claiming = idempotency_claims_send(tenant=tenant, requests=[job.claim for job in jobs])
        # Sent before the claims are read, for every job (a replay's parties are read for nothing): one round trip.
        parties = _parties_send(tenant, jobs)
        claims = claiming.result()
        fresh: list[tuple[int, Claim]] = []
        for index, claim in enumerate(claims):
            if isinstance(claim, ApiError):
                outcomes[index] = Outcome(error=claim)
            elif claim.stored is not None:
                outcomes[index] = _replay(claim.stored)
            else:
                fresh.append((index, claim))
        decisions, accounts = _decide([jobs[index] for index, _ in fresh], parties)
        decided = {index: decision for (index, _), decision in zip(fresh, decisions, strict=True)}
        to_execute = [index for index, _ in fresh if isinstance(decided[index], TransferRequest)]

        def respond(results: Sequence[Transfer | ApiError], defer: list[Deferrable] | None) -> None:
            """Each fresh job's answer, stored under its key: before the ledger's last statement, which the
            completion joins (no round trip of its own while the ledger head is locked)."""
            result_of = dict(zip(to_execute, results, strict=True))
            completions = []
            for index, claim in fresh:
                job = jobs[index]
                result = result_of.get(index) or decided[index]
                if isinstance(result, ApiError):
                    if not is_storable(result.status):
                        raise RuntimeError(f"unstorable refusal {result.status} in a transfer batch")
                    outcome = _problem(job, result)
                else:
                    assert isinstance(result, Transfer)
                    outcome = Outcome(status=201, body=dumps(transfer_body(result, job.viewer)),
                                      content_type=JSON_CONTENT_TYPE, location=f"/api/v1/transfers/{result.pk}")
                outcomes[index] = outcome
                completions.append(Completion(claim=claim, status=outcome.status, body=outcome.body,
                                              content_type=outcome.content_type, location=outcome.location))
            idempotency_complete_many(completions, defer=defer)

        if to_execute:
            transfers_execute(tenant=tenant, requests=[decided[index] for index in to_execute],  # type: ignore[misc]
                              known_accounts=accounts, before_flush=respond)
        else:
            respond([], None)
        commit_in_pipeline(connection)  # the writes and COMMIT in one round trip
    return outcomes  # type: ignore[return-value]


def _parties_send(tenant: Tenant, jobs: Sequence[TransferJob]) -> PendingParties:
    """The query for the recipients of all the jobs' orders and the parties' existing accounts (read by
    `_decide`)."""
    orders = [job.order for job in jobs if job.refusal is None and job.order is not None]
    return transfer_parties_send(
        tenant=tenant, texts={order.recipient for order in orders},
        asset_ids=[order.policy.asset_id for order in orders if not isinstance(order.policy, ApiError)],
        sender_ids=[order.sender.pk for order in orders])


def _decide(jobs: list[TransferJob], pending: PendingParties
            ) -> tuple[list[TransferRequest | ApiError], dict[tuple[UUID, UUID], UUID]]:
    """Each job's transfer request or refusal (found while validating, an unknown recipient, then the
    asset's), from the parties' query (`_parties_send`, for these jobs or more), and the parties' existing
    account ids (for `transfers_execute`)."""
    if any(job.refusal is None and job.order is None for job in jobs):
        raise ValueError("a transfer job needs an order or a refusal")
    parties = pending.result()
    decisions: list[TransferRequest | ApiError | None] = [job.refusal for job in jobs]
    for position, job in enumerate(jobs):
        order = job.order
        if job.refusal is not None or order is None:
            continue
        recipient = parties.recipients.get(order.recipient)
        if recipient is None:
            decisions[position] = RecipientNotFound()
        elif isinstance(order.policy, ApiError):
            decisions[position] = order.policy
        else:
            decisions[position] = TransferRequest(sender=order.sender, recipient=recipient, asset=order.policy.asset,
                                                  amount=order.amount, memo=order.memo, policy=order.policy)
    return decisions, parties.accounts  # type: ignore[return-value]


class GroupCommitter:
    """The queue of one tenant's transfers in this process, and the thread that commits them.

    The committer thread is started by the first submission and ends after LEDGER_GROUP_COMMIT_IDLE_SECONDS
    without work, closing its database connection. It loops: take every queued job (up to BATCH_MAX, one
    per key), run them in one transaction, answer each, and take the next batch at once. Request threads
    only queue their job and wait: no request thread leads, so no batch waits for a leader to wake, and a
    request is answered as soon as its batch has committed, not after the next batch starts."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[TransferJob] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, tenant: Tenant, job: TransferJob) -> Outcome:
        """Queue `job` and return its outcome once the batch that carried it has committed.

        Inside a transaction of the caller (a service that composes a transfer, or a test), the job runs
        at once, alone, in that transaction: no other request may share a transaction it cannot see
        committed."""
        if connection.in_atomic_block:
            return self._alone(tenant, job)
        if not self.enqueue(tenant, job):  # no committer thread to be had (see `_start`): this one runs alone, here
            return self._alone(tenant, job)
        if not job.event.wait(wait_seconds()):
            with self._cond:
                queued = job in self._queue
                if queued:  # no batch has taken it (the committer hangs): give up, nothing was done
                    self._queue.remove(job)
            if queued:
                return Outcome(error=TransferQueueTimeout(retry_after=1))
            job.event.wait()  # it is in a running batch: that ends
        assert job.outcome is not None
        return job.outcome

    def enqueue(self, tenant: Tenant, job: TransferJob) -> bool:
        """Queue `job` for the committer thread (started if needed) without waiting; False when no thread can
        take it (the caller then runs it alone: `run_alone`). Its outcome is delivered by `_deliver`."""
        job.tenant = tenant
        with self._cond:
            if self._stopping:
                raise RuntimeError("the transfer committer is stopping")
            queued = self._thread is not None or self._start()
            if queued:
                self._queue.append(job)
                self._cond.notify()
        return queued

    def run_alone(self, tenant: Tenant, job: TransferJob, own_connection: bool = False) -> None:
        """Run `job` in the caller's thread, in a transaction of its own, and deliver its outcome
        (`own_connection`: see `_run`)."""
        self._run(tenant, [job], own_connection=own_connection)

    def stop(self, timeout: float | None = None) -> None:
        """Commit what is queued, then end the committer thread (`committers_stop`: the tests)."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)

    def _alone(self, tenant: Tenant, job: TransferJob) -> Outcome:
        self._run(tenant, [job])
        assert job.outcome is not None
        return job.outcome

    def _start(self) -> bool:
        """With the lock held: start the committer thread, unless the process runs LEDGER_GROUP_COMMIT_MAX_COMMITTERS
        already (each holds a database connection: many tenants at once must not exhaust PostgreSQL's
        `max_connections`) or the thread cannot start. Then the caller's job runs alone in its own thread."""
        slots = _committer_slots()
        if not slots.acquire(blocking=False):
            return False
        thread = threading.Thread(target=self._serve, args=(slots,), name="transfer-committer", daemon=True)
        try:
            thread.start()  # it waits for the lock, held here, before it reads anything
        except RuntimeError:
            slots.release()
            logger.exception("could not start a transfer committer thread")
            return False
        self._thread = thread
        return True

    def _take(self) -> list[TransferJob]:
        """Up to BATCH_MAX queued jobs with distinct keys (a duplicate stays queued for the next batch)."""
        batch: list[TransferJob] = []
        kept: deque[TransferJob] = deque()
        seen: set[tuple[Any, str]] = set()
        while self._queue and len(batch) < BATCH_MAX:
            job = self._queue.popleft()
            if job.identity in seen:
                kept.append(job)
            else:
                seen.add(job.identity)
                batch.append(job)
        kept.extend(self._queue)
        self._queue = kept
        return batch

    def _serve(self, slots: threading.BoundedSemaphore) -> None:
        """The committer thread. `slots`: the semaphore its slot was taken from, given back when it ends."""
        me = threading.current_thread()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._queue or self._stopping, idle_seconds())
                    if not self._queue:
                        # Idle (or stopping): from now on a submission starts another thread (or runs alone),
                        # so nothing queues behind this one while it closes its connection.
                        self._thread = None
                        return
                    batch = self._take()
                tenant = batch[0].tenant
                assert tenant is not None
                self._run(tenant, batch, own_connection=True)
        finally:
            try:
                connection.close()
            except Exception:
                logger.exception("closing a transfer committer's database connection failed")
            finally:
                slots.release()
                with self._cond:
                    if self._thread is me:  # it dies abnormally (an exception escaped a batch)
                        self._thread = None
                        if self._queue and not self._start():  # nobody can take them: answer now, nothing done
                            pending, self._queue = list(self._queue), deque()
                            self._deliver(pending, [Outcome(error=TransferQueueTimeout(retry_after=1))
                                                    for _ in pending])

    def _run(self, tenant: Tenant, batch: list[TransferJob], own_connection: bool = False) -> None:
        """Execute `batch` and answer its jobs. `own_connection`: the committer thread's, outside any
        transaction, checked before each transaction as Django checks a request's (one that broke, or
        outlived CONN_MAX_AGE, is closed and the next query opens a new one).

        Its log lines name the tenant and the requests (`request_ids`; a job run alone logs under its own
        request id), so that a failed batch can be traced to the requests it answered."""
        try:
            try:
                if own_connection:
                    connection.close_if_unusable_or_obsolete()
                _used.raw = None
                outcomes = execute_batch(tenant, batch)
            except Exception as exc:
                if _lost(exc, _used.raw):
                    # A connection that broke (or a database that is down) fails every job alike: no retries.
                    # (A deadlock or a lock timeout is an OperationalError too, on a live connection: retried.)
                    logger.exception("transfer batch of %d: the database connection failed", len(batch),
                                     extra=_log_context(tenant, batch))
                    outcomes = [Outcome(error=OutcomeUnknown())] * len(batch)
                elif len(batch) == 1:
                    raise
                else:
                    logger.exception("transfer batch of %d failed; running each alone", len(batch),
                                     extra=_log_context(tenant, batch))
                    outcomes = []
                    for job in batch:
                        token = request_id_var.set(job.request_id)
                        try:
                            if own_connection:
                                connection.close_if_unusable_or_obsolete()
                            _used.raw = None
                            outcomes.extend(execute_batch(tenant, [job]))
                        except Exception as exc:
                            if _lost(exc, _used.raw):
                                logger.exception("a transfer alone: the database connection failed",
                                                 extra=_log_context(tenant, [job]))
                                outcomes.append(Outcome(error=OutcomeUnknown()))
                            else:
                                outcomes.append(Outcome(error=exc))
                        finally:
                            request_id_var.reset(token)
        except BaseException as exc:
            outcomes = [Outcome(error=exc)] * len(batch)
            if not isinstance(exc, Exception):
                self._deliver(batch, outcomes)
                raise
        self._deliver(batch, outcomes)

    def _deliver(self, batch: list[TransferJob], outcomes: list[Outcome]) -> None:
        for job, outcome in zip(batch, outcomes, strict=True):
            job.outcome = outcome
            job.event.set()


def _log_context(tenant: Tenant, batch: Sequence[TransferJob]) -> dict[str, Any]:
    """The `extra` of a batch's log lines: its tenant and its requests' ids (the committer thread has no
    request of its own)."""
    return {"tenant": tenant.slug, "request_ids": [job.request_id for job in batch]}


# The driver connection the current batch of this thread ran on (set by `execute_batch` inside its block).
_used = threading.local()


def _lost(exc: BaseException, used: Any) -> bool:
    """Whether `exc` comes from a database connection that broke or could not be opened; `used` is the
    driver connection the batch ran on (None: the batch never had one)."""
    return isinstance(exc, InterfaceError | OperationalError) and _connection_lost(used)


def _connection_lost(used: Any) -> bool:
    """Whether the driver connection `used` is missing, closed or broke (psycopg's view; no round trip)."""
    return connection_lost(used)


_committers: dict[Any, GroupCommitter] = {}
_committers_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None


def _committer_slots() -> threading.BoundedSemaphore:
    """One slot per committer thread that may run (LEDGER_GROUP_COMMIT_MAX_COMMITTERS, read once)."""
    global _slots
    if _slots is None:
        with _committers_lock:
            if _slots is None:
                _slots = threading.BoundedSemaphore(max_committers())
    return _slots


def _forget_committers() -> None:
    """In a forked child: the parent's committer threads do not exist there."""
    global _committers_lock, _slots
    _committers.clear()
    _committers_lock = threading.Lock()
    _slots = None


os.register_at_fork(after_in_child=_forget_committers)


# What `committer_for` makes: the committer process sets its own kind, which answers over its socket.
committer_factory: Callable[[], GroupCommitter] = GroupCommitter


def committer_for(tenant: Tenant) -> GroupCommitter:
    committer = _committers.get(tenant.pk)
    if committer is None:
        with _committers_lock:
            committer = _committers.get(tenant.pk)
            if committer is None:
                committer = _committers[tenant.pk] = committer_factory()
    return committer


def committers_stop(timeout: float | None = 10.0) -> None:
    """Stop every committer of this process after it commits what is queued, and this process's committer
    process (the tests, after each one)."""
    from wallet.ledger import committer_process

    committer_process.host_stop(timeout)
    with _committers_lock:
        committers = list(_committers.values())
        _committers.clear()
    for committer in committers:
        committer.stop(timeout)


def transfer_submit(*, tenant: Tenant, job: TransferJob) -> Outcome:
    """Run `job` in the next batch of its tenant (see the module docstring): in the committer process when
    LEDGER_GROUP_COMMIT_PROCESS is on (wallet/ledger/committer_process.py), else in a thread of this one."""
    from wallet.ledger import committer_process

    if committer_process.enabled() and not connection.in_atomic_block:
        outcome = committer_process.submit(tenant, job)
        if outcome is not None:
            return outcome
    return committer_for(tenant).submit(tenant, job)
