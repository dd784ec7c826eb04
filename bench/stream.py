"""Stream benchmark: real websocket clients on one stream process, fed by real ledger transfers and tenant events.

Run it with `make bench-stream` (`.ci/with-services .venv/bin/python bench/stream.py`), which starts
PostgreSQL and Redis on loopback and passes DATABASE_URL and REDIS_URL. Everything talks to 127.0.0.1.

What runs (production settings, `bench.settings` as in bench/api.py, DEBUG=0, CONN_MAX_AGE=600):

- ONE stream process: `uvicorn wallet.asgi:application --ws websockets-sansio --ws-per-message-deflate false
  --ws-ping-interval 0 --lifespan off --log-level warning --no-access-log --backlog 4096` (the production flags
  of docs/STREAM.md, `wallet.events.conf.STREAM_UVICORN_FLAGS`), its RSS read from /proc/<pid>/status;
- one `manage.py relay_outbox` process (LISTEN/NOTIFY, pipelined publishes on the pub/sub layer);
- CLIENT processes (bench/stream_client.py, multiprocessing spawn), each an asyncio (uvloop) loop holding its
  share of the sockets, offering permessage-deflate as browsers do (the server declines it): `X-App-Key` and
  `Authorization: Bearer` headers, subscribe to balances, transactions
  and branding, check that each stream's seqs are contiguous from the announced position;
- this process: the setup (tenant, users and sessions in bulk, tokens from `issue_access_token`, funds), the
  latency driver (`transfers_execute` batches) and the tenant-wide bursts (`events_emit` of
  `branding.released` on the tenant stream), and the measurements.

Phases (each with its own stream and relay processes; all sockets are closed between phases):

1. server comparison, `wsproto`: the pub/sub layer with `--ws wsproto` (if the wsproto package is installed):
   memory and CPU per delivery at LAYER_SOCKETS sockets;
2. layer comparison, `core`: the same as the main phase's first step (LAYER_SOCKETS sockets, bursts, latency)
   with the channels_redis core layer (bench/stream_settings_core.py: capacity and max_connections raised)
   instead of the pub/sub layer;
3. main, `pubsub` (the production design: pub/sub layer, one hub channel per process): 1k, then 5k, then 10k
   sockets, keeping the sockets of the previous size.

At each size: connect the new sockets (all must be `ready`, `subscribed`, `snapshot`); memory: the server's
RSS with N sockets minus its RSS with none (after a warm-up socket), divided by N, measured after the
connects and again after the bursts (the summary uses the larger); deliveries: BURSTS bursts of K
`branding.released` events committed in one transaction, each reaching all N sockets (K = BURST_DELIVERIES /
N), rate = N*K / (last receipt - commit), median of the bursts; latency (at 1k, and at the largest size):
for LATENCY_SECONDS (after a 2 s warm-up), one `transfers_execute` batch every 100 ms between distinct users
of the first 1,000, so that each of them receives EVENTS_PER_USER events a second (a transfer brings each of
its two users a `transfer.completed` and an `account.balance_changed`: at 1 event/s, 250 transfers/s in
batches of 25, each user in one transfer every 2 s); commit time = `time.time()` right after
`transfers_execute` returns, receipt time = `time.time()` in the client when the message is parsed; p50/p99
over both sockets of every transfer (late receipts are waited for and count with their real times). A
PSUBSCRIBE tap on Redis splits the latency into commit -> publish (the relay) and publish -> receipt (the
stream process). Gaps: seqs missing or duplicated within each socket, plus, at the end of each phase (after
waiting for stragglers), events a socket never got (its last seq against the stream heads in the database).
Also printed: the server's CPU per connect and per delivery (/proc), the client processes' CPU, the GC pauses
of the stream process (bench/stream_server.py runs uvicorn's own CLI with a gc callback) and the objects it
tracks per socket.

Last line printed:

    stream: sockets=<max held> kb_per_socket=<n> deliveries_per_s=<n> p99_ms=<at 1k users, 1 event/s each> gaps=<n>

from the main phase: the largest size with every socket held, the KB per socket and the delivery rate at
that size, the p99 at 1k, and the gaps of the main phase.

Tunables (environment): BENCH_STREAM_SIZES (1000,5000,10000), BENCH_STREAM_CLIENTS (4 client processes),
BENCH_STREAM_BURST_DELIVERIES (50000 per burst), BENCH_STREAM_BURSTS (3), BENCH_STREAM_LATENCY_SECONDS (30),
BENCH_STREAM_LATENCY_USERS (1000), BENCH_STREAM_LAYER_SOCKETS (1000), BENCH_STREAM_VARIANTS (core,wsproto;
empty: main phase only), BENCH_STREAM_COMPRESSION (1: clients offer permessage-deflate, as browsers do; 0:
they do not), BENCH_STREAM_CONNECT_CONCURRENCY (32 handshakes in flight per client process), BENCH_PYSPY_DIR
(unset; if set, py-spy raw profiles of the stream process during the connects, bursts and latency run at
the largest size of each phase; BENCH_PYSPY: the py-spy binary, default beside the venv's python). The stream
process tunes its own garbage collector (`wallet.events.hub.GcPolicy`). Diagnosis only:
BENCH_STREAM_GC_FREEZE=1 (the server calls gc.freeze() after loading the app), BENCH_STREAM_GC_THRESHOLD=a,b,c
(the server calls gc.set_threshold(a, b, c)), BENCH_STREAM_TRACEMALLOC=1 (per-socket allocations by source
line; slows everything down).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import multiprocessing
import os
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import manage, production_env
from bench.harness import (
    ROOT,
    BenchError,
    Server,
    Servers,
    fail,
    free_port,
    require_pyspy,
    say,
    stop_on_sigterm,
    tail,
)

SIZES = [int(s) for s in os.environ.get("BENCH_STREAM_SIZES", "1000,5000,10000").split(",") if s.strip()]
CLIENTS = int(os.environ.get("BENCH_STREAM_CLIENTS", "4"))
BURST_DELIVERIES = int(os.environ.get("BENCH_STREAM_BURST_DELIVERIES", "50000"))
BURSTS = int(os.environ.get("BENCH_STREAM_BURSTS", "3"))
LATENCY_SECONDS = int(os.environ.get("BENCH_STREAM_LATENCY_SECONDS", "30"))
LATENCY_USERS = int(os.environ.get("BENCH_STREAM_LATENCY_USERS", "1000"))
EVENTS_PER_USER = float(os.environ.get("BENCH_STREAM_EVENTS_PER_USER", "1"))
LAYER_SOCKETS = int(os.environ.get("BENCH_STREAM_LAYER_SOCKETS", "1000"))
VARIANTS = [v for v in os.environ.get("BENCH_STREAM_VARIANTS", "core,wsproto").split(",") if v.strip()]
COMPRESSION = os.environ.get("BENCH_STREAM_COMPRESSION", "1") == "1"
CONNECT_CONCURRENCY = int(os.environ.get("BENCH_STREAM_CONNECT_CONCURRENCY", "32"))
PYSPY_DIR = os.environ.get("BENCH_PYSPY_DIR", "")

TICK_SECONDS = 0.1  # the latency driver commits one batch per tick
FUNDING = 10_000_000  # smallest units per funded user; transfers move 1
LATENCY_WARMUP_SECONDS = 2
BURST_TIMEOUT_SECONDS = 60
TAIL_WAIT_SECONDS = 60
TAIL_STALL_SECONDS = 10
STALL_MS = 250
PYSPY = Path(os.environ.get("BENCH_PYSPY", str(Path(sys.executable).parent / "py-spy")))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- processes: /proc figures ----------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def established(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is `port` (the server's side of the sockets)."""
    wanted = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split(None, 4)
                if parts[1].endswith(wanted) and parts[3] == "01":
                    count += 1
    return count


def fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]


# --- clients ---------------------------------------------------------------------------------------------


class ClientPool:
    """CLIENTS processes of bench/stream_client.py; user i's socket lives in process i % CLIENTS."""

    def __init__(self, count: int) -> None:
        from bench.stream_client import client_main

        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=client_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def call(self, command: tuple, per_client: list[tuple] | None = None, timeout: float = 600) -> list[Any]:
        commands = per_client or [command] * len(self.pipes)
        answers = []
        try:
            for pipe, item in zip(self.pipes, commands, strict=True):
                pipe.send(item)
            deadline = time.monotonic() + timeout
            for index, pipe in enumerate(self.pipes):
                if not pipe.poll(max(0.0, deadline - time.monotonic())):
                    raise BenchError(f"client {index} did not answer {command[0]} within {timeout:.0f}s")
                status, answer = pipe.recv()
                if status != "ok":
                    raise BenchError(f"client {index} failed {command[0]}: {answer}")
                answers.append(answer)
        except (OSError, EOFError) as exc:
            raise BenchError(f"a client process is gone ({type(exc).__name__}: {exc})") from exc
        return answers

    def connect(self, url: str, app_key: str, users: list[tuple[int, str]]) -> tuple[int, dict[str, int], float]:
        shares: list[list[tuple[int, str]]] = [[] for _ in self.pipes]
        for index, token in users:
            shares[index % len(shares)].append((index, token))
        compression = "deflate" if COMPRESSION else None
        answers = self.call(("connect",), [("connect", url, app_key, share, CONNECT_CONCURRENCY, compression)
                                           for share in shares])
        errors: dict[str, int] = {}
        for _, client_errors, _ in answers:
            for key, count in client_errors.items():
                errors[key] = errors.get(key, 0) + count
        return sum(a[0] for a in answers), errors, max(a[2] for a in answers)

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {"open": 0, "events": 0, "missing": 0, "duplicates": 0, "unexpected_closes": {},
                                 "errors": {}, "bursts": {}}
        for answer in self.call(("stats",)):
            for key in ("open", "events", "missing", "duplicates"):
                total[key] += answer[key]
            for key in ("unexpected_closes", "errors"):
                for name, count in answer[key].items():
                    total[key][name] = total[key].get(name, 0) + count
            for burst, (count, first, last) in answer["bursts"].items():
                entry = total["bursts"].setdefault(burst, [0, first, last])
                entry[0] += count
                entry[1] = min(entry[1], first)
                entry[2] = max(entry[2], last)
        return total

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def rss_kb(self) -> int:
        return sum(rss_kb(p.pid) for p in self.processes)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()


class Tap:
    """A process PSUBSCRIBEd to the pub/sub layer's user-group channels (bench/stream_client.py: tap_main)."""

    def __init__(self, pattern: str) -> None:
        from bench.stream_client import tap_main

        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=tap_main, args=(child, os.environ["REDIS_URL"], pattern), daemon=True)
        self.process.start()
        child.close()

    def take(self) -> list[tuple[str, float]]:
        self.pipe.send(("take",))
        if not self.pipe.poll(60):
            raise BenchError("the Redis tap did not answer")
        return self.pipe.recv()[1]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pipe.send(("stop",))
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# --- setup (Django) --------------------------------------------------------------------------------------


@dataclass
class Population:
    slug: str
    tenant: Any
    app_key: str
    users: list[Any]
    tokens: list[str]
    asset: Any


