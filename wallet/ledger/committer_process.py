"""The transfer committer in a process of its own (LEDGER_GROUP_COMMIT_PROCESS, on in production).

Why: a committer thread (wallet/ledger/groupcommit.py) shares its process's GIL with the web server's
request threads. Each of its round trips to PostgreSQL releases the GIL, and getting it back from 32 busy
request threads costs milliseconds: measured at the HTTP maximum, a batch took 60 ms of wall time for 15 ms
of CPU, and a round trip whose SQL takes 1 ms took 17 ms (docs/BENCHMARKS.md, ninth session). The ledger
head is locked for part of that, so the wait slows every other batch too. In a process of its own the
committer's threads share the GIL only with each other.

How: each web server process starts one committer process when its first transfer arrives
(`serve`, in `python -c ... FD`, with a socket pair between the two). A request thread
sends its prepared job (pickled: the claim, the viewer, the order or the refusal) and waits; the committer
process queues it for its tenant's `GroupCommitter` there, which batches and commits exactly as in a
thread, and sends back each batch's outcomes in one message, with the event streams its commits moved. A
reader thread here tells this process's commit listeners first (a balance read after the answer sees the
transfer), then wakes the waiting threads. The guarantees are those of the group commit, per job; besides:
- if the committer process dies, or the socket breaks, every job sent to it and not answered answers 503
  `outcome_unknown` (it may or may not have committed; a retry with the same Idempotency-Key replays or
  runs it), and the next transfer starts a new committer process;
- a job not answered within LEDGER_GROUP_COMMIT_WAIT_SECONDS answers 503 `outcome_unknown` too: this process
  cannot tell whether a batch took it;
- a transfer inside a caller's transaction, or one whose committer process cannot be started, runs here as
  without the setting.
The committer process ends when its socket closes (its web server process ended, however it ended), after
committing what it received. The outbox relay must run out of process (OUTBOX_RELAY_IN_PROCESS off), since
the committer process's commits would wake a relay thread there; with the relay in process, the setting is
ignored.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from functools import cache
from multiprocessing.connection import Connection
from typing import Any

from django.conf import settings

from tenants.models import Tenant
from wallet.core.errors import ApiError, error_class
from wallet.idempotency.errors import OutcomeUnknown
from wallet.ledger import groupcommit
from wallet.ledger.groupcommit import GroupCommitter, Outcome, TransferJob, wait_seconds

logger = logging.getLogger("wallet.ledger.committer_process")

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def enabled() -> bool:
    """Whether transfers go to a committer process (LEDGER_GROUP_COMMIT_PROCESS, and the relay out of
    process: see the module docstring)."""
    from wallet.events import conf as events_conf

    return bool(getattr(settings, "LEDGER_GROUP_COMMIT_PROCESS", False)) and not events_conf.relay_in_process()


# --- outcomes across the socket ------------------------------------------------------------------------------
def _encode(outcome: Outcome) -> Outcome | tuple[Any, ...]:
    """`outcome` as the committer process sends it: as it is, unless its error does not survive pickling
    (an error class made by `error_class` is not importable by its name): then what renders it."""
    error = outcome.error
    if error is None:
        return outcome
    try:
        pickle.loads(pickle.dumps(error, _PROTOCOL))  # noqa: S301 (our own bytes)
    except Exception:
        if isinstance(error, ApiError):
            return ("api", error.code, error.status, error.title, error.detail, error.extra, error.headers)
        return ("exception", f"{type(error).__module__}.{type(error).__qualname__}: {error}")
    return outcome


@cache
def _api_error_class(code: str, status: int, title: str) -> type[ApiError]:
    return error_class(code, status, title)


def _decode(encoded: Outcome | tuple[Any, ...]) -> Outcome:
    if isinstance(encoded, Outcome):
        return encoded
    if encoded[0] == "api":
        _, code, status, title, detail, extra, headers = encoded
        error = _api_error_class(code, status, title)(detail, **extra)
        error.headers.update(headers)
        return Outcome(error=error)
    return Outcome(error=RuntimeError(f"the transfer committer process failed: {encoded[1]}"))


# --- the web server process's side ---------------------------------------------------------------------------
class _Host:
    """One committer process, seen from the web server process that started it."""

    def __init__(self, conn: Connection, proc: subprocess.Popen[bytes]) -> None:
        self.conn = conn
        self.proc = proc
        self.pending: dict[int, TransferJob] = {}  # sent, not answered (guarded by `_lock`)
        self.sending = threading.Lock()  # one message at a time; not `_lock`, which the reader needs meanwhile
        self.reader = threading.Thread(target=self._read, name="transfer-committer-reader", daemon=True)

    def _read(self) -> None:
        """Deliver the committer process's answers until its socket closes; then answer what it left."""
        try:
            while True:
                told, results = pickle.loads(self.conn.recv_bytes())  # noqa: S301 (our own child's bytes)
                _tell(told)
                with _lock:
                    jobs = [(self.pending.pop(ticket, None), encoded) for ticket, encoded in results]
                for job, encoded in jobs:
                    if job is not None:  # None: its request gave up waiting (answered outcome_unknown)
                        job.outcome = _decode(encoded)
                        job.event.set()
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("reading the transfer committer process's answers failed")
        finally:
            self._end()

    def _end(self) -> None:
        global _host
        with _lock:
            if _host is self:
                _host = None
            left, self.pending = list(self.pending.values()), {}
        if left:
            logger.error("the transfer committer process ended with %d transfers unanswered", len(left))
        for job in left:
            job.outcome = Outcome(error=OutcomeUnknown())
            job.event.set()
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _tell(told: list[tuple[Any, tuple[str, ...]]]) -> None:
    from wallet.events.services import commit_listeners_tell

    for tenant_id, streams in told:
        commit_listeners_tell(tenant_id, streams)


