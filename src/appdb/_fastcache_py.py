"""Pure-Python twin of ``appdb._fastcache``: the statement cache, routing and row conversion.

It is the fallback when the compiled module is unavailable (no compiler, PyPy,
``APPDB_NO_EXTENSIONS=1``) and the reference the test suite holds the compiled
module to: both must behave identically, exception types and messages included.
Only the hot path lives here; the slow paths are shared modules (``_pool``,
``_limits``, ``_batch``, ``_sqlinfo``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from threading import get_ident
from types import TracebackType
from typing import TYPE_CHECKING, Any

import apsw

from . import _batch, _limits, _pool
from ._fork import leak
from ._sqlinfo import binding_error, describe, duplicate_columns_error, extra_names_error, needs_writer
from ._types import CacheStats, RunResult
from .errors import DatabaseClosedError

if TYPE_CHECKING:
    from .types import TypeMap

__all__ = ["ConnectionLock", "DatabaseCore", "RowIterator", "Slot", "Statement"]

_ROW_TYPES = ("dict", "tuple")
_SCALARS = (int, str, float, bytes, type(None))
#: Single values (not sequences of values) accepted as one ``run_many`` item; so is
#: anything that is neither a sequence nor a mapping (a date with a type map, say).
_SINGLE_VALUES = (int, str, float, bytes, bytearray, memoryview, type(None))
_new_run_result = tuple.__new__

#: What a statement call returns.
_GET, _SCALAR, _ALL, _RUN = 0, 1, 2, 3

#: A waiter that has waited this long for the writer lock makes the next release
#: hand the lock to a waiter instead of letting anyone take it (starvation mode).
STARVATION_SECONDS = 0.001

#: The compiled twin can run statements through SQLite's C API; this one never does.
NATIVE = False
NATIVE_STATUS = "off: the pure-Python implementation runs statements through APSW's cursors"

_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def _closed_error(path: str) -> DatabaseClosedError:
    return DatabaseClosedError(f"the database is closed: {path}")


def _exact_sql(sql: object) -> str:
    if type(sql) is str:
        return sql
    if isinstance(sql, str):
        return str.__str__(sql)  # the text itself, whatever a subclass overrides
    raise TypeError(f"SQL must be a str, not {type(sql).__name__}")


def check_row_type(row_type: object) -> str:
    if row_type not in _ROW_TYPES:
        raise ValueError(f"row_type must be 'dict' or 'tuple', not {row_type!r}")
    return row_type


class ConnectionLock:
    """Re-entrant lock: cheap uncontended, no convoy, no starvation.

    A free lock is taken by whoever asks (barging): a thread that releases and
    re-takes it keeps running instead of switching threads on every call (a lock
    convoy). Waiters look again every ``STARVATION_SECONDS``; one that finds the
    lock still taken sets the *starving* flag, which stops barging until a waiter
    has it, so a thread calling in a loop cannot lock the others out. Signals
    (Ctrl-C) get through while waiting.

    The compiled twin keeps its own state under the GIL; here a C-level
    ``threading.RLock`` is the lock itself (its non-blocking acquire is the fast
    path). One difference in cost, not in behaviour: releasing it wakes a waiter
    every time.
    """

    __slots__ = ("_rlock", "_starving")

    def __init__(self) -> None:
        self._rlock: Any = threading.RLock()  # _is_owned and _recursion_count are C-level
        self._starving = False

    def owned(self) -> bool:
        """True when the calling thread holds the lock."""
        return bool(self._rlock._is_owned())

    def depth(self) -> int:
        """How many times the calling thread holds the lock (0 when it does not)."""
        rlock = self._rlock
        if not rlock._is_owned():
            return 0
        count = getattr(rlock, "_recursion_count", None)  # CPython 3.10+; PyPy may lack it
        return int(count()) if count is not None else 1

    def acquire(self) -> None:
        rlock = self._rlock
        if (not self._starving or rlock._is_owned()) and rlock.acquire(False):
            return
        self._acquire_contended()

    def _acquire_contended(self) -> None:
        rlock = self._rlock
        started = time.monotonic()
        while not rlock.acquire(timeout=STARVATION_SECONDS):  # raises KeyboardInterrupt & co.
            if time.monotonic() - started >= STARVATION_SECONDS:
                self._starving = True  # newcomers queue behind the waiters from now on
        self._starving = False

    def release(self) -> None:
        self._rlock.release()  # RuntimeError("cannot release un-acquired lock") if not ours

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Slot:
    """One connection of a database: the writer (index 0) or a reader of the pool."""

    __slots__ = ("connection", "index", "owner", "spare")

    def __init__(self, connection: apsw.Connection, index: int) -> None:
        self.connection = connection
        self.index = index
        self.owner = 0  # the thread using a reader, 0 while it is in the pool
        self.spare = False  # opened beyond the pool for short reads: kept in core.spares

    @property
    def native(self) -> bool:
        """True when statements run on this connection through SQLite's C API."""
        return False