def populate(count: int, funded: int) -> Population:
    """A tenant with USD and `count` users, each with a live session and an access token; the first `funded`
    funded (the latency driver's users)."""
    from django.core.management import call_command
    from django.db import transaction

    from tenants.auth.jwt import issue_access_token
    from tenants.models import AuthSession, Tenant, User, login_key
    from wallet.ledger.engine import EntryDraft, Leg, apply_single
    from wallet.ledger.models import Account, Asset, JournalEntry
    from wallet.ledger.services import (
        assets_catalogue_ensure,
        system_account,
        tenant_asset_enable,
        user_accounts_ensure,
    )

    started = time.monotonic()
    slug = f"bench-stream-{secrets.token_hex(3)}"
    out = io.StringIO()
    call_command("create_tenant", slug, "--name", "Bench stream", stdout=out)
    app_key = json.loads(out.getvalue())["app_key"]
    tenant = Tenant.objects.get(slug=slug)
    assets_catalogue_ensure()
    usd = Asset.objects.get(code="USD")
    tenant_asset_enable(tenant=tenant, asset=usd)
    # In bulk: users without a password (nothing to hash), one session each, access tokens signed here
    # exactly as session_start does (a session needs no refresh token for its access tokens to be valid).
    users = []
    for i in range(count):
        user = User(tenant=tenant, email=f"stream-{i:05d}@bench.example")
        user.username = login_key(tenant.pk, user.email)
        user.set_unusable_password()
        users.append(user)
    User.objects.bulk_create(users, batch_size=2000)
    sessions = [AuthSession(tenant_id=tenant.pk, user=user, user_agent="bench-stream") for user in users]
    AuthSession.all_tenants.bulk_create(sessions, batch_size=2000)
    tokens = [issue_access_token(user_id=str(user.pk), tenant_id=str(tenant.pk), session_id=str(session.pk),
                                 auth_epoch=user.auth_epoch)[0] for user, session in zip(users, sessions, strict=True)]
    made = time.monotonic() - started
    # The latency driver's users get funds in ONE journal entry from the sandbox account (what sandbox_fund
    # posts, but for all of them at once: one sandbox_fund per user took 10 s for 1,000 users).
    with transaction.atomic():
        if not funded:
            return Population(slug, tenant, app_key, users, tokens, usd)
        external = system_account(tenant=tenant, asset=usd, kind=Account.Kind.EXTERNAL, rail="sandbox")
        targets = user_accounts_ensure(tenant=tenant, pairs=[(user.pk, usd.pk) for user in users[:funded]])
        legs = [Leg(account, FUNDING) for account in targets.values()]
        apply_single(tenant, EntryDraft(kind=JournalEntry.Kind.FUNDING, memo="bench-stream funding",
                                        legs=[Leg(external.pk, -FUNDING * len(legs)), *legs]))
    say(f"setup: tenant {slug}, {count} users with sessions and tokens in {made:.1f}s, {funded} funded in "
        f"{time.monotonic() - started - made:.1f}s")
    return Population(slug, tenant, app_key, users, tokens, usd)


def stream_heads(population: Population) -> dict[str, int]:
    from wallet.events.models import StreamCursor

    rows = StreamCursor.all_tenants.filter(tenant_id=population.tenant.pk).values_list("stream", "last_seq")
    return dict(rows)


def emit_burst(population: Population, burst: int, count: int) -> float:
    """`count` tenant-wide events in one transaction; returns the time right after the commit."""
    from django.db import transaction

    from wallet.events.services import EventSpec, events_emit
    from wallet.events.streams import tenant_stream

    stream = tenant_stream(population.tenant.pk)
    events = [EventSpec(stream=stream, type="branding.released",
                        data={"burst": burst, "i": i, "version": burst * 1000 + i, "theme": "bench"})
              for i in range(count)]
    with transaction.atomic():
        events_emit(tenant=population.tenant, events=events)
    return time.time()


