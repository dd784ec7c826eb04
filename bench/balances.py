"""Balances benchmark: `GET /api/v1/balances` cold (four sandbox sources of 100 ms each) against the same
sources fetched one after another, and warm (served from the cached snapshot) against a bare Django view.

Run it with `make bench-balances` (.ci/with-services starts PostgreSQL and Redis). Production-style server:
gunicorn with 2 sync WSGI workers, wallet.settings.production (+ bench URLs), persistent connections,
Redis cache. One run:

1. a tenant whose banking provider is the sandbox with `latency_ms=100`; a user with four linked sandbox
   accounts (so a refresh has four 100 ms sources, plus the ledger and the sandbox price table);
2. cold: `GET /api/v1/balances?refresh=1` (every request fetches every source) with wrk -t1 -c1; the
   reference `GET /api/v1/bench/balances/sequential` is the same view and sources fetched one after another;
   p50 of each; concurrency_ratio = sequential p50 / cold p50;
3. warm: `GET /api/v1/balances` (snapshot fresh, nothing moved: served by the plain Django view from the
   process's copy of the snapshot and its encoded body; the stream head is read at most once per
   BALANCES_HEAD_CHECK_SECONDS, 1 s, per worker) at full speed against `/bench/bare/`, ROUNDS rounds back
   to back in alternating order, medians; warm_ratio = warm / bare_django;
4. the warm endpoint paced at half its maximum: p99 (warm_p99_ms);
5. in this process: the cost of running the concurrent fetch from sync code, per process event-loop
   thread (`BALANCES_ASYNC_MODE=loop`, the default) against `asyncio.run` per request (`run`).

Last line:
    balances: cold_p50_ms=<n> sequential_p50_ms=<n> concurrency_ratio=<sequential/cold> warm=<req/s>
              warm_ratio=<warm/bare_django> warm_p99_ms=<n>        (on one line)

Tunables (environment): BENCH_SECONDS (8), BENCH_WARMUP_SECONDS (2), BENCH_ROUNDS (3), BENCH_THREADS (2),
BENCH_CONNECTIONS (16).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import Session, manage, production_env
from bench.harness import (
    BenchError,
    Servers,
    WrkResult,
    free_port,
    http,
    http_json,
    main_with_servers,
    median,
    say,
    stop_on_sigterm,
    wrk,
)

SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
WORKERS = 2
SOURCE_LATENCY_MS = 100
BANK_ACCOUNTS = 4
PACED_SCRIPT = Path(__file__).resolve().parent / "balances_paced.lua"


def paced_wrk(url: str, headers: dict[str, str], *, rate: float, connections: int, seconds: int) -> WrkResult:
    return wrk(url, threads=THREADS, connections=connections, seconds=seconds, headers=headers,
               script=PACED_SCRIPT, env={"BENCH_RATE": str(rate), "BENCH_WRK_THREADS": str(THREADS)})


def loop_modes(env: dict[str, str], iterations: int = 2000) -> dict[str, float]:
    """Microseconds per call of running four no-op coroutines concurrently from sync code, per mode."""
    import django

    os.environ.update(env)
    django.setup()
    from wallet.balances.runner import run_async

    async def four() -> None:
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(4)))

    out = {}
    for mode in ("loop", "run"):
        run_async(four, timeout=5, mode=mode)
        started = time.perf_counter()
        for _ in range(iterations):
            run_async(four, timeout=5, mode=mode)
        out[mode] = (time.perf_counter() - started) / iterations * 1e6
    return out


def run(servers: Servers) -> None:
    env = production_env()
    from cryptography.fernet import Fernet

    # No beat runs here to keep snapshots fresh, so they are kept fresh long enough: see docs/BENCHMARKS.md.
    env.update(DJANGO_SETTINGS_MODULE="bench.balances_settings", BALANCES_FRESH_SECONDS="3600",
               BALANCES_CREDENTIAL_KEYS=Fernet.generate_key().decode())
    servers.env = env
    manage(env, "migrate", "--noinput")
    slug = f"bench-{secrets.token_hex(3)}"
    tenant = json.loads(manage(env, "create_tenant", slug, "--name", "Bench balances"))
    manage(env, "balances_configure", slug, "banking", "sandbox", "--option", f"latency_ms={SOURCE_LATENCY_MS}")
    manage(env, "balances_configure", slug, "prices", "sandbox")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    servers.start("gunicorn-wsgi", [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "--log-level", "warning",
                                    "-b", f"127.0.0.1:{port}", "wallet.wsgi:application"],
                  ready_url=f"{base}/bench/bare/")
    session = Session(base, tenant["app_key"])
    session.register()
    headers = session.headers()
    for index in range(BANK_ACCOUNTS):
        http_json("POST", f"{base}/api/v1/bank-accounts", expect=201,
                  headers={**headers, "Idempotency-Key": secrets.token_hex(8)},
                  json_body={"account_ref": f"sandbox-bench-{index}"})
    body = http_json("GET", f"{base}/api/v1/balances?refresh=1", expect=200, headers=headers)
    kinds = sorted(s["kind"] for s in body["sources"])
    if kinds != ["bank"] * BANK_ACCOUNTS + ["ledger"] or any(s["status"] != "fresh" for s in body["sources"]):
        raise BenchError(f"unexpected balances before the load: {json.dumps(body)[:800]}")

    say(f"bench-balances: gunicorn -w {WORKERS} (sync WSGI, PostgreSQL, Redis cache); {BANK_ACCOUNTS} sandbox "
        f"bank sources of {SOURCE_LATENCY_MS} ms + ledger + sandbox prices; wrk {SECONDS}s runs; "
        f"BALANCES_HEAD_CHECK_SECONDS={env.get('BALANCES_HEAD_CHECK_SECONDS', '1 (default)')}")

    # (a) cold: every request refreshes every source; the reference fetches them one after another.
    cold = wrk(f"{base}/api/v1/balances?refresh=1", threads=1, connections=1, seconds=SECONDS,
               headers=session.headers())
    sequential = wrk(f"{base}/api/v1/bench/balances/sequential", threads=1, connections=1, seconds=SECONDS,
                     headers=session.headers())
    say(f"cold (concurrent): p50 {cold.p50_ms:.1f} ms, p99 {cold.p99_ms:.1f} ms, {cold.requests} requests")
    say(f"sequential:        p50 {sequential.p50_ms:.1f} ms, p99 {sequential.p99_ms:.1f} ms, "
        f"{sequential.requests} requests")

    # (b) warm against bare Django, back to back in alternating order.
    http("GET", f"{base}/api/v1/balances", headers=session.headers())  # the snapshot is fresh from here on
    targets = [("warm", f"{base}/api/v1/balances", True), ("bare_django", f"{base}/bench/bare/", False)]
    results: dict[str, list[WrkResult]] = {name: [] for name, _, _ in targets}
    for round_number in range(1, ROUNDS + 1):
        for name, url, authenticated in (targets if round_number % 2 else targets[::-1]):
            run_headers = session.headers() if authenticated else None
            if WARMUP_SECONDS:
                wrk(url, threads=THREADS, connections=CONNECTIONS, seconds=WARMUP_SECONDS, headers=run_headers)
            result = wrk(url, threads=THREADS, connections=CONNECTIONS, seconds=SECONDS, headers=run_headers)
            results[name].append(result)
            say(f"  round {round_number}/{ROUNDS} {name}: {result.requests_per_second:.0f} req/s, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    warm = median([r.requests_per_second for r in results["warm"]])
    bare = median([r.requests_per_second for r in results["bare_django"]])
    say("  per-round warm/bare: " + " ".join(f"{w.requests_per_second / b.requests_per_second:.2f}"
                                            for w, b in zip(results["warm"], results["bare_django"], strict=True)))

    target = warm / 2
    connections = max(THREADS, min(CONNECTIONS, round(target * 0.01)))
    paced_headers = session.headers()
    paced_wrk(f"{base}/api/v1/balances", paced_headers, rate=target, connections=connections,
              seconds=WARMUP_SECONDS or 1)
    paced = paced_wrk(f"{base}/api/v1/balances", paced_headers, rate=target, connections=connections,
                      seconds=SECONDS)
    say(f"warm paced at half the maximum ({target:.0f} req/s asked, {connections} connections): "
        f"{paced.requests_per_second:.0f} req/s, p50 {paced.p50_ms:.2f} ms, p99 {paced.p99_ms:.2f} ms")

    modes = loop_modes(env)
    say(f"sync->async per call (4 no-op coroutines): loop thread {modes['loop']:.0f} us, "
        f"asyncio.run {modes['run']:.0f} us")
    say(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    say(f"balances: cold_p50_ms={cold.p50_ms:.1f} sequential_p50_ms={sequential.p50_ms:.1f} "
        f"concurrency_ratio={sequential.p50_ms / cold.p50_ms:.2f} warm={warm:.0f} warm_ratio={warm / bare:.2f} "
        f"warm_p99_ms={paced.p99_ms:.1f}")


def main() -> int:
    stop_on_sigterm()
    return main_with_servers("bench-balances-", lambda servers, _dir: run(servers) or 0)


if __name__ == "__main__":
    sys.exit(main())
