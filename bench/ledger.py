"""Ledger benchmark: money transfers against pgbench's TPC-B-like bank transfer, in one run, same PostgreSQL.

Run it with `make bench-ledger`, which starts PostgreSQL and Redis for it (.ci/with-services). Settings
are the production-style ones of bench-api (`bench.settings`, DEBUG=0, CONN_MAX_AGE=600, see bench/api.py).
In one invocation:

(a) pgbench: `pgbench -i -s 10` into its own database `pgbench` on the same server, then the built-in
    tpcb-like script, `-c 8 -j 2`, three times (before the service runs, between the service and the
    HTTP runs, at the end); the reference is the median. Each TPC-B transaction is one bank transfer.
(b) the transfer service without HTTP: 8 worker processes (bench/ledger_worker.py), each with its own
    connection, call `transfers_execute` with batches of B random transfers in a loop; a transfer counts
    once the call has returned, i.e. after its batch committed. One run per batch size over uniformly
    drawn accounts; then the best size once more and, right after it, over zipfian "hot" accounts.
    Each run: a warm-up, then a measured window; the rate is the transfers of the batches that returned
    within the window, divided by its length. `service` is the mean of the two uniform runs at the best
    size; `hot_ratio` compares the hot run with the uniform run just before it. Before the runs, probes
    of batches of 1 and of the largest size, alone, record every SQL statement and how long the
    tenant's ledger head stays locked.
(c) `POST /api/v1/transfers` (X-App-Key, Bearer token of one of 64 senders, a fresh Idempotency-Key per
    request, JSON body) on granian (WSGI, 2 workers x 32 blocking threads: the production web server) and on
    gunicorn (2 gthread workers x 32 threads), one at a time, with wrk (bench/ledger_transfers.lua, 96
    connections), three maximum runs per server, each right after a pgbench run of its own: the server's
    http_ratio is the median of the three paired ratios (this machine is shared and its speed drifts by
    +-10% or more within minutes: a reference taken minutes away measures the drift as much as the server),
    back to back with the bare Django view on the same server; then, on the same server right after, a
    warm-up and three runs paced at half its maximum, for the p99: the median of the three runs' p99s (the
    better server's counts; one run's p99 is its slowest ~20 requests, which one burst of a neighbour on
    this shared machine decides). 96 connections: the group commit
    answers a request when its batch commits (~10-20 ms under load), so 16 connections cap a server near 16
    / 20 ms whatever its speed (Little's law); a server at ~1,000 req/s has many more clients than that.
    With 64 connections 14-17% of the machine's CPU stayed idle at the maximum (/proc/stat, sixth session):
    the clients, not the server, set the pace; 96 (64 in the app's threads, the rest queued in the server)
    measured 5-10% more. (Earlier runs used 16 connections with 4 sync workers, 2 x 8 and 4 x 4, then 64
    with gunicorn only, 2 x 32 and 4 x 16, then granian.)

Each of (b) uniform, (b) hot and (c) has its own tenant of 1,000 users (senders funded with one
`sandbox_fund` each), so that `manage.py ledger_verify --tenant ...` after each checks that phase only;
then the transfers in the database are compared with the transfers acknowledged (equal for the service;
for HTTP, between the 201s wrk counted and that plus the requests in flight when wrk stopped). pgbench's
own conservation (balances moved by the history's deltas) is checked after each pgbench run. While the
service and HTTP runs go, pg_stat_activity is sampled (lock waits, waiting for Python, fsync...).

The last line printed is

    ledger: service=<tps> pgbench=<tps> ratio=<service/pgbench> hot_ratio=<hot/uniform> http=<req/s>
            http_ratio=<http/pgbench> bare_django=<req/s> p99_ms=<http p99 at half load> verify=ok

(on one line). `pgbench` is the median of the three reference runs, `ratio` the service against it;
`http_ratio` (three decimals: 0.296 must not read as 0.30) is the median of the better server's paired
ratios, each HTTP run against the pgbench run just before it, and `http` the run of that median; `p99_ms`
the median of that server's paced runs' p99s. Exit status
1 if a verification fails or a run had errors (the summary is still printed).

Tunables (environment): BENCH_SECONDS (8, measured seconds per run; a service run at a batch size B above 256
measures, and warms up, B // 256 times as long), BENCH_WARMUP_SECONDS (2),
BENCH_PGBENCH_SECONDS (8), BENCH_PGBENCH_SCALE (10), BENCH_CLIENTS (8: pgbench clients and service
workers), BENCH_BATCH_SIZES (1,16,64,256,1024), BENCH_USERS (1000), BENCH_ZIPF_S (1.1), BENCH_HTTP_SENDERS (64),
BENCH_THREADS (2), BENCH_CONNECTIONS (96), BENCH_HTTP_WORKERS (2), BENCH_HTTP_THREADS (32), BENCH_HTTP_RUNS (3),
BENCH_PACED_RUNS (3),
BENCH_PYSPY_DIR (unset; if set, py-spy raw profiles of worker 0 during each service run and of the
server's workers during the first HTTP maximum run of each server go there: summarise them with
bench/ledger_profile.py; that run is slower and counts like the others. py-spy is a dev tool outside the
lock file: install it into the venv first, `.venv/bin/uv pip install --python .venv/bin/python py-spy`).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import manage, production_env
from bench.harness import (
    ROOT,
    BenchError,
    Servers,
    fail,
    free_port,
    http,
    main_with_servers,
    require_pyspy,
    say,
    stop_on_sigterm,
    wrk,
)
from bench.ledger_worker import worker_main, zipf_share

SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "2"))
PGBENCH_SECONDS = int(os.environ.get("BENCH_PGBENCH_SECONDS", "8"))
PGBENCH_SCALE = int(os.environ.get("BENCH_PGBENCH_SCALE", "10"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
BATCH_SIZES = [int(b) for b in os.environ.get("BENCH_BATCH_SIZES", "1,16,64,256,1024").split(",") if b.strip()]
USERS = int(os.environ.get("BENCH_USERS", "1000"))
ZIPF_S = float(os.environ.get("BENCH_ZIPF_S", "1.1"))
HTTP_SENDERS = int(os.environ.get("BENCH_HTTP_SENDERS", "64"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "96"))
HTTP_WORKERS = int(os.environ.get("BENCH_HTTP_WORKERS", "2"))
HTTP_THREADS = int(os.environ.get("BENCH_HTTP_THREADS", "32"))
PYSPY_DIR = os.environ.get("BENCH_PYSPY_DIR", "")
# Maximum runs of POST /api/v1/transfers per server; the median counts (as pgbench's median of three does).
HTTP_RUNS = max(1, int(os.environ.get("BENCH_HTTP_RUNS", "3")))
# Measured runs at half the maximum per server; the median p99 counts (see `paced_run`).
PACED_RUNS = max(1, int(os.environ.get("BENCH_PACED_RUNS", "3")))

FUNDING = 10_000_000  # smallest units per user ($100,000.00)
AMOUNT_MAX = 100  # transfers are 1..100 cents: insufficient funds stays rare, also for hot senders
LUA_SCRIPT = Path(__file__).resolve().parent / "ledger_transfers.lua"
PYSPY = Path(sys.executable).parent / "py-spy"


def ratio(a: float, b: float) -> float:
    """a / b, or 0 when b is 0 (a run that committed nothing, a probe that saw no head lock)."""
    return a / b if b else 0.0


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- PostgreSQL and pgbench ------------------------------------------------------------------------------


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    bin: Path

    @classmethod
    def from_env(cls) -> Postgres:
        url = urlsplit(os.environ["DATABASE_URL"])
        pg_bin = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
        return cls(url.hostname or "127.0.0.1", url.port or 5432, url.username or "postgres", pg_bin)

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def run(self, tool: str, *args: str, timeout: float = 600) -> str:
        completed = subprocess.run([str(self.bin / tool), *self.args(), *args], capture_output=True, text=True,
                                   timeout=timeout, check=False)
        if completed.returncode != 0:
            raise BenchError(f"{tool} {' '.join(args)} failed ({completed.returncode}):\n"
                             f"{completed.stdout}{completed.stderr}")
        return completed.stdout + completed.stderr


_PGBENCH_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_PGBENCH_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)


def pgbench_init(pg: Postgres) -> None:
    exists = pg.run("psql", "-d", "postgres", "-tAqc", "select 1 from pg_database where datname = 'pgbench'")
    if exists.strip() != "1":
        pg.run("createdb", "pgbench")
    started = time.monotonic()
    pg.run("pgbench", "-i", "-s", str(PGBENCH_SCALE), "-q", "pgbench")
    say(f"pgbench: initialised scale {PGBENCH_SCALE} in {time.monotonic() - started:.1f}s")


def pgbench_sums(pg: Postgres) -> list[int]:
    out = pg.run("psql", "-d", "pgbench", "-tAqc",
                 "select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from "
                 "pgbench_branches), (select sum(tbalance) from pgbench_tellers), "
                 "(select coalesce(sum(delta), 0) from pgbench_history)")
    return [int(v) for v in out.strip().split("|")]


def pgbench_run(pg: Postgres, label: str) -> tuple[float, bool]:
    """One timed run; also checks TPC-B's conservation: the run moved the account, teller and branch
    balances each by the sum of the deltas it wrote to the history (pgbench empties the history first)."""
    before = pgbench_sums(pg)
    out = pg.run("pgbench", "-c", str(CLIENTS), "-j", "2", "-T", str(PGBENCH_SECONDS), "pgbench",
                 timeout=PGBENCH_SECONDS + 120)
    after = pgbench_sums(pg)
    tps_match, latency_match = _PGBENCH_TPS.search(out), _PGBENCH_LATENCY.search(out)
    if tps_match is None:
        raise BenchError(f"cannot read pgbench's tps:\n{out}")
    tps = float(tps_match.group(1))
    latency = latency_match.group(1) if latency_match else "?"
    moved = [a - b for a, b in zip(after[:3], before[:3], strict=True)]
    ok = moved == [after[3]] * 3
    say(f"pgbench {label}: {tps:.0f} tps (tpcb-like, -c {CLIENTS} -j 2 -T {PGBENCH_SECONDS}, "
        f"latency avg {latency} ms), balances moved by {after[3]} = history: "
        f"{'ok' if ok else 'MISMATCH ' + str(moved)}, load {loadavg()}")
    return tps, ok


class WaitSampler:
    """Samples what the app's PostgreSQL backends are doing, every 50 ms, in a thread."""

    def __init__(self, skip_idle: bool = False) -> None:
        self.skip_idle = skip_idle  # leave out backends idle between transactions (e.g. another server's)
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WaitSampler:
        import psycopg

        self._conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        query = ("select state, wait_event_type, wait_event from pg_stat_activity where datname = "
                 "current_database() and backend_type = 'client backend' and pid <> pg_backend_pid()")
        while not self._stop.wait(0.05):
            for state, wait_type, wait_event in self._conn.execute(query).fetchall():
                if state == "idle":
                    if self.skip_idle:
                        continue
                    label = "idle (between transactions)"
                elif state == "idle in transaction":
                    label = "idle in transaction (waiting for Python)"
                elif wait_type is None:
                    label = "active, on CPU"
                else:
                    label = f"active, waiting {wait_type}:{wait_event}"
                self.counts[label] += 1
            self.samples += 1

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._conn.close()

    def summary(self) -> str:
        total = sum(self.counts.values()) or 1
        return ", ".join(f"{label} {100 * n / total:.0f}%" for label, n in self.counts.most_common(6))


