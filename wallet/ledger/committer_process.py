"""The transfer committer in a process of its own (LEDGER_GROUP_COMMIT_PROCESS, off by default).

Why: a committer thread (wallet/ledger/groupcommit.py) shares its process's GIL with the web server's
request threads. Each of its round trips to PostgreSQL releases the GIL, and getting it back from 32 busy
request threads costs milliseconds: measured at the HTTP maximum, a batch took 60 ms of wall time for 15 ms
of CPU (docs/BENCHMARKS.md, ninth session). In a process of its own the committer's threads share the GIL
only with each other. Why it is off: on a 2-core machine the second process spends the idle CPU those
waits left, and the HTTP maximum did not rise (docs/BENCHMARKS.md, tenth session).

How: each web server process starts one committer process when it starts (`prestart`, from
wallet/wsgi.py) or at its first transfer: `serve`, in `python -c ...`, with two socket pairs, one for the
jobs and one for the answers. The committer process starts Django and says it is ready. A request thread
sends its prepared job (pickled: the claim, the viewer, the order or the refusal) and waits; the committer
process queues it for its tenant's `GroupCommitter` there, which batches and commits exactly as in a
thread, and sends back each batch's outcomes in one message, with the event streams its commits moved. A
reader thread here tells this process's commit listeners first (a balance read after the answer sees the
transfer), then wakes the waiting threads. The guarantees are those of the group commit, per job; besides:
- a job that did not wholly reach the committer process (its send failed or took longer than
  LEDGER_GROUP_COMMIT_WAIT_SECONDS), or that a committer process which never became ready had, was not run
  there: it runs here, as without the setting;
- a job sent whole whose answer is lost (the committer process died) or late (no answer within
  LEDGER_GROUP_COMMIT_WAIT_SECONDS) answers 503 `outcome_unknown` with `Retry-After`: it may have
  committed, and a retry with the same Idempotency-Key replays or runs it;
- a committer process that is late or whose socket fails is retired: it reads no more jobs, commits what it
  has, answers and exits (or is killed after RETIRE_GRACE_SECONDS), and the next transfer starts another;
- one that exits before it is ready (Django failed to start) is not started again for START_BACKOFF_SECONDS;
- a transfer inside a caller's transaction runs here, in it, as without the setting.
The committer process ignores SIGINT and SIGTERM: it ends when its jobs socket closes (its web server
process ended, however it ended), after committing and answering what it received. Its outbox relay is
always out of process (its commits NOTIFY); the setting is ignored while this process's relay runs in
process, since that relay would not hear the committer process's commits.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from functools import cache
from typing import Any, BinaryIO

from django.conf import settings

from tenants.models import Tenant
from wallet.core.errors import ApiError, error_class
from wallet.core.runtime import cpu_affinity_env
from wallet.idempotency.errors import OutcomeUnknown
from wallet.ledger import groupcommit
from wallet.ledger.groupcommit import GroupCommitter, Outcome, TransferJob, wait_seconds

logger = logging.getLogger("wallet.ledger.committer_process")

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_HEADER = struct.Struct("!I")
_READY = b"ready"
RETIRE_GRACE_SECONDS = 30.0
START_BACKOFF_SECONDS = 10.0


def enabled() -> bool:
    """Whether transfers go to a committer process (LEDGER_GROUP_COMMIT_PROCESS, and this process's relay
    out of process: see the module docstring)."""
    from wallet.events import conf as events_conf

    return bool(getattr(settings, "LEDGER_GROUP_COMMIT_PROCESS", False)) and not events_conf.relay_in_process()


# --- frames and outcomes across the sockets ------------------------------------------------------------------
def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def _read_frame(stream: BinaryIO) -> bytes:
    """The next frame's payload; EOFError at the end of the stream, or in the middle of a frame."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError
    return payload


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
            encoded = ("api", error.code, error.status, error.title, error.detail, error.extra, error.headers)
            try:
                pickle.dumps(encoded, _PROTOCOL)
            except Exception:
                return ("exception", f"{error.code}: {error.detail}")
            return encoded
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
        error = _api_error_class(code, status, title)(detail)
        error.extra = dict(extra)
        error.headers.update(headers)
        return Outcome(error=error)
    return Outcome(error=RuntimeError(f"the transfer committer process failed: {encoded[1]}"))


