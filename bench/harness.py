"""What the benchmarks share: servers started in their own process group, loopback HTTP, wrk runs.

Everything talks to 127.0.0.1 only, and every server started here is stopped by `Servers.close()`,
also on an error, Ctrl-C or SIGTERM (see `stop_on_sigterm`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"


class BenchError(Exception):
    """A benchmark cannot go on; the message says why."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop the servers."""

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- HTTP on loopback, without proxies or redirects ------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer to report, not to follow (e.g. an SSL redirect)


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http(
    method: str, url: str, *, headers: dict[str, str] | None = None, json_body: Any = None, timeout: float = 10
) -> tuple[int, bytes]:
    """One request; returns (status, body) for any HTTP answer, raises OSError when nothing answers."""
    data = None if json_body is None else json.dumps(json_body).encode()
    all_headers = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(method: str, url: str, *, expect: int, **kwargs: Any) -> Any:
    """A request whose answer must have status `expect` and a JSON body, which is returned."""
    status, body = http(method, url, **kwargs)
    if status != expect:
        raise BenchError(f"{method} {url} answered {status}, expected {expect}: {body[:500]!r}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BenchError(f"{method} {url} answered {status} with a body that is not JSON: {body[:500]!r}") from exc


# --- servers ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class Servers:
    """Servers started in their own process groups, with their output in log files; `close()` stops all."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.running: list[Server] = []

    def start(self, name: str, argv: list[str], ready_url: str, timeout: float = 60) -> Server:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name, process, log)
        self.running.append(server)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode} while starting:\n{tail(log)}")
            try:
                status, body = http("GET", ready_url, timeout=2)
                if status == 200:
                    return server
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: {ready_url} answered {status}: {body[:300]!r}\n{tail(log)}")
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not answer {ready_url} within {timeout:.0f}s:\n{tail(log)}") from None
            time.sleep(0.1)

    def stop(self, server: Server) -> None:
        """Stop one server (and its workers)."""
        _stop_group(server.process, signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _stop_group(server.process, signal.SIGKILL)
            server.process.wait()
        _stop_group(server.process, signal.SIGKILL)
        self.running.remove(server)

    def close(self) -> None:
        for server in list(self.running):
            self.stop(server)


def _stop_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


# --- wrk -------------------------------------------------------------------------------------------------

_RESULT = re.compile(r"^BENCH_RESULT (.*)$", re.MULTILINE)


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]


def wrk(url: str, *, threads: int, connections: int, seconds: int, headers: dict[str, str] | None = None,
        script: Path = WRK_SCRIPT, env: dict[str, str] | None = None) -> WrkResult:
    """One wrk run against `url`; refuses a run with any non-2xx/3xx answer or socket error.

    `script` is a wrk Lua script that prints a `BENCH_RESULT` line as bench/wrk_report.lua does; `env`
    adds environment variables for it (the default script sends `headers`' app key and authorization)."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is missing (.ci/services install installs it)")
    run_env = dict(os.environ)
    run_env["BENCH_APP_KEY"] = (headers or {}).get("X-App-Key", "")
    run_env["BENCH_AUTHORIZATION"] = (headers or {}).get("Authorization", "")
    run_env.update(env or {})
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    completed = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = _RESULT.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({completed.returncode}) on {url}:\n{completed.stdout}{completed.stderr}")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    errors = {k: int(fields[k]) for k in ("connect", "read", "write", "status", "timeout")}
    if any(errors.values()):
        raise BenchError(f"wrk saw errors on {url}: {errors} (status = non-2xx/3xx answers)\n{completed.stdout}")
    requests = int(fields["requests"])
    duration_s = int(fields["duration_us"]) / 1e6
    return WrkResult(
        requests_per_second=requests / duration_s,
        p50_ms=float(fields["p50_us"]) / 1000,
        p99_ms=float(fields["p99_us"]) / 1000,
        requests=requests,
        errors=errors,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def require_pyspy(profile_dir: str, pyspy: Path) -> None:
    """Fail now, not minutes into a run, when profiles are asked for (`BENCH_PYSPY_DIR`) and py-spy is not at
    `pyspy`: it is a dev tool, outside the lock file."""
    if profile_dir and not pyspy.exists():
        raise BenchError(f"BENCH_PYSPY_DIR is set but py-spy is not at {pyspy} (install it with: "
                         f"{Path(sys.executable).parent / 'uv'} pip install --python {sys.executable} py-spy)")


def say(line: str) -> None:
    print(line, flush=True)


def fail(message: str) -> None:
    print(f"bench: FAILED: {message}", file=sys.stderr, flush=True)


def main_with_servers(prefix: str, body: Any) -> int:
    """Run `body(servers, work_dir)` with a temporary work dir; on a BenchError print it and the tails of
    the servers' logs and return 1; always stop the servers and remove the dir."""
    import tempfile

    work_dir = Path(tempfile.mkdtemp(prefix=prefix))
    servers = Servers(work_dir, dict(os.environ))
    try:
        return body(servers, work_dir)
    except BenchError as exc:
        fail(str(exc))
        for server in servers.running:
            print(f"--- last lines of the {server.name} log ---\n{tail(server.log, 15)}", file=sys.stderr)
        return 1
    finally:
        servers.close()
        shutil.rmtree(work_dir, ignore_errors=True)
