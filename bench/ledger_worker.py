"""The service workers of bench/ledger.py: processes that call `transfers_execute` directly (no HTTP).

Each worker is a separate process, forked from the parent once Django is set up there and before the
parent opened any database or Redis connection (multiprocessing "fork": it starts at once, without
importing Django again). It calls `django.setup()` itself (a no-op but for logging), drops whatever
connection object it might have inherited without closing the parent's socket, and keeps one persistent
PostgreSQL connection. It takes commands from its queue:

- `run`: until `end_at`, build a batch of `batch` TransferRequests (uniform or zipfian senders and
  recipients over the tenant's bench users), call `transfers_execute` and count the results when it
  returns, i.e. after its transaction committed: a transfer is acknowledged only then. Batches that
  return inside the measured window (`window_start`, `end_at`] count towards the rate.
- `probe`: two warm-up batches, then five with every SQL statement and the commit recorded (kind,
  table, time; how long the ledger head stayed locked); the median one is reported.
- `fund`: `sandbox_fund` each of the given (tenant, user) pairs (setup).
- `stop`: leave.

Times are `time.monotonic()`, which all processes of the machine share.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
import re
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from multiprocessing.queues import Queue
from typing import Any
from uuid import UUID

_ZIPF_CACHE: dict[tuple[int, float], list[float]] = {}


def zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative weights 1/rank^s for ranks 1..n (rank 1 is the hottest account)."""
    key = (n, s)
    if key not in _ZIPF_CACHE:
        _ZIPF_CACHE[key] = list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))
    return _ZIPF_CACHE[key]


def zipf_share(n: int, s: float, top: int) -> float:
    """The share of draws that land on the `top` hottest ranks."""
    cum = zipf_cum_weights(n, s)
    return cum[top - 1] / cum[-1]


class Picker:
    """Random (sender, recipient) pairs of distinct users, uniform or zipfian over the users' ranks."""

    def __init__(self, users: list[Any], mode: str, zipf_s: float, rng: random.Random) -> None:
        self.users = users
        self.rng = rng
        self.mode = mode
        if mode == "zipf":
            self.cum = zipf_cum_weights(len(users), zipf_s)
            self.total = self.cum[-1]

    def _one(self) -> Any:
        if self.mode == "zipf":
            return self.users[bisect.bisect_left(self.cum, self.rng.random() * self.total)]
        return self.users[self.rng.randrange(len(self.users))]

    def pair(self) -> tuple[Any, Any]:
        sender = self._one()
        recipient = self._one()
        while recipient is sender:
            recipient = self._one()
        return sender, recipient


_SQL_KIND = re.compile(r"^\s*(?:WITH\b.*?\)\s*)?(SELECT|INSERT|UPDATE|DELETE|SAVEPOINT|RELEASE|ROLLBACK)", re.I | re.S)
_SQL_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?([a-z_]+)"?', re.I)


def statement_label(sql: str) -> str:
    """`INSERT ledger_posting`, `SELECT ... FOR UPDATE ledger_account`, `SELECT pg_notify`, ..."""
    text = sql.strip()
    if text.startswith("WITH ") and text.endswith(") SELECT 1"):
        return "the batch's writes (bulk.execute_together)"
    if "pg_notify" in text:
        return "SELECT pg_notify"
    if "pg_try_advisory_xact_lock" in text:
        return "claim idempotency key (advisory lock + INSERT)"
    copy = re.match(r'COPY\s+"?([a-z_]+)', text, re.I)
    if copy:
        return f"COPY {copy.group(1)}"
    match = _SQL_KIND.match(text)
    kind = match.group(1).upper() if match else text.split(None, 1)[0].upper()
    if kind in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
        return kind
    table = _SQL_TABLE.search(text)
    label = f"{kind} {table.group(1) if table else '?'}"
    if kind == "INSERT" and "ON CONFLICT" in text.upper():
        label += " ON CONFLICT"
    if kind == "SELECT" and text.upper().rstrip().endswith("FOR UPDATE"):
        label += " FOR UPDATE"
    return label