class DatabaseCore:
    """The connections (writer and reader pool) of one database, plus the LRU statement cache."""

    __slots__ = (
        "__weakref__",
        "_cache",
        "_cache_lock",
        "_capacity",
        "_clock",
        "_evictions",
        "_generation",
        "_hits",
        "_idle",
        "_misses",
        "begin_sql",
        "closed",
        "cond",
        "deadlines_active",
        "epoch",
        "forks",
        "handed",
        "inline",
        "lane",
        "limits_active",
        "lock",
        "max_readers",
        "opener",
        "opening",
        "path",
        "query_timeout",
        "raw_transaction",
        "row_type",
        "slots",
        "spares",
        "types",
        "waiters",
        "writer",
    )

    def __init__(
        self,
        connection: apsw.Connection,
        path: str,
        capacity: int,
        row_type: str,
        begin_sql: str,
        *,
        readers: int = 0,
        opener: Callable[[bool], apsw.Connection] | None = None,
        query_timeout: float | None = None,
        types: TypeMap | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"statement_cache_size must be >= 0, not {capacity}")
        if readers < 0:
            raise ValueError(f"readers must be >= 0, not {readers}")
        if readers and opener is None:
            raise ValueError("a reader pool needs an opener")
        self.path = path
        self.lock = ConnectionLock()
        self.lane = ConnectionLock()  # taken by short reads on the pool: see Statement._call
        self.row_type = check_row_type(row_type)
        self.begin_sql = begin_sql
        self.closed = False
        self.set_writer(connection)
        self.opener = opener
        self.max_readers = readers
        self._idle: list[Slot] = []  # the compiled twin keeps a stack that never shrinks
        self.slots: list[Slot] = []
        self.cond = threading.Condition()
        self.waiters = 0
        self.handed: list[Slot] = []  # readers handed to waiting threads (no barging past them)
        self.spares: list[Slot] = []  # idle readers opened beyond the pool, for short reads only
        self.opening = 0
        self.epoch = 0
        self.forks = _forks
        self.raw_transaction = False
        self.query_timeout = query_timeout
        self.types = types
        self.limits_active = 0 if query_timeout is None else 1
        self.deadlines_active = self.limits_active
        # (thread id, Limit) of the appdb.aio call running on the event loop, or None: _limits.inline
        self.inline: Any = None
        self._capacity = capacity
        self._cache: dict[Any, Statement] = {}
        self._cache_lock = threading.Lock()
        self._clock = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._generation = 0

    # -- connections -----------------------------------------------------------
    @property
    def connection(self) -> apsw.Connection:
        """The writer connection."""
        if self.forks != _forks:
            self.check_fork()
        return self.writer.connection

    def new_slot(self, connection: apsw.Connection, index: int) -> Slot:
        return Slot(connection, index)

    def set_writer(self, connection: apsw.Connection) -> None:
        """Make ``connection`` the writer (at open, and in a child process after fork)."""
        self.writer = Slot(connection, 0)

    def check_fork(self) -> None:
        """In a child process after ``fork()``: stop using the parent's connections."""
        if self.forks != _forks:
            _pool.after_fork(self, ConnectionLock())
            self._cache_lock = threading.Lock()  # another thread may have held it at the fork
            self.forks = _forks

    def acquire_writer(self) -> apsw.Connection:
        """Take the writer lock (re-entrant) and return the writer connection."""
        if self.forks != _forks:
            self.check_fork()
        self.lock.acquire()
        if self.closed:
            self.lock.release()
            raise _closed_error(self.path)
        return self.writer.connection

    def release_writer(self) -> None:
        self.lock.release()

    def checkout(self) -> Slot:
        """A reader for the calling thread (``checkin`` gives it back)."""
        if self.forks != _forks:
            self.check_fork()
        if self.closed:
            raise _closed_error(self.path)
        if self.max_readers == 0:
            raise ValueError("this database has no reader pool")
        try:
            slot = self._idle.pop()
        except IndexError:
            return _pool.checkout_slow(self)  # type: ignore[no-any-return]
        slot.owner = get_ident()
        return slot

    def checkin(self, slot: Slot) -> None:
        slot.owner = 0
        if self.closed or self.max_readers == 0:
            _pool.discard(self, slot)
            return
        if slot.spare:  # never to long reads: they stay bounded by the pool's size
            _pool.return_spare(self, slot)
            return
        if self.waiters:  # threads wait for a reader: hand it to one of them
            _pool.hand_over(self, slot)
            return
        self._idle.append(slot)
        if self.closed:  # close() ran meanwhile and may have missed this one
            _pool.close_readers(self)

    def idle_pop(self) -> Slot | None:
        """An idle reader taken out of the pool, or None (for the slow paths)."""
        try:
            return self._idle.pop()
        except IndexError:
            return None

    def idle_take_all(self) -> list[Slot]:
        """Every idle reader, taken out of the pool."""
        taken = []
        while (slot := self.idle_pop()) is not None:
            taken.append(slot)
        return taken

    def idle_push(self, slot: Slot) -> None:
        """Put an idle reader (back) into the pool, without waking anyone."""
        self._idle.append(slot)

    def routes_to_reader(self) -> bool:
        """True when a parallel statement called now by this thread would run on a reader."""
        return self.max_readers != 0 and not self.raw_transaction and not self.lock.owned()

    # -- limits ----------------------------------------------------------------
    def limits_enter(self, deadline: bool = False) -> None:
        """A limit opens: calls look at ``appdb._limits`` (only short reads skip it without a deadline)."""
        with self._cache_lock:
            self.limits_active += 1
            if deadline:
                self.deadlines_active += 1

    def limits_exit(self, deadline: bool = False) -> None:
        with self._cache_lock:
            self.limits_active -= 1
            if deadline:
                self.deadlines_active -= 1

    # -- the statement cache -------------------------------------------------------
    def prepare(self, sql: str, *, row_type: str | None = None) -> Statement:
        """Return the cached ``Statement`` for ``sql`` (and row type), compiling it on a miss."""
        if self.closed:
            raise _closed_error(self.path)
        key: Any = sql if row_type is None or row_type == self.row_type else (sql, row_type)
        try:
            statement = self._cache.get(key)
        except TypeError:  # unhashable: not SQL text, reported by _prepare_miss
            statement = None
        if statement is not None:
            return self._hit(statement)
        return self._prepare_miss(key, sql, row_type)

    def _hit(self, statement: Statement) -> Statement:
        self._clock += 1
        statement._last_used = self._clock
        self._hits += 1
        return statement

    def _prepare_miss(self, key: Any, sql: str, row_type: str | None) -> Statement:
        as_dict = check_row_type(self.row_type if row_type is None else row_type) == "dict"
        text = _exact_sql(sql)
        statement = Statement(self, text, as_dict)  # compiles outside any lock
        with self._cache_lock:  # several threads may miss on the same SQL at once
            if self.closed:
                raise _closed_error(self.path)
            found = self._cache.get(key)
            if found is not None:  # another thread compiled it meanwhile
                return self._hit(found)
            self._misses += 1
            if self._capacity == 0:
                return statement
            if len(self._cache) >= self._capacity:
                self._evict()
            self._clock += 1
            statement._last_used = self._clock
            self._cache[key] = statement
            return statement

    def _evict(self) -> None:
        oldest_key = None
        oldest = -1
        for key, statement in self._cache.items():
            if oldest < 0 or statement._last_used < oldest:
                oldest = statement._last_used
                oldest_key = key
        del self._cache[oldest_key]
        self._evictions += 1

    def statement_cache_stats(self) -> CacheStats:
        """Hits, misses, evictions, current size and capacity of the statement cache."""
        return CacheStats(self._hits, self._misses, self._evictions, len(self._cache), self._capacity)

    def clear_statement_cache(self) -> None:
        """Forget every cached statement (statements already handed out keep working)."""
        with self._cache_lock:
            self._cache.clear()

    def schema_changed(self) -> None:
        """Note a schema change: every statement re-reads its columns before its next run."""
        self._generation += 1

    @property
    def generation(self) -> int:
        """Counts the schema changes noted so far (see ``schema_changed``)."""
        return self._generation

    def mark_closed(self) -> None:
        """Mark the core closed, drop the cache and close idle readers; the caller closes the writer."""
        self.closed = True
        with self._cache_lock:
            statements = list(self._cache.values())
            self._cache.clear()
        for statement in statements:
            statement._drop_cursor()
        _pool.close_readers(self)