# The committer process's program: Django first, then the module (its models need the app registry).
_MAIN = "import sys, django; django.setup(); from wallet.ledger.committer_process import serve; serve(int(sys.argv[1]))"

_lock = threading.Lock()
_host: _Host | None = None
_tickets = itertools.count(1)


def _start() -> _Host | None:
    """With `_lock` held: start a committer process for this process, or None if it cannot be started."""
    from django.db import connections

    ours, theirs = socket.socketpair()
    try:
        paths = [str(settings.BASE_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)
        proc = subprocess.Popen(  # noqa: S603 (our own module, with this interpreter)
            [sys.executable, "-c", _MAIN, str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, cwd=str(settings.BASE_DIR), stdin=subprocess.DEVNULL)
    except OSError:
        logger.exception("could not start the transfer committer process")
        ours.close()
        return None
    finally:
        theirs.close()
    conn = Connection(ours.detach())
    # The databases as this process uses them (a test run's database has another name than the settings').
    conn.send_bytes(pickle.dumps({"databases": {alias: dict(connections.settings[alias])
                                                for alias in connections.settings}}, _PROTOCOL))
    host = _Host(conn, proc)
    host.reader.start()
    return host


def prestart() -> None:
    """Start this process's committer process now if transfers go to one (a web server process starting:
    Django's start-up there takes seconds, which the first transfers would otherwise wait)."""
    global _host
    if not enabled():
        return
    with _lock:
        if _host is None:
            _host = _start()


def submit(tenant: Tenant, job: TransferJob) -> Outcome | None:
    """Run `job` in the committer process and return its outcome; None if there is none to be had (the
    caller then runs it in this process)."""
    global _host
    job.ticket = ticket = next(_tickets)
    payload = pickle.dumps((ticket, tenant, job.claim, job.viewer, job.order, job.refusal, job.request_id),
                           _PROTOCOL)
    with _lock:
        host = _host
        if host is None:
            host = _host = _start()
            if host is None:
                return None
        host.pending[ticket] = job
    try:
        with host.sending:
            host.conn.send_bytes(payload)
    except OSError:
        # The committer process is gone (its reader answers what it had); this job may have reached it.
        logger.exception("sending a transfer to the committer process failed")
        with _lock:
            host.pending.pop(ticket, None)
        return Outcome(error=OutcomeUnknown())
    if not job.event.wait(wait_seconds()):
        with _lock:
            gave_up = host.pending.pop(ticket, None) is not None
        if gave_up:  # a batch may have it: this process cannot tell
            logger.error("the transfer committer process did not answer in %s s", wait_seconds())
            return Outcome(error=OutcomeUnknown())
        job.event.wait()  # being delivered now
    assert job.outcome is not None
    return job.outcome


def host_stop(timeout: float | None = 10.0) -> None:
    """End this process's committer process, after it answers what it received (`committers_stop`)."""
    global _host
    with _lock:
        host, _host = _host, None
    if host is None:
        return
    try:
        with socket.socket(fileno=os.dup(host.conn.fileno())) as ours:
            ours.shutdown(socket.SHUT_WR)  # the committer process reads the end of its jobs
    except OSError:
        pass
    host.reader.join(timeout)


def _forget_host() -> None:
    """In a forked child: the parent's committer process answers the parent only."""
    global _host, _lock
    _host = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_host)


# --- the committer process -----------------------------------------------------------------------------------
class _SocketCommitter(GroupCommitter):
    """A tenant's committer in the committer process: it sends each batch's outcomes back over the socket."""

    def _deliver(self, batch: list[TransferJob], outcomes: list[Outcome]) -> None:
        told = _told_take()
        message = pickle.dumps((told, [(job.ticket, _encode(outcome)) for job, outcome in zip(batch, outcomes,
                                                                                               strict=True)]),
                               _PROTOCOL)
        with _send_lock:
            try:
                _conn.send_bytes(message)
            except OSError:
                logger.exception("answering the web server process failed (it has ended?)")


_send_lock = threading.Lock()
_conn: Connection
_told = threading.local()


def _told_record(tenant_id: Any, streams: tuple[str, ...]) -> None:
    """A commit listener of the committer process: what its commits moved, sent with the batch's answers."""
    calls = getattr(_told, "calls", None)
    if calls is None:
        calls = _told.calls = []
    calls.append((tenant_id, streams))


def _told_take() -> list[tuple[Any, tuple[str, ...]]]:
    calls = getattr(_told, "calls", None) or []
    _told.calls = []
    return calls


def serve(fd: int) -> None:
    """The committer process: take jobs from the socket until it closes, then commit what is queued and
    return."""
    global _conn
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the whole group: end with the server
    _conn = Connection(fd)
    hello = pickle.loads(_conn.recv_bytes())  # noqa: S301 (our parent's bytes)
    from django.db import connections

    from wallet.events.services import register_commit_listener

    for alias, settings_dict in hello["databases"].items():
        connections.settings[alias].update(settings_dict)
    register_commit_listener(_told_record)
    groupcommit.committer_factory = _SocketCommitter
    while True:
        try:
            data = _conn.recv_bytes()
        except (EOFError, OSError):
            break
        ticket, tenant, claim, viewer, order, refusal, request_id = pickle.loads(data)  # noqa: S301
        job = TransferJob(claim=claim, viewer=viewer, order=order, refusal=refusal, request_id=request_id,
                          ticket=ticket)
        committer = groupcommit.committer_for(tenant)
        if not committer.enqueue(tenant, job):
            committer.run_alone(tenant, job)
    groupcommit.committers_stop(None)

