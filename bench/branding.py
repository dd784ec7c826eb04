"""Branding benchmark: exporting a full release, and the runtime endpoint (200 and 304) against a bare
Django view served the same way, in one run.

Run it with `make bench-branding` (.ci/with-services passes DATABASE_URL and REDIS_URL). The export is
timed in process (Django set up with the production settings against the same PostgreSQL): building every
file of a full release (tokens, Dart, 5 Android densities x 3 layers, 19 iOS icons, fonts, manifest) and
its zip, cold (no cache), median of EXPORT_RUNS; every run, and one `manage.py export_branding --zip` in
a fresh process, must give the same bytes (`reproducible=yes`). The endpoint is served like bench/api.py:
gunicorn with 2 sync WSGI workers, production settings, persistent connections, wrk on loopback; the
reference is bench/urls.py's bare Django JSON view in the same server. The last line printed is

    branding: export_s=<n> runtime_304_ratio=<304 req/s / bare_django req/s> reproducible=yes

runtime_304_ratio is the median over rounds of (304 req/s / bare_django req/s), the two measured back to
back in each round (alternating which goes first): on a shared machine the neighbours' load drifts within
seconds, and pairing keeps both sides of each ratio under the same load. The ratio of the medians is
printed too.

Tunables (environment): BENCH_SECONDS (10), BENCH_WARMUP_SECONDS (2), BENCH_ROUNDS (5), BENCH_THREADS (2),
BENCH_CONNECTIONS (16), BENCH_EXPORT_RUNS (5).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import manage, production_env
from bench.harness import (
    WRK_SCRIPT,
    BenchError,
    Servers,
    WrkResult,
    free_port,
    http,
    main_with_servers,
    median,
    say,
    stop_on_sigterm,
    wrk,
)

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
EXPORT_RUNS = int(os.environ.get("BENCH_EXPORT_RUNS", "5"))
WORKERS = 2
def wrk_run(url: str, script: Path, env_extra: dict[str, str], seconds: int) -> WrkResult:
    """One wrk run with our script (it adds If-None-Match from the environment)."""
    return wrk(url, threads=THREADS, connections=CONNECTIONS, seconds=seconds, script=script, env=env_extra)


def seed_and_time_export(env: dict[str, str], slug: str, app_key: str, work_dir: Path) -> tuple[float, str]:
    """In this process: publish the sample release for `slug`, then time its export. Returns the median
    seconds and the zip's SHA-256 (after checking every run gives the same bytes)."""
    os.environ.update(env)
    import django

    django.setup()
    from branding.bundle import write_zip
    from branding.demo import seed_sample_branding
    from branding.export import clear_cache, release_bundle_files
    from branding.selectors import release_current
    from tenants.models import Tenant
    from wallet.core.context import tenant_scope

    tenant = Tenant.objects.get(slug=slug)
    with tenant_scope(tenant):
        seed_sample_branding(tenant=tenant, app_key=app_key, name="Bench Wallet")
        release = release_current(tenant=tenant)
        times, digests = [], set()
        for index in range(EXPORT_RUNS):
            clear_cache()
            target = work_dir / f"export-{index}.zip"
            started = time.perf_counter()
            files = release_bundle_files(tenant=tenant, release=release)
            write_zip(files, target)
            times.append(time.perf_counter() - started)
            digests.add(hashlib.sha256(target.read_bytes()).hexdigest())
    say(f"export: {len(files)} files, {target.stat().st_size} bytes zipped; runs (s): "
        + " ".join(f"{t:.3f}" for t in times))
    if len(digests) != 1:
        raise BenchError(f"export is not reproducible within a process: {digests}")
    return median(times), digests.pop()


