"""Interpreter settings of the serving processes (wallet/core/runtime.py)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from typing import Any

import pytest
from django.core.signals import request_finished
from django.http import FileResponse, HttpResponse, StreamingHttpResponse

from wallet.core.runtime import whole_responses


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "(20000, 50, 100) 0.0005 True None False True False"),
    ({"WSGI_GC_THRESHOLD": "0", "WSGI_SWITCH_INTERVAL_MS": "2", "LOG_RECORD_CALLER": "1"},
     "(700, 10, 10) 0.002 True True True True True"),
])
def test_process_tune_freezes_the_heap_and_sets_the_collector_and_the_switch_interval(
        env: dict[str, str], expected: str) -> None:
    code = ("import gc, logging, sys; from wallet.core.runtime import process_tune; process_tune(); "
            "print(gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count() > 0, "
            "logging._srcfile and True, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)")
    out = subprocess.run([sys.executable, "-c", code], env={**_base_env(), **env}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expected


def _base_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items()
            if not key.startswith("WSGI_") and key != "LOG_RECORD_CALLER"}


def test_gunicorns_error_log_format_still_works_after_process_tune() -> None:
    """gunicorn formats its own error log with `%(process)d` (gunicorn.glogging.Logger.error_fmt)."""
    code = ("import logging; from gunicorn.glogging import Logger; from wallet.core.runtime import process_tune; "
            "process_tune(); record = logging.LogRecord('gunicorn.error', logging.ERROR, 'x.py', 1, 'boom', None, "
            "None); print(logging.Formatter(Logger.error_fmt, Logger.datefmt).format(record))")
    out = subprocess.run([sys.executable, "-c", code], env=_base_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[ERROR] boom")
    assert "Logging error" not in out.stderr


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    _start_response.status = status  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_connection_closing_on_request_finished() -> Any:
    """Django's test client disconnects `close_old_connections` from `request_finished` too: with the test
    database blocked, a connection left open by an earlier test would refuse the check."""
    from django.db import close_old_connections

    request_finished.disconnect(close_old_connections)
    yield
    request_finished.connect(close_old_connections)


def test_whole_responses_answers_a_plain_response_as_its_bytes_closed_already() -> None:
    finished = []

    def on_finished(**_: Any) -> None:
        finished.append(True)

    closed = []
    response = HttpResponse(b'{"id": "1"}', status=201, content_type="application/json")
    response._resource_closers.append(lambda: closed.append(True))
    request_finished.connect(on_finished)
    try:
        body = whole_responses(lambda environ, start_response: response)({}, _start_response)
        assert body == [b'{"id": "1"}']
        assert closed == [True]  # the response's own closers ran
        assert finished == [True]  # Django's request_finished: connections checked, as after a server's close()
    finally:
        request_finished.disconnect(on_finished)


def test_whole_responses_sends_the_response_when_closing_it_fails(caplog: pytest.LogCaptureFixture) -> None:
    def failing(**_: Any) -> None:
        raise RuntimeError("a request_finished receiver failed")

    response = HttpResponse(b'{"id": "1"}', status=201, content_type="application/json")
    request_finished.connect(failing)
    try:
        with caplog.at_level("ERROR", logger="wallet.core.runtime"):
            body = whole_responses(lambda environ, start_response: response)({}, _start_response)
    finally:
        request_finished.disconnect(failing)
    assert body == [b'{"id": "1"}']  # a committed transfer is not turned into a 500
    assert "closing the response failed" in caplog.text


@pytest.mark.parametrize("make", [
    lambda: StreamingHttpResponse(iter([b"a", b"b"])),
    lambda: FileResponse(__import__("io").BytesIO(b"file")),
])
def test_whole_responses_passes_streaming_and_file_responses_through(make: Any) -> None:
    response = make()
    assert whole_responses(lambda environ, start_response: response)({}, _start_response) is response
    response.close()


def test_the_wsgi_application_answers_a_list_of_bytes() -> None:
    """The project's WSGI app (wallet/wsgi.py), in a process of its own (it tunes the interpreter)."""
    code = ("import wsgiref.util as u; from wallet.wsgi import application; env = {}; "
            "u.setup_testing_defaults(env); env.update(PATH_INFO='/no-such-page', HTTP_HOST='localhost'); "
            "out = application(env, lambda status, headers, exc_info=None: print(status)); "
            "print(type(out).__name__, all(isinstance(chunk, bytes) for chunk in out))")
    out = subprocess.run([sys.executable, "-c", code], env=_base_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[-2:] == ["list True", ""]
    assert out.stdout.startswith("404")


# --- pinning a worker to a CPU ----------------------------------------------------------------------------------
def _two_cpus() -> list[int]:
    import os

    cpus = sorted(os.sched_getaffinity(0)) if sys.platform == "linux" else []
    if len(cpus) < 2:
        pytest.skip("pinning needs Linux and a process allowed on two CPUs or more")
    return cpus


def _python(code: str, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return subprocess.run([sys.executable, "-c", code, *args], env={**_base_env(), **(env or {})},
                          capture_output=True, text=True, check=True, timeout=60, **kwargs)


@pytest.mark.skipif(sys.platform != "linux", reason="claims are names in Linux's abstract socket namespace")
def test_cpu_claims_spread_over_the_cpus_then_wrap_and_free_with_their_socket() -> None:
    """Claims are names only (no CPU is touched): CPUs 0 and 1 whatever this machine has."""
    from contextlib import ExitStack

    from wallet.core.runtime import cpu_claim

    cpus, group = [0, 1], f"test-{secrets.token_hex(4)}"
    with ExitStack() as stack:
        def claim(group: str = group, rounds: int = 64) -> tuple[int, int] | None:
            claimed = cpu_claim(group, cpus, rounds=rounds)
            if claimed is None:
                return None
            stack.callback(claimed[2].close)
            return claimed[0], claimed[1]

        first = cpu_claim(group, cpus)
        assert first is not None
        assert (first[0], first[1]) == (0, 0)
        assert claim() == (1, 0)  # one worker per CPU, in order
        assert claim() == (0, 1)  # every CPU has one: a second round
        assert claim(f"{group}-other") == (0, 0)  # groups do not see each other
        assert claim(rounds=2) == (1, 1)
        assert claim(rounds=2) is None  # two rounds full
        first[2].close()  # the worker on CPU 0 ends: its replacement takes its CPU back
        assert claim(rounds=2) == (0, 0)


def _end(process: subprocess.Popen[str]) -> None:
    try:
        process.communicate("", timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


_PIN_CODE = r"""
import json, os, sys, threading
from wallet.core import runtime
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
cpu = runtime.cpu_pin(group=sys.argv[1])
after = threading.Thread(target=stop.wait); after.start()
threads = (threading.main_thread(), before, after)
def report(**extra):
    print(json.dumps({"cpu": runtime._claim.cpu if runtime._claim else None,
                      "threads": [sorted(os.sched_getaffinity(t.native_id)) for t in threads], **extra}), flush=True)
report(first=cpu)
for line in sys.stdin:
    if line.strip() == "rebalance":
        report(moved=runtime.cpu_rebalance())
    elif line.strip() == "fork":
        pid = os.fork()
        if pid == 0:
            os.write(1, (json.dumps({"child_claim": runtime._claim}) + "\n").encode()); os._exit(0)
        os.waitpid(pid, 0)
    elif line.strip() == "child":
        import subprocess
        out = subprocess.run([sys.executable, "-c", "import os; from wallet.core.runtime import cpu_affinity_restore; "
                              "cpu_affinity_restore(); print(sorted(os.sched_getaffinity(0)))"],
                             env={**os.environ, **runtime.cpu_affinity_env()}, capture_output=True, text=True,
                             timeout=60)
        print(json.dumps({"child_affinity": json.loads(out.stdout)}), flush=True)
stop.set()
"""


def test_cpu_pin_pins_every_thread_and_the_threads_started_after_it() -> None:
    """In a process of its own: a thread started before the pin and one started after run on the pinned CPU
    only; a second process of the same group takes the next CPU; a child forked from it holds no claim, and
    one started with `cpu_affinity_env()` (the committer process) runs where the parent could before."""
    cpus = _two_cpus()
    group = f"test-{secrets.token_hex(4)}"
    first = subprocess.Popen([sys.executable, "-c", _PIN_CODE, group], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=_base_env())
    try:
        assert first.stdin is not None and first.stdout is not None
        report = json.loads(first.stdout.readline())
        assert report["first"] == report["cpu"] == cpus[0]
        assert report["threads"] == [[cpus[0]]] * 3
        second = _python(_PIN_CODE, group, input="")
        assert json.loads(second.stdout)["first"] == cpus[1]  # the first still holds its CPU
        first.stdin.write("fork\nchild\n")
        first.stdin.flush()
        assert json.loads(first.stdout.readline()) == {"child_claim": None}
        assert json.loads(first.stdout.readline()) == {"child_affinity": cpus}
        third = _python(_PIN_CODE, group, input="")
        assert json.loads(third.stdout)["first"] == cpus[1]  # the second process's claim ended with it
    finally:
        _end(first)


def test_a_worker_pinned_in_a_later_round_moves_to_a_claim_freed_before_it() -> None:
    """A server that starts the new worker before stopping the old one: the new one finds both CPUs taken
    and shares CPU 0; when the old worker of CPU 1 stops, it moves there."""
    from wallet.core.runtime import cpu_claim

    cpus = _two_cpus()[:2]
    group = f"test-{secrets.token_hex(4)}"
    held = [cpu_claim(group, cpus), cpu_claim(group, cpus)]  # the old workers of CPU 0 and CPU 1
    worker = subprocess.Popen([sys.executable, "-c", _PIN_CODE, group], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_base_env())
    try:
        assert worker.stdin is not None and worker.stdout is not None
        assert json.loads(worker.stdout.readline())["cpu"] == cpus[0]  # the second round (index 1), CPU 0
        worker.stdin.write("rebalance\n")
        worker.stdin.flush()
        assert json.loads(worker.stdout.readline())["moved"] is None  # nothing free before it yet
        assert held[1] is not None
        held[1][2].close()  # the old worker of CPU 1 stops
        worker.stdin.write("rebalance\n")
        worker.stdin.flush()
        report = json.loads(worker.stdout.readline())
        assert report["moved"] == report["cpu"] == cpus[1]
        assert report["threads"] == [[cpus[1]]] * 3
        assert cpu_claim(group, cpus, rounds=1) is None  # it holds CPU 1's first-round claim now
    finally:
        _end(worker)
        for claim in held:
            if claim:
                claim[2].close()


@pytest.mark.parametrize(("env", "in_thread", "pinned"), [
    ({}, True, True),  # auto: a worker serving requests from a pool of threads (granian, gunicorn gthread)
    ({}, False, False),  # auto: a worker serving them from its main thread (gunicorn sync)
    ({"WSGI_PIN_CPU": "1"}, False, True),
    ({"WSGI_PIN_CPU": "0"}, True, False),
])
def test_the_wsgi_application_pins_its_worker_at_the_first_request(env: dict[str, str], in_thread: bool,
                                                                   pinned: bool) -> None:
    from wallet.core.runtime import cgroup_cpu_quota

    cpus = _two_cpus()
    quota = cgroup_cpu_quota()
    if not env and pinned and quota is not None and quota < len(cpus):
        pytest.skip(f"this cgroup's CPU quota ({quota}) is below its {len(cpus)} CPUs: auto does not pin here")
    code = ("import os, sys, threading, wsgiref.util as u; from wallet.wsgi import application; env = {}; "
            "u.setup_testing_defaults(env); env.update(PATH_INFO='/no-such-page', HTTP_HOST='localhost'); "
            "before = len(os.sched_getaffinity(0)); "
            "serve = lambda: application(env, lambda status, headers, exc_info=None: None); "
            "t = threading.Thread(target=serve); (t.start(), t.join()) if sys.argv[1] == 'thread' else serve(); "
            "print(before, len(os.sched_getaffinity(0)))")
    out = _python(code, "thread" if in_thread else "main", env=env)
    assert out.stdout.split() == [str(len(cpus)), "1" if pinned else str(len(cpus))]


def test_auto_does_not_pin_under_a_cpu_quota_below_the_cpus(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from wallet.core import runtime

    monkeypatch.delenv("WSGI_PIN_CPU", raising=False)

    limits = tmp_path / "cpu.max"
    for text, quota in [("max 100000\n", None), ("150000 100000\n", 1.5), ("garbage", None)]:
        limits.write_text(text)
        assert runtime.cgroup_cpu_quota(str(limits)) == quota
    assert runtime.cgroup_cpu_quota(str(tmp_path / "missing")) is None
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    wanted: dict[float | None, bool] = {}
    for quota in (None, 1.5, 4.0):
        monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda quota=quota: quota)
        thread = threading.Thread(target=lambda quota=quota: wanted.__setitem__(quota, runtime.cpu_pin_wanted()))
        thread.start()
        thread.join()
    assert wanted == {None: True, 1.5: False, 4.0: True}
    assert runtime.cpu_pin_wanted() is False  # the main thread: not a threaded worker


def test_whole_responses_pins_nothing_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `pin`, not even with WSGI_PIN_CPU=1 and a request in a thread (and the test process is never
    pinned: `cpu_pin` is replaced by a spy)."""
    import threading

    from wallet.core import runtime

    calls: list[bool] = []
    monkeypatch.setenv("WSGI_PIN_CPU", "1")
    monkeypatch.setattr(runtime, "cpu_pin", lambda group=None: calls.append(True))
    monkeypatch.setattr(runtime, "_pin_pending", True)
    app = whole_responses(lambda environ, start_response: HttpResponse(b""))
    thread = threading.Thread(target=lambda: app({}, _start_response))
    thread.start()
    thread.join()
    assert calls == []
    pinned_app = whole_responses(lambda environ, start_response: HttpResponse(b""), pin=True)
    thread = threading.Thread(target=lambda: pinned_app({}, _start_response))
    thread.start()
    thread.join()
    assert calls == [True]  # the spy saw the pin that `pin=True` asks for (once)
    pinned_app({}, _start_response)
    assert calls == [True]


def test_a_worker_in_a_later_round_looks_for_a_freed_claim_every_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the request path of `whole_responses(pin=True)`: only a worker pinned in a later round, and at
    most every REBALANCE_SECONDS (`cpu_rebalance` is a spy: nothing is pinned here)."""
    import socket

    from wallet.core import runtime

    calls: list[float] = []
    now = [1000.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(runtime, "cpu_rebalance", lambda: calls.append(now[0]))
    monkeypatch.setattr(runtime, "_pin_pending", False)
    monkeypatch.setattr(runtime, "_next_rebalance", 1000.0 + runtime.REBALANCE_SECONDS)
    app = whole_responses(lambda environ, start_response: HttpResponse(b""), pin=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as claim:
        monkeypatch.setattr(runtime, "_claim", runtime._Claim("g", (0, 1), 0, 0, claim))  # a first-round claim
        now[0] += 60
        app({}, _start_response)
        assert calls == []
        monkeypatch.setattr(runtime, "_claim", runtime._Claim("g", (0, 1), 0, 1, claim))  # a later round
        app({}, _start_response)
        assert calls == [1060.0]
        now[0] += runtime.REBALANCE_SECONDS - 1
        app({}, _start_response)
        assert calls == [1060.0]  # not before ten seconds
        now[0] += 1
        app({}, _start_response)
        assert calls == [1060.0, 1060.0 + runtime.REBALANCE_SECONDS]


def test_the_committer_process_starts_with_the_affinity_its_worker_had_before_its_pin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`committer_process._start` passes the pre-pin affinity on, and its child restores it before
    importing Django; a worker that was not pinned passes nothing on (not even a value it inherited)."""
    import socket

    from wallet.core import runtime
    from wallet.ledger import committer_process

    seen: list[dict[str, str]] = []

    def popen(argv: list[str], **kwargs: Any) -> Any:
        seen.append(kwargs["env"])
        raise OSError("not started in this test")

    monkeypatch.setattr(committer_process.subprocess, "Popen", popen)
    monkeypatch.setattr(committer_process, "_start_after", 0.0)
    monkeypatch.setenv(runtime.AFFINITY_ENV, "7")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as claim:
        monkeypatch.setattr(runtime, "_claim", runtime._Claim("g", (0, 1), 1, 0, claim))  # pinned to CPU 1
        assert committer_process._start() is None
    monkeypatch.setattr(runtime, "_claim", None)
    assert committer_process._start() is None
    assert [env[runtime.AFFINITY_ENV] for env in seen] == ["0,1", ""]
    main = committer_process._MAIN
    assert main.index("cpu_affinity_restore()") < main.index("import django")


def test_a_pin_that_fails_midway_puts_the_threads_back_and_frees_its_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cpu_pin` when a thread's affinity cannot be set (a seccomp filter, say): the error reaches the caller,
    the threads already moved go back to every CPU they had, and the CPU is free for another worker.
    (`_set_affinity` is replaced: nothing is pinned here.)"""
    from wallet.core import runtime

    cpus = _two_cpus()
    calls: list[set[int]] = []

    def set_affinity(wanted: set[int]) -> None:
        calls.append(wanted)
        if len(calls) == 1:
            raise PermissionError("not allowed")

    monkeypatch.setattr(runtime, "_set_affinity", set_affinity)
    monkeypatch.setattr(runtime, "_claim", None)
    group = f"test-{secrets.token_hex(4)}"
    with pytest.raises(PermissionError):
        runtime.cpu_pin(group=group)
    assert calls == [{cpus[0]}, set(cpus)]
    assert runtime._claim is None
    again = runtime.cpu_claim(group, cpus)
    assert again is not None and again[0] == cpus[0]  # its claim was released
    again[2].close()


def test_a_claim_that_cannot_be_bound_for_another_reason_than_being_taken_raises() -> None:
    from wallet.core.runtime import cpu_claim

    if sys.platform != "linux":
        pytest.skip("claims are names in Linux's abstract socket namespace")
    with pytest.raises(OSError, match="too long"):
        cpu_claim("x" * 200, [0, 1])  # longer than a socket address may be: not mistaken for a taken claim
