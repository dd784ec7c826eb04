"""The service workers of bench/ledger.py: processes that call `transfers_execute` directly (no HTTP).

Each worker is a separate process (multiprocessing "spawn": a fresh interpreter, so nothing, and no
database connection, is inherited from the parent), calls `django.setup()` itself and keeps one
persistent PostgreSQL connection. It takes commands from its queue:

- `run`: until `end_at`, build a batch of `batch` TransferRequests (uniform or zipfian senders and
  recipients over the tenant's bench users), call `transfers_execute` and count the results when it
  returns, i.e. after its transaction committed: a transfer is acknowledged only then. Batches that
  return inside the measured window (`window_start`, `end_at`] count towards the rate.
- `probe`: one batch with every SQL statement recorded (kind, table, time), for the per-transfer breakdown.
- `stop`: leave.

Times are `time.monotonic()`, which all processes of the machine share.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
import time
import traceback
from collections import Counter
from multiprocessing.queues import Queue
from typing import Any

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
    if "pg_notify" in text:
        return "SELECT pg_notify"
    if "pg_try_advisory_xact_lock" in text:
        return "claim idempotency key (advisory lock + INSERT)"
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


def _probe(tenant: Any, requests: list[Any]) -> dict[str, Any]:
    """One `transfers_execute` call with every SQL statement recorded: (label, seconds) each."""
    from django.db import connection

    from wallet.core.errors import ApiError
    from wallet.ledger.services import transfers_execute

    statements: list[tuple[str, float]] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append((statement_label(sql), time.perf_counter() - started))

    started = time.perf_counter()
    with connection.execute_wrapper(record):
        outcome = transfers_execute(tenant=tenant, requests=requests)
    elapsed = time.perf_counter() - started
    ok = sum(1 for r in outcome if not isinstance(r, ApiError))
    return {"probe": True, "batch": len(requests), "ok": ok, "elapsed": elapsed, "statements": statements}


def worker_main(index: int, commands: Queue, results: Queue) -> None:
    import django

    django.setup()
    from django.db import connection, connections

    connections.close_all()  # nothing to inherit under spawn; and whatever setup opened is not reused

    from tenants.models import User
    from wallet.core.errors import ApiError
    from wallet.ledger.models import Asset
    from wallet.ledger.services import TransferRequest, transfers_execute

    asset = Asset.objects.get(code="USD")
    users_by_tenant: dict[str, list[Any]] = {}
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
        tenant, users = users_of(command["tenant_id"])
        rng = random.Random(command["seed"] * 1000 + index)
        picker = Picker(users, command["mode"], command.get("zipf_s", 1.1), rng)
        size, amount_max = command["batch"], command["amount_max"]

        if command["op"] == "probe":
            warm_ok = 0  # two unrecorded calls first: the recorded one runs with warm caches
            for _ in range(2):
                outcome = transfers_execute(tenant=tenant, requests=batch_of(picker, size, rng, amount_max))
                warm_ok += sum(1 for r in outcome if not isinstance(r, ApiError))
            answer = _probe(tenant, batch_of(picker, size, rng, amount_max))
            results.put({"worker": index, **answer, "ok": answer["ok"] + warm_ok})
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
