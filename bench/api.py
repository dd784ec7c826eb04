"""API benchmark: an authenticated `GET /api/v1/me` against bare references, in one run, with wrk.

Run it with `make bench-api`, which starts PostgreSQL and Redis for it (.ci/with-services) and passes
DATABASE_URL and REDIS_URL. It serves the production-style configuration (wallet.settings.production
plus a bare view, see bench/settings.py): gunicorn with 2 sync WSGI workers and persistent database
connections. The references, measured in the same run with the same load generator:

- bare_django: a Django view returning `{"ok": true}`, same server, settings and middleware;
- bare_asgi:   a raw ASGI app returning the same JSON, gunicorn with 2 `uvicorn_worker.UvicornWorker`s.

Each target gets a short warm-up, then a measured wrk run, for ROUNDS rounds (me and bare_django back to
back, in alternating order); the figures are medians, the ratio is that of the medians. The last line printed is

    api: me=<req/s> bare_django=<req/s> ratio=<me/bare_django> p99_ms=<me p99>

Tunables (environment): BENCH_SECONDS (10), BENCH_WARMUP_SECONDS (2), BENCH_ROUNDS (3),
BENCH_THREADS (2), BENCH_CONNECTIONS (16).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    ROOT,
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

SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
WORKERS = 2


def production_env() -> dict[str, str]:
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            raise BenchError(f"{name} is not set: run this through `make bench-api` (.ci/with-services)")
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        SECRET_KEY=secrets.token_urlsafe(48),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DEBUG="0",
        SECURE_SSL_REDIRECT="0",  # plain HTTP on loopback
        CONN_MAX_AGE="600",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise BenchError(
            f"manage.py {' '.join(args)} failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}"
        )
    return completed.stdout


def asgi_worker_class() -> str:
    if importlib.util.find_spec("uvicorn_worker") is not None:
        return "uvicorn_worker.UvicornWorker"
    # uvicorn's own copy is deprecated in favour of the uvicorn-worker package, but behaves the same.
    say("note: the uvicorn-worker package is not installed; using uvicorn.workers.UvicornWorker")
    return "uvicorn.workers.UvicornWorker"


class Session:
    """A user of the bench tenant; hands out a fresh access token before each run (tokens are short-lived)."""

    def __init__(self, base: str, app_key: str) -> None:
        self.base = base
        self.app_key = app_key
        self.email = f"bench-{secrets.token_hex(4)}@example.com"
        self.password = secrets.token_urlsafe(24)
        self.refresh = ""

    def register(self) -> None:
        http_json(
            "POST",
            f"{self.base}/api/v1/auth/register",
            expect=201,
            headers={"X-App-Key": self.app_key},
            json_body={"email": self.email, "password": self.password},
        )
        pair = http_json(
            "POST",
            f"{self.base}/api/v1/auth/token",
            expect=200,
            headers={"X-App-Key": self.app_key},
            json_body={"email": self.email, "password": self.password},
        )
        self.refresh = pair["refresh"]

    def headers(self) -> dict[str, str]:
        """Headers with a fresh access token, by refresh (as the app does; logins are throttled)."""
        pair = http_json(
            "POST",
            f"{self.base}/api/v1/auth/token/refresh",
            expect=200,
            headers={"X-App-Key": self.app_key},
            json_body={"refresh": self.refresh},
        )
        self.refresh = pair["refresh"]
        return {"X-App-Key": self.app_key, "Authorization": f"Bearer {pair['access']}"}


def measure(name: str, url: str, session: Session | None, round_number: int) -> WrkResult:
    headers = session.headers() if session else None
    if WARMUP_SECONDS > 0:
        wrk(url, threads=THREADS, connections=CONNECTIONS, seconds=WARMUP_SECONDS, headers=headers)
    result = wrk(url, threads=THREADS, connections=CONNECTIONS, seconds=SECONDS, headers=headers)
    say(
        f"  round {round_number}/{ROUNDS} {name}: {result.requests_per_second:.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
    )
    return result


def run(servers: Servers) -> None:
    env = production_env()
    servers.env = env
    manage(env, "migrate", "--noinput")
    tenant = json.loads(manage(env, "create_tenant", f"bench-{secrets.token_hex(3)}", "--name", "Bench"))
    app_key = tenant["app_key"]

    django_port = free_port()
    asgi_port = free_port()
    while asgi_port == django_port:
        asgi_port = free_port()
    django_base = f"http://127.0.0.1:{django_port}"
    asgi_base = f"http://127.0.0.1:{asgi_port}"
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "--log-level", "warning"]
    worker_class = asgi_worker_class()
    servers.start(
        "gunicorn-wsgi",
        [*gunicorn, "-b", f"127.0.0.1:{django_port}", "wallet.wsgi:application"],
        ready_url=f"{django_base}/bench/bare/",
    )
    servers.start(
        "gunicorn-asgi",
        [*gunicorn, "-k", worker_class, "-b", f"127.0.0.1:{asgi_port}", "bench.bare_asgi:app"],
        ready_url=f"{asgi_base}/",
    )

    session = Session(django_base, app_key)
    session.register()
    status, body = http("GET", f"{django_base}/api/v1/me", headers=session.headers())
    if status != 200 or session.email.encode() not in body:
        raise BenchError(f"GET /api/v1/me answered {status} before the load: {body[:500]!r}")

    targets: list[tuple[str, str, Session | None]] = [
        ("me", f"{django_base}/api/v1/me", session),
        ("bare_django", f"{django_base}/bench/bare/", None),
        ("bare_asgi", f"{asgi_base}/", None),
    ]
    say(
        f"bench-api: gunicorn -w {WORKERS} (sync WSGI, PostgreSQL, Redis, CONN_MAX_AGE=600) and "
        f"-k {worker_class}; wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS:g}s after {WARMUP_SECONDS:g}s warm-up, "
        f"{ROUNDS} rounds, medians"
    )
    results: dict[str, list[WrkResult]] = {name: [] for name, _, _ in targets}
    for round_number in range(1, ROUNDS + 1):
        # me and bare_django always run back to back, in alternating order: on a shared machine the
        # load of the neighbours drifts, and this keeps the two sides of the ratio under the same drift.
        order = targets if round_number % 2 else targets[::-1]
        for name, url, target_session in order:
            results[name].append(measure(name, url, target_session, round_number))

    rps = {name: median([r.requests_per_second for r in runs]) for name, runs in results.items()}
    p99 = {name: median([r.p99_ms for r in runs]) for name, runs in results.items()}
    for name, _, _ in targets:
        say(f"{name}: {rps[name]:.0f} req/s, p99 {p99[name]:.2f} ms")
    ratio = rps["me"] / rps["bare_django"]
    pairs = zip(results["me"], results["bare_django"], strict=True)
    per_round = [me.requests_per_second / bare.requests_per_second for me, bare in pairs]
    say("me/bare_django per round: " + " ".join(f"{r:.2f}" for r in per_round))
    say(f"me/bare_asgi ratio: {rps['me'] / rps['bare_asgi']:.3f}")
    say(f"api: me={rps['me']:.0f} bare_django={rps['bare_django']:.0f} ratio={ratio:.2f} p99_ms={p99['me']:.1f}")


def main() -> int:
    stop_on_sigterm()
    return main_with_servers("bench-api-", lambda servers, _dir: run(servers) or 0)


if __name__ == "__main__":
    sys.exit(main())