def measure(name: str, url: str, script: Path, env_extra: dict[str, str], round_number: int) -> WrkResult:
    if WARMUP_SECONDS > 0:
        wrk_run(url, script, env_extra, WARMUP_SECONDS)
    result = wrk_run(url, script, env_extra, SECONDS)
    say(f"  round {round_number}/{ROUNDS} {name}: {result.requests_per_second:.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    return result


def run(servers: Servers, work_dir: Path) -> int:
    env = production_env()
    env["VAR_DIR"] = str(work_dir / "var")  # uploads (MEDIA_ROOT) go to the throwaway dir
    servers.env = env
    manage(env, "migrate", "--noinput")
    slug = f"bench-{secrets.token_hex(3)}"
    tenant = json.loads(manage(env, "create_tenant", slug, "--name", "Bench"))
    app_key = tenant["app_key"]

    export_s, digest = seed_and_time_export(env, slug, app_key, work_dir)
    fresh = work_dir / "fresh.zip"
    manage(env, "export_branding", slug, "--zip", str(fresh))
    if hashlib.sha256(fresh.read_bytes()).hexdigest() != digest:
        raise BenchError("export_branding in a fresh process gave other bytes than the in-process export")
    say(f"export: median {export_s:.3f} s over {EXPORT_RUNS} runs; zip sha256 {digest[:16]}… in both processes")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    servers.start("gunicorn-wsgi", [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "--log-level", "warning",
                                    "-b", f"127.0.0.1:{port}", "wallet.wsgi:application"],
                  ready_url=f"{base}/bench/bare/")
    status, body = http("GET", f"{base}/api/v1/branding", headers={"X-App-Key": app_key})
    if status != 200 or b"Bench Wallet" not in body:
        raise BenchError(f"GET /api/v1/branding answered {status} before the load: {body[:300]!r}")
    from branding.selectors import release_current
    from tenants.models import Tenant

    etag = release_current(tenant=Tenant.objects.get(slug=slug)).etag
    script = work_dir / "branding.lua"
    script.write_text(f'dofile("{WRK_SCRIPT}")\n'
                      'local inm = os.getenv("BENCH_IF_NONE_MATCH")\n'
                      'if inm and inm ~= "" then wrk.headers["If-None-Match"] = inm end\n')
    targets = [
        ("runtime_304", f"{base}/api/v1/branding", {"BENCH_APP_KEY": app_key, "BENCH_IF_NONE_MATCH": etag}),
        ("bare_django", f"{base}/bench/bare/", {"BENCH_APP_KEY": "", "BENCH_IF_NONE_MATCH": ""}),
        ("runtime_200", f"{base}/api/v1/branding", {"BENCH_APP_KEY": app_key, "BENCH_IF_NONE_MATCH": ""}),
    ]
    say(f"bench-branding: gunicorn -w {WORKERS} (sync WSGI, PostgreSQL, Redis, CONN_MAX_AGE=600); "
        f"wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s after {WARMUP_SECONDS}s warm-up, {ROUNDS} rounds, medians")
    results: dict[str, list[WrkResult]] = {name: [] for name, _, _ in targets}
    for round_number in range(1, ROUNDS + 1):
        order = targets if round_number % 2 else [targets[1], targets[0], targets[2]]  # 304 and bare back to back
        for name, url, extra in order:
            results[name].append(measure(name, url, script, extra, round_number))
    rps = {name: median([r.requests_per_second for r in runs]) for name, runs in results.items()}
    for name in results:
        say(f"{name}: {rps[name]:.0f} req/s, p99 {median([r.p99_ms for r in results[name]]):.2f} ms")
    pairs = zip(results["runtime_304"], results["bare_django"], strict=True)
    per_round = [mine.requests_per_second / bare.requests_per_second for mine, bare in pairs]
    ratio_304 = median(per_round)
    say("runtime_304/bare_django per round: " + " ".join(f"{r:.2f}" for r in per_round))
    say(f"runtime_304/bare_django ratio of medians: {rps['runtime_304'] / rps['bare_django']:.2f}")
    say(f"runtime_200/bare_django ratio of medians: {rps['runtime_200'] / rps['bare_django']:.2f}")
    say(f"branding: export_s={export_s:.3f} runtime_304_ratio={ratio_304:.2f} reproducible=yes")
    return 0


def main() -> int:
    stop_on_sigterm()
    return main_with_servers("bench-branding-", run)


if __name__ == "__main__":
    sys.exit(main())
