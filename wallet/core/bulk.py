"""Set-based writes for hot paths: `COPY ... FROM STDIN` on PostgreSQL, and model instances built
without `Model.__init__`.

Django's `bulk_create` binds every parameter in Python (psycopg 3 client-side binding) and builds a model
instance per row: on the ledger's hot path that was ~2 ms of Python for 256 entries with 512 postings,
against a fraction of that for `COPY` from plain tuples. Callers keep `bulk_create` on other databases.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.base import ModelState
from django.utils.connection import ConnectionProxy

M = TypeVar("M", bound=models.Model)
logger = logging.getLogger("wallet.core.bulk")
VALUES_MAX_ROWS = 16
# Deferred inserts run inside the one statement of `execute_together`: up to this many rows they cost no
# round trip of their own, where COPY costs two, under the caller's locks (bench-ledger's HTTP batches of
# 10-30 transfers: +20-30% req/s; a transfer writes two postings and four events).
DEFERRED_VALUES_MAX_ROWS = 64


Statement = tuple[str, list[Any]]


class NamedStatement(NamedTuple):
    """A deferred statement whose rows (`RETURNING`) later statements of the same `execute_together` read
    under `name` (a common table expression of the combined statement)."""

    sql: str
    params: list[Any]
    name: str


# What a caller's `defer` list holds, run by `execute_together`.
Deferrable = Statement | NamedStatement
# Statements longer than this are not prepared (their shape rarely repeats: a batch's row counts).
PREPARE_MAX_LENGTH = 8000
_NEVER_BY_COUNT = 2**31 - 1


@functools.lru_cache(maxsize=512)
def native_placeholders(sql: str) -> str:
    """`%s` placeholders (Django's style) numbered as PostgreSQL's own `$1, $2, ...`."""
    if "%%" in sql or "%(" in sql:
        raise ValueError("hot statements take positional %s placeholders only, and no literal %")
    parts = sql.split("%s")
    return "".join(f"{part}${index}" for index, part in enumerate(parts[:-1], 1)) + parts[-1]


class HotCursor:
    """PostgreSQL: a cursor on Django's connection (same session, same transaction) with server-side
    binding: the query goes with native placeholders and the parameters apart, so psycopg neither scans
    the query for placeholders nor quotes each value into it (client-side binding cost ~20% of the CPU
    of a transfer request), and fixed-shape statements are prepared once per connection (PostgreSQL
    skips parsing and planning them again). Execute wrappers, query logging and Django's exception
    classes behave as with `connection.cursor()`."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        import psycopg

        # The wrapper itself, not `django.db.connection`'s proxy: each attribute read through the proxy is
        # a thread-local lookup, and a batch reads a few dozen.
        connection = _wrapper(connection)
        self.db = connection
        connection.ensure_connection()
        raw = connection.connection
        if raw.prepare_threshold is None:
            # Django leaves psycopg's automatic preparation off (None), and then `prepare=True` is ignored
            # too. A threshold that no statement reaches keeps it off for everything else (Django's
            # client-side cursors never prepare anyway) and lets the statements here ask for it.
            raw.prepare_threshold = _NEVER_BY_COUNT
        self.cursor = psycopg.RawCursor(raw)

    def execute(self, sql: str, params: Sequence[Any] = (), prepare: bool | None = None) -> None:
        db = self.db
        db.validate_no_broken_transaction()
        if prepare is None:
            prepare = len(sql) <= PREPARE_MAX_LENGTH
        native = native_placeholders(sql)

        def run(_sql: str, run_params: Any, _many: bool, _context: dict[str, Any]) -> Any:
            with db.wrap_database_errors:
                return self.cursor.execute(native, run_params, prepare=prepare)

        executor: Callable[..., Any] = run
        for wrapper in reversed(db.execute_wrappers):
            executor = functools.partial(wrapper, executor)
        context = {"connection": db, "cursor": self}
        if not db.queries_logged:
            executor(sql, params, False, context)
            return
        start = time.monotonic()
        try:
            executor(sql, params, False, context)
        finally:
            db.queries_log.append({"sql": sql, "time": f"{time.monotonic() - start:.3f}"})

    def fetchall(self) -> list[tuple[Any, ...]]:
        with self.db.wrap_database_errors:
            return self.cursor.fetchall()

    def fetchone(self) -> tuple[Any, ...] | None:
        with self.db.wrap_database_errors:
            return self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    def close(self) -> None:
        self.cursor.close()


@contextlib.contextmanager
def hot_cursor(connection: BaseDatabaseWrapper) -> Iterator[Any]:
    """`HotCursor` on PostgreSQL, Django's own cursor elsewhere (then `prepare=` is ignored)."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield _PlainCursor(cursor)
        return
    cursor = HotCursor(connection)
    try:
        yield cursor
    finally:
        cursor.close()


class _PlainCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = (), prepare: bool | None = None) -> None:
        self._cursor.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _wrapper(connection: BaseDatabaseWrapper) -> BaseDatabaseWrapper:
    """The connection wrapper behind `django.db.connection`'s proxy (itself for a wrapper)."""
    return connections[connection.alias] if isinstance(connection, ConnectionProxy) else connection


_HEADERS: dict[tuple[str, type[models.Model], tuple[str, ...]], tuple[str, str]] = {}


def _header(connection: BaseDatabaseWrapper, model: type[models.Model], fields: tuple[str, ...]) -> tuple[str, str]:
    """The quoted table name and column list of `fields` (attribute names) of `model`, for INSERT and COPY
    (built once per database vendor, model and fields)."""
    key = (connection.vendor, model, fields)
    found = _HEADERS.get(key)
    if found is None:
        quote = connection.ops.quote_name
        column_of = {field.attname: field.column for field in model._meta.concrete_fields}
        found = _HEADERS[key] = (quote(model._meta.db_table), ", ".join(quote(column_of[name]) for name in fields))
    return found


def in_pipeline(connection: BaseDatabaseWrapper) -> bool:
    """Whether `connection` is in psycopg's pipeline mode (see `pipeline`)."""
    connection = _wrapper(connection)
    raw = connection.connection if connection.vendor == "postgresql" else None
    return raw is not None and raw.pgconn.pipeline_status != 0


# Set on the connection wrapper by `commit_in_pipeline`, read by `pipeline` as it closes.
_COMMITTED_IN_PIPELINE = "_bulk_committed_in_pipeline"
# The outermost psycopg pipeline that `_pipeline_mode` opened, the only one `_leave_pipeline` leaves.
_OWN_PIPELINE = "_bulk_own_pipeline"


@contextlib.contextmanager
def pipeline(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """PostgreSQL: run the block in psycopg's pipeline mode, where a statement is sent without waiting for
    the previous one's result, and a read of results (`fetchall`, a COMMIT) waits once for everything sent
    before it. A hot path that sends its independent statements before reading any of them (`SentQuery`)
    pays one round trip for all of them. Enter it inside `transaction.atomic()` (changing autocommit in
    pipeline mode costs a round trip); `commit_in_pipeline` leaves it without a round trip, otherwise leaving
    costs one (psycopg's closing Sync). Statements that need no results (`execute_together`) are sent with
    the next read. Elsewhere (SQLite) it does nothing.

    What differs inside: COPY is not available (`copy_rows` inserts with VALUES); a cursor's `rowcount` is
    unknown until its results are read (read rows instead: `RETURNING`), so ORM saves and updates that
    count rows must not run here; a failed statement aborts everything after it until the next Sync, so no
    savepoint can recover from it. If leaving pipeline mode fails after `commit_in_pipeline` committed, the
    error is logged, not raised: the transaction's effects are durable and its callers must see success."""
    connection = _wrapper(connection)
    if connection.vendor != "postgresql":
        yield
        return
    connection.ensure_connection()
    body_failed = False
    connection.__dict__[_COMMITTED_IN_PIPELINE] = False
    try:
        with connection.wrap_database_errors, _pipeline_mode(connection):
            try:
                yield
            except BaseException:
                body_failed = True
                raise
    except Exception:
        if body_failed or not connection.__dict__.get(_COMMITTED_IN_PIPELINE):
            raise
        logger.warning("closing a pipeline failed after its COMMIT succeeded", exc_info=True)
    finally:
        connection.__dict__.pop(_COMMITTED_IN_PIPELINE, None)


@contextlib.contextmanager
def _pipeline_mode(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """psycopg's `Connection.pipeline()`, which `commit_in_pipeline` may leave early (`_leave_pipeline`): then
    the block's end has nothing left to do. It does what psycopg's `pipeline()` does around its `Pipeline`
    (psycopg 3.3: `_pipeline`, `_check_connection_ok`); a nested pipeline is psycopg's own."""
    import psycopg

    raw = connection.connection
    if raw._pipeline is not None:  # nested: psycopg's own
        with raw.pipeline():
            yield
        return
    with raw.lock:
        raw._check_connection_ok()
        pipeline = raw._pipeline = psycopg.Pipeline(raw)
    connection.__dict__[_OWN_PIPELINE] = pipeline
    # The block's own exception only: `sys.exc_info()` here would also show one that the caller is handling
    # (the group committer runs its retries inside an `except`), and psycopg's exit would then swallow errors.
    failure: tuple[Any, Any, Any] = (None, None, None)
    try:
        pipeline.__enter__()
        try:
            yield
        except BaseException as exc:
            failure = (type(exc), exc, exc.__traceback__)
            raise
    finally:
        try:
            if pipeline.level:  # still in pipeline mode: psycopg's exit (a Sync, every result read)
                pipeline.__exit__(*failure)
        finally:
            connection.__dict__.pop(_OWN_PIPELINE, None)
            if pipeline.level == 0:
                with raw.lock:
                    if raw._pipeline is pipeline:
                        raw._pipeline = None


def _leave_pipeline(connection: BaseDatabaseWrapper) -> None:
    """Right after `commit_in_pipeline`'s COMMIT: leave pipeline mode without psycopg's closing Sync.

    psycopg leaves pipeline mode with a Sync and waits for its answer, always. After a COMMIT psycopg has
    synced (`Connection.commit()` in pipeline mode sends COMMIT and a Sync and reads every result), nothing
    is sent and nothing is left to read: libpq can leave at once, and the Sync would be a round trip for
    nothing in the group committer's serial loop (5 ms of a 40-ms batch at the median at the maximum). Only
    for `_pipeline_mode`'s outermost pipeline with psycopg's queues empty; if libpq refuses (a result still
    pending), psycopg's own exit does it at the block's end, with its Sync. Statements after this run
    outside pipeline mode (in `pipelined_atomic`, in autocommit), as `commit_in_pipeline` says."""
    import psycopg

    raw = connection.connection
    pipeline = raw._pipeline
    if (pipeline is None or pipeline is not connection.__dict__.get(_OWN_PIPELINE) or pipeline.level != 1
            or pipeline.command_queue or pipeline.result_queue or raw.pgconn.is_busy()):
        return  # not `_pipeline_mode`'s outermost pipeline, or something left to read: its exit, with a Sync
    try:
        with raw.lock:
            pipeline._exit(None)  # psycopg's own last step of its exit: level 0, libpq leaves pipeline mode
            raw._pipeline = None
    except psycopg.Error:
        # libpq refused (`_exit` lowered the level first): psycopg's exit, with its Sync, at the block's end
        pipeline.level = 1
        logger.warning("leaving pipeline mode at once after a COMMIT was refused; leaving it with a Sync",
                       exc_info=True)


@contextlib.contextmanager
def pipelined_atomic(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """`transaction.atomic()` with `pipeline(connection)` inside it, where the transaction's BEGIN costs no
    round trip of its own when this block starts the transaction (PostgreSQL, outermost block).

    psycopg opens a transaction with BEGIN followed by a Sync, and so waits for it even in pipeline mode.
    Here psycopg's connection stays in autocommit for the block and BEGIN is sent as the block's first
    statement, in the pipeline: it shares the round trip of the block's first read. Django's view is
    unchanged (an atomic block, `on_commit` callbacks); psycopg's COMMIT and ROLLBACK follow the server's
    transaction status, not the autocommit flag, so `commit_in_pipeline` and Django's rollback behave as
    usual, and the flag is put back once the transaction has ended. Elsewhere (SQLite, an inner block, a
    test's transaction, non-default transaction characteristics) it is `atomic()` with `pipeline()`."""
    from django.db import transaction

    connection = _wrapper(connection)
    with transaction.atomic(using=connection.alias):
        raw = connection.connection if connection.vendor == "postgresql" else None
        explicit = (
            raw is not None and len(connection.atomic_blocks) == 1 and not connection.savepoint_ids
            and raw.pgconn.transaction_status == 0  # IDLE: nothing sent since the block began
            and raw.isolation_level is None and raw.read_only is None and raw.deferrable is None
        )
        if explicit:
            raw.autocommit = True  # no I/O: the connection is idle and not in pipeline mode yet
        try:
            with pipeline(connection):
                if explicit:
                    with hot_cursor(connection) as cursor:
                        cursor.execute("BEGIN", prepare=False)
                yield
        finally:
            if explicit and raw.pgconn.transaction_status == 0:
                raw.autocommit = False  # as Django left it, for the rest of its atomic block
            # Otherwise the transaction is still open (it failed, or did not commit in the pipeline): Django's
            # rollback or commit ends it, then sets autocommit back on itself.


def commit_in_pipeline(connection: BaseDatabaseWrapper) -> bool:
    """Inside `pipeline`, at the end of the outermost `transaction.atomic()` block: send COMMIT now, behind
    the statements not yet sent, so that they and the COMMIT share one round trip (the transaction's locks
    go one round trip sooner). Django's own commit, when the block exits, then finds no transaction open
    and only runs the `on_commit` callbacks. Does nothing (False) outside pipeline mode, inside an inner
    block or a savepoint (a test's transaction), or when the block must roll back. Call it last in the block:
    a statement after it would run in a new transaction (in `pipelined_atomic`, in autocommit: committed at
    once, whatever the block does next).

    True means committed: the COMMIT was sent and its answer read; the connection has then left pipeline
    mode if this is `pipeline`'s outermost pipeline (`_leave_pipeline`: no closing Sync). psycopg's
    `commit()` skips the COMMIT when libpq reports the connection idle, and in pipeline mode libpq's status
    is that of the last ReadyForQuery: after `pipelined_atomic`'s BEGIN, with every result read and nothing
    sent since, it still says idle. Then a Sync comes first (one round trip; a block that ends with a
    statement still unread, as a transfer batch does, needs none). A transaction that failed (an error
    caught inside the block) raises: its COMMIT would be a ROLLBACK that reports no error."""
    import psycopg

    connection = _wrapper(connection)
    if (not in_pipeline(connection) or len(connection.atomic_blocks) != 1 or connection.savepoint_ids
            or connection.needs_rollback or not connection.commit_on_exit):
        return False
    raw = connection.connection
    status = psycopg.pq.TransactionStatus
    with connection.wrap_database_errors:
        if raw.pgconn.transaction_status == status.IDLE:
            raw._pipeline.sync()  # libpq learns the transaction's state (psycopg's `Pipeline.sync`)
        if raw.pgconn.transaction_status == status.IDLE:
            return False  # no transaction open after all: Django's commit, at the block's end, has nothing to do
        if raw.pgconn.transaction_status == status.INERROR:
            raise psycopg.errors.InFailedSqlTransaction("the transaction failed before its COMMIT: nothing committed")
        raw.commit()
        if raw.pgconn.transaction_status != status.IDLE or raw._pipeline.result_queue:
            raw.close()  # its state is unknown: not reused, and the group committer answers "outcome unknown"
            raise psycopg.OperationalError("COMMIT sent, but its answer was not read: the outcome is unknown")
    connection.__dict__[_COMMITTED_IN_PIPELINE] = True
    _leave_pipeline(connection)
    return True


class SentQuery:
    """A query sent on its own hot cursor, its rows read later with `fetchall()` or `fetchone()` (once).

    Within `pipeline(connection)`, every query sent before the first read shares that read's round trip;
    elsewhere the query has run when sent, and reading costs nothing. Send in the order the statements
    must run (they run in that order, taking their locks in that order)."""

    def __init__(self, connection: BaseDatabaseWrapper, sql: str, params: Sequence[Any] = (),
                 prepare: bool | None = None) -> None:
        self._context = hot_cursor(connection)
        cursor = self._context.__enter__()
        try:
            cursor.execute(sql, params, prepare=prepare)
        except BaseException:
            self._context.__exit__(None, None, None)
            raise
        self._cursor: Any = cursor

    def fetchall(self) -> list[tuple[Any, ...]]:
        try:
            return self._cursor.fetchall()
        finally:
            self._close()

    def fetchone(self) -> tuple[Any, ...] | None:
        try:
            return self._cursor.fetchone()
        finally:
            self._close()

    def _close(self) -> None:
        if self._cursor is not None:
            self._cursor = None
            self._context.__exit__(None, None, None)


def pg_array(values: Iterable[Any]) -> str:
    """PostgreSQL: the text form of a one-dimensional array of `values` (str, bytes, int, UUID or None), for a
    parameter cast in SQL (`%s::uuid[]`, `%s::bytea[]`, ...). psycopg's list dumper works element by
    element in Python: ~1.5 µs per UUID, and ~90 µs per 300-byte bytes value (a transfer's stored answer);
    this costs a fraction of that. Every text element is quoted, so any character is safe."""
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
        elif isinstance(value, str):
            parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(value, bytes | bytearray | memoryview):
            parts.append('"\\\\x' + bytes(value).hex() + '"')
        elif isinstance(value, bool):
            raise TypeError("pg_array does not take booleans")
        elif isinstance(value, int | UUID):
            parts.append(str(value))
        else:
            raise TypeError(f"pg_array does not take {type(value).__name__}")
    return "{" + ",".join(parts) + "}"


def execute_together(connection: BaseDatabaseWrapper, statements: Sequence[Deferrable]) -> None:
    """PostgreSQL: run data-modifying statements (INSERT/UPDATE without RETURNING) as one statement, one
    round trip: `WITH s1 AS (...), s2 AS (...) SELECT 1`. They see one snapshot and each runs exactly once,
    so they must not depend on each other's rows (deferred foreign keys are checked at commit), except
    through a `NamedStatement`'s `RETURNING` rows, which a later statement reads by its name."""
    if not statements:
        return
    if len(statements) == 1:
        if isinstance(statements[0], NamedStatement):
            raise ValueError("a named statement alone: nothing reads its rows")
        sql, params = statements[0]
        prepare = None  # the default: prepared when short
    else:
        sql = "WITH " + ", ".join(
            f"{statement.name if isinstance(statement, NamedStatement) else f's{i}'} AS ({statement[0]})"
            for i, statement in enumerate(statements)) + " SELECT 1"
        params = [value for statement in statements for value in statement[1]]
        # Not prepared: its shape changes with every batch's row counts, and past psycopg's 100 prepared
        # statements per connection each new shape would evict one with a DEALLOCATE round trip.
        prepare = False
    with hot_cursor(connection) as cursor:
        cursor.execute(sql, params, prepare=prepare)


def copy_rows(connection: BaseDatabaseWrapper, model: type[models.Model], fields: Sequence[str],
              rows: Iterable[Sequence[Any]], defer: list[Deferrable] | None = None) -> None:
    """PostgreSQL: insert `rows` (tuples of database-ready values, in the order of `fields`, given by
    attribute name such as `tenant_id`) into the model's table inside the caller's transaction: one
    multi-row INSERT for up to VALUES_MAX_ROWS rows (DEFERRED_VALUES_MAX_ROWS when `defer` is given: the
    INSERT joins the caller's deferred statements), one COPY beyond. Logged like a query when Django logs
    queries."""
    connection = _wrapper(connection)
    rows = rows if isinstance(rows, list) else list(rows)
    if not rows:
        return
    table, columns = _header(connection, model, tuple(fields))
    if len(rows) <= (DEFERRED_VALUES_MAX_ROWS if defer is not None else VALUES_MAX_ROWS) or in_pipeline(connection):
        # In pipeline mode always: COPY is not available there (`pipeline`).
        # A few rows: one INSERT is one round trip; COPY costs two (the CopyIn handshake, then the data).
        placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
        values = ", ".join([placeholders] * len(rows))
        sql = f"INSERT INTO {table} ({columns}) VALUES {values}"  # noqa: S608 (quoted names)
        params = [value for row in rows for value in row]
        if defer is not None:  # the caller runs it later, with others (`execute_together`)
            defer.append((sql, params))
            return
        with hot_cursor(connection) as cursor:
            cursor.execute(sql, params)
        return
    sql = f"COPY {table} ({columns}) FROM STDIN"
    with connection.cursor() as cursor:
        debug = cursor.debug_sql(sql) if hasattr(cursor, "debug_sql") else contextlib.nullcontext()
        with debug, cursor.cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)


def loaded(model: type[M], alias: str, values: dict[str, Any], related: dict[str, Any] | None = None) -> M:
    """A model instance as if read from the database `alias`, from every concrete field's attribute name
    (`values`), without running `__init__` (about 10x cheaper). `related` pre-fills the cache of forward
    relations (e.g. `{"sender": user}`) so that reading them costs no query."""
    obj = model.__new__(model)
    obj.__dict__.update(values)
    state = ModelState()
    state.adding = False
    state.db = alias
    if related:
        state.fields_cache = dict(related)
    obj._state = state
    return obj


_ROW_CONVERTERS: dict[tuple[str, type[models.Model], tuple[str, ...]], list[tuple[str, Any, list[Any]]]] = {}


def model_from_row(connection: BaseDatabaseWrapper, model: type[M], fields: Sequence[models.Field[Any, Any]],
                   row: Sequence[Any], related: dict[str, Any] | None = None) -> M:
    """A model instance from a raw row of `fields` (concrete fields of `model`, in the row's order), as the
    ORM builds one: each value through the backend's and the field's converters (looked up once per
    database alias, model and fields), then `loaded`."""
    connection = _wrapper(connection)
    key = (connection.alias, model, tuple(field.attname for field in fields))
    converters = _ROW_CONVERTERS.get(key)
    if converters is None:
        converters = []
        for field in fields:
            col = field.get_col(model._meta.db_table)
            converters.append((field.attname, col,
                               connection.ops.get_db_converters(col) + field.get_db_converters(connection)))
        _ROW_CONVERTERS[key] = converters
    values = {}
    for (attname, col, field_converters), raw in zip(converters, row, strict=True):
        for converter in field_converters:
            raw = converter(raw, col, connection)
        values[attname] = raw
    return loaded(model, connection.alias, values, related)
