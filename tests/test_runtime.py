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

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        pytest.skip("pinning needs a process allowed on two CPUs or more (Linux)")
    return cpus


def test_cpu_claims_spread_over_the_cpus_then_wrap_and_free_with_their_socket() -> None:
    from wallet.core.runtime import cpu_claim

    cpus = _two_cpus()[:2]
    group = f"test-{secrets.token_hex(4)}"
    first = [cpu_claim(group, cpus) for _ in cpus]
    assert [claim[0] for claim in first if claim] == cpus  # one worker per CPU, in order
    second = cpu_claim(group, cpus)
    assert second is not None and second[0] == cpus[0]  # every CPU has one: a second round
    other_group = cpu_claim(f"{group}-other", cpus)
    assert other_group is not None and other_group[0] == cpus[0]  # groups do not see each other
    wrapped = cpu_claim(group, cpus, rounds=2)
    assert wrapped is not None and wrapped[0] == cpus[1]
    assert cpu_claim(group, cpus, rounds=2) is None  # two rounds full
    assert first[1] is not None
    first[1][1].close()  # the worker on the second CPU ends: its replacement takes its CPU back
    again = cpu_claim(group, cpus, rounds=2)
    assert again is not None and again[0] == cpus[1]
    for claim in [*first, second, other_group, wrapped, again]:
        if claim:
            claim[1].close()


def test_cpu_pin_pins_every_thread_and_the_threads_started_after_it() -> None:
    """In a process of its own: a thread started before the pin and one started after run on the pinned CPU
    only; a second process of the same group takes the next CPU."""
    _two_cpus()
    code = ("import json, os, sys, threading; from wallet.core.runtime import cpu_pin; "
            "stop = threading.Event(); before = threading.Thread(target=stop.wait); before.start(); "
            "cpu = cpu_pin(group=sys.argv[1]); after = threading.Thread(target=stop.wait); after.start(); "
            "threads = (threading.main_thread(), before, after); "
            "print(json.dumps([cpu, [sorted(os.sched_getaffinity(t.native_id)) for t in threads]])); "
            "sys.stdout.flush(); sys.stdin.read(); stop.set()")
    group = f"test-{secrets.token_hex(4)}"
    first = subprocess.Popen([sys.executable, "-c", code, group], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=_base_env())
    try:
        assert first.stdout is not None
        cpu, affinities = json.loads(first.stdout.readline())
        assert affinities == [[cpu]] * 3
        second = subprocess.run([sys.executable, "-c", code, group], input="", capture_output=True, text=True,
                                env=_base_env(), check=True)
        assert json.loads(second.stdout)[0] not in (cpu, None)  # the first still holds its CPU
    finally:
        first.communicate("")


@pytest.mark.parametrize(("env", "in_thread", "pinned"), [
    ({}, True, True),  # auto: a worker serving requests from a pool of threads (granian, gunicorn gthread)
    ({}, False, False),  # auto: a single-threaded worker (gunicorn sync)
    ({"WSGI_PIN_CPU": "1"}, False, True),
    ({"WSGI_PIN_CPU": "0"}, True, False),
])
def test_the_wsgi_application_pins_its_worker_at_the_first_request(env: dict[str, str], in_thread: bool,
                                                                   pinned: bool) -> None:
    cpus = _two_cpus()
    code = ("import os, sys, threading, wsgiref.util as u; from wallet.wsgi import application; env = {}; "
            "u.setup_testing_defaults(env); env.update(PATH_INFO='/no-such-page', HTTP_HOST='localhost'); "
            "before = len(os.sched_getaffinity(0)); "
            "serve = lambda: application(env, lambda status, headers, exc_info=None: None); "
            "t = threading.Thread(target=serve); (t.start(), t.join()) if sys.argv[1] == 'thread' else serve(); "
            "print(before, len(os.sched_getaffinity(0)))")
    out = subprocess.run([sys.executable, "-c", code, "thread" if in_thread else "main"],
                         env={**_base_env(), **env}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(cpus)), "1" if pinned else str(len(cpus))]


def test_whole_responses_pins_nothing_unless_asked() -> None:
    """The test process itself runs `whole_responses` without `pin`: it stays on every CPU it may use."""
    import os

    cpus = _two_cpus()
    whole_responses(lambda environ, start_response: HttpResponse(b""))({}, _start_response)
    assert sorted(os.sched_getaffinity(0)) == cpus
