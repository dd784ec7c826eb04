"""Real servers for `tests/test_stream_e2e.py`: subprocesses on loopback ports, their provisioning, and a
small websocket/HTTP client toolkit.

Nothing here imports Django at module level: the test process only starts and talks to servers. The
provisioning runs in a subprocess (`python -m tests.stream_e2e_helpers provision`, JSON spec on stdin),
with the same environment as the servers it prepares.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STREAM_PATH = "/ws/v1/stream"

# What a server process must not inherit from the test run.
_SCRUBBED = ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS",
             "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


# --- processes ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a server subprocess: this one without database/Redis/settings, plus `overrides`
    (a None value leaves the variable out)."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", LOG_LEVEL="WARNING", LOG_REQUESTS="0",
               NO_PROXY="127.0.0.1,localhost", JWT_ACCESS_TTL_SECONDS="1800")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def manage(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120) -> str:
    """Run `manage.py ARGS` (or `python -m ...` when args start with "-m"); return stdout, raise on failure."""
    argv = [PYTHON, *args] if args and args[0] == "-m" else [PYTHON, "manage.py", *args]
    result = subprocess.run(argv, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    return result.stdout


def provision(env: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    """Migrate (optionally) and create tenants, users, funds and tokens in one Django process; see
    `_provision` for the spec and the answer."""
    out = manage(env, "-m", "tests.stream_e2e_helpers", "provision", stdin=json.dumps(spec), timeout=180)
    return json.loads(out.strip().splitlines()[-1])


def _die_with_parent() -> None:
    """In the child, before exec (Linux): get SIGTERM when the test process dies, however it dies, so that no
    server outlives a killed test run."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """A subprocess in its own process group, its output in a log file; `stop()` ends the group (TERM, then
    KILL) and is safe to call twice."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, *,
                 port: int | None = None, ready_text: str | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.name, self.argv, self.env, self.port, self.ready_text = name, argv, env, port, ready_text
        self.pass_fds = pass_fds
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    def start(self) -> Server:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            pass_fds=self.pass_fds, preexec_fn=_die_with_parent)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def errors(self, *, ignore: tuple[str, ...] = ()) -> list[str]:
        """Log lines that report an error or a traceback (JSON log records are one line each), except those
        containing one of `ignore`."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        markers = ("Traceback", '"levelname": "ERROR"', '"levelname": "CRITICAL"', "Exception in ASGI application",
                   "Task exception was never retrieved")
        return [line for line in text.splitlines()
                if any(m in line for m in markers) and not any(i in line for i in ignore)]

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /healthz answers 200 (or, without a port, `ready_text` shows in the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.port is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.http}/healthz", timeout=1, trust_env=False).status_code == 200:
                        return
            elif self.ready_text and self.ready_text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def start_all(servers: Iterable[Server], timeout: float = 90) -> None:
    """Start the servers together (their boots overlap), then wait for each; stop them all on failure."""
    servers = list(servers)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: Iterable[Server]) -> None:
    for server in servers:
        server.stop()


# --- clients -----------------------------------------------------------------------------------------------

async def open_stream(ws_url: str, app_key: str, token: str | None, *, origin: str | None = None,
                      expect_ready: bool = True, **kwargs: Any) -> ClientConnection:
    """A real websocket client on the stream, authenticated by the Authorization header."""
    headers = {"X-App-Key": app_key}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    ws = await connect(ws_url, additional_headers=headers, origin=origin, ping_interval=None, proxy=None,
                       open_timeout=15, close_timeout=2, **kwargs)
    if expect_ready:
        ready = await next_message(ws)
        assert ready["type"] == "ready", ready
    return ws


async def next_message(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next message other than a server heartbeat (`ping`)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("type") != "ping":
            return message


async def subscribe(ws: ClientConnection, topics: list[str], positions: dict[str, int] | None = None,
                    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Subscribe; return `subscribed` and, on a fresh subscribe to balances, the `snapshot`."""
    await ws.send(json.dumps({"type": "subscribe", "topics": topics, "positions": positions or {}}))
    subscribed = await next_message(ws)
    assert subscribed["type"] == "subscribed", subscribed
    snapshot = None
    if "balances" in topics and "user" not in (positions or {}):
        snapshot = await next_message(ws)
        assert snapshot["type"] == "snapshot", snapshot
    return subscribed, snapshot


