"""``appdb.aio``: the asyncio API (``await appdb.aio.init_database(...)``).

Everything works as in the sync API, awaited:

    db = await appdb.aio.init_database("app.db", migrations="./migrations")
    st = db.prepare("SELECT * FROM agents WHERE id = ?")   # sync and cached, like db.sync.prepare
    row = await st.get(1)
    async for row in st.iterate(): ...
    async with db.transaction(): ...                       # nested blocks make savepoints
    async with db.deadline(0.5): ...                        # bounds this task's statements
    await db.close()

How statements run:

* Short reads run on the event loop itself: a read-only statement outside a
  transaction gets a budget of ``INLINE_BUDGET`` SQLite VM steps (a fraction of a
  millisecond) and a reader only if one is free right now. A read that runs out
  of its budget is interrupted (reads have no side effects) and run again in a
  worker thread, one per reader of the pool, so slow reads run in parallel and
  the loop keeps running. Statements that overran recently go to a thread
  directly. Inline work is cut into slices of ``SLICE_SECONDS`` after which
  every task yields once, so many tasks reading in a loop do not stall the loop.
* Writes, statements that need the writer (temporary tables, pragmas,
  ``:memory:`` databases, ``readers=0``) and everything a task runs inside
  ``async with db.transaction()`` run in order on one writer thread. A task's
  transaction keeps other tasks' writes waiting until it ends (tasks started
  inside the block share it); other tasks keep reading committed data.
* ``db.deadline()``, ``query_timeout`` and task cancellation interrupt a running
  statement through SQLite's progress handler, in whatever thread it runs.

Why not one thread per connection, like ``aiosqlite`` and APSW's own async mode
(``apsw.Connection.as_async``, ``apsw.aio``)? There every call is a hop to the
connection's thread and back (a queue, a thread wake-up, a loop wake-up): that
hop costs far more than a cached point read, and every call of the connection
waits in one queue. appdb already has a pool of readers that threads share, so
a read that finishes within its budget skips the hop altogether, and the reads
that do need a thread run on several readers at once.

Only asyncio is supported; Trio (and AnyIO on Trio) are not, for now.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _limits
from ._open import init_database as _init_database
from ._types import CheckpointResult, RunResult
from .database import AppDatabase
from .errors import DatabaseClosedError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ._connect import OnConnect
    from ._fastcache_py import RowIterator, Statement
    from .migrations import Migration
    from .transaction import Transaction
    from .types import TypeMap

__all__ = [
    "AsyncDatabase",
    "AsyncDeadline",
    "AsyncRows",
    "AsyncStatement",
    "AsyncTransaction",
    "init_database",
]

T = TypeVar("T")

#: VM steps a read may run on the event loop before it moves to a thread (~0.2 ms).
INLINE_BUDGET = 20_000
#: Inline work between two yields to the event loop.
SLICE_SECONDS = 0.005
#: Rows fetched per thread hop by ``iterate()``.
CHUNK_ROWS = 256
#: Upper bound of the calls a statement skips the inline attempt after overrunning.
MAX_SKIP = 64
#: Inline calls between two looks at the clock for the end of a slice. Each is bounded by
#: INLINE_BUDGET, so a slice overruns by at most this many short reads; reading the clock
#: on every call was 580 of the 16,500 instructions of an inline point read (callgrind).
CLOCK_EVERY = 8


_monotonic = time.monotonic


class _Route:
    """Where a call that could not run on the event loop goes instead."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<route {self.name}>"


_WRITER = _Route("writer")  # the writer thread
_THREAD = _Route("thread")  # a reader thread
_PAUSE = _Route("pause")  # yield to the event loop first


class _Scope:
    """A transaction of one database, open in a task (and the tasks it started)."""

    __slots__ = ("active", "db", "parent")

    def __init__(self, db: AsyncDatabase, parent: _Scope | None) -> None:
        self.db = db
        self.parent = parent
        self.active = True


_scope: ContextVar[_Scope | None] = ContextVar("appdb_aio_transaction", default=None)