class SqlRecorder:
    """Records every SQL statement of the default connection (label, start, seconds) and when the
    transaction committed, to tell how long the tenant's ledger head stayed locked.

    The time of a statement is that of Django's `execute` (driver and round trip, without the ORM's query
    building); "in Python" is the rest. In the group commit's pipeline mode (`bulk.pipeline`) an execute
    only sends: the wait for the server falls on the read of its rows, counted as Python here, so "SQL
    execute" undercounts a pipelined batch and "in Python" overcounts it.
    A `COPY` goes around Django's execute wrappers (the outbox writes
    its events with psycopg's `cursor.copy`), so psycopg's `Cursor.copy` is wrapped as well, in this
    process, while the recorder is active: its time runs from opening the COPY to closing it.
    """

    HEAD_LOCK = "SELECT ledger_ledgerhead FOR UPDATE"

    def __init__(self) -> None:
        self.statements: list[tuple[str, float, float]] = []
        self.commit_starts: list[float] = []
        self.commit_ends: list[float] = []

    def __enter__(self) -> SqlRecorder:
        from django.db import connection

        self._connection = connection
        self._wrapper = connection.execute_wrapper(self._record)
        self._wrapper.__enter__()

        import psycopg

        recorder = self
        # psycopg's commit, not Django's: the group commit's pipelined batch commits at psycopg's level
        # (`bulk.commit_in_pipeline`), and Django's commit after it finds no transaction (not timed).
        self._original_commit = original_commit = psycopg.Connection.commit

        def commit(conn: Any) -> Any:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.pgconn.pipeline_status:
                return original_commit(conn)
            recorder.commit_starts.append(time.perf_counter())
            try:
                return original_commit(conn)
            finally:
                recorder.commit_ends.append(time.perf_counter())

        psycopg.Connection.commit = commit  # this process, for the probe's duration

        self._original_copy = original_copy = psycopg.Cursor.copy

        @contextlib.contextmanager
        def copy(cursor: Any, statement: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            started = time.perf_counter()
            try:
                with original_copy(cursor, statement, *args, **kwargs) as copying:
                    yield copying
            finally:
                text = statement if isinstance(statement, str) else str(statement)
                recorder.statements.append((statement_label(text), started, time.perf_counter() - started))

        psycopg.Cursor.copy = copy
        return self

    def __exit__(self, *exc: Any) -> None:
        import psycopg

        psycopg.Cursor.copy = self._original_copy
        psycopg.Connection.commit = self._original_commit
        self._wrapper.__exit__(*exc)

    def _record(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.statements.append((statement_label(sql), started, time.perf_counter() - started))

    def clear(self) -> None:
        self.statements.clear()
        self.commit_starts.clear()
        self.commit_ends.clear()

    def head_held(self) -> float:
        """Seconds from the head lock's statement to the commit (0 if either is missing)."""
        starts = [start for label, start, _ in self.statements if label == self.HEAD_LOCK]
        if not starts or not self.commit_ends:
            return 0.0
        return self.commit_ends[-1] - starts[0]

    def commit_seconds(self) -> float:
        """The COMMIT itself: deferred foreign-key checks, WAL flush and the round trip."""
        return sum(end - start for start, end in zip(self.commit_starts, self.commit_ends, strict=True))

    def head_held_sql(self) -> float:
        """Seconds of SQL execute from the head lock's statement on (while the head is locked)."""
        starts = [start for label, start, _ in self.statements if label == self.HEAD_LOCK]
        if not starts:
            return 0.0
        return sum(seconds for _, start, seconds in self.statements if start >= starts[0])

    def summary(self) -> dict[str, Any]:
        return {"statements": [(label, seconds) for label, _, seconds in self.statements],
                "head_held": self.head_held(), "head_held_sql": self.head_held_sql(),
                "commit": self.commit_seconds()}


def _probe(tenant: Any, requests: list[Any]) -> dict[str, Any]:
    """One `transfers_execute` call with every SQL statement and the commit recorded."""
    from wallet.core.errors import ApiError
    from wallet.ledger.services import transfers_execute

    started = time.perf_counter()
    with SqlRecorder() as recorder:
        outcome = transfers_execute(tenant=tenant, requests=requests)
    elapsed = time.perf_counter() - started
    ok = sum(1 for r in outcome if not isinstance(r, ApiError))
    return {"probe": True, "batch": len(requests), "ok": ok, "elapsed": elapsed, **recorder.summary()}


def _fund(jobs: list[tuple[str, str]], asset: Any, amount: int) -> int:
    """`sandbox_fund` each (tenant id, user id); production settings refuse it, so it is lifted here only."""
    from django.test import override_settings

    from tenants.models import User
    from wallet.ledger.services import sandbox_fund

    users = User.objects.select_related("tenant").in_bulk([user_id for _, user_id in jobs])
    with override_settings(PRODUCTION=False):
        for _, user_id in jobs:
            user = users[UUID(user_id)]
            sandbox_fund(tenant=user.tenant, user=user, asset=asset, amount=amount)
    return len(jobs)


def worker_main(index: int, commands: Queue, results: Queue) -> None:
    import django

    django.setup()
    from django.db import connection, connections

    for inherited in connections.all(initialized_only=True):
        # Never close a connection inherited through fork: that would end the parent's session too.
        inherited.connection = None

    from tenants.models import User
    from wallet.core.errors import ApiError
    from wallet.core.runtime import process_tune
    from wallet.ledger.models import Asset
    from wallet.ledger.services import TransferRequest, transfers_execute

    asset = Asset.objects.get(code="USD")
    users_by_tenant: dict[str, list[Any]] = {}
    process_tune()  # as a production process of the app does once loaded (wallet/wsgi.py)
    results.put({"worker": index, "ready": True})

    def users_of(tenant_id: str) -> tuple[Any, list[Any]]:
        if tenant_id not in users_by_tenant:
            users = list(User.objects.filter(tenant_id=tenant_id, email__startswith="bench-")
                         .select_related("tenant").order_by("email"))
            users_by_tenant[tenant_id] = users
        users = users_by_tenant[tenant_id]
        return users[0].tenant, users

    def batch_of(picker: Picker, size: int, rng: random.Random, amount_max: int) -> list[Any]:
        requests = []
        for _ in range(size):
            sender, recipient = picker.pair()
            requests.append(TransferRequest(sender, recipient, asset, rng.randint(1, amount_max)))
        return requests

    while True:
        command = commands.get()
        if command["op"] == "stop":
            break
        if command["op"] == "fund":
            results.put({"worker": index, "funded": _fund(command["jobs"], asset, command["amount"])})
            continue
        tenant, users = users_of(command["tenant_id"])
        rng = random.Random(command["seed"] * 1000 + index)
        picker = Picker(users, command["mode"], command.get("zipf_s", 1.1), rng)
        size, amount_max = command["batch"], command["amount_max"]

        if command["op"] == "probe":
            warm_ok = 0  # two unrecorded calls first: the recorded one runs with warm caches
            for _ in range(2):
                outcome = transfers_execute(tenant=tenant, requests=batch_of(picker, size, rng, amount_max))
                warm_ok += sum(1 for r in outcome if not isinstance(r, ApiError))
            answers = [_probe(tenant, batch_of(picker, size, rng, amount_max))
                       for _ in range(command.get("repeat", 1))]
            answers.sort(key=lambda a: a["elapsed"])
            median = answers[len(answers) // 2]  # the machine is shared: one call alone may be preempted
            results.put({"worker": index, **median, "ok": sum(a["ok"] for a in answers) + warm_ok,
                         "elapsed_all": [a["elapsed"] for a in answers]})
            continue

        # op == "run"
        while time.monotonic() < command["start_at"]:
            time.sleep(min(0.01, max(0.0, command["start_at"] - time.monotonic())))
        window_start, end_at = command["window_start"], command["end_at"]
        ok_total = ok_window = batches_window = 0
        refused: Counter[str] = Counter()
        errors: list[str] = []
        latencies: list[float] = []
        while time.monotonic() < end_at:
            requests = batch_of(picker, size, rng, amount_max)
            started = time.monotonic()
            try:
                outcome = transfers_execute(tenant=tenant, requests=requests)
            except Exception:  # the batch's transaction rolled back: nothing of it was acknowledged
                errors.append(traceback.format_exc(limit=3))
                connection.close()  # start again on a clean connection
                continue
            done = time.monotonic()
            ok = 0
            for result in outcome:
                if isinstance(result, ApiError):
                    refused[result.code] += 1
                else:
                    ok += 1
            ok_total += ok
            if window_start < done <= end_at:
                ok_window += ok
                batches_window += 1
                latencies.append(done - started)
        results.put({
            "worker": index, "ok_total": ok_total, "ok_window": ok_window, "batches_window": batches_window,
            "refused": dict(refused), "errors": errors, "latencies": latencies, "finished_at": time.monotonic(),
        })
    connections.close_all()