class Statement:
    """A prepared SQL statement bound to one database (``appdb.Statement``).

    Made by ``AppDatabase.prepare(sql)``, never directly. Values are bound
    positionally (``stmt.get(1, "a")`` for ``?`` placeholders, or one sequence:
    ``stmt.get([1, "a"])``) or by name (``stmt.get(id=1)`` or one mapping:
    ``stmt.get({"id": 1})`` for ``:id``). Rows are dicts keyed by column name, or
    tuples (``row_type="tuple"``). Outside a transaction, read-only statements run
    on the reader pool; inside ``db.transaction()`` (or ``db.writer()``) everything
    runs on the writer.

    Every call (``get``, ``scalar``, ``all``, ``run``, ``iterate``) can raise:

    - ``apsw.BindingsError``: both positional and named values, the wrong number of
      values, a missing named value, or names the statement does not use;
    - ``TypeError``: a value SQLite cannot store (and no ``types`` map adapts it);
      ``OverflowError``: an integer outside SQLite's 64 bits;
    - ``appdb.ConversionError``: the database's ``types`` map failed on a value or a column;
    - ``appdb.DuplicateColumnError``: dict rows, and two result columns share a name;
    - ``appdb.DatabaseClosedError``: the database is closed;
    - ``appdb.QueryTimeout``: the statement ran past a deadline or ``query_timeout``;
    - ``apsw.Error``: SQLite's own error (``apsw.SQLError``, ``apsw.ConstraintError``,
      ``apsw.BusyError``, ``apsw.ReadOnlyError`` on a ``readonly=True`` database...).
    """

    __slots__ = (
        "__weakref__",
        "_as_dict",
        "_busy",
        "_changes_schema",
        "_columns",
        "_convert",
        "_cookie",
        "_core",
        "_cursors",
        "_epoch",
        "_generation",
        "_last_used",
        "_named",
        "_names",
        "_parallel",
        "_readonly",
        "_returns_rows",
        "_short",
        "_single_row",
        "_sql",
        "_txn_control",
    )

    def __init__(self, core: DatabaseCore, sql: str, as_dict: bool) -> None:
        self._core = core
        self._sql = sql
        self._as_dict = as_dict
        self._cursors: list[apsw.Cursor | None] = [None] * (core.max_readers + 1)
        self._epoch = core.epoch
        self._busy = False
        self._last_used = 0
        self._describe_anywhere()

    def _describe(self, connection: apsw.Connection, on_reader: bool = False) -> None:
        """(Re)read what SQLite says about the statement; the caller holds ``connection``."""
        generation = self._core._generation
        info = describe(connection, self._sql)
        if self._as_dict:
            duplicates = duplicate_columns_error(self._sql, info.columns)
            if duplicates is not None:
                raise duplicates
        types = self._core.types
        self._convert = (
            None if types is None else types.row_converter(self._sql, info.columns, info.declared_types)
        )
        self._columns = info.columns
        self._cookie = info.schema_version
        self._names = info.parameter_names
        self._named = frozenset(n for n in info.parameter_names if n is not None and not n.isdigit())
        self._readonly = info.readonly
        self._parallel = info.parallel and (on_reader or getattr(self, "_parallel", True))
        self._txn_control = info.transaction_control
        self._short = info.short
        self._returns_rows = bool(info.columns)
        self._single_row = info.single_row
        self._changes_schema = info.changes_schema
        self._generation = generation

    def _describe_anywhere(self) -> None:
        """Describe on a reader when this thread would read there, else on the writer.

        A statement that compiles on the writer but not on a reader (a temporary
        table, an attached database, a function registered on the writer only)
        always runs on the writer.
        """
        core = self._core
        if core.forks != _forks:
            core.check_fork()
        if core.routes_to_reader():
            slot = _pool.checkout_short(core)  # never waits while long reads hold every reader
            try:
                self._describe(slot.connection, on_reader=True)
                return
            except apsw.SQLError:
                pass
            finally:
                _pool.checkin_short(core, slot)
            self._parallel = False
        connection = core.acquire_writer()
        try:
            self._describe(connection)
        finally:
            core.release_writer()

    # -- properties --------------------------------------------------------
    @property
    def sql(self) -> str:
        """The SQL text of the statement."""
        return self._sql

    @property
    def columns(self) -> tuple[str, ...]:
        """Result column names, re-read after a schema change (empty for statements that return no rows)."""
        core = self._core
        if not core.closed and (
            self._generation != core._generation or self._cookie != _pool.current_schema_version(core)
        ):
            self._describe_anywhere()  # a schema change here, or by another connection
        return self._columns

    @property
    def readonly(self) -> bool:
        """True when the statement does not write to the database."""
        return self._readonly

    @property
    def parallel(self) -> bool:
        """True when calls outside a transaction run on a reader, beside other threads."""
        return self._parallel and self._core.max_readers != 0

    @property
    def row_type(self) -> str:
        """``"dict"`` or ``"tuple"``."""
        return "dict" if self._as_dict else "tuple"

    def __repr__(self) -> str:
        return f"<appdb.Statement {self._sql!r}>"

    # -- helpers -----------------------------------------------------------
    def _bindings(self, params: tuple[Any, ...], named: dict[str, Any]) -> Any:
        if named:
            if params:
                raise apsw.BindingsError(
                    f"pass either positional or named values, not both, to statement {self._sql!r}"
                )
            bindings: Any = named
        elif len(params) == 1 and type(params[0]) not in _SCALARS:
            first = params[0]
            if isinstance(first, (tuple, list, Mapping)):
                bindings = first
            else:
                bindings = params
        else:
            bindings = params
        if isinstance(bindings, Mapping) and len(bindings) > len(self._named):
            raise extra_names_error(self._sql, self._names, bindings)
        return bindings

    def _new_epoch(self) -> None:
        """After ``fork()``: the cursors belong to the parent's connections; never touch them."""
        for cursor in self._cursors:
            leak(cursor)
        self._cursors = [None] * (self._core.max_readers + 1)
        self._epoch = self._core.epoch

    def _drop_cursor(self) -> None:
        cursors = self._cursors
        self._cursors = [None] * len(cursors)
        if self._epoch != self._core.epoch:
            for cursor in cursors:
                leak(cursor)
            return
        for cursor in cursors:
            if cursor is not None:
                try:
                    cursor.close(True)
                except apsw.Error:  # its connection is closed already
                    pass

    def _forget(self, cursor: apsw.Cursor, index: int) -> None:
        """Reset ``cursor``'s statement without stepping it (closing resets it)."""
        cursors = self._cursors
        if index < len(cursors) and cursors[index] is cursor:
            cursors[index] = None
        cursor.close(True)

    def _cursor_on(self, slot: Slot) -> apsw.Cursor:
        cursors = self._cursors
        index = slot.index
        if index >= len(cursors):  # a reader opened beyond the pool size (nested use)
            cursors.extend([None] * (index + 1 - len(cursors)))
        cursor = cursors[index]
        if cursor is None:
            cursor = slot.connection.cursor()
            cursors[index] = cursor
        return cursor

    def _row(self, row: Any, connection: apsw.Connection) -> Any:
        if self._as_dict:
            columns = self._columns
            if len(row) != len(columns):
                self._describe(connection)  # the schema changed under us (another connection)
                columns = self._columns
            if self._convert is not None:
                row = self._convert(row)
            return dict(zip(columns, row))
        if self._convert is not None:
            return self._converted(row, connection)
        return row

    def _converted(self, row: Any, connection: apsw.Connection) -> Any:
        """``row`` through the type map's converters (only statements that have some)."""
        if len(row) != len(self._columns):
            self._describe(connection)
        convert = self._convert
        return row if convert is None else convert(row)

    def _execute(
        self, kind: int, cursor: apsw.Cursor, index: int, connection: apsw.Connection, bindings: Any
    ) -> Any:
        """Run once on ``cursor`` and shape the result as ``kind`` asks."""
        if kind == _RUN:
            cursor.execute(self._sql, bindings)
            if self._returns_rows:
                for _ in cursor:
                    pass
            result: Any = _new_run_result(RunResult, (connection.changes(), connection.last_insert_rowid()))
        elif kind == _ALL:
            rows: list[Any] = cursor.execute(self._sql, bindings).fetchall()
            if self._as_dict and rows:
                columns = self._columns
                if len(rows[0]) != len(columns):
                    self._describe(connection)
                    columns = self._columns
                convert = self._convert
                if convert is not None:
                    rows = [dict(zip(columns, convert(row))) for row in rows]
                else:
                    rows = [dict(zip(columns, row)) for row in rows]
            elif self._convert is not None and rows:
                rows = [self._converted(row, connection) for row in rows]
            result = rows
        else:
            cursor.execute(self._sql, bindings)
            # The compiled twin's _first_row and _row, inlined for get() and scalar(): each Python-level
            # call costs about as much as the rest of this branch.
            row = cursor.fetchone()
            if row is not None:
                if self._single_row:
                    try:
                        more = cursor.fetchone() is not None
                    except apsw.Error:  # from a row nobody asked for
                        more = True
                    if more:  # another connection changed the plan (e.g. dropped an index)
                        self._single_row = False
                        self._forget(cursor, index)
                else:
                    self._forget(cursor, index)  # never evaluate a second row
            if kind == _SCALAR:
                if row is not None and self._convert is not None:
                    row = self._converted(row, connection)
                result = None if row is None or len(row) == 0 else row[0]
            elif row is None:
                result = None
            elif self._as_dict and self._convert is None and len(row) == len(self._columns):
                result = dict(zip(self._columns, row))
            else:
                result = self._row(row, connection)
        if self._changes_schema:
            self._core._generation += 1
        return result

    def _failed(
        self, exc: BaseException, cursor: apsw.Cursor, index: int, bindings: Any, token: _limits.Token | None
    ) -> BaseException | None:
        """Discard ``cursor`` after an error; return the translated error if any."""
        if self._core.closed:  # close() from another thread pulled the connection away
            return _closed_error(self._core.path)
        self._forget(cursor, index)
        if isinstance(exc, apsw.CursorClosedError):  # its connection was closed (a user's close())
            return apsw.ConnectionClosedError("The connection has been closed")
        if token is not None:
            error = token.translate(exc, self._sql)
            if error is not None:
                return error
        return binding_error(exc, self._sql, self._names, bindings)

    # -- routing -----------------------------------------------------------
    # The pure-Python twin is slower than the compiled one by nature; its hot path
    # below is written flat (the lock, the lane, taking and giving back a reader
    # inline) because every Python-level call costs about 0.1 us.
    def _call(self, kind: int, bindings: Any) -> Any:
        """Run on a reader of the pool, or on the writer (``_call_writer``) when the call must."""
        core = self._core
        if core.forks != _forks:
            core.check_fork()
        if not (
            self._parallel
            and core.max_readers != 0
            and not core.raw_transaction
            and not core.lock._rlock._is_owned()
        ):
            return self._call_writer(kind, bindings)
        # The read runs on a reader (the compiled twin's _call_reader, inlined here).
        short = self._short
        # A short read needs a token only for a deadline (no budget, nothing to cancel).
        limited = core.deadlines_active if short else core.limits_active
        token = _limits.start(core, False, short) if limited else None
        if core.closed:
            raise _closed_error(core.path)
        # Short reads take turns on the lane, then on one reader (see the docs,
        # "Transactions and threads"): threads waiting there sleep instead of fighting
        # over the GIL, and the reader on top of the idle stack stays hot. The lane
        # comes first, and its holder never waits for a reader (one more opens when
        # long reads hold them all), so a thread that holds a reader (an open
        # iterate()) and waits for the lane cannot deadlock with it.
        lane = core.lane if short else None
        if lane is not None:
            rlock = lane._rlock
            if not ((not lane._starving or rlock._is_owned()) and rlock.acquire(False)):
                if core.limits_active:
                    _limits.nowait(core)  # an event loop must not wait here
                lane._acquire_contended()
        try:
            slot = core._idle.pop()
        except IndexError:
            try:
                slot = _pool.checkout_slow(core) if lane is None else _pool.checkout_at_once(core)
            except BaseException:
                if lane is not None:
                    lane._rlock.release()
                raise
        else:
            slot.owner = get_ident()
        retry = False
        try:
            if self._epoch != core.epoch:
                self._new_epoch()
            connection = slot.connection
            index = slot.index
            try:
                cursor = self._cursors[index]
            except IndexError:  # a reader opened beyond the pool size (nested use)
                cursor = None
            if cursor is None:
                cursor = self._cursor_on(slot)
            if self._generation != core._generation:
                self._describe(connection, on_reader=True)
            try:
                if token is not None:
                    token.arm(connection)
                return self._execute(kind, cursor, index, connection, bindings)
            except BaseException as exc:
                error = self._failed(exc, cursor, index, bindings, token)
                if error is None:
                    if not needs_writer(exc):
                        raise
                    retry = True  # a function registered on the writer only, say
                else:
                    raise error from None
            finally:
                if token is not None:
                    token.disarm(connection)
        finally:
            try:  # the reader first: the next short read takes it again
                if core.waiters or core.closed or slot.spare:
                    core.checkin(slot)
                else:
                    slot.owner = 0
                    core._idle.append(slot)
                    if core.closed:  # close() ran meanwhile and may have missed this one
                        _pool.close_readers(core)
            finally:
                if lane is not None:
                    lane._rlock.release()
        assert retry
        result = self._call_writer(kind, bindings)  # a read has no side effects: run it again
        self._parallel = False  # it works there and not on a reader
        return result

    def _call_writer(self, kind: int, bindings: Any) -> Any:
        core = self._core
        token = _limits.start(core, True, self._short) if core.limits_active else None
        lock = core.lock
        rlock = lock._rlock
        if not ((not lock._starving or rlock._is_owned()) and rlock.acquire(False)):
            lock._acquire_contended()
        try:
            if core.closed:
                raise _closed_error(core.path)
            if self._epoch != core.epoch:
                self._new_epoch()
            connection = core.writer.connection
            if self._generation != core._generation:
                self._describe(connection)
            busy = self._busy
            cursor = self._cursors[0]
            if cursor is None or busy:
                cursor = connection.cursor()  # re-entered: a fresh cursor of its own
                if not busy:
                    self._cursors[0] = cursor
            self._busy = True
            try:
                if token is not None:
                    token.arm(connection)
                result = self._execute(kind, cursor, 0, connection, bindings)
            except BaseException as exc:
                error = self._failed(exc, cursor, 0, bindings, token)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = busy
                if token is not None:
                    token.disarm(connection)
                if self._txn_control and lock.depth() == 1:
                    core.raw_transaction = connection.in_transaction
        finally:
            rlock.release()
        return result

    # -- execution ---------------------------------------------------------
    def get(self, *params: Any, **named: Any) -> Any:
        """Run the query and return its first row, or None when there is none.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The first row (a ``dict`` or a ``tuple``), or ``None``.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``Statement``.
        """
        if named or (len(params) == 1 and type(params[0]) not in _SCALARS):
            return self._call(_GET, self._bindings(params, named))
        return self._call(_GET, params)  # plain positional values: nothing to check

    def scalar(self, *params: Any, **named: Any) -> Any:
        """Return the first column of the first row, or None when there is no row.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The value (converted by the ``types`` map, if any), or ``None``.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``Statement``.
        """
        if named or (len(params) == 1 and type(params[0]) not in _SCALARS):
            return self._call(_SCALAR, self._bindings(params, named))
        return self._call(_SCALAR, params)  # plain positional values: nothing to check

    def all(self, *params: Any, **named: Any) -> list[Any]:
        """Run the query and return every row as a list.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The rows (``dict`` or ``tuple`` each); empty when there are none.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``Statement``.
        """
        if named or (len(params) == 1 and type(params[0]) not in _SCALARS):
            return self._call(_ALL, self._bindings(params, named))  # type: ignore[no-any-return]
        return self._call(_ALL, params)  # type: ignore[no-any-return]  # plain positional values: nothing to check

    def run(self, *params: Any, **named: Any) -> RunResult:
        """Execute a write (or any statement) and return what it changed.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            ``RunResult(changes, last_insert_rowid)``: rows changed by this statement
            and the connection's last inserted rowid.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``Statement``.
        """
        if named or (len(params) == 1 and type(params[0]) not in _SCALARS):
            return self._call(_RUN, self._bindings(params, named))  # type: ignore[no-any-return]
        return self._call(_RUN, params)  # type: ignore[no-any-return]  # plain positional values: nothing to check

    def iterate(self, *params: Any, **named: Any) -> RowIterator:
        """Run the query and return an iterator over its rows.

        The statement is reset as soon as the rows run out, or the iterator is
        closed (``close()`` or ``with``) or garbage collected. While it is open it
        holds a reader (or the writer) and its read snapshot: finish or close it.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            A ``RowIterator`` over the rows; errors of later
            rows are raised by ``next()``.

        Raises:
            apsw.Error: Binding, SQLite and appdb errors: the list is on ``Statement``.
        """
        bindings = self._bindings(params, named)
        core = self._core
        if core.forks != _forks:
            core.check_fork()
        if self._parallel and core.routes_to_reader():
            slot: Slot | None = core.checkout()
            assert slot is not None
            connection = slot.connection
        else:
            slot = None
            connection = core.acquire_writer()
        try:
            if self._generation != core._generation:
                self._describe(connection, on_reader=slot is not None)
            cursor = connection.cursor()
            token = _limits.start(core, False, self._short) if core.limits_active else None
            try:
                if token is not None:
                    token.writer = slot is None  # a timeout on the writer ends its transaction
                    token.arm(connection)
                cursor.execute(self._sql, bindings)
                if self._changes_schema:
                    core._generation += 1
            except BaseException as exc:
                cursor.close(True)
                error = token.translate(exc, self._sql) if token is not None else None
                if error is None:
                    error = binding_error(exc, self._sql, self._names, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                if token is not None:
                    token.disarm(connection)
        except BaseException:
            if slot is not None:
                core.checkin(slot)
            raise
        finally:
            if slot is None:
                core.release_writer()
        return RowIterator(self, cursor, slot)

    def run_many(self, seq_of_params: Iterable[Any]) -> RunResult:
        """Execute once per item of ``seq_of_params`` (sequences, mappings or single values).

        The batch is atomic: outside a transaction it runs in one, inside one it
        runs in a savepoint, so a failing item leaves none of the batch behind.
        Errors about an item's values name the item (``run_many item 3: ...``).

        Args:
            seq_of_params: An ordered iterable (a list, a generator...) of items,
                each bound like the values of one ``run()`` call.

        Returns:
            ``RunResult(changes, last_insert_rowid)``; ``changes`` is the total
            number of rows changed (triggers included).

        Raises:
            TypeError: ``seq_of_params`` is a ``str``, ``bytes``, a mapping or a set
                (not an ordered iterable of items), or an item holds a value SQLite
                cannot store.
            apsw.BindingsError: An item has the wrong number of values or names.
            appdb.ConversionError: The ``types`` map failed on a value.
            appdb.DatabaseClosedError: The database is closed.
            apsw.ConstraintError: An item broke a constraint; nothing of the batch
                was kept.
            appdb.QueryTimeout: The batch ran past a deadline or ``query_timeout``
                (one bound for the whole batch); nothing of it was kept.
            apsw.Error: SQLite's own error (``apsw.BusyError``, ``apsw.SQLError``...).
        """
        return _batch.run_many(self._core, self, _CheckedMany(self, seq_of_params))

    def _execute_many(self, connection: apsw.Connection, items: Iterator[Any]) -> None:
        """``executemany`` on the writer (``_batch.run_many`` holds the lock and the transaction)."""
        if self._epoch != self._core.epoch:
            self._new_epoch()
        busy = self._busy
        cursor = self._cursors[0]
        if cursor is None or busy:
            cursor = connection.cursor()
            if not busy:
                self._cursors[0] = cursor
        self._busy = True
        try:
            cursor.executemany(self._sql, items)
            if self._returns_rows:
                for _ in cursor:
                    pass
        except BaseException as exc:
            error = self._failed(exc, cursor, 0, None, None)
            if error is None:
                raise
            raise error from None
        finally:
            self._busy = busy

    @property
    def changes_schema(self) -> bool:
        """True when running the statement changes the schema (DDL)."""
        return self._changes_schema


class _CheckedMany:
    """The items of a ``run_many`` batch, validated the way single runs are, and counted.

    ``index`` (0-based) and ``item`` (the values as bound; None while the item is
    fetched) let ``_batch`` name the item an error is about.
    """

    __slots__ = ("_it", "_statement", "index", "item")

    def __init__(self, statement: Statement, seq_of_params: Iterable[Any]) -> None:
        self._statement = statement
        self._it = _batch.parameter_lists(seq_of_params)
        self.index = -1
        self.item: Any = None

    def __iter__(self) -> _CheckedMany:
        return self

    def __next__(self) -> Any:
        self.index += 1
        self.item = None
        item = next(self._it)
        if isinstance(item, (tuple, list)):
            pass
        elif isinstance(item, Mapping):
            statement = self._statement
            if len(item) > len(statement._named):
                raise extra_names_error(statement._sql, statement._names, item)
        elif isinstance(item, _SINGLE_VALUES) or not isinstance(item, Sequence):
            item = (item,)  # one value: a set or an unknown object fails naming parameter 1
        self.item = item
        return item


class RowIterator:
    """Iterator over the rows of one execution (``Statement.iterate()``); resets the statement when done.

    Use it in a ``for`` loop or as a context manager (``with stmt.iterate() as rows:``),
    which closes it when the block ends.
    """

    __slots__ = ("__weakref__", "_cursor", "_epoch", "_slot", "_statement")

    def __init__(self, statement: Statement, cursor: apsw.Cursor, slot: Slot | None) -> None:
        self._statement = statement
        self._cursor: apsw.Cursor | None = cursor
        self._slot = slot
        self._epoch = statement._core.epoch

    def __iter__(self) -> RowIterator:
        return self

    def __next__(self) -> Any:
        cursor = self._cursor
        if cursor is None:
            raise StopIteration
        statement = self._statement
        core = statement._core
        slot = self._slot
        if core.forks != _forks:
            core.check_fork()
        if slot is None:
            core.lock.acquire()
        try:
            if core.closed or self._epoch != core.epoch:
                self._finish()
                raise _closed_error(core.path)
            connection = cursor.connection
            token = _limits.start(core, False, statement._short) if core.limits_active else None
            try:
                if token is not None:
                    token.writer = slot is None  # a timeout on the writer ends its transaction
                    token.arm(connection)  # raises QueryTimeout once the deadline has passed
                row = next(cursor)
            except StopIteration:
                self._finish()
                raise
            except BaseException as exc:
                self._finish()
                error = token.translate(exc, statement._sql) if token is not None else None
                if error is None:
                    raise
                raise error from None
            finally:
                if token is not None:
                    token.disarm(connection)
            return statement._row(row, connection)
        finally:
            if slot is None:
                core.lock.release()

    def _finish(self) -> None:
        """Reset the statement and give the reader back (call with the writer lock for the writer)."""
        cursor = self._cursor
        slot = self._slot
        self._cursor = None
        self._slot = None
        core = self._statement._core
        if self._epoch != core.epoch:  # inherited across fork(): never touch it
            leak(cursor)
            return
        if cursor is not None and not core.closed:
            try:
                cursor.close(True)
            except apsw.Error:  # pragma: no cover - its connection closed meanwhile
                pass
        if slot is not None:
            core.checkin(slot)

    def close(self) -> None:
        """Reset the statement and give its connection back; safe to call twice."""
        if self._cursor is None:
            return
        core = self._statement._core
        if core.forks != _forks:
            core.check_fork()
        if self._slot is not None or self._epoch != core.epoch:
            self._finish()
            return
        core.lock.acquire()
        try:
            self._finish()
        finally:
            core.lock.release()

    def __enter__(self) -> RowIterator:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # On the writer, under its lock: closing while another thread runs a statement
        # raises ThreadingViolationError, which a finalizer can only swallow, and the
        # statement then stays active and pins a read snapshot (the WAL cannot reset).
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