# --- the ledger's own checks -------------------------------------------------------------------------------


@dataclass
class BenchTenant:
    slug: str
    tenant: Any
    app_key: str
    users: list[Any]
    senders: int  # the first `senders` users send money (and are funded); all of them receive
    acknowledged: int = 0  # transfers acknowledged to a client (the service returned, or HTTP 201)
    in_flight_max: int = 0  # HTTP: requests that may have committed after wrk stopped waiting for them


def tenant_setup(label: str, senders: int = USERS) -> BenchTenant:
    """A tenant with USD enabled and USERS users (funded later, by the worker pool: `WorkerPool.fund`)."""
    from django.core.management import call_command

    from tenants.models import Tenant
    from tenants.services import user_create
    from wallet.ledger.models import Asset
    from wallet.ledger.services import assets_catalogue_ensure, tenant_asset_enable

    started = time.monotonic()
    slug = f"bench-{label}-{secrets.token_hex(3)}"
    out = io.StringIO()
    call_command("create_tenant", slug, "--name", f"Bench {label}", stdout=out)
    app_key = json.loads(out.getvalue())["app_key"]
    tenant = Tenant.objects.get(slug=slug)
    assets_catalogue_ensure()
    tenant_asset_enable(tenant=tenant, asset=Asset.objects.get(code="USD"))
    # No password: nothing to hash (the HTTP senders get their tokens from session_start).
    users = [user_create(tenant=tenant, email=f"bench-{i:05d}@example.com", password=None) for i in range(USERS)]
    say(f"setup {label}: tenant {slug}, {USERS} users in {time.monotonic() - started:.1f}s")
    return BenchTenant(slug, tenant, app_key, users, min(senders, USERS))