# --- the web server process's side ---------------------------------------------------------------------------
# Given to the jobs a committer process never read (it ended before it was ready): they run here.
_NOT_RUN = Outcome(status=-1)


class _Host:
    """One committer process, seen from the web server process that started it."""

    def __init__(self, jobs: socket.socket, answers: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        self.jobs = jobs  # written here, under `sending`
        self.answers = answers
        self.proc = proc
        self.pending: dict[int, TransferJob] = {}  # sent, not answered (guarded by `_lock`)
        self.sending = threading.Lock()  # one frame at a time; not `_lock`, which the reader needs meanwhile
        self.retired = False  # no more jobs go to it (guarded by `sending`)
        self.ready = False  # it said so: from then on it may have read any job sent
        self.reader = threading.Thread(target=self._read, name="transfer-committer-reader", daemon=True)

    def send(self, payload: bytes) -> bool:
        """Send a job's frame; False if it did not wholly go (then the committer process never reads it, and
        is retired: no later byte can complete the frame)."""
        if not self.sending.acquire(timeout=wait_seconds()):  # a send before it is stuck: so is this one
            logger.error("the transfer committer process did not take a job in %g s", wait_seconds())
            return False
        try:
            if self.retired:
                return False
            self.jobs.settimeout(wait_seconds())
            self.jobs.sendall(_frame(payload))
        except OSError:  # including a timeout: it does not read
            logger.exception("sending a transfer to the committer process failed")
            self._stop_sending()
            return False
        except BaseException:  # a signal's exception mid-frame: no later frame may follow the torn one
            self._stop_sending()
            raise
        finally:
            self.sending.release()
        return True

    def retire(self) -> None:
        """No more jobs for it: it commits and answers what it has, then exits (killed if it has not within
        RETIRE_GRACE_SECONDS)."""
        global _host
        with _lock:
            if _host is self:
                _host = None
        with self.sending:
            self._stop_sending()
        timer = threading.Timer(RETIRE_GRACE_SECONDS, self._kill_if_running)
        timer.daemon = True
        timer.start()

    def _stop_sending(self) -> None:
        """With `sending` held."""
        if not self.retired:
            self.retired = True
            try:
                self.jobs.shutdown(socket.SHUT_WR)  # its next read is the end
            except OSError:
                pass

    def _kill_if_running(self) -> None:
        if self.proc.poll() is None:
            logger.error("the transfer committer process %d did not exit: killed", self.proc.pid)
            self.proc.kill()

    def _read(self) -> None:
        """Deliver the committer process's answers until its answers socket closes; then answer what it left."""
        stream = self.answers.makefile("rb")
        try:
            if _read_frame(stream) != _READY:
                raise RuntimeError("the transfer committer process did not say it was ready")
            self.ready = True
            while True:
                told, results = pickle.loads(_read_frame(stream))  # noqa: S301 (our own child's bytes)
                _tell(told)
                with _lock:
                    jobs = [(self.pending.pop(ticket, None), encoded) for ticket, encoded in results]
                for job, encoded in jobs:
                    if job is None:  # its request gave up waiting (answered outcome_unknown)
                        continue
                    try:
                        outcome = _decode(encoded)
                    except Exception:
                        logger.exception("an answer of the transfer committer process could not be read")
                        outcome = Outcome(error=OutcomeUnknown())
                    job.outcome = outcome
                    job.event.set()
        except (EOFError, OSError):
            pass
        except Exception:
            logger.exception("reading the transfer committer process's answers failed")
        finally:
            stream.close()
            self._end()

    def _end(self) -> None:
        global _host, _start_after
        if not self.ready:  # it read no job; make sure it never will before saying so
            self.proc.kill()
            self.proc.wait()
        with _lock:
            if _host is self:
                _host = None
            left, self.pending = list(self.pending.values()), {}
            if not self.ready:
                _start_after = time.monotonic() + START_BACKOFF_SECONDS
        # Answered at once, before anything that may wait: `_not_run` waits for this delivery.
        for job in left:
            job.outcome = Outcome(error=OutcomeUnknown()) if self.ready else _NOT_RUN
            job.event.set()
        if not self.ready:
            logger.error("the transfer committer process ended before it was ready (exit %s); transfers run in "
                         "the web server process for %g s", self.proc.poll(), START_BACKOFF_SECONDS)
        elif left:
            logger.error("the transfer committer process ended with %d transfers unanswered", len(left))
        with self.sending:  # no send is using the socket while it closes (its number could be reused)
            self._stop_sending()
            self.jobs.close()
        self.answers.close()
        try:
            self.proc.wait(timeout=RETIRE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _tell(told: list[tuple[Any, tuple[str, ...]]]) -> None:
    from wallet.events.services import commit_listeners_tell

    for tenant_id, streams in told:
        commit_listeners_tell(tenant_id, streams)


# The committer process's program: Django first, then the module (its models need the app registry).
# The web worker's CPU affinity from before its pin first, before Django starts any thread (see `_start`).
_MAIN = ("import sys; from wallet.core.runtime import cpu_affinity_restore; cpu_affinity_restore(); "
         "import django; django.setup(); from wallet.ledger.committer_process import serve; "
         "serve(int(sys.argv[1]), int(sys.argv[2]))")

_lock = threading.Lock()
_host: _Host | None = None
_start_after = 0.0  # monotonic time before which no committer process is started (one failed to start)
_tickets = itertools.count(1)


def _start() -> _Host | None:
    """With `_lock` held: start a committer process for this process, or None if it cannot be started."""
    from django.db import connections

    if time.monotonic() < _start_after:
        return None
    jobs, their_jobs = socket.socketpair()
    answers, their_answers = socket.socketpair()
    fds = [their_jobs.fileno(), their_answers.fileno()]
    try:
        paths = [str(settings.BASE_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        # Not pinned to its web worker's CPU (wallet/core/runtime.py `cpu_pin`): it is there to use another.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **cpu_affinity_env()}
        env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE)
        proc = subprocess.Popen(  # noqa: S603 (our own module, with this interpreter)
            [sys.executable, "-c", _MAIN, *map(str, fds)],
            pass_fds=fds, env=env, cwd=str(settings.BASE_DIR), stdin=subprocess.DEVNULL)
    except OSError:
        logger.exception("could not start the transfer committer process")
        jobs.close()
        answers.close()
        return None
    finally:
        their_jobs.close()
        their_answers.close()
    host = _Host(jobs, answers, proc)
    # The databases as this process uses them (a test run's database has another name than the settings').
    hello = {"databases": {alias: dict(connections.settings[alias]) for alias in connections.settings}}
    try:
        jobs.sendall(_frame(pickle.dumps(hello, _PROTOCOL)))
        host.reader.start()
    except (OSError, RuntimeError):  # the process is gone, or no thread can be had to read it
        logger.exception("could not start the transfer committer process")
        proc.kill()
        proc.wait()
        jobs.close()
        answers.close()
        return None
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
    """Run `job` in the committer process and return its outcome; None if it was not run there (the caller
    then runs it in this process)."""
    global _host
    job.ticket = ticket = next(_tickets)
    try:
        payload = pickle.dumps((ticket, tenant, job.claim, job.viewer, job.order, job.refusal, job.request_id),
                               _PROTOCOL)
    except Exception:
        logger.exception("a transfer job does not pickle: it runs in the web server process")
        return None
    with _lock:
        host = _host
        if host is None:
            host = _host = _start()
            if host is None:
                return None
        host.pending[ticket] = job
    if not host.send(payload):
        host.retire()
        return _not_run(host, ticket, job)
    if not job.event.wait(wait_seconds()):
        with _lock:
            gave_up = host.pending.pop(ticket, None) is not None
        if gave_up:  # a batch may have it: this process cannot tell
            logger.error("the transfer committer process did not answer in %g s: retired", wait_seconds())
            host.retire()
            return Outcome(error=OutcomeUnknown())
        if not job.event.wait(RETIRE_GRACE_SECONDS):  # being delivered now
            return Outcome(error=OutcomeUnknown())
    if job.outcome is _NOT_RUN:
        return _not_run(host, ticket, job)
    assert job.outcome is not None
    return job.outcome


def _not_run(host: _Host, ticket: int, job: TransferJob) -> None:
    """The committer process never read `job`: make it ready to run here."""
    with _lock:
        taken = host.pending.pop(ticket, None) is None
    if taken:  # the reader is answering it (the process ended): let that finish, or it lands on the next run
        job.event.wait()
    job.outcome = None
    job.event.clear()


def host_stop(timeout: float | None = 10.0) -> None:
    """End this process's committer process, after it answers what it received (`committers_stop`)."""
    global _host
    with _lock:
        host, _host = _host, None
    if host is None:
        return
    with host.sending:
        host._stop_sending()
    host.reader.join(timeout)
    if host.reader.is_alive():
        host._kill_if_running()
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
        results = [(job.ticket, _encode(outcome)) for job, outcome in zip(batch, outcomes, strict=True)]
        try:
            message = pickle.dumps((told, results), _PROTOCOL)
        except Exception:
            logger.exception("a batch's answers do not pickle; sending each that does")
            results = [(ticket, encoded if _pickles(encoded) else ("exception", "an answer that does not pickle"))
                       for ticket, encoded in results]
            message = pickle.dumps((told if _pickles(told) else [], results), _PROTOCOL)
        _answer(message)


def _pickles(value: Any) -> bool:
    try:
        pickle.dumps(value, _PROTOCOL)
    except Exception:
        return False
    return True


def _answer(message: bytes) -> None:
    with _send_lock:
        try:
            _answers.sendall(_frame(message))
        except OSError:
            logger.exception("answering the web server process failed (it has ended?)")


_send_lock = threading.Lock()
_answers: socket.socket
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


def serve(jobs_fd: int, answers_fd: int) -> None:
    """The committer process: take jobs until the jobs socket ends, then commit and answer what is queued,
    and return."""
    global _answers
    # A terminal's ^C, or a stop of the whole group, reaches it too: it ends with its web server process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    jobs = socket.socket(fileno=jobs_fd)
    _answers = socket.socket(fileno=answers_fd)
    stream = jobs.makefile("rb")
    hello = pickle.loads(_read_frame(stream))  # noqa: S301 (our parent's bytes)
    from django.db import connections

    from wallet.events.services import register_commit_listener

    for alias, settings_dict in hello["databases"].items():
        connections.settings[alias].update(settings_dict)
    settings.OUTBOX_RELAY_IN_PROCESS = False  # its commits NOTIFY the relay; it runs none
    register_commit_listener(_told_record)
    groupcommit.committer_factory = _SocketCommitter
    _answer(_READY)
    while True:
        try:
            data = _read_frame(stream)
        except (EOFError, OSError):
            break
        try:
            ticket, tenant, claim, viewer, order, refusal, request_id = pickle.loads(data)  # noqa: S301
        except Exception:  # its request answers outcome_unknown after the wait; the others go on
            logger.exception("a transfer job could not be read")
            continue
        job = TransferJob(claim=claim, viewer=viewer, order=order, refusal=refusal, request_id=request_id,
                          ticket=ticket)
        committer = groupcommit.committer_for(tenant)
        if not committer.enqueue(tenant, job):
            committer.run_alone(tenant, job, own_connection=True)
    groupcommit.committers_stop(None)