def _job(core: Any, limit: _limits.Limit, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread under ``limit`` (a deadline, and cancellation)."""
    token = _limits.current.set(limit)
    core.limits_enter()
    try:
        return fn()
    finally:
        core.limits_exit()
        _limits.current.reset(token)


async def _settle(cf: Future[T]) -> tuple[asyncio.Future[T], asyncio.CancelledError | None]:
    """Wait until ``cf`` is done even if the task is cancelled meanwhile (returned, for re-raising)."""
    future = asyncio.wrap_future(cf)
    interrupted: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError as exc:
            interrupted = exc
    return future, interrupted


class AsyncDatabase:
    """The asyncio face of an [`AppDatabase`][appdb.AppDatabase] (see the module docstring).

    Made by [`appdb.aio.init_database`][appdb.aio.init_database], or around an open
    ``AppDatabase`` (``AsyncDatabase(db)``; closing it closes ``db``). An async
    context manager that closes on exit. Use it from one event loop: create it
    inside the running loop.

    Every method raises [`DatabaseClosedError`][appdb.DatabaseClosedError] once the
    database is closed or closing (a task inside its own transaction may finish it).

    Args:
        db: An open sync database.

    Raises:
        appdb.DatabaseClosedError: ``db`` is closed.
    """

    def __init__(self, db: AppDatabase) -> None:
        if db.closed:
            raise DatabaseClosedError(f"the database is closed: {db.path}")
        self._db = db
        self._core: Any = db._core
        name = os.path.basename(db.path) or "memory"
        self._read = ThreadPoolExecutor(max(1, db.readers), thread_name_prefix=f"appdb-read[{name}]")
        self._write = ThreadPoolExecutor(1, thread_name_prefix=f"appdb-write[{name}]")
        self._lock = asyncio.Lock()
        self._jobs: set[Future[Any]] = set()
        self._statements: weakref.WeakValueDictionary[int, AsyncStatement] = weakref.WeakValueDictionary()
        self._inline = _limits.Limit(self._core, None, None, budget=INLINE_BUDGET, nowait=True)
        self._thread = threading.get_ident()  # the event loop's: inline calls run there
        self._inline_entry = (self._thread, self._inline)
        self._scopes = 0  # this database's transaction scopes open in tasks
        # The core looks at limits while this is open (inline budgets, deadlines, task
        # cancellation): entering once here, not per call, saves two calls per read.
        self._core.limits_enter()
        self._slice_end = 0.0
        self._unclocked = 0  # inline calls left before the clock is read again
        self._pausing = False
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None
        self._transactions = 0  # sync transactions open on the writer thread

    # -- properties ----------------------------------------------------------
    @property
    def sync(self) -> AppDatabase:
        """The underlying [`AppDatabase`][appdb.AppDatabase] (its calls block: not from the event loop)."""
        return self._db

    @property
    def path(self) -> str:
        """The database path as given to ``init_database``."""
        return self._db.path

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return self._closing or self._db.closed

    @property
    def readers(self) -> int:
        """Size of the reader pool (0: every statement runs on the writer thread)."""
        return self._db.readers

    def __repr__(self) -> str:
        return f"<appdb.aio.AsyncDatabase {self._db.path!r} {'closed' if self.closed else 'open'}>"

    async def __aenter__(self) -> AsyncDatabase:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- statements ------------------------------------------------------------
    def prepare(self, sql: str, *, row_type: str | None = None) -> AsyncStatement:
        """Return the cached [`AsyncStatement`][appdb.aio.AsyncStatement] for ``sql`` (same SQL, same object).

        Not awaited: compiling is quick and cached, as in
        [`AppDatabase.prepare`][appdb.AppDatabase.prepare].

        Args:
            sql: One SQL statement with ``?``, ``?NNN`` or ``:name`` placeholders.
            row_type: ``"dict"`` or ``"tuple"`` (``None``: the database's default).

        Returns:
            The statement; its methods are awaited.

        Raises:
            appdb.DatabaseClosedError: The database is closed or closing.
            ValueError: Unknown ``row_type``.
            TypeError: ``sql`` is not a ``str``.
            apsw.SQLError: The SQL does not compile.
        """
        if self._closing:
            self._check_closing()
        statement = self._db.prepare(sql, row_type=row_type)
        key = id(statement)
        found = self._statements.get(key)
        if found is not None and found._sync is statement:
            return found
        wrapper = AsyncStatement(self, statement)
        self._statements[key] = wrapper
        return wrapper

    async def exec(self, sql: str) -> None:
        """Run a script of SQL statements (no parameters) on the writer thread.

        Same rules and errors as [`AppDatabase.exec`][appdb.AppDatabase.exec].

        Args:
            sql: The SQL text; statements separated by ``;``.
        """
        await self._call(True, partial(self._db.exec, sql))

    async def pragma(self, name: str, value: int | str | bool | None = None) -> Any:
        """Read or set a pragma on the writer thread.

        Same rules, result and errors as [`AppDatabase.pragma`][appdb.AppDatabase.pragma].

        Args:
            name: The pragma, optionally with a schema (``"main.journal_mode"``).
            value: The value to set (``None``: read the pragma).

        Returns:
            The single value, a ``list`` of dict rows, or ``None``.
        """
        return await self._call(True, partial(self._db.pragma, name, value))

    async def checkpoint(self, mode: str = "passive", *, force: bool = False) -> CheckpointResult:
        """Run a WAL checkpoint on the writer thread.

        Same rules and errors as [`AppDatabase.checkpoint`][appdb.AppDatabase.checkpoint].

        Args:
            mode: ``"passive"``, ``"full"``, ``"restart"`` or ``"truncate"``.
            force: Run a blocking mode even under the "external" checkpoint policy.

        Returns:
            ``CheckpointResult(wal_frames, checkpointed_frames)``.
        """
        return await self._call(True, partial(self._db.checkpoint, mode, force=force))

    async def backup(self, dest_path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write a consistent copy of the database to ``dest_path``, in a worker thread.

        Same rules and errors as [`AppDatabase.backup`][appdb.AppDatabase.backup].

        Args:
            dest_path: Where to write the copy.
            overwrite: Replace an existing file at ``dest_path``.

        Returns:
            ``dest_path`` as a ``str``.
        """
        writer = self._db.readers == 0 or self._scope() is not None
        return await self._call(writer, partial(self._db.backup, dest_path, overwrite=overwrite))

    async def get_schema_version(self) -> int:
        """Highest applied migration version, 0 when none has been applied.

        Raises:
            appdb.DatabaseClosedError: The database is closed or closing.
        """
        return await self._call(True, self._db.get_schema_version)

    # -- transactions and deadlines ------------------------------------------
    def transaction(self, *, mode: str | None = None) -> AsyncTransaction:
        """``async with db.transaction():`` a transaction of this task; nested blocks are savepoints.

        Commits when the block ends, rolls back on an exception (cancellation
        included). The task's statements inside run on the writer thread in
        order and see its own changes; other tasks' writes wait until it ends.
        Tasks started inside the block share it.

        Args:
            mode: ``"deferred"``, ``"immediate"`` (default when writable) or
                ``"exclusive"``.

        Returns:
            The context manager; ``async with`` gives this database.

        Raises:
            ValueError: Unknown ``mode`` (raised by this call).
            appdb.DatabaseClosedError: The database is closed or closing (on entry).
            appdb.TransactionError: The transaction had already ended before it
                could commit (on exit).
            apsw.BusyError: Another process held the write lock past ``busy_timeout``.
        """
        return AsyncTransaction(self, mode)

    def deadline(self, seconds: float) -> AsyncDeadline:
        """``async with db.deadline(s):`` bound every statement this task runs inside the block.

        A statement still running ``seconds`` after the block began is interrupted
        and raises [`QueryTimeout`][appdb.QueryTimeout]; time spent waiting for
        another task's transaction counts, a statement that would start too late
        fails at once. Nested blocks keep the earlier deadline.

        Args:
            seconds: The time budget of the whole block, a number > 0.

        Returns:
            The context manager (``async with``).

        Raises:
            ValueError: ``seconds`` is not a number > 0 (on entry).
        """
        return AsyncDeadline(self._db.deadline(seconds))

    # -- closing ---------------------------------------------------------------
    async def close(self) -> None:
        """Wait for other tasks' transactions and running statements, then close. Safe to call twice.

        Later calls raise [`DatabaseClosedError`][appdb.DatabaseClosedError];
        iterators still open are closed. The worker threads end with it.
        """
        if self._close_task is None:
            inside = self._scope() is not None
            self._closing = True
            self._close_task = asyncio.ensure_future(self._shut_down(inside))
        await asyncio.shield(self._close_task)

    async def _shut_down(self, inside: bool) -> None:
        if not inside:
            async with self._lock:  # open transactions of other tasks end first
                pass
        running = [asyncio.wrap_future(cf) for cf in list(self._jobs)]
        if running:
            await asyncio.wait(running)
        try:
            await asyncio.wrap_future(self._write.submit(self._db.close))
        finally:
            self._core.limits_exit()
            self._read.shutdown(wait=False)
            if not self._transactions:  # else the last transaction block to end does it
                self._write.shutdown(wait=False)

    # -- internals -------------------------------------------------------------
    def _closed_error(self) -> DatabaseClosedError:
        return DatabaseClosedError(f"the database is closed: {self._db.path}")

    def _check_closing(self) -> None:
        """While closing, only a task inside its transaction may still run statements."""
        if self._db.closed or self._scope() is None:
            raise self._closed_error()

    def _scope(self) -> _Scope | None:
        """This task's open transaction of this database, if any."""
        scope = _scope.get()
        while scope is not None:
            if scope.db is self:
                return scope if scope.active else None
            scope = scope.parent
        return None

    def _limit(self) -> _limits.Limit:
        """The limit of one threaded call: this task's deadline, and a flag for cancellation."""
        outer = _limits.find(self._core)
        if outer is None:
            return _limits.Limit(self._core, None, None)
        return _limits.Limit(self._core, outer.deadline, outer.seconds)

    def _inline_limit(self) -> tuple[int, _limits.Limit]:
        """The inline limit under this task's deadline (when one is open on the core)."""
        found = _limits.find(self._core)
        deadline, seconds = (None, None) if found is None else (found.deadline, found.seconds)
        limit = _limits.Limit(self._core, deadline, seconds, budget=INLINE_BUDGET, nowait=True, parent=found)
        return (self._thread, limit)

    async def _pause(self) -> None:
        """Yield to the event loop; a new slice starts once the loop has run everything else.

        The task that used the slice up yields twice, so the tasks that waited get the next one.
        """
        if self._pausing:
            await asyncio.sleep(0)
            return
        self._pausing = True
        asyncio.get_running_loop().call_soon(self._new_slice)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _new_slice(self) -> None:
        self._pausing = False
        self._slice_end = time.monotonic() + SLICE_SECONDS

    def _submit(
        self, executor: ThreadPoolExecutor, fn: Callable[[], T], limit: _limits.Limit | None
    ) -> Future[T]:
        try:
            cf = executor.submit(fn) if limit is None else executor.submit(_job, self._core, limit, fn)
        except RuntimeError:  # shut down
            raise self._closed_error() from None
        jobs = self._jobs
        jobs.add(cf)
        cf.add_done_callback(jobs.discard)
        return cf

    async def _start(self, writer: bool, fn: Callable[[], T], limit: _limits.Limit) -> Future[T]:
        """Queue ``fn`` on a reader thread or the writer thread (after another task's transaction)."""
        if not writer:
            return self._submit(self._read, fn, limit)
        if self._lock.locked() and self._scope() is None:
            async with self._lock:
                if self._closing:
                    self._check_closing()
                return self._submit(self._write, fn, limit)
        return self._submit(self._write, fn, limit)

    @staticmethod
    async def _wait(cf: Future[T], limit: _limits.Limit) -> T:
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            limit.cancelled = True  # interrupts the statement if it is running
            raise

    async def _call(self, writer: bool, fn: Callable[[], T]) -> T:
        if self._closing:
            self._check_closing()
        limit = self._limit()
        cf = await self._start(writer or self._scope() is not None, fn, limit)
        return await self._wait(cf, limit)

    def _dispose(self, iterator: RowIterator, on_writer: bool) -> None:
        """Close a sync row iterator without blocking (the writer's is closed on the writer thread)."""
        if on_writer:
            try:
                self._write.submit(iterator.close)
                return
            except RuntimeError:  # shut down: the database is closed, the writer lock is free
                pass
        try:
            iterator.close()
        except Exception:  # pragma: no cover - its connection went away meanwhile
            pass


class AsyncStatement:
    """A prepared statement of an [`AsyncDatabase`][appdb.aio.AsyncDatabase]; its methods are awaited.

    Made by [`AsyncDatabase.prepare`][appdb.aio.AsyncDatabase.prepare]. Values are
    bound and rows are shaped as in the sync [`Statement`][appdb.Statement]
    (``.sync``): dicts keyed by column name, or tuples (``row_type="tuple"``).
    Short reads run on the event loop under a step budget, others in a worker thread.

    Every call (``get``, ``scalar``, ``all``, ``run``) can raise the sync statement's
    errors (``apsw.BindingsError``, ``appdb.QueryTimeout``, ``apsw.Error``... see
    [`Statement`][appdb.Statement]), ``appdb.DatabaseClosedError`` once the database
    is closed or closing, and ``asyncio.CancelledError`` when its task is cancelled
    (a running statement is interrupted).
    """

    __slots__ = (
        "__weakref__",
        "_all",
        "_core",
        "_db",
        "_get",
        "_overruns",
        "_run",
        "_scalar",
        "_skip",
        "_sync",
    )

    def __init__(self, db: AsyncDatabase, statement: Statement) -> None:
        self._db = db
        self._core = db._core
        self._sync = statement
        self._get = statement.get
        self._all = statement.all
        self._scalar = statement.scalar
        self._run = statement.run
        self._overruns = 0
        self._skip = 0

    # -- properties --------------------------------------------------------
    @property
    def sync(self) -> Statement:
        """The underlying sync statement (do not call it from the event loop)."""
        return self._sync

    @property
    def sql(self) -> str:
        """The SQL text of the statement."""
        return self._sync.sql

    @property
    def columns(self) -> tuple[str, ...]:
        """Result column names (empty for statements that return no rows)."""
        return self._sync.columns

    @property
    def readonly(self) -> bool:
        """True when the statement does not write to the database."""
        return self._sync.readonly

    @property
    def parallel(self) -> bool:
        """True when calls outside a transaction run on the readers (on the loop or a thread)."""
        return self._sync.parallel

    @property
    def row_type(self) -> str:
        """``"dict"`` or ``"tuple"``."""
        return self._sync.row_type

    def __repr__(self) -> str:
        return f"<appdb.aio.AsyncStatement {self._sync.sql!r}>"

    # -- execution ---------------------------------------------------------
    async def get(self, *params: Any, **named: Any) -> Any:
        """Run the query and return its first row, or None when there is none.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The first row (a ``dict`` or a ``tuple``), or ``None``.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``AsyncStatement``.
        """
        result = self._try(self._get, params, named)
        if type(result) is _Route:
            result = await self._route(result, self._get, params, named)
        return result

    async def scalar(self, *params: Any, **named: Any) -> Any:
        """Return the first column of the first row, or None when there is no row.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The value, or ``None``.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``AsyncStatement``.
        """
        result = self._try(self._scalar, params, named)
        if type(result) is _Route:
            result = await self._route(result, self._scalar, params, named)
        return result

    async def all(self, *params: Any, **named: Any) -> list[Any]:
        """Run the query and return every row as a list.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The rows; empty when there are none.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``AsyncStatement``.
        """
        result = self._try(self._all, params, named)
        if type(result) is _Route:
            result = await self._route(result, self._all, params, named)
        return result  # type: ignore[no-any-return]

    async def run(self, *params: Any, **named: Any) -> RunResult:
        """Execute the statement and return what it changed.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            ``RunResult(changes, last_insert_rowid)``.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``AsyncStatement``.
        """
        result = self._try(self._run, params, named)
        if type(result) is _Route:
            result = await self._route(result, self._run, params, named)
        return result  # type: ignore[no-any-return]

    async def run_many(self, seq_of_params: Iterable[Any]) -> RunResult:
        """Execute once per item, all or nothing, on the writer thread.

        Same rules and errors as [`Statement.run_many`][appdb.Statement.run_many].

        Args:
            seq_of_params: An ordered iterable of items, each bound like the
                values of one ``run()`` call.

        Returns:
            ``RunResult(changes, last_insert_rowid)``; ``changes`` is the total.
        """
        return await self._db._call(True, partial(self._sync.run_many, seq_of_params))

    def iterate(self, *params: Any, **named: Any) -> AsyncRows:
        """Return an async iterator over the rows (fetched in chunks of ``CHUNK_ROWS``).

        Not awaited: the query starts at the first ``async for`` step. Leaving
        ``async for`` early (or ``aclose()``, or ``async with``) ends the query.
        Errors (as for [`all`][appdb.aio.AsyncStatement.all]) are raised by the
        iteration.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            An [`AsyncRows`][appdb.aio.AsyncRows] async iterator.
        """
        return AsyncRows(self, params, named)

    def _try(self, fn: Callable[..., Any], params: tuple[Any, ...], named: dict[str, Any]) -> Any:
        """Run ``fn`` on the event loop under the step budget, or say where it must run instead."""
        db = self._db
        if db._closing:
            db._check_closing()  # raises unless this task is inside its transaction
            return _WRITER
        if db._scopes and db._scope() is not None:
            return _WRITER
        core = self._core
        if not self._sync.parallel or core.raw_transaction:
            return _WRITER
        if self._skip:
            self._skip -= 1
            return _THREAD
        if db._pausing:
            return _PAUSE
        if db._unclocked:
            db._unclocked -= 1
        elif _monotonic() >= db._slice_end:
            return _PAUSE
        else:
            db._unclocked = CLOCK_EVERY - 1
        # The limit is seen by this call only (and SQL functions it runs on this core):
        # see _limits.inline. A deadline open anywhere on the core needs the slow lookup.
        running = core.inline
        core.inline = db._inline_entry if not core.deadlines_active else db._inline_limit()
        try:
            result = fn(*params, **named)
        except _limits.BudgetExceeded:
            self._overruns += 1
            self._skip = min(1 << self._overruns, MAX_SKIP)
            return _THREAD
        except _limits.WouldBlock:  # no free reader (or it would need the writer)
            return _THREAD if not core.raw_transaction else _WRITER
        finally:
            core.inline = running
        if self._overruns:
            self._overruns = 0
        return result

    async def _route(
        self, route: _Route, fn: Callable[..., Any], params: tuple[Any, ...], named: dict[str, Any]
    ) -> Any:
        """The slow path of a call: yield to the loop first, or run in a thread."""
        db = self._db
        while route is _PAUSE:
            await db._pause()
            result = self._try(fn, params, named)
            if type(result) is not _Route:
                return result
            route = result
        return await db._call(route is _WRITER, partial(fn, *params, **named))


def _open_rows(statement: Statement, params: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, list[Any]]:
    iterator = statement.iterate(*params, **named)
    return _more_rows(iterator)


def _more_rows(iterator: RowIterator) -> tuple[Any, list[Any]]:
    return iterator, list(itertools.islice(iterator, CHUNK_ROWS))


class AsyncRows:
    """Async iterator over the rows of one ``AsyncStatement.iterate()`` call.

    The query runs in a worker thread (a reader, or the writer inside a
    transaction); ``aclose()``, ``async with`` or dropping it ends the query.
    """

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_db",
        "_done",
        "_iterator",
        "_job",
        "_named",
        "_on_writer",
        "_params",
        "_statement",
    )

    def __init__(self, statement: AsyncStatement, params: tuple[Any, ...], named: dict[str, Any]) -> None:
        self._statement = statement
        self._db = statement._db
        self._params = params
        self._named = named
        self._buffer: deque[Any] = deque()
        self._iterator: RowIterator | None = None
        self._job: Future[Any] | None = None
        self._on_writer = False
        self._done = False

    def __aiter__(self) -> AsyncRows:
        return self

    async def __anext__(self) -> Any:
        buffer = self._buffer
        if buffer and not self._db._closing:
            return buffer.popleft()
        db = self._db
        if db._closing:
            try:
                db._check_closing()
            except DatabaseClosedError:
                self._abandon()
                raise
        if not buffer:
            if self._done:
                raise StopAsyncIteration
            await self._fill()
            if not buffer:
                raise StopAsyncIteration
        return buffer.popleft()

    async def _fill(self) -> None:
        db = self._db
        if self._job is not None:
            raise RuntimeError("anext() of this iterator is already running in another task")
        iterator = self._iterator
        fn: Callable[[], tuple[Any, list[Any]]]
        if iterator is None:
            sync = self._statement._sync
            self._on_writer = db._scope() is not None or not sync.parallel or db._core.raw_transaction
            fn = partial(_open_rows, sync, self._params, self._named)
        else:
            fn = partial(_more_rows, iterator)
        limit = db._limit()
        try:
            cf = await db._start(self._on_writer, fn, limit)
        except BaseException:  # closed, or cancelled while another task's transaction ran
            self._abandon()
            raise
        self._job = cf
        try:
            iterator, rows = await db._wait(cf, limit)
        except asyncio.CancelledError:
            self._abandon()  # closes the iterator once the job is done
            raise
        except BaseException:
            self._job = None
            self._iterator = None  # the sync iterator closed itself
            self._done = True
            raise
        self._job = None
        self._buffer.extend(rows)
        if len(rows) < CHUNK_ROWS:
            self._done = True  # the rows ran out: the sync iterator closed itself
            self._iterator = None
        else:
            self._iterator = iterator

    def _abandon(self) -> None:
        """Stop: close the sync iterator now, or when the running fetch is done."""
        self._done = True
        self._buffer.clear()
        iterator, self._iterator = self._iterator, None
        job, self._job = self._job, None
        db = self._db
        on_writer = self._on_writer
        if job is None:
            if iterator is not None:
                db._dispose(iterator, on_writer)
            return

        def done(cf: Future[Any]) -> None:
            found = iterator
            if not cf.cancelled() and cf.exception() is None:
                found = cf.result()[0]
            if found is not None:
                db._dispose(found, on_writer)

        job.add_done_callback(done)

    async def aclose(self) -> None:
        """End the query now (the reader, and its read snapshot, go back to the pool)."""
        iterator = self._iterator
        if iterator is None or self._job is not None or not self._on_writer:
            self._abandon()  # a reader's iterator closes at once, without blocking
            return
        self._iterator = None
        self._abandon()
        try:
            cf = self._db._write.submit(iterator.close)
        except RuntimeError:  # shut down: the database is closed, the writer lock is free
            iterator.close()
            return
        future, interrupted = await _settle(cf)
        if interrupted is not None:
            raise interrupted
        future.result()

    async def __aenter__(self) -> AsyncRows:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._iterator is not None or self._job is not None:
            try:
                self._abandon()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


class AsyncTransaction:
    """``async with db.transaction():``, made by [`transaction()`][appdb.aio.AsyncDatabase.transaction].

    Entering the same object again while it is active raises ``RuntimeError``:
    call ``db.transaction()`` again for a nested block.
    """

    __slots__ = ("_active", "_db", "_outermost", "_scope", "_sync", "_token")

    def __init__(self, db: AsyncDatabase, mode: str | None) -> None:
        self._db = db
        self._sync: Transaction = db._db.transaction(mode=mode)
        self._active = False
        self._outermost = False
        self._scope: _Scope | None = None
        self._token: Any = None

    async def __aenter__(self) -> AsyncDatabase:
        db = self._db
        if self._active:
            raise RuntimeError(
                "this transaction is already active: call db.transaction() again for a nested block"
            )
        if db._closing:
            db._check_closing()
        scope = db._scope()
        outermost = scope is None
        if outermost:
            await db._lock.acquire()
        try:
            if db._closing:
                db._check_closing()
            future, interrupted = await _settle(db._submit(db._write, self._sync.__enter__, None))
            if future.exception() is None:
                db._transactions += 1
            if interrupted is not None:
                if future.exception() is None:  # cancelled while it began: undo it
                    exit_job = partial(self._sync.__exit__, type(interrupted), interrupted, None)
                    await _settle(db._submit(db._write, exit_job, None))
                    db._transactions -= 1
                raise interrupted
            future.result()
        except BaseException:
            if outermost:
                db._lock.release()
            raise
        if outermost:
            scope = _Scope(db, _scope.get())
            self._token = _scope.set(scope)
            db._scopes += 1
        self._scope = scope
        self._outermost = outermost
        self._active = True
        return db

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        db = self._db
        scope = self._scope
        outermost = self._outermost
        if outermost and scope is not None:
            scope.active = False  # tasks started inside the block no longer join it
            db._scopes -= 1
        try:
            future, interrupted = await _settle(
                db._submit(db._write, partial(self._sync.__exit__, et, ev, tb), None)
            )
            db._transactions -= 1
            if db._closing and db._db.closed and not db._transactions:
                db._write.shutdown(wait=False)
        finally:
            self._active = False
            self._scope = None
            if outermost:
                _scope.reset(self._token)
                self._token = None
                db._lock.release()
        if interrupted is not None:
            raise interrupted
        future.result()


class AsyncDeadline:
    """``async with db.deadline(seconds):``, made by [`deadline()`][appdb.aio.AsyncDatabase.deadline]."""

    __slots__ = ("_context",)

    def __init__(self, context: AbstractContextManager[None]) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        self._context.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._context.__exit__(et, ev, tb)


async def init_database(
    path: str | os.PathLike[str] = "./data/app.db",
    *,
    readonly: bool = False,
    run_migrations: bool = True,
    migrations: str | os.PathLike[str] | Sequence[Migration] | None = None,
    allow_destructive: bool = False,
    pragmas: Mapping[str, int | str | bool] | None = None,
    statement_cache_size: int = 256,
    row_type: str = "dict",
    vfs: str | None = None,
    readers: int | None = None,
    query_timeout: float | None = None,
    on_connect: OnConnect | None = None,
    types: TypeMap | None = None,
    checkpoints: str | None = None,
) -> AsyncDatabase:
    """Open a database like [`appdb.init_database`][appdb.init_database], in a thread.

    Call it from the event loop that will use the database. Cancelling the call
    closes the database once it has opened.

    Args:
        path: A file path or ``":memory:"``.
        readonly: Open without ever modifying the file.
        run_migrations: Apply ``migrations`` before returning.
        migrations: A directory, an importable package name, or a sequence of
            [`Migration`][appdb.migrations.Migration] objects.
        allow_destructive: Apply migrations that drop or lose data.
        pragmas: Pragmas to add or override.
        statement_cache_size: Prepared statements kept per database.
        row_type: ``"dict"`` or ``"tuple"``.
        vfs: The name of a registered SQLite VFS.
        readers: Size of the reader pool (``None``: ``default_readers()``), and of
            the pool of threads that run reads.
        query_timeout: Seconds any one statement, batch or script may run.
        on_connect: Called with every ``apsw.Connection`` appdb opens.
        types: A [`TypeMap`][appdb.types.TypeMap] for everyday Python values.
        checkpoints: ``"auto"``, ``"external"`` or ``None`` (follow the record).

    Returns:
        The open [`AsyncDatabase`][appdb.aio.AsyncDatabase].

    Raises:
        Exception: The errors of [`appdb.init_database`][appdb.init_database]
            (``appdb.DatabaseOpenError``, ``appdb.MigrationError``,
            ``appdb.CheckpointPolicyError``, ``appdb.InvalidPragmaError``,
            ``ValueError``, ``TypeError``...).
    """
    call = partial(
        _init_database,
        path,
        readonly=readonly,
        run_migrations=run_migrations,
        migrations=migrations,
        allow_destructive=allow_destructive,
        pragmas=pragmas,
        statement_cache_size=statement_cache_size,
        row_type=row_type,
        vfs=vfs,
        readers=readers,
        query_timeout=query_timeout,
        on_connect=on_connect,
        types=types,
        checkpoints=checkpoints,
    )
    executor = ThreadPoolExecutor(1, thread_name_prefix="appdb-open")
    try:
        future, interrupted = await _settle(executor.submit(call))
    finally:
        executor.shutdown(wait=False)
    if interrupted is not None:
        if future.exception() is None:
            future.result().close()
        raise interrupted
    return AsyncDatabase(future.result())