def verify(env: dict[str, str], bench_tenant: BenchTenant, label: str) -> bool:
    from django.db import connections

    from wallet.ledger.models import Transfer

    started = time.monotonic()
    completed = subprocess.run([sys.executable, "manage.py", "ledger_verify", "--tenant", bench_tenant.slug],
                               cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    output = (completed.stdout + completed.stderr).strip()
    ok = completed.returncode == 0
    in_db = Transfer.all_tenants.filter(tenant_id=bench_tenant.tenant.pk).count()
    acked = bench_tenant.acknowledged
    if bench_tenant.in_flight_max:
        counts_ok = acked <= in_db <= acked + bench_tenant.in_flight_max
        rule = f"acknowledged <= in db <= acknowledged + {bench_tenant.in_flight_max} in flight when wrk stopped"
    else:
        counts_ok = in_db == acked
        rule = "in db == acknowledged"
    connections.close_all()  # no idle connection of this process in the next run's samples
    say(f"verify {label}: ledger_verify exit {completed.returncode} ({output.splitlines()[0] if output else ''}) "
        f"in {time.monotonic() - started:.1f}s; transfers in db {in_db}, acknowledged {acked} "
        f"({rule}: {'ok' if counts_ok else 'MISMATCH'})")
    if not ok:
        print(output, file=sys.stderr)
    return ok and counts_ok


# --- the service workers ---------------------------------------------------------------------------------


@dataclass
class ServiceRun:
    label: str
    batch: int
    tps: float
    ok_total: int
    refused: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    waits: str = ""


class WorkerPool:
    def __init__(self, n: int) -> None:
        # fork: the workers start at once with Django already imported; the parent holds no database or
        # Redis connection when it forks (see run()), and each worker opens its own.
        context = multiprocessing.get_context("fork")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(n)]
        self.processes = [context.Process(target=worker_main, args=(i, q, self.results), daemon=True,
                                          name=f"ledger-worker-{i}") for i, q in enumerate(self.commands)]

    def __enter__(self) -> WorkerPool:
        """Starts the workers; they set Django up meanwhile (see `wait_ready`)."""
        self.started = time.monotonic()
        for process in self.processes:
            process.start()
        return self

    def wait_ready(self) -> None:
        self._collect(len(self.processes), timeout=180)
        say(f"service: {len(self.processes)} worker processes ready {time.monotonic() - self.started:.1f}s "
            f"after they were started")

    def fund(self, tenants: list[BenchTenant]) -> None:
        """`sandbox_fund` once per user, FUNDING each; the workers share the users of all tenants (each
        tenant's funding queues on its ledger head, so the tenants are funded side by side)."""
        started = time.monotonic()
        jobs = [(str(t.tenant.pk), str(t.users[i].pk)) for i in range(USERS) for t in tenants if i < t.senders]
        for index, queue in enumerate(self.commands):
            queue.put({"op": "fund", "jobs": jobs[index::len(self.commands)], "amount": FUNDING})
        answers = self._collect(len(self.commands), timeout=600)
        funded = sum(a["funded"] for a in answers)
        if funded != len(jobs):
            raise BenchError(f"funded {funded} of {len(jobs)} users")
        say(f"setup: funded {funded} users ({FUNDING} each, one sandbox_fund per user, "
            f"{' + '.join(str(t.senders) for t in tenants)}, {len(self.commands)} workers) in "
            f"{time.monotonic() - started:.1f}s")

    def __exit__(self, *exc: Any) -> None:
        for queue in self.commands:
            queue.put({"op": "stop"})
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()

    def _collect(self, count: int, timeout: float) -> list[dict[str, Any]]:
        import queue as queue_module

        answers = []
        deadline = time.monotonic() + timeout
        while len(answers) < count:
            dead = [p.name for p in self.processes if not p.is_alive()]
            if dead:
                raise BenchError(f"service worker(s) died: {', '.join(dead)}")
            try:
                answers.append(self.results.get(timeout=max(0.1, min(1.0, deadline - time.monotonic()))))
            except queue_module.Empty:
                if time.monotonic() > deadline:
                    raise BenchError(f"service workers did not answer within {timeout:.0f}s") from None
        return answers

    def probe(self, bench_tenant: BenchTenant, batch: int, mode: str = "uniform") -> None:
        """One batch with every SQL statement recorded, printed as a breakdown per statement kind."""
        self.commands[0].put({"op": "probe", "tenant_id": str(bench_tenant.tenant.pk), "batch": batch,
                              "mode": mode, "zipf_s": ZIPF_S, "seed": secrets.randbits(30),
                              "amount_max": AMOUNT_MAX, "repeat": 5})
        (answer,) = self._collect(1, timeout=300)
        bench_tenant.acknowledged += answer["ok"]
        statements: list[tuple[str, float]] = answer["statements"]
        in_sql = sum(t for _, t in statements)
        held = answer["head_held"]
        say(f"service probe, batch of {batch} ({mode}, alone; the median of 5 calls, which took "
            f"{', '.join(f'{e * 1000:.0f}' for e in answer['elapsed_all'])} ms): {len(statements)} SQL statements "
            f"({len(statements) / batch:.2f} per transfer), {answer['elapsed'] * 1000:.1f} ms in all, "
            f"{in_sql * 1000:.1f} ms in SQL execute (driver + round trip), "
            f"{answer['commit'] * 1000:.1f} ms in COMMIT, "
            f"{(answer['elapsed'] - in_sql - answer['commit']) * 1000:.1f} ms in Python; the tenant's ledger head "
            f"locked for {held * 1000:.1f} ms ({100 * ratio(held, answer['elapsed']):.0f}%): at most "
            f"{ratio(batch, held):.0f} transfers/s per tenant while batches queue on it; of the locked time: "
            f"{answer['head_held_sql'] * 1000:.1f} ms SQL execute, {answer['commit'] * 1000:.1f} ms COMMIT, "
            f"{(held - answer['head_held_sql'] - answer['commit']) * 1000:.1f} ms Python")
        print_statements(statements)

    def run(self, bench_tenant: BenchTenant, batch: int, mode: str, label: str) -> ServiceRun:
        # A batch counts whole when it returns inside the window: past 256 transfers a batch takes seconds,
        # and an 8-s window held 3-4 batches per worker (a rate in steps of B/8 per second, runs 16% apart).
        # Larger batches get a window (and a warm-up) as many times longer as they are larger than 256.
        scale = max(1, batch // 256)
        seconds = SECONDS * scale
        start_at = time.monotonic() + 0.3
        window_start = start_at + WARMUP_SECONDS * scale
        end_at = window_start + seconds
        command = {"op": "run", "tenant_id": str(bench_tenant.tenant.pk), "batch": batch, "mode": mode,
                   "zipf_s": ZIPF_S, "seed": secrets.randbits(30), "amount_max": AMOUNT_MAX,
                   "start_at": start_at, "window_start": window_start, "end_at": end_at}
        for queue in self.commands:
            queue.put(command)
        profiler = None
        with WaitSampler() as sampler:
            time.sleep(max(0.0, window_start - time.monotonic()))
            if PYSPY_DIR:
                profiler = pyspy_start(self.processes[0].pid, f"service-{mode}-b{batch}", seconds)
            sampler.counts.clear()
            time.sleep(max(0.0, end_at - time.monotonic()))
            sampler._stop.set()
        answers = self._collect(len(self.processes), timeout=300 + 60 * batch / 16)
        if profiler is not None:
            profiler.wait()
        ok_window = sum(a["ok_window"] for a in answers)
        latencies = sorted(x for a in answers for x in a["latencies"])
        run = ServiceRun(label=label, batch=batch, tps=ok_window / seconds,
                         ok_total=sum(a["ok_total"] for a in answers),
                         refused=sum((Counter(a["refused"]) for a in answers), Counter()),
                         errors=[e for a in answers for e in a["errors"]], waits=sampler.summary())
        if latencies:
            run.p50_ms = 1000 * statistics.median(latencies)
            run.p99_ms = 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        bench_tenant.acknowledged += run.ok_total
        refused = ", ".join(f"{code} {n}" for code, n in run.refused.items()) or "none"
        say(f"service {label} batch={batch}: {run.tps:.0f} transfers/s ({sum(a['batches_window'] for a in answers)} "
            f"batches in {seconds}s, {len(self.processes)} workers), batch latency p50 {run.p50_ms:.1f} ms "
            f"p99 {run.p99_ms:.1f} ms, refused: {refused}, errors: {len(run.errors)}, load {loadavg()}")
        say(f"    db backends: {run.waits}")
        if run.errors:
            say("    first error: " + run.errors[0].strip().replace("\n", "\n    "))
        return run


def print_statements(statements: list[tuple[str, float]]) -> None:
    per_label: dict[str, list[float]] = {}
    for label, seconds in statements:
        per_label.setdefault(label, []).append(seconds)
    for label, times in sorted(per_label.items(), key=lambda item: -sum(item[1])):
        say(f"    {len(times):3d} x {label:<46} {sum(times) * 1000:7.2f} ms")


def pyspy_start(pid: int, name: str, seconds: int) -> subprocess.Popen[bytes]:
    path = Path(PYSPY_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(PYSPY), "record", "--pid", str(pid), "--subprocesses", "--duration", str(seconds), "--rate", "250",
         "--nonblocking", "--format", "raw", "--output", str(path / f"{name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


# --- HTTP ------------------------------------------------------------------------------------------------


@dataclass
class HttpResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    created: int


def wrk_transfers(base: str, app_key: str, data_file: Path, seconds: int, rate: float = 0,
                  connections: int = CONNECTIONS) -> HttpResult:
    env = dict(os.environ)
    env.update(BENCH_APP_KEY=app_key, BENCH_LEDGER_DATA=str(data_file), BENCH_RUN_ID=secrets.token_hex(6),
               BENCH_AMOUNT_MAX=str(AMOUNT_MAX), BENCH_RATE=str(rate), BENCH_WRK_THREADS=str(THREADS))
    argv = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA_SCRIPT),
            f"{base}/api/v1/transfers"]
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    time.sleep(1)  # wrk leaves up to one request per connection queued in the server: let them finish
    match = re.search(r"^BENCH_RESULT (.*)$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    errors = {k: int(fields[k]) for k in ("connect", "read", "write", "status", "timeout")}
    if any(errors.values()) or int(fields["other"]):
        raise BenchError(f"wrk saw errors on POST /api/v1/transfers: {errors}, non-201 answers "
                         f"{fields['other']}\n{completed.stdout}{completed.stderr}")
    return HttpResult(
        rps=int(fields["requests"]) / (int(fields["duration_us"]) / 1e6),
        p50_ms=float(fields["p50_us"]) / 1000, p90_ms=float(fields["p90_us"]) / 1000,
        p99_ms=float(fields["p99_us"]) / 1000, requests=int(fields["requests"]), created=int(fields["created"]),
    )


def http_probe(bench_tenant: BenchTenant, token: str, recipient: str, count: int = 20) -> None:
    """The HTTP path in this process (Django's test client, same settings, no load): SQL per request. Its
    committer runs in this process even with LEDGER_GROUP_COMMIT_PROCESS on, or there would be no SQL to see."""
    import logging
    import warnings

    from django.test import Client, override_settings

    from bench.ledger_worker import SqlRecorder
    from wallet.ledger import groupcommit

    warnings.filterwarnings("ignore", message="No directory at")  # whitenoise: no collectstatic in bench
    client = Client(HTTP_HOST="127.0.0.1")
    # The app's JSON request log goes to a file meanwhile, as under gunicorn, not into this output.
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr]
    elapsed, held, held_sql, commits = [], [], [], []
    real_batch = groupcommit.execute_batch

    def recorded_batch(tenant: Any, jobs: list[Any]) -> Any:
        # The batch runs on the tenant's committer thread, on that thread's connection: record it there.
        from django.db import connection

        with connection.execute_wrapper(recorder._record):
            return real_batch(tenant, jobs)

    with (tempfile.TemporaryFile("w") as log_file, SqlRecorder() as recorder,
          override_settings(LEDGER_GROUP_COMMIT_PROCESS=False)):
        for handler in handlers:
            handler.setStream(log_file)
        groupcommit.execute_batch = recorded_batch  # this process, for the probe's duration
        try:
            for _ in range(count):
                recorder.clear()
                started = time.perf_counter()
                response = client.post(
                    "/api/v1/transfers", data={"recipient": recipient, "asset": "USD", "amount": "1", "memo": ""},
                    content_type="application/json", HTTP_X_APP_KEY=bench_tenant.app_key,
                    HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_IDEMPOTENCY_KEY=f"probe-{secrets.token_hex(8)}",
                )
                elapsed.append(time.perf_counter() - started)
                held.append(recorder.head_held())
                held_sql.append(recorder.head_held_sql())
                commits.append(recorder.commit_seconds())
                if response.status_code != 201:
                    raise BenchError(f"POST /api/v1/transfers answered {response.status_code}: "
                                     f"{response.content[:500]!r}")
                bench_tenant.acknowledged += 1
        finally:
            groupcommit.execute_batch = real_batch
            for handler in handlers:
                handler.setStream(sys.stderr)
    statements = recorder.summary()["statements"]
    in_sql = sum(t for _, t in statements)
    say(f"http probe (in process, one at a time, {count} requests): {len(statements)} SQL statements per request; "
        f"median {statistics.median(elapsed) * 1000:.1f} ms per request, the ledger head locked for "
        f"{statistics.median(held) * 1000:.1f} ms of it (at most {ratio(1, statistics.median(held)):.0f} req/s per "
        f"tenant: {statistics.median(held_sql) * 1000:.1f} ms SQL execute, {statistics.median(commits) * 1000:.1f} ms "
        f"COMMIT, the rest Python); last request: {elapsed[-1] * 1000:.1f} ms, {in_sql * 1000:.1f} ms in SQL execute")
    print_statements(statements)


def http_phase(servers: Servers, env: dict[str, str], bench_tenant: BenchTenant, work_dir: Path, pg: Postgres
               ) -> tuple[HttpResult, float, float, HttpResult, str, list[tuple[float, bool]]]:
    """Returns the better server's maximum, its ratio to pgbench, its bare_django rate, the paced run, the
    server's name and the paired pgbench runs (tps, conservation ok).

    Each maximum run comes right after a pgbench run of its own (the pair a few seconds apart): this
    machine is shared and its speed drifts by +-10% or more within minutes, so a ratio to a reference
    measured minutes earlier measures the drift as much as the server. A server's ratio is the median of
    its paired ratios, and its maximum the run of that median."""
    from django.db import connections

    from tenants.auth.sessions import session_start

    senders = bench_tenant.users[:bench_tenant.senders]
    tokens = [session_start(user=user, user_agent="bench-ledger").access for user in senders]
    data_file = work_dir / "ledger-http.txt"
    with data_file.open("w") as out:
        for user, token in zip(senders, tokens, strict=True):
            out.write(f"S {user.email} {token}\n")
        for user in bench_tenant.users:
            out.write(f"R {user.email}\n")
    http_probe(bench_tenant, tokens[0], bench_tenant.users[-1].email)
    connections.close_all()

    # The production web server (granian's WSGI interface: HTTP parsed in Rust, the app in a pool of
    # blocking threads, docs/ARCHITECTURE.md), and gunicorn's threaded workers, the same shape, for
    # comparison. Sync workers are not tried: one request at a time each makes batches of one.
    def argv(name: str, port: int) -> list[str]:
        if name.startswith("granian"):
            return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
                    "--port", str(port), "--workers", str(HTTP_WORKERS), "--blocking-threads", str(HTTP_THREADS),
                    "--log-level", "warning", "wallet.wsgi:application"]
        return [sys.executable, "-m", "gunicorn", "--log-level", "warning", "-w", str(HTTP_WORKERS),
                "-k", "gthread", "--threads", str(HTTP_THREADS), "-b", f"127.0.0.1:{port}", "wallet.wsgi:application"]

    kinds = [f"granian{HTTP_WORKERS}x{HTTP_THREADS}", f"gthread{HTTP_WORKERS}x{HTTP_THREADS}"]

    # One server at a time: each thread of a server keeps its own database connection, and two servers of
    # 64 threads would pass PostgreSQL's max_connections (100).
    def start(name: str) -> tuple[Any, str]:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = servers.start(name, argv(name, port), ready_url=f"{base}/bench/bare/")
        status, body = http("POST", f"{base}/api/v1/transfers", json_body={
            "recipient": bench_tenant.users[-1].email, "asset": "USD", "amount": "1", "memo": ""},
            headers={"X-App-Key": bench_tenant.app_key, "Authorization": f"Bearer {tokens[0]}",
                     "Idempotency-Key": f"check-{secrets.token_hex(8)}"})
        if status != 201:
            raise BenchError(f"{server.name}: POST /api/v1/transfers answered {status}: {body[:500]!r}")
        bench_tenant.acknowledged += 1
        return server, base

    results: dict[str, HttpResult] = {}
    ratios: dict[str, float] = {}
    paced: dict[str, HttpResult] = {}

    def paced_run(name: str, base: str, target: float) -> HttpResult:
        """A warm-up at `target` req/s, then PACED_RUNS measured runs at that load: the run of the median p99.

        One run's p99 is decided by its slowest 1% (~20 requests in 8 s at 280 req/s): a neighbour's burst of
        a second on this shared machine decides it alone. The median of three runs, each printed, is robust
        to one such burst and not to a server that is slow at that load, as the maximum's median of three
        paired runs is."""
        # Few enough connections that none idles past the server's keep-alive (gunicorn: 2 s) at low rates, which
        # would close it under wrk (a read error): each connection sends at least every 0.25 s.
        paced_connections = min(CONNECTIONS, max(THREADS, round(target * 0.25)))
        runs: list[HttpResult] = []
        for attempt in range(PACED_RUNS + 1):  # the first is the warm-up
            result = wrk_transfers(base, bench_tenant.app_key, data_file, WARMUP_SECONDS if attempt == 0 else SECONDS,
                                   rate=target, connections=paced_connections)
            bench_tenant.acknowledged += result.created
            bench_tenant.in_flight_max += paced_connections
            if attempt == 0:
                continue
            runs.append(result)
            say(f"http {name} paced at half its maximum, run {attempt}/{PACED_RUNS} ({target:.0f} req/s asked, "
                f"{paced_connections} connections): {result.rps:.0f} req/s achieved, p50 {result.p50_ms:.1f} ms, "
                f"p90 {result.p90_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, load {loadavg()}")
        median = sorted(runs, key=lambda r: r.p99_ms)[(len(runs) - 1) // 2]  # the lower median for an even count
        say(f"http {name} paced at half its maximum: median p99 {median.p99_ms:.1f} ms (of "
            + ", ".join(f"{r.p99_ms:.1f}" for r in runs) + ")")
        return median

    paired_pgbench: list[tuple[float, bool]] = []
    bare: dict[str, float] = {}
    for round_number, name in enumerate(kinds):
        server, base = start(name)
        warm = wrk_transfers(base, bench_tenant.app_key, data_file, WARMUP_SECONDS)
        bench_tenant.acknowledged += warm.created
        bench_tenant.in_flight_max += CONNECTIONS
        # transfers and bare_django back to back, in alternating order (as bench-api does)
        order = ["transfers", "bare"] if round_number % 2 == 0 else ["bare", "transfers"]
        for what in order:
            if what == "transfers":
                maxima: list[tuple[float, HttpResult, float]] = []  # (ratio, run, pgbench tps)
                for attempt in range(1, HTTP_RUNS + 1):
                    reference = pgbench_run(pg, f"paired with {name} run {attempt}/{HTTP_RUNS}")
                    paired_pgbench.append(reference)
                    profiler = None
                    if PYSPY_DIR and attempt == 1:
                        profiler = pyspy_start(server.process.pid, f"http-{name}", SECONDS)
                    with WaitSampler(skip_idle=True) as sampler:
                        result = wrk_transfers(base, bench_tenant.app_key, data_file, SECONDS)
                    if profiler is not None:
                        profiler.wait()
                    bench_tenant.acknowledged += result.created
                    bench_tenant.in_flight_max += CONNECTIONS
                    maxima.append((ratio(result.rps, reference[0]), result, reference[0]))
                    say(f"http {name} POST /api/v1/transfers, run {attempt}/{HTTP_RUNS}: {result.rps:.0f} req/s "
                        f"({result.created} x 201, {ratio(result.rps, reference[0]):.3f} of the pgbench run just "
                        f"before), p50 {result.p50_ms:.1f} ms, p90 {result.p90_ms:.1f} ms, p99 {result.p99_ms:.1f} ms "
                        f"(wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s), load {loadavg()}")
                    say(f"    db backends in a transaction: {sampler.summary()}")
                # The run of the median paired ratio stands for the server (the lower median for an even count).
                median_ratio, results[name], _ = sorted(maxima, key=lambda m: m[0])[(len(maxima) - 1) // 2]
                ratios[name] = median_ratio
                say(f"http {name} POST /api/v1/transfers: median ratio {median_ratio:.3f} ("
                    + ", ".join(f"{r.rps:.0f}/{tps:.0f}" for _, r, tps in maxima)
                    + f" req/s per pgbench tps), its run {results[name].rps:.0f} req/s")
            else:
                result_bare = wrk(f"{base}/bench/bare/", threads=THREADS, connections=CONNECTIONS, seconds=SECONDS)
                bare[name] = result_bare.requests_per_second
                say(f"http {name} bare_django GET /bench/bare/: {result_bare.requests_per_second:.0f} req/s, "
                    f"p99 {result_bare.p99_ms:.1f} ms")
        # Half of this server's maximum, on the same server right after it: half of a maximum taken minutes
        # earlier is no longer half when the machine's speed has drifted meanwhile.
        paced[name] = paced_run(name, base, results[name].rps / 2)
        servers.stop(server)

    best = max(ratios, key=lambda name: ratios[name])
    servers.close()
    return results[best], ratios[best], bare[best], paced[best], best, paired_pgbench


# --- the run ---------------------------------------------------------------------------------------------


def run(servers: Servers, work_dir: Path) -> int:
    started = time.monotonic()
    require_pyspy(PYSPY_DIR, PYSPY)
    env = production_env()
    os.environ.update(env)  # this process and the forked workers use the bench settings too
    servers.env = env
    say(f"bench-ledger: load average at start {loadavg()} ({os.cpu_count()} cores)")
    manage(env, "migrate", "--noinput")
    pg = Postgres.from_env()
    pgbench_init(pg)

    import django

    django.setup()
    from django.db import connections

    all_ok = True
    with WorkerPool(CLIENTS) as pool:
        tenants = [tenant_setup("uniform"), tenant_setup("hot"), tenant_setup("http", senders=HTTP_SENDERS)]
        uniform, hot, web = tenants
        connections.close_all()
        pool.wait_ready()
        pool.fund(tenants)
        say(f"zipf s={ZIPF_S} over {USERS} users: the hottest account is in "
            f"{100 * zipf_share(USERS, ZIPF_S, 1):.0f}% of the draws, the top 10 in "
            f"{100 * zipf_share(USERS, ZIPF_S, 10):.0f}%, the top 100 in {100 * zipf_share(USERS, ZIPF_S, 100):.0f}%")

        pgbench_results = [pgbench_run(pg, "run 1/3")]
        for batch in sorted({1, max(BATCH_SIZES)}):
            pool.probe(uniform, batch)
        runs = [pool.run(uniform, batch, "uniform", "uniform") for batch in BATCH_SIZES]
        best_batch = max(runs, key=lambda r: r.tps).batch
        say("service per batch size: " + ", ".join(f"{r.batch}: {r.tps:.0f}" for r in runs)
            + f" transfers/s; best batch size {best_batch}")
        # The best size once more, and the hot run right after it: the hot/uniform ratio compares two
        # runs a few seconds apart (the machine's load drifts).
        again = pool.run(uniform, best_batch, "uniform", "uniform, best size again")
        hot_run = pool.run(hot, best_batch, "zipf", f"hot (zipf s={ZIPF_S})")
        all_ok &= verify(env, uniform, "uniform")
        all_ok &= verify(env, hot, "hot")
        had_errors = any(r.errors for r in [*runs, again, hot_run])
    connections.close_all()
    best_runs = [r for r in runs if r.batch == best_batch] + [again]
    service = statistics.mean(r.tps for r in best_runs)

    pgbench_results.append(pgbench_run(pg, "run 2/3"))
    http_best, http_ratio, bare_django, paced, server_name, paired = http_phase(servers, env, web, work_dir, pg)
    all_ok &= all(ok for _, ok in paired)
    all_ok &= verify(env, web, "http")
    connections.close_all()
    pgbench_results.append(pgbench_run(pg, "run 3/3"))
    all_ok &= all(ok for _, ok in pgbench_results)
    pgbench_tps = [tps for tps, _ in pgbench_results]

    reference = statistics.median(pgbench_tps)
    say(f"pgbench runs: {', '.join(f'{t:.0f}' for t in pgbench_tps)} tps; reference (median) {reference:.0f}")
    say(f"service: batch size {best_batch}, {service:.0f} transfers/s (mean of "
        f"{' and '.join(f'{r.tps:.0f}' for r in best_runs)}), ratio {ratio(service, reference):.3f}; hot: "
        f"{hot_run.tps:.0f} transfers/s at batch size {best_batch}, {ratio(hot_run.tps, again.tps):.3f} of the uniform "
        f"run just before it")
    say(f"http: {server_name}, {http_best.rps:.0f} req/s, {http_ratio:.3f} of the pgbench run just before it "
        f"(the median of {HTTP_RUNS} pairs), p99 at the maximum "
        f"{http_best.p99_ms:.1f} ms; paced at {paced.rps:.0f} req/s: p99 {paced.p99_ms:.1f} ms (the median of "
        f"{PACED_RUNS} runs)")
    say(f"bench-ledger took {time.monotonic() - started:.0f}s; load average at the end {loadavg()}")
    verdict = "ok" if all_ok else "FAILED"
    say(f"ledger: service={service:.0f} pgbench={reference:.0f} ratio={ratio(service, reference):.2f} "
        f"hot_ratio={ratio(hot_run.tps, again.tps):.2f} http={http_best.rps:.0f} "
        f"http_ratio={http_ratio:.3f} "
        f"bare_django={bare_django:.0f} p99_ms={paced.p99_ms:.1f} verify={verdict}")
    if had_errors:
        fail("some service batches raised errors (see the 'first error' lines above)")
    return 0 if all_ok and not had_errors else 1


def main() -> int:
    stop_on_sigterm()
    return main_with_servers("bench-ledger-", run)


if __name__ == "__main__":
    sys.exit(main())
