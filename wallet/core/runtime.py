"""Interpreter settings for the long-lived processes that serve money movements (web workers, writers)."""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
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


def cpu_pin_wanted() -> bool:
    """Whether a WSGI worker pins itself to one CPU at its first request (`cpu_pin`): `WSGI_PIN_CPU`, `auto`
    by default, when that request runs in a thread other than the process's main thread, as in a worker
    that serves requests from a pool of threads (granian's blocking threads, gunicorn's gthread); not a
    single-threaded worker (gunicorn's sync workers), which holds its GIL alone and may use any core free.
    `1` always, `0` never."""
    setting = os.environ.get("WSGI_PIN_CPU", "auto").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    return threading.current_thread() is not threading.main_thread()


# The claims of this process (see `cpu_claim`): held open for the process's life.
_CPU_CLAIMS: list[socket.socket] = []
_PIN_LOCK = threading.Lock()
_pin_pending = True


def cpu_claim(group: str, cpus: Sequence[int], rounds: int = 64) -> tuple[int, socket.socket] | None:
    """Claim a CPU of `cpus` among the processes of `group`: the first free one, in order, then, once every
    CPU has a process, a second process per CPU, and so on. The claim is a name in the abstract Unix-socket
    namespace (Linux), bound by one socket at a time: it holds while the returned socket is open, and the
    kernel releases it when the process ends, so that a worker that replaces a dead one takes its CPU back,
    and nothing is left on disk. None if every claim of `rounds` rounds is taken."""
    for round_ in range(rounds):
        for cpu in cpus:
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                claim.bind(f"\0wallet-cpu/{group}/{round_}/{cpu}")
            except OSError:  # EADDRINUSE: another process of the group holds it
                claim.close()
                continue
            return cpu, claim
    return None


def cpu_pin(group: str | None = None) -> int | None:
    """Pin this process, every thread it has and so every thread they start later, to one CPU, a different
    one for each worker of a server while there are CPUs enough (`group`: by default the parent process,
    the server's master). Returns the CPU, or None when the process may use a single CPU or nothing was
    claimed (it is then left as it was).

    Why: a WSGI worker is many threads of one interpreter, and only the thread holding its GIL runs Python.
    Free to run on any core, its threads hand the GIL to each other across cores, and its holder is
    preempted by the other workers' threads and PostgreSQL while the worker's other threads wait for it.
    Pinned, a worker's threads hand the GIL over on their own core. In bench-ledger's HTTP runs (2 granian
    workers x 32 threads, 2 cores) pinning raised `POST /api/v1/transfers` from ~750 to ~1,050 req/s and cut
    the CPU per request by a quarter (docs/BENCHMARKS.md, twelfth session)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    claimed = cpu_claim(group or str(os.getppid()), allowed)
    if claimed is None:
        return None
    cpu, claim = claimed
    _CPU_CLAIMS.append(claim)
    seen: set[int] = set()
    while True:  # again, for any thread started by one not yet pinned
        tids = {int(tid) for tid in os.listdir("/proc/self/task")} - seen
        if not tids:
            return cpu
        for tid in tids:
            try:
                os.sched_setaffinity(tid, {cpu})
            except OSError:  # the thread has ended
                pass
        seen |= tids


def _pin_at_first_request() -> None:
    """Pin the worker (`cpu_pin`) at its first request, once, unless `WSGI_PIN_CPU` is off: in the worker,
    whether the server imported the app there or in its master before forking (gunicorn's `--preload`)."""
    global _pin_pending
    with _PIN_LOCK:
        if not _pin_pending:
            return
        _pin_pending = False
        if not cpu_pin_wanted():
            return
        try:
            cpu = cpu_pin()
        except OSError:
            logger.warning("pinning the worker to a CPU failed; it runs unpinned", exc_info=True)
            return
        if cpu is not None:
            logger.info("worker pinned to CPU %d", cpu, extra={"cpu": cpu})


def whole_responses(app: WSGIApp, *, pin: bool = False) -> WSGIApp:
    """The WSGI app, answering a plain `HttpResponse` as a one-item list of its bytes, closed already.

    Django hands the server its response object to iterate and close. granian (docs/ARCHITECTURE.md) then
    iterates it in the request's thread, releasing the GIL around the hand-over of each chunk and taking
    it again for the next: with 32 threads of a worker and the transfer committer after it, every
    re-acquisition waits its turn and costs context switches. A list goes out in one piece, with no
    release. Here the body is read and the response closed (Django's `request_finished`: connections
    checked, caches closed) before the server sends anything (PEP 3333 allows either). A failure while
    closing is logged and the response still goes out, as when the server closed it after sending (a
    committed transfer must not reach its client as a 500). Streaming and file responses go through as
    they are.

    With `pin` (the server's app, wallet/wsgi.py), the first request pins the worker to a CPU (`cpu_pin`,
    `WSGI_PIN_CPU`)."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if pin and _pin_pending:
            _pin_at_first_request()
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