def drive_transfers(population: Population, users_count: int, seconds: float) -> dict[str, Any]:
    """Transfers between distinct users of the first `users_count`, so that each of them receives
    EVENTS_PER_USER events a second: a transfer brings each of its two users a `transfer.completed` and an
    `account.balance_changed`, so each user is in one transfer every 2 / EVENTS_PER_USER seconds. One
    `transfers_execute` batch per TICK_SECONDS (a batch that runs late is followed at once by the next).
    Returns the commit time of every transfer (`time.time()` right after `transfers_execute` returned), the
    refusals, the achieved rate and the batch durations."""
    from wallet.core.errors import ApiError
    from wallet.ledger.services import TransferRequest, transfers_execute

    users = population.users[:users_count]
    per_tick = max(1, round(len(users) * EVENTS_PER_USER / 4 * TICK_SECONDS))  # transfers per batch
    ticks_per_round = max(1, len(users) // (2 * per_tick))  # a round: every user in one transfer
    rng = random.Random(7)
    commits: dict[str, float] = {}
    durations: list[float] = []
    refused = 0
    started = time.monotonic()
    tick = 0
    order: list[Any] = []
    while True:
        due = started + tick * TICK_SECONDS
        if due - started >= seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        slot = tick % ticks_per_round
        if slot == 0:
            order = users[:]
            rng.shuffle(order)
        group = order[slot * 2 * per_tick:(slot + 1) * 2 * per_tick]
        requests = [TransferRequest(sender=group[2 * j], recipient=group[2 * j + 1], asset=population.asset,
                                    amount=1) for j in range(len(group) // 2)]
        began = time.monotonic()
        results = transfers_execute(tenant=population.tenant, requests=requests)
        committed = time.time()
        durations.append(time.monotonic() - began)
        for result in results:
            if isinstance(result, ApiError):
                refused += 1
            else:
                commits[str(result.pk)] = committed
        tick += 1
    elapsed = time.monotonic() - started
    return {"commits": commits, "refused": refused, "tps": len(commits) / elapsed, "per_batch": per_tick,
            "batch_p50_ms": 1000 * percentile(durations, 0.5), "batch_max_ms": 1000 * max(durations, default=0)}


# --- one stream process and its relay ----------------------------------------------------------------------


@dataclass
class SizeResult:
    sockets: int
    held: bool
    connect_seconds: float
    kb_after_connect: float
    kb_after_bursts: float
    rates: list[float] = field(default_factory=list)
    server_us_per_delivery: float = float("nan")
    client_us_per_delivery: float = float("nan")
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def kb_per_socket(self) -> float:
        return max(self.kb_after_connect, self.kb_after_bursts)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


@dataclass
class PhaseResult:
    name: str
    sizes: list[SizeResult] = field(default_factory=list)
    gaps: int = 0
    tail_missing: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    baseline_kb: int = 0


class Phase:
    """One stream process (and relay) configuration, measured at growing socket counts."""

    burst_counter = 0

    def __init__(self, name: str, *, settings: str, ws: str, sizes: list[int], latency_at: set[int],
                 population: Population, clients: ClientPool, log_dir: Path, profile: bool = False) -> None:
        self.name, self.settings, self.ws, self.sizes = name, settings, ws, sizes
        self.latency_at, self.population, self.clients, self.log_dir = latency_at, population, clients, log_dir
        self.profile = profile
        self.result = PhaseResult(name)
        self.tap: Tap | None = None
        self.gc_file: Path | None = None
        self._gc_seen: dict[str, dict[str, float]] = {}

    def ask_server(self, request: str, timeout: float = 30) -> dict[str, Any]:
        """A request to bench/stream_server.py (census of tracked objects, tracemalloc snapshot)."""
        if self.gc_file is None:
            return {}
        answer = self.gc_file.with_suffix(".answer")
        answer.unlink(missing_ok=True)
        self.gc_file.with_suffix(".request").write_text(request)
        deadline = time.monotonic() + timeout
        while not answer.exists():
            if time.monotonic() > deadline:
                return {"error": "no answer"}
            time.sleep(0.1)
        return json.loads(answer.read_text())

    def census(self, size: int) -> None:
        """Tracked objects in the stream process (what a full collection walks), per socket over the baseline."""
        answer = self.ask_server("census")
        if "tracked" not in answer:
            return
        total = sum(answer["tracked"].values())
        types = dict(answer["types"])
        if size == 0:
            self._census_base = (total, types)
            say(f"[{self.name}] objects tracked by the GC with 0 sockets: {total} (frozen {answer['frozen']})")
            return
        base_total, base_types = getattr(self, "_census_base", (0, {}))
        grown = sorted(((count - base_types.get(name, 0), name) for name, count in types.items()), reverse=True)
        say(f"[{self.name}] {size} sockets: objects tracked by the GC {total} ({(total - base_total) / size:.0f} per "
            f"socket; frozen {answer['frozen']}); most common types, per socket: "
            + ", ".join(f"{name} {count / size:.1f}" for count, name in grown[:8]))
        self.tracemalloc_diff(size)

    def tracemalloc_diff(self, size: int) -> None:
        if os.environ.get("BENCH_STREAM_TRACEMALLOC") != "1":
            return
        import tracemalloc

        path = self.log_dir / f"tracemalloc-{self.name}-{size}.snap"
        self.ask_server(f"snapshot {path}", timeout=300)
        if size == 0:
            self._snapshot_base = path
            return
        diff = tracemalloc.Snapshot.load(str(path)).compare_to(tracemalloc.Snapshot.load(str(self._snapshot_base)),
                                                                "lineno")
        total = sum(d.size_diff for d in diff)
        say(f"[{self.name}] {size} sockets, tracemalloc: {total / size / 1024:.1f} KB per socket allocated by Python; "
            f"the largest sources:")
        for item in diff[:25]:
            frame = item.traceback[0]
            say(f"    {item.size_diff / size:8.0f} B/socket  {item.count_diff / size:5.1f} blocks  "
                f"{frame.filename.replace(str(ROOT), '.')}:{frame.lineno}")

    def gc_pauses(self) -> str:
        """The stream process's garbage-collector pauses since the last call (bench/stream_server.py)."""
        time.sleep(0.6)  # the server writes its totals twice a second
        try:
            now = json.loads(self.gc_file.read_text()) if self.gc_file else {}
        except (OSError, ValueError):
            return "GC pauses unknown"
        parts = []
        for generation in ("0", "1", "2"):
            current = now.get(generation, {"count": 0, "total_ms": 0.0, "max_ms": 0.0})
            before = self._gc_seen.get(generation, {"count": 0, "total_ms": 0.0})
            count = current["count"] - before["count"]
            total = current["total_ms"] - before["total_ms"]
            parts.append(f"gen{generation} {count} x {total:.0f} ms")
        self._gc_seen = now
        gen2 = now.get("2", {}).get("max_ms", 0.0)
        return "GC pauses: " + ", ".join(parts) + f" (longest gen2 pause so far {gen2:.0f} ms)"

    def run(self) -> PhaseResult:
        env = dict(os.environ, DJANGO_SETTINGS_MODULE=self.settings)
        servers = Servers(self.log_dir, env)
        port = free_port()
        from wallet.events.conf import STREAM_UVICORN_FLAGS

        flags = list(STREAM_UVICORN_FLAGS)
        flags[flags.index("--ws") + 1] = self.ws
        uvicorn_args = ["wallet.asgi:application", "--host", "127.0.0.1", "--port", str(port), *flags,
                        "--lifespan", "off", "--log-level", "warning", "--no-access-log", "--backlog", "4096"]
        self.gc_file = self.log_dir / f"gc-{self.name}.json"
        argv = [sys.executable, "-m", "bench.stream_server", str(self.gc_file), *uvicorn_args]
        try:
            relay = start_relay(servers, f"relay-{self.name}", env)
            server = servers.start(f"stream-{self.name}", argv, ready_url=f"http://127.0.0.1:{port}/healthz")
            pid = server.process.pid
            url = f"ws://127.0.0.1:{port}/ws/v1/stream"
            say(f"[{self.name}] uvicorn {' '.join(uvicorn_args)} (DJANGO_SETTINGS_MODULE={self.settings}; "
                f"through bench/stream_server.py, which times GC pauses"
                + ("; gc.freeze() after start-up" if os.environ.get("BENCH_STREAM_GC_FREEZE") == "1" else "")
                + (f"; gc.set_threshold({os.environ['BENCH_STREAM_GC_THRESHOLD']})"
                   if os.environ.get("BENCH_STREAM_GC_THRESHOLD") else "")
                + ("; TRACEMALLOC ON: timings invalid" if os.environ.get("BENCH_STREAM_TRACEMALLOC") == "1" else "")
                + f"), pid {pid}, open files limit "
                f"{fd_limit(pid)}; relay pid {relay.process.pid}; load {loadavg()}")
            if self.settings == "bench.settings":
                self.tap = Tap(f"wbff__group__u.{self.population.tenant.pk.hex}.*")
            self.warm_up(url)
            time.sleep(1.0)
            self.result.baseline_kb = rss_kb(pid)
            say(f"[{self.name}] server RSS with 0 sockets (after a warm-up socket): "
                f"{self.result.baseline_kb / 1024:.1f} MB")
            self.census(0)
            self.tracemalloc_diff(0)
            self.gc_pauses()
            connected = 0
            for size in self.sizes:
                outcome = self.measure_size(url, port, pid, relay.process.pid, connected, size)
                self.result.sizes.append(outcome)
                connected = size
                if not outcome.held:
                    break
            thaw = self.ask_server("thaw", timeout=120)
            if "ms" in thaw:
                say(f"[{self.name}] one full collection with {connected} sockets (gc.unfreeze, gc.collect, gc.freeze: "
                    f"what GcPolicy does after STREAM_GC_THAW_CLOSED closed sockets; after the measurements): "
                    f"{thaw['ms']:.0f} ms, {thaw['collected']} objects freed, {thaw['frozen']} frozen; "
                    f"load {loadavg()}")
            self.check_tail()
        finally:
            if self.tap is not None:
                self.tap.close()
            try:
                closed = self.clients.call(("close",), timeout=120)
                say(f"[{self.name}] closed {sum(closed)} sockets")
            except Exception as exc:
                say(f"[{self.name}] could not close the sockets: {exc}")
            try:
                self.after_close(server.process.pid)
            except Exception as exc:  # diagnosis only
                say(f"[{self.name}] no memory figure after the close: {exc}")
            try:
                for item in servers.running:
                    errors = [line for line in item.log.read_text(errors="replace").splitlines()
                              if "Traceback" in line or '"levelname": "ERROR"' in line]
                    if errors:
                        say(f"[{self.name}] {item.name} logged {len(errors)} error line(s), first: "
                            f"{errors[0][:300]}")
            finally:
                servers.close()
        return self.result

    def after_close(self, pid: int) -> None:
        """What closed sockets leave behind: RSS once they are closed, and again after one full collection
        (sockets frozen by GcPolicy are freed by reference counting; cycles of the server's own objects wait
        for a full collection)."""
        time.sleep(3.0)
        closed_kb = rss_kb(pid)
        thaw = self.ask_server("thaw", timeout=120)
        time.sleep(0.5)
        say(f"[{self.name}] server RSS after closing every socket {closed_kb / 1024:.1f} MB (with 0 sockets at the "
            f"start {self.result.baseline_kb / 1024:.1f} MB); after one full collection ({thaw.get('ms', 0):.0f} ms, "
            f"{thaw.get('collected', '?')} objects freed) {rss_kb(pid) / 1024:.1f} MB")

    def warm_up(self, url: str) -> None:
        """One socket, one burst through it: imports, database connections, layer connections."""
        population = self.population
        opened, errors, _ = self.clients.connect(url, population.app_key, [(0, population.tokens[0])])
        if opened != 1:
            raise BenchError(f"[{self.name}] the warm-up socket did not open: {errors}")
        Phase.burst_counter += 1
        emit_burst(population, Phase.burst_counter, 1)
        self.wait_burst(Phase.burst_counter, 1, timeout=30)
        self.clients.call(("close",))

    def wait_burst(self, burst: int, expected: int, timeout: float = BURST_TIMEOUT_SECONDS) -> tuple[int, float]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.clients.stats()
            count, _, last = stats["bursts"].get(burst, [0, 0.0, 0.0])
            if count >= expected or time.monotonic() > deadline:
                return count, last
            time.sleep(0.1)

    def measure_size(self, url: str, port: int, pid: int, relay_pid: int, connected: int, size: int) -> SizeResult:
        population = self.population
        if size > len(population.users):
            raise BenchError(f"{size} sockets asked, {len(population.users)} users made")
        new = [(i, population.tokens[i]) for i in range(connected, size)]
        cpu_before = cpu_seconds(pid)
        profiler = self.start_profile(pid, size, "connects")
        try:
            opened, errors, seconds = self.clients.connect(url, population.app_key, new)
        finally:
            self.stop_profile(profiler)
        connect_cpu = cpu_seconds(pid) - cpu_before
        time.sleep(1.0)
        stats = self.clients.stats()
        on_server = established(port)
        held = stats["open"] == size and not errors
        say(f"[{self.name}] {size} sockets: {opened}/{len(new)} new ones opened in {seconds:.1f}s "
            f"({len(new) / max(seconds, 1e-9):.0f}/s, server CPU {1000 * connect_cpu / max(len(new), 1):.2f} ms "
            f"per connect), open {stats['open']}, established on the server port {on_server}"
            + (f", errors {errors}" if errors else "") + f"; load {loadavg()}")
        rss = rss_kb(pid)
        kb_connect = (rss - self.result.baseline_kb) / size
        say(f"[{self.name}] {size} sockets: server RSS {rss / 1024:.1f} MB, {kb_connect:.1f} KB per socket; "
            f"client processes RSS {self.clients.rss_kb() / 1024:.0f} MB; during the connects: {self.gc_pauses()}")
        self.census(size)
        outcome = SizeResult(size, held, seconds, kb_connect, kb_connect)
        if not held:
            say(f"[{self.name}] {size} sockets NOT held: {stats['open']} open, closes {stats['unexpected_closes']}")
            return outcome

        # Deliveries: tenant-wide bursts.
        per_burst = max(1, BURST_DELIVERIES // size)
        profiler = self.start_profile(pid, size, "bursts")
        server_cpu = client_cpu = 0.0
        delivered = 0
        try:
            for _ in range(BURSTS):
                Phase.burst_counter += 1
                burst = Phase.burst_counter
                before = (cpu_seconds(pid), self.clients.cpu_seconds(), cpu_seconds(relay_pid))
                committed = emit_burst(population, burst, per_burst)
                count, last = self.wait_burst(burst, size * per_burst)
                after = (cpu_seconds(pid), self.clients.cpu_seconds(), cpu_seconds(relay_pid))
                server_cpu += after[0] - before[0]
                client_cpu += after[1] - before[1]
                delivered += count
                if count < size * per_burst:
                    say(f"[{self.name}] burst {burst}: only {count} of {size * per_burst} deliveries within "
                        f"{BURST_TIMEOUT_SECONDS}s")
                    continue
                elapsed = last - committed
                rate = count / elapsed
                outcome.rates.append(rate)
                say(f"[{self.name}] {size} sockets, burst of {per_burst} tenant events: {count} deliveries in "
                    f"{1000 * elapsed:.0f} ms from the commit, {rate:.0f} deliveries/s; CPU s: server "
                    f"{after[0] - before[0]:.2f}, clients {after[1] - before[1]:.2f}, relay "
                    f"{after[2] - before[2]:.2f}; load {loadavg()}")
                time.sleep(0.5)
        finally:
            self.stop_profile(profiler)
        if delivered:
            outcome.server_us_per_delivery = 1e6 * server_cpu / delivered
            outcome.client_us_per_delivery = 1e6 * client_cpu / delivered
        time.sleep(1.0)
        rss = rss_kb(pid)
        outcome.kb_after_bursts = (rss - self.result.baseline_kb) / size
        say(f"[{self.name}] {size} sockets: deliveries/s {outcome.rate:.0f} (median of "
            f"{', '.join(f'{r:.0f}' for r in outcome.rates)}); server CPU {outcome.server_us_per_delivery:.1f} us "
            f"per delivery, clients {outcome.client_us_per_delivery:.1f} us; server RSS after the bursts "
            f"{rss / 1024:.1f} MB, {outcome.kb_after_bursts:.1f} KB per socket; during the bursts: "
            f"{self.gc_pauses()}")

        if size in self.latency_at:
            self.measure_latency(outcome, pid, relay_pid)
        stats = self.clients.stats()
        say(f"[{self.name}] {size} sockets: events received so far {stats['events']}, missing {stats['missing']}, "
            f"duplicates {stats['duplicates']}, unexpected closes {stats['unexpected_closes'] or 'none'}"
            + (f", client errors {stats['errors']}" if stats["errors"] else ""))
        if stats["open"] != size:
            outcome.held = False
        return outcome

    def measure_latency(self, outcome: SizeResult, pid: int, relay_pid: int) -> None:
        users = min(LATENCY_USERS, outcome.sockets)
        drive_transfers(self.population, users, LATENCY_WARMUP_SECONDS)
        time.sleep(1.0)
        self.clients.call(("latency",))  # forget the warm-up's receipts
        self.clients.call(("pings",))
        if self.tap is not None:
            self.tap.take()
        self.gc_pauses()
        cpu_before = (cpu_seconds(pid), cpu_seconds(relay_pid))
        profiler = self.start_profile(pid, outcome.sockets, "latency")
        try:
            run = drive_transfers(self.population, users, LATENCY_SECONDS)
        finally:
            self.stop_profile(profiler)
        server_cpu, relay_cpu = (cpu_seconds(pid) - cpu_before[0], cpu_seconds(relay_pid) - cpu_before[1])
        self.wait_caught_up()  # late receipts count with their real (late) times
        commits = run["commits"]
        receipts = [item for answer in self.clients.call(("latency",)) for item in answer]
        latencies = [1000 * (received - commits[tid]) for tid, received in receipts if tid in commits]
        expected = 2 * len(commits)  # the sender's and the recipient's sockets
        outcome.p50_ms = percentile(latencies, 0.50)
        outcome.p99_ms = percentile(latencies, 0.99)
        say(f"[{self.name}] {outcome.sockets} sockets, latency: {run['tps']:.0f} transfers/s over {users} users for "
            f"{LATENCY_SECONDS}s ({EVENTS_PER_USER:g} event/s per user: transfer.completed and "
            f"account.balance_changed; batches of {run['per_batch']} every {1000 * TICK_SECONDS:.0f} ms, "
            f"commit p50 {run['batch_p50_ms']:.0f} ms, max {run['batch_max_ms']:.0f} ms), "
            f"{len(latencies)}/{expected} transfer.completed receipts, refused {run['refused']}; commit -> receipt "
            f"p50 {outcome.p50_ms:.1f} ms, p90 {percentile(latencies, 0.90):.1f} ms, p99 {outcome.p99_ms:.1f} ms, "
            f"max {max(latencies, default=float('nan')):.1f} ms; CPU: server {100 * server_cpu / LATENCY_SECONDS:.0f}%,"
            f" relay {100 * relay_cpu / LATENCY_SECONDS:.0f}%; {self.gc_pauses()}; load {loadavg()}")
        self.stalls(commits, receipts)
        if self.tap is not None:
            published = dict(self.tap.take())
            relay_part = [1000 * (published[tid] - commits[tid]) for tid in commits if tid in published]
            server_part = [1000 * (received - published[tid]) for tid, received in receipts if tid in published]
            say(f"[{self.name}] {outcome.sockets} sockets, latency split at Redis (a PSUBSCRIBE tap): commit -> "
                f"publish p50 {percentile(relay_part, 0.5):.1f} ms, p99 {percentile(relay_part, 0.99):.1f} ms "
                f"({len(relay_part)} transfers); publish -> receipt p50 {percentile(server_part, 0.5):.1f} ms, "
                f"p99 {percentile(server_part, 0.99):.1f} ms")

    def behind_heads(self) -> tuple[int, int]:
        """(events not received yet, sockets concerned): each socket's last seq per stream against the heads
        of the streams in the database."""
        from wallet.events.streams import tenant_stream, user_stream

        heads = stream_heads(self.population)
        tenant_head = heads.get(tenant_stream(self.population.tenant.pk), 0)
        missing = sockets = 0
        for answer in self.clients.call(("positions",)):
            for index, positions, _ in answer:
                user_head = heads.get(user_stream(self.population.users[index].pk), 0)
                behind = max(0, user_head - positions.get("user", 0)) + max(0, tenant_head - positions.get("tenant", 0))
                missing += behind
                sockets += behind > 0
        return missing, sockets

    def stalls(self, commits: dict[str, float], receipts: list[tuple[str, float]]) -> None:
        """When the slow receipts (over STALL_MS) were committed, against the waves of heartbeat pings that
        the server sent (the hub pings every socket idle for STREAM_HEARTBEAT_SECONDS in one tick)."""
        pings = [t for answer in self.clients.call(("pings",)) for t in answer]
        slow = sorted(commits[tid] for tid, received in receipts
                      if tid in commits and 1000 * (received - commits[tid]) > STALL_MS)
        per_second: dict[int, int] = {}
        for t in pings:
            per_second[int(t)] = per_second.get(int(t), 0) + 1
        waves = sorted(second for second, count in per_second.items() if count >= 500)
        near_wave = sum(1 for t in slow if any(0 <= t - w <= 2 or 0 <= w - t <= 1 for w in waves))
        say(f"[{self.name}] stalls: {len(slow)} receipts over {STALL_MS} ms; heartbeat pings received {len(pings)}, "
            f"the busiest second {max(per_second.values(), default=0)}, {len(waves)} seconds with >= 500 pings"
            + (f"; {near_wave} of the slow receipts were committed within 1 s before or 2 s after such a second"
               if slow else ""))

    def wait_caught_up(self) -> tuple[int, int, float]:
        """Wait while the sockets are behind the stream heads and still catching up: up to TAIL_WAIT_SECONDS,
        or TAIL_STALL_SECONDS without progress. Returns (behind at first, behind at last, seconds waited)."""
        started = last_progress = time.monotonic()
        time.sleep(0.5)
        first, _ = self.behind_heads()
        behind = first
        while behind:
            if time.monotonic() - started > TAIL_WAIT_SECONDS or time.monotonic() - last_progress > TAIL_STALL_SECONDS:
                break
            time.sleep(0.5)
            now, _ = self.behind_heads()
            if now < behind:
                last_progress = time.monotonic()
            behind = now
        return first, behind, time.monotonic() - started

    def check_tail(self) -> None:
        """Events that never arrived: wait while the sockets still catch up (a lagging server is slow, not
        lossy), then compare each socket's last seqs with the stream heads."""
        first, tail_missing, waited = self.wait_caught_up()
        if first:
            say(f"[{self.name}] at the end of the phase {first} events were still on their way; "
                f"{first - tail_missing} arrived within {waited:.0f}s")
        lagging = self.behind_heads()[1] if tail_missing else 0
        stats = self.clients.stats()
        self.result.tail_missing = tail_missing
        self.result.gaps = stats["missing"] + stats["duplicates"] + tail_missing
        self.result.closes = stats["unexpected_closes"]
        say(f"[{self.name}] gaps: {stats['missing']} missing and {stats['duplicates']} duplicate seqs within "
            f"sockets, {tail_missing} events never received at the end ({lagging} sockets behind the heads); "
            f"unexpected closes {stats['unexpected_closes'] or 'none'}; events received {stats['events']}")

    def start_profile(self, pid: int, size: int, label: str) -> subprocess.Popen[bytes] | None:
        if not (self.profile and PYSPY_DIR and size == self.sizes[-1]):
            return None
        Path(PYSPY_DIR).mkdir(parents=True, exist_ok=True)
        out = Path(PYSPY_DIR) / f"stream-{self.name}-{size}-{label}.txt"
        say(f"[{self.name}] py-spy recording the stream process to {out}")
        return subprocess.Popen([str(PYSPY), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                                 "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    @staticmethod
    def stop_profile(profiler: subprocess.Popen[bytes] | None) -> None:
        if profiler is None:
            return
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()


def start_relay(servers: Servers, name: str, env: dict[str, str], timeout: float = 60) -> Server:
    log = servers.log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "manage.py", "relay_outbox"], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(name, process, log)
    servers.running.append(server)
    deadline = time.monotonic() + timeout
    while "outbox relay running" not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode} while starting:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not start within {timeout:.0f}s:\n{tail(log)}")
        time.sleep(0.1)
    return server


# --- the run ---------------------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the servers and clients
    needed = max([*SIZES, LAYER_SOCKETS]) + 1000
    if wanted < needed:
        raise BenchError(f"the open files limit is {wanted}; {needed} are needed (raise the hard limit)")
    return wanted


def run(log_dir: Path) -> int:
    started = time.monotonic()
    require_pyspy(PYSPY_DIR, PYSPY)  # BENCH_PYSPY may point elsewhere
    env = production_env()
    # Tokens must outlive the run (the stream closes a socket whose token expired); quiet logs.
    env.update(JWT_ACCESS_TTL_SECONDS="7200", LOG_LEVEL="WARNING", LOG_REQUESTS="0")
    os.environ.update(env)
    limit = raise_fd_limit()
    say(f"bench-stream: load average at start {loadavg()} ({os.cpu_count()} cores); open files limit {limit}; "
        f"{CLIENTS} client processes; clients {'offer' if COMPRESSION else 'do not offer'} permessage-deflate")
    manage(env, "migrate", "--noinput")

    import django

    django.setup()
    from django.db import connections

    sizes = sorted(SIZES)
    population = populate(max([*sizes, LAYER_SOCKETS]), min(LATENCY_USERS, max(sizes)))
    clients = ClientPool(CLIENTS)
    phases: dict[str, PhaseResult] = {}
    try:
        common = dict(population=population, clients=clients, log_dir=log_dir)
        # The variants first, the core layer right before the main phase, whose 1k step it is compared with.
        if "wsproto" in VARIANTS:
            if importlib.util.find_spec("wsproto") is None:
                say("[wsproto] skipped: the wsproto package is not installed (pip install wsproto)")
            else:
                phases["wsproto"] = Phase("wsproto", settings="bench.settings", ws="wsproto",
                                          sizes=[LAYER_SOCKETS], latency_at=set(), profile=True, **common).run()
        if "core" in VARIANTS:
            phases["core"] = Phase("core", settings="bench.stream_settings_core", ws="websockets-sansio",
                                   sizes=[LAYER_SOCKETS], latency_at={LAYER_SOCKETS}, profile=True, **common).run()
        phases["pubsub"] = Phase("pubsub", settings="bench.settings", ws="websockets-sansio", sizes=sizes,
                                 latency_at={min(sizes), max(sizes)} if LATENCY_SECONDS else set(),
                                 profile=True, **common).run()
    finally:
        clients.close()
        connections.close_all()

    main = phases["pubsub"]
    say("--- results ---")
    for name, phase in phases.items():
        for size in phase.sizes:
            latency = (f", p50 {size.p50_ms:.1f} ms, p99 {size.p99_ms:.1f} ms" if size.p99_ms is not None else "")
            say(f"{name} {size.sockets} sockets: held={'yes' if size.held else 'NO'}, {size.kb_per_socket:.1f} KB per "
                f"socket (after connect {size.kb_after_connect:.1f}, after bursts {size.kb_after_bursts:.1f}), "
                f"{size.rate:.0f} deliveries/s, server {size.server_us_per_delivery:.1f} us CPU per delivery"
                f"{latency}")
        say(f"{name}: gaps {phase.gaps} (of which never received: {phase.tail_missing}); unexpected closes "
            f"{phase.closes or 'none'}; server RSS with 0 sockets {phase.baseline_kb / 1024:.1f} MB")
    held = [s for s in main.sizes if s.held]
    top = held[-1] if held else (main.sizes[0] if main.sizes else None)
    at_1k = next((s for s in main.sizes if s.p99_ms is not None), None)
    if top is None or at_1k is None:
        raise BenchError("the main phase measured nothing")
    say(f"bench-stream took {time.monotonic() - started:.0f}s; load average at the end {loadavg()}")
    say(f"stream: sockets={top.sockets if held else 0} kb_per_socket={top.kb_per_socket:.1f} "
        f"deliveries_per_s={top.rate:.0f} p99_ms={at_1k.p99_ms:.1f} gaps={main.gaps}")
    ok = bool(held) and held[-1].sockets == max(sizes) and main.gaps == 0
    return 0 if ok else 1


def main() -> int:
    stop_on_sigterm()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        return run(log_dir)
    except BenchError as exc:
        fail(str(exc))
        for log in sorted(log_dir.glob("*.log")):
            print(f"--- last lines of {log.name} ---\n{tail(log, 15)}", file=sys.stderr)
        return 1
    finally:
        if os.environ.get("BENCH_KEEP_LOGS") == "1":
            say(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
