"""Interpreter settings for the long-lived processes that serve money movements (web workers, writers)."""

from __future__ import annotations

import errno
import gc
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

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
    """Whether a WSGI worker pins itself to one CPU at its first request (`cpu_pin`). `WSGI_PIN_CPU`:
    `1` always, `0` never, `auto` (the default) when that request runs in a thread other than the process's
    main thread, as in a worker that serves requests from a pool of threads (granian's blocking threads,
    gunicorn's gthread), and not in a worker that serves them from its main thread (gunicorn's sync
    workers: one request at a time, so its GIL has one busy thread, not 33), and not when the process's
    cgroup grants it fewer CPUs than it may run on (a CPU quota, `cpu.max`, without a cpuset of that size:
    the scheduler then spreads the quota over every CPU, and workers of other containers would stack on the
    same first CPUs)."""
    setting = os.environ.get("WSGI_PIN_CPU", "auto").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    if threading.current_thread() is threading.main_thread():
        return False
    quota = cgroup_cpu_quota()
    return quota is None or quota >= len(os.sched_getaffinity(0))


def cgroup_cpu_quota(path: str | None = None) -> float | None:
    """The CPUs' worth of time the process may use under cgroup v2 quotas (`cpu.max`): the smallest of its
    own cgroup's and its parents', found from /proc/self/cgroup; or that of the one file `path`. None
    without a quota, or without cgroup v2 (v1's quotas are not read)."""
    paths = [path] if path else _cgroup_cpu_max_paths()
    quotas = [quota for quota in map(_cpu_max, paths) if quota is not None]
    return min(quotas) if quotas else None


def _cgroup_cpu_max_paths(root: str = "/sys/fs/cgroup") -> list[str]:
    try:
        with open("/proc/self/cgroup") as groups:
            own = next((line[3:].strip() for line in groups if line.startswith("0::")), None)
    except OSError:
        return []
    if own is None:
        return []
    parts = [part for part in own.split("/") if part]
    return [os.path.join(root, *parts[:depth], "cpu.max") for depth in range(len(parts), -1, -1)]


def _cpu_max(path: str) -> float | None:
    try:
        with open(path) as limits:
            quota, period = limits.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


class _Claim(NamedTuple):
    """This process's CPU claim (see `cpu_claim`), held for its life."""

    group: str
    cpus: tuple[int, ...]  # those it could run on before it was pinned
    cpu: int
    round: int
    socket: socket.socket


_claim: _Claim | None = None
_PIN_LOCK = threading.Lock()
_pin_pending = True
_next_rebalance = 0.0
REBALANCE_SECONDS = 10.0
AFFINITY_ENV = "WALLET_CPU_AFFINITY"


def _claim_name(group: str, round_: int, cpu: int) -> str:
    return f"\0wallet-cpu/{group}/{round_}/{cpu}"


