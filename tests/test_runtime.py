"""Interpreter settings of the serving processes (wallet/core/runtime.py)."""

from __future__ import annotations

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