async def collect_events(ws: ClientConnection, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Exactly the next `count` events (messages whose type has a dot); any other message fails."""
    events: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(events) < count:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            message = await next_message(ws, max(remaining, 0.01))
        except TimeoutError as exc:
            raise AssertionError(f"got {len(events)} of {count} events within {timeout}s: "
                                 f"{[(e['seq'], e['type']) for e in events]}") from exc
        assert "." in message["type"], f"expected an event, got {message} after {len(events)} events"
        events.append(message)
    return events


async def collect_transfers(ws: ClientConnection, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next events up to and including the `count`-th `transfer.completed`. Transfers committed in one
    batch (group commit) share one `account.balance_changed` per account, sent before their
    `transfer.completed` events, so the number of events per transfer is not fixed."""
    events: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(e["type"] == "transfer.completed" for e in events) < count:
        remaining = deadline - asyncio.get_running_loop().time()
        events += await collect_events(ws, 1, max(remaining, 0.01))
    return events


async def assert_quiet(ws: ClientConnection, seconds: float) -> None:
    """Nothing but heartbeats arrives for `seconds`."""
    with contextlib.suppress(TimeoutError):
        message = await next_message(ws, seconds)
        raise AssertionError(f"expected nothing, got {message}")


async def read_until_closed(ws: ClientConnection, timeout: float = 15.0) -> tuple[list[dict[str, Any]], int | None]:
    """Every message up to the close; returns them and the close code the server sent (None: still open
    after `timeout`)."""
    messages: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), max(remaining, 0.01))))
    except TimeoutError:
        return messages, None
    except ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd else 1006


async def read_events(ws: ClientConnection, count: int, timeout: float = 10.0,
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """Up to `count` events, stopping early at a close or the timeout: (events, other messages, close code or
    None while open). For asserting what a socket got when it may be closed on the way."""
    events: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while len(events) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            message = json.loads(await asyncio.wait_for(ws.recv(), max(remaining, 0.01)))
            (events if "." in message["type"] else others).append(message)
    except TimeoutError:
        pass
    except ConnectionClosed as closed:
        return events, others, closed.rcvd.code if closed.rcvd else 1006
    return events, others, None


async def transfer(http: httpx.AsyncClient, base: str, app_key: str, token: str, recipient: str, amount: int,
                   memo: str = "") -> dict[str, Any]:
    """POST /api/v1/transfers as the token's user; returns the created transfer."""
    response = await http.post(f"{base}/api/v1/transfers",
                               json={"recipient": recipient, "asset": "USD", "amount": str(amount), "memo": memo},
                               headers={"X-App-Key": app_key, "Authorization": f"Bearer {token}",
                                        "Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 201, f"{response.status_code} {response.text}"
    return response.json()


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=20, trust_env=False)


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


# --- provisioning (runs in a Django subprocess) ------------------------------------------------------------

def _provision(spec: dict[str, Any]) -> dict[str, Any]:
    """spec: {"migrate": bool, "tenants": [{"slug", "name", "allowed_origins": [...],
    "users": [{"email", "fund": "100.00" | None}]}]}.
    Answer: {"tenants": {slug: {"app_key", "tenant_id", "users": {email: {"id", "token"}}}}}. Tenants come
    from `manage.py create_tenant`, funds from `manage.py fund`, tokens from a real session."""
    import io

    from django.core.management import call_command

    if spec.get("migrate"):
        call_command("migrate", interactive=False, verbosity=0)
    from tenants import services as tenant_services
    from tenants.auth.sessions import session_start
    from tenants.models import Tenant
    from wallet.ledger import services as ledger
    from wallet.ledger.models import Asset

    ledger.assets_catalogue_ensure()
    usd = Asset.objects.get(code="USD")
    answer: dict[str, Any] = {"tenants": {}}
    for item in spec["tenants"]:
        out = io.StringIO()
        call_command("create_tenant", item["slug"], name=item["name"], stdout=out)
        created = json.loads(out.getvalue())
        tenant = Tenant.objects.get(slug=item["slug"])
        if item.get("allowed_origins"):
            Tenant.objects.filter(pk=tenant.pk).update(allowed_origins=item["allowed_origins"])
        ledger.tenant_asset_enable(tenant=tenant, asset=usd)
        users = {}
        for person in item["users"]:
            user = tenant_services.user_create(tenant=tenant, email=person["email"], password=None)
            if person.get("fund"):
                call_command("fund", item["slug"], person["email"], "USD", person["fund"], stdout=io.StringIO())
            users[person["email"]] = {"id": str(user.pk), "token": session_start(user=user).access}
        answer["tenants"][item["slug"]] = {"app_key": created["app_key"], "tenant_id": created["tenant_id"],
                                           "users": users}
    return answer


def _main(argv: list[str]) -> None:
    if argv[:1] == ["provision"]:
        import django

        os.chdir(ROOT)
        django.setup()
        answer = _provision(json.loads(sys.stdin.read()))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        # The in-process relay may have been woken by the funding; do not wait for its thread.
        os._exit(0)
    raise SystemExit(f"usage: python -m tests.stream_e2e_helpers provision < spec.json (got {argv})")


if __name__ == "__main__":
    _main(sys.argv[1:])
