"""Interpreter settings for the long-lived processes that serve money movements (web workers, writers)."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from django.http import HttpResponse

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def process_tune(*, switch_interval_ms: float | None = None) -> None:
    """Call once the app is loaded (after `django.setup()` and the URL conf).

    - `gc.freeze()`: Django, the URL conf, the models and whatever else was loaded at start-up live as long
      as the process; frozen, they are out of every later collection's walk. A batch of 256 transfers
      allocates enough to trigger full collections, and each one walked the whole start-up heap: the
      batch's locked window went from ~70-75 ms to ~62 ms with the heap frozen (in process, PostgreSQL).
    - Collections less often (`WSGI_GC_THRESHOLD`, default 20000 container allocations between young
      collections, then 50 and 100; CPython's are 700, 10, 10; 0 keeps CPython's): a transfer request
      allocates a few thousand objects, nearly all freed by reference counting, and the young collections
      every few requests cost ~2% of a worker's CPU under bench-ledger's load (~300 ms of collections per
      worker in 15 s, ~50 ms with these thresholds, measured with `gc.callbacks`).
    - Log records skip what no formatter of ours prints (the Python logging HOWTO's "Optimization"): the
      caller's file and line (`logging._srcfile = None` spares a stack walk per record), the thread's name
      and the multiprocessing process name. Every API request writes a log line; `LOG_RECORD_CALLER=1`
      keeps them all. The process id stays: gunicorn's own error log formats it with `%(process)d`.
    - The GIL switch interval (`WSGI_SWITCH_INTERVAL_MS`, default 0.5 ms; CPython's is 5 ms): in a threaded
      worker, a thread back from I/O, such as a transfer committer returning from PostgreSQL with its
      batch's locks held, waits at most this long while another thread parses a request.
    """
    if switch_interval_ms is None:
        switch_interval_ms = float(os.environ.get("WSGI_SWITCH_INTERVAL_MS", "0.5"))
    sys.setswitchinterval(switch_interval_ms / 1000)
    if os.environ.get("LOG_RECORD_CALLER", "") not in ("1", "true", "yes"):
        logging._srcfile = None  # type: ignore[attr-defined]  # documented in the logging HOWTO
        logging.logThreads = False
        logging.logMultiprocessing = False
    threshold = int(os.environ.get("WSGI_GC_THRESHOLD", "20000"))
    if threshold > 0:
        gc.set_threshold(threshold, 50, 100)
    gc.collect()
    gc.freeze()


def whole_responses(app: WSGIApp) -> WSGIApp:
    """The WSGI app, answering a plain `HttpResponse` as a one-item list of its bytes, closed already.

    Django hands the server its response object to iterate and close. granian (docs/ARCHITECTURE.md) then
    iterates it in the request's thread, releasing the GIL around the hand-over of each chunk and taking
    it again for the next: with 32 threads of a worker and the transfer committer after it, every
    re-acquisition waits its turn and costs context switches. A list goes out in one piece, with no
    release. Here the body is read and the response closed (Django's `request_finished`: connections
    checked, caches closed) before the server sends anything (PEP 3333 allows either). A failure while
    closing is logged and the response still goes out, as when the server closed it after sending (a
    committed transfer must not reach its client as a 500). Streaming and file responses go through as
    they are."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        response = app(environ, start_response)
        if not isinstance(response, HttpResponse):
            return response
        try:
            body = response.content
        finally:
            try:
                response.close()
            except Exception:
                logger.exception("closing the response failed (request_finished); the response is sent")
        return [body]

    return application