def _bind(name: str) -> socket.socket | None:
    """The socket holding `name` in the abstract namespace, or None if another socket holds it."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        claim.bind(name)
    except OSError as error:
        claim.close()
        if error.errno == errno.EADDRINUSE:
            return None
        raise
    return claim


def cpu_claim(group: str, cpus: Sequence[int], rounds: int = 64) -> tuple[int, int, socket.socket] | None:
    """Claim a CPU of `cpus` among the processes of `group`: the first free one, in order, then, once every
    CPU has a process, a second process per CPU, and so on. Returns (CPU, round, socket). The claim is a
    name in the abstract Unix-socket namespace (Linux; one per network namespace), bound by one socket at a
    time: it holds while that socket is open, and the kernel releases it when its process ends. Nothing is
    left on disk. None if every claim of `rounds` rounds is taken. Raises OSError if a name cannot be
    bound for another reason than being taken."""
    for round_ in range(rounds):
        for cpu in cpus:
            claim = _bind(_claim_name(group, round_, cpu))
            if claim is not None:
                return cpu, round_, claim
    return None


def _set_affinity(cpus: set[int]) -> None:
    """Set the affinity of every thread of this process; threads started later inherit their starter's.
    The calling thread's failure raises; a thread that ended meanwhile is skipped. A few passes: a thread
    started by one not yet set gets the old affinity, and shows up in the next pass."""
    os.sched_setaffinity(0, cpus)
    done: set[int] = {threading.get_native_id()}
    for _ in range(5):
        tids = {int(tid) for tid in os.listdir("/proc/self/task")} - done
        if not tids:
            return
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # the thread has ended
                pass
        done |= tids


def cpu_pin(group: str | None = None) -> int | None:
    """Pin this process, every thread it has and so every thread they start later, to one CPU, a different
    one for each worker of a server while there are CPUs enough (`group`: by default the parent process,
    the server's master; see `cpu_claim`). Returns the CPU, or None when the process may run on a single
    CPU, or this is not Linux, or every claim is taken (it is then left as it was). Raises OSError if the
    affinity cannot be set (nothing is then claimed).

    Why: a WSGI worker is many threads of one interpreter, and only the thread holding its GIL runs Python.
    Free to run on any core, its threads hand the GIL to each other across cores, and its holder is
    preempted by the other workers' threads and PostgreSQL while the worker's other threads wait for it.
    Pinned, a worker's threads hand the GIL over on their own core. On 2 cores with 2 granian workers x 32
    threads, pinning raised `POST /api/v1/transfers` from 666-770 to 1,039-1,065 req/s in a same-run
    comparison and cut the CPU per request by a quarter (docs/BENCHMARKS.md, bench-ledger, twelfth session)."""
    global _claim
    if sys.platform != "linux" or _claim is not None:
        return None if _claim is None else _claim.cpu
    allowed = tuple(sorted(os.sched_getaffinity(0)))
    if len(allowed) < 2:
        return None
    group = group or str(os.getppid())
    claimed = cpu_claim(group, allowed)
    if claimed is None:
        return None
    cpu, round_, sock = claimed
    _move(sock, cpu, undo=set(allowed))
    _claim = _Claim(group, allowed, cpu, round_, sock)
    return cpu


def _move(claim: socket.socket, cpu: int, undo: set[int]) -> None:
    """Set every thread's affinity to `cpu`, the CPU `claim` holds; if that fails, close the claim, put the
    threads already moved back on `undo`, and raise."""
    try:
        _set_affinity({cpu})
    except BaseException:
        claim.close()
        try:
            _set_affinity(undo)
        except OSError:
            logger.warning("could not undo a partial move to CPU %d", cpu, exc_info=True)
        raise


def cpu_rebalance() -> int | None:
    """A pinned process in a second (or later) round moves to a free claim of an earlier round, if any, and
    returns its new CPU. Workers of a server that replaces them one by one, starting the new before
    stopping the old (granian's reload and worker lifetimes), take the claims they find, then their
    predecessors free theirs: without this, two could stay on one CPU and leave another without any. Two
    processes that try the same free claim: one binds it, the other stays."""
    global _claim
    if _claim is None or _claim.round == 0:
        return None
    for earlier in range(_claim.round):
        for target in _claim.cpus:
            moved = _bind(_claim_name(_claim.group, earlier, target))
            if moved is None:
                continue
            _move(moved, target, undo={_claim.cpu})  # on failure, back to the CPU it still claims
            _claim.socket.close()
            _claim = _claim._replace(cpu=target, round=earlier, socket=moved)
            return target
    return None


def cpu_affinity_env() -> dict[str, str]:
    """For a process this one starts that must not inherit its pin (the transfer committer process):
    the affinity before `cpu_pin`, for `cpu_affinity_restore` in that process (empty if not pinned, which
    also hides a value this process inherited)."""
    return {AFFINITY_ENV: ",".join(map(str, _claim.cpus)) if _claim else ""}


def cpu_affinity_restore() -> None:
    """In a process started with `cpu_affinity_env()`: run on the CPUs its parent could run on before
    being pinned. Call before starting any thread (it sets the calling thread's; later ones inherit it);
    the committer process does it before importing Django (`committer_process._MAIN`)."""
    value = os.environ.get(AFFINITY_ENV, "")
    if value and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(cpu) for cpu in value.split(",")})
        except (OSError, ValueError):
            logger.warning("could not restore the CPU affinity %r; running on the parent's", value, exc_info=True)


def _forget_claim_after_fork() -> None:
    """A child forked from a pinned process (without exec) does not hold its parent's claim."""
    global _claim
    if _claim is not None:
        _claim.socket.close()
        _claim = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_claim_after_fork)


def _pin_at_first_request() -> None:
    """Pin the worker (`cpu_pin`) at its first request, once, if `cpu_pin_wanted()`: in the worker, whether
    the server imported the app there or in its master before forking (gunicorn's `--preload`)."""
    global _pin_pending
    with _PIN_LOCK:
        if _pin_pending:
            _pin_pending = False
            if cpu_pin_wanted():
                _logged(cpu_pin, "pinned to", "pinning the worker to a CPU failed; it runs unpinned")


def _rebalance_now() -> None:
    """`cpu_rebalance`, at most every REBALANCE_SECONDS, from the request path of a worker in a later round."""
    if not _PIN_LOCK.acquire(blocking=False):
        return
    try:
        if time.monotonic() >= _next_rebalance:
            _logged(cpu_rebalance, "moved to", "moving the worker to a free CPU failed; it stays where it is")
    finally:
        _PIN_LOCK.release()


def _logged(action: Callable[[], int | None], done: str, failed: str) -> None:
    """With _PIN_LOCK held: run `action` (`cpu_pin` or `cpu_rebalance`), log what it did, and set the time of
    the next `cpu_rebalance`."""
    global _next_rebalance
    _next_rebalance = time.monotonic() + REBALANCE_SECONDS
    try:
        cpu = action()
    except OSError:
        logger.warning(failed, exc_info=True)
        return
    if cpu is not None:
        logger.info("worker %s CPU %d", done, cpu, extra={"cpu": cpu})


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
    `WSGI_PIN_CPU`), and a worker pinned in a later round looks for a free earlier claim every
    REBALANCE_SECONDS (`cpu_rebalance`)."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if pin:
            if _pin_pending:
                _pin_at_first_request()
            elif _claim is not None and _claim.round and time.monotonic() >= _next_rebalance:
                _rebalance_now()
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
