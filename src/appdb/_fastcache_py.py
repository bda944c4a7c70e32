"""Pure-Python twin of ``appdb._fastcache``: the statement cache and row conversion.

It is the fallback when the compiled module is unavailable (no compiler, PyPy,
``APPDB_NO_EXTENSIONS=1``) and the reference the test suite holds the compiled
module to: both must behave identically, exception types and messages included.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import apsw

from ._sqlinfo import binding_error, describe, extra_names_error
from ._types import CacheStats, RunResult
from .errors import DatabaseClosedError

__all__ = ["ConnectionLock", "DatabaseCore", "RowIterator", "Statement"]

_ROW_TYPES = ("dict", "tuple")
_SCALARS = (int, str, float, bytes, type(None))
#: Single values (not sequences of values) accepted as one ``run_many`` item.
_SINGLE_VALUES = (int, str, float, bytes, bytearray, memoryview, type(None))
_new_run_result = tuple.__new__


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
    """Re-entrant lock that serialises threads on one connection."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()


class DatabaseCore:
    """Connection state shared by the facade and its statements, plus the LRU cache."""

    __slots__ = (
        "__weakref__",
        "_cache",
        "_capacity",
        "_clock",
        "_evictions",
        "_generation",
        "_hits",
        "_misses",
        "begin_sql",
        "closed",
        "connection",
        "lock",
        "path",
        "row_type",
    )

    def __init__(
        self, connection: apsw.Connection, path: str, capacity: int, row_type: str, begin_sql: str
    ) -> None:
        if capacity < 0:
            raise ValueError(f"statement_cache_size must be >= 0, not {capacity}")
        self.connection = connection
        self.path = path
        self.lock = ConnectionLock()
        self.row_type = check_row_type(row_type)
        self.begin_sql = begin_sql
        self.closed = False
        self._capacity = capacity
        self._cache: dict[Any, Statement] = {}
        self._clock = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._generation = 0

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
        sql = _exact_sql(sql)
        with self.lock:  # several threads may miss on the same SQL at once
            if self.closed:
                raise _closed_error(self.path)
            statement = self._cache.get(key)
            if statement is not None:  # another thread compiled it meanwhile
                return self._hit(statement)
            statement = Statement(self, sql, as_dict)
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
        with self.lock:
            self._cache.clear()

    def schema_changed(self) -> None:
        """Note a schema change: every statement re-reads its columns before its next run."""
        self._generation += 1

    @property
    def generation(self) -> int:
        """Counts the schema changes noted so far (see ``schema_changed``)."""
        return self._generation

    def mark_closed(self) -> None:
        """Mark the core closed and drop the cache; the caller closes the connection."""
        self.closed = True
        for statement in self._cache.values():
            statement._drop_cursor()
        self._cache.clear()


class Statement:
    """A prepared SQL statement bound to one database.

    Rows are dicts keyed by column name, or tuples (``row_type="tuple"``).
    """

    __slots__ = (
        "__weakref__",
        "_as_dict",
        "_busy",
        "_changes_schema",
        "_columns",
        "_conn",
        "_core",
        "_cursor",
        "_generation",
        "_last_used",
        "_named",
        "_names",
        "_readonly",
        "_returns_rows",
        "_single_row",
        "_sql",
    )

    def __init__(self, core: DatabaseCore, sql: str, as_dict: bool) -> None:
        self._core = core
        self._conn = core.connection
        self._sql = sql
        self._as_dict = as_dict
        self._cursor: apsw.Cursor | None = None
        self._busy = False
        self._last_used = 0
        self._describe()

    def _describe(self) -> None:
        """(Re)read what SQLite says about the statement; call with the lock held."""
        generation = self._core._generation
        info = describe(self._conn, self._sql)
        self._columns = info.columns
        self._names = info.parameter_names
        self._named = frozenset(n for n in info.parameter_names if n is not None and not n.isdigit())
        self._readonly = info.readonly
        self._returns_rows = bool(info.columns)
        self._single_row = info.single_row
        self._changes_schema = info.changes_schema
        self._generation = generation

    # -- properties --------------------------------------------------------
    @property
    def sql(self) -> str:
        """The SQL text of the statement."""
        return self._sql

    @property
    def columns(self) -> tuple[str, ...]:
        """Result column names (empty for statements that return no rows)."""
        core = self._core
        if self._generation != core._generation and not core.closed:
            with core.lock:
                if not core.closed:
                    self._describe()
        return self._columns

    @property
    def readonly(self) -> bool:
        """True when the statement does not write to the database."""
        return self._readonly

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

    def _take_cursor(self) -> apsw.Cursor:
        """The statement's own cursor, or a fresh one while it is in use (re-entry)."""
        core = self._core
        if core.closed:
            raise _closed_error(core.path)
        if self._generation != core._generation:
            self._describe()
        cursor = self._cursor
        if cursor is None or self._busy:
            cursor = self._conn.cursor()
            if not self._busy:
                self._cursor = cursor
        return cursor

    def _drop_cursor(self) -> None:
        cursor = self._cursor
        self._cursor = None
        if cursor is not None:
            cursor.close(True)

    def _reset(self, cursor: apsw.Cursor) -> None:
        """Reset ``cursor``'s statement without stepping it (closing resets it)."""
        if cursor is self._cursor:
            self._cursor = None
        cursor.close(True)

    def _failed(self, exc: BaseException, cursor: apsw.Cursor, bindings: Any) -> BaseException | None:
        """Discard ``cursor`` after an error; return the translated error if any."""
        if cursor is self._cursor:
            self._cursor = None
        cursor.close(True)
        return binding_error(exc, self._sql, self._names, bindings)

    def _first_row(self, cursor: apsw.Cursor) -> Any:
        """Step to the first row, then leave the statement reset."""
        row = cursor.fetchone()
        if row is not None:
            if not self._single_row:
                self._reset(cursor)  # never evaluate a second row
            else:
                try:
                    more = cursor.fetchone() is not None
                except apsw.Error:  # from a row nobody asked for
                    more = True
                if more:  # another connection changed the plan (e.g. dropped an index)
                    self._single_row = False
                    self._reset(cursor)
        return row

    def _row(self, row: Any) -> Any:
        if self._as_dict:
            columns = self._columns
            if len(row) != len(columns):
                columns = self._refresh_columns()
            return dict(zip(columns, row))
        return row

    def _refresh_columns(self) -> tuple[str, ...]:
        """The schema changed under us (another connection): read the columns again."""
        with self._core.lock:
            self._describe()
        return self._columns

    def _after_write(self) -> None:
        if self._changes_schema:
            self._core.schema_changed()

    # -- execution ---------------------------------------------------------
    def get(self, *params: Any, **named: Any) -> Any:
        """Run the query and return its first row, or None when there is none."""
        bindings = self._bindings(params, named)
        lock = self._core.lock
        lock.acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                cursor.execute(self._sql, bindings)
                row = self._first_row(cursor)
                if self._changes_schema:
                    self._after_write()
                if row is not None:
                    row = self._row(row)
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock.release()
        return row

    def scalar(self, *params: Any, **named: Any) -> Any:
        """Return the first column of the first row, or None when there is no row."""
        bindings = self._bindings(params, named)
        lock = self._core.lock
        lock.acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                cursor.execute(self._sql, bindings)
                row = self._first_row(cursor)
                if self._changes_schema:
                    self._after_write()
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock.release()
        if row is None or len(row) == 0:
            return None
        return row[0]

    def all(self, *params: Any, **named: Any) -> list[Any]:
        """Run the query and return every row as a list."""
        bindings = self._bindings(params, named)
        lock = self._core.lock
        lock.acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                rows: list[Any] = cursor.execute(self._sql, bindings).fetchall()
                if self._changes_schema:
                    self._after_write()
                if self._as_dict and rows:
                    columns = self._columns
                    if len(rows[0]) != len(columns):
                        columns = self._refresh_columns()
                    rows = [dict(zip(columns, row)) for row in rows]
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock.release()
        return rows

    def iterate(self, *params: Any, **named: Any) -> RowIterator:
        """Run the query and return an iterator over its rows.

        The statement is reset as soon as the rows run out, or the iterator is
        closed (``close()`` or ``with``) or garbage collected (a ``for`` loop
        directly over ``iterate()`` that breaks drops it at once).
        """
        bindings = self._bindings(params, named)
        lock = self._core.lock
        lock.acquire()
        try:
            core = self._core
            if core.closed:
                raise _closed_error(core.path)
            if self._generation != core._generation:
                self._describe()
            cursor = self._conn.cursor()
            try:
                cursor.execute(self._sql, bindings)
                if self._changes_schema:
                    self._after_write()
            except BaseException as exc:
                cursor.close(True)
                error = binding_error(exc, self._sql, self._names, bindings)
                if error is None:
                    raise
                raise error from None
        finally:
            lock.release()
        return RowIterator(self, cursor)

    def run(self, *params: Any, **named: Any) -> RunResult:
        """Execute a write and return ``RunResult(changes, last_insert_rowid)``."""
        bindings = self._bindings(params, named)
        lock = self._core.lock
        lock.acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                cursor.execute(self._sql, bindings)
                if self._returns_rows:
                    for _ in cursor:
                        pass
                conn = self._conn
                result = _new_run_result(RunResult, (conn.changes(), conn.last_insert_rowid()))
                if self._changes_schema:
                    self._after_write()
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock.release()
        return result

    def run_many(self, seq_of_params: Iterable[Any]) -> RunResult:
        """Execute once per item of ``seq_of_params`` (sequences, mappings or single values).

        The batch is atomic: outside a transaction it runs in one, inside one it
        runs in a savepoint, so a failing item leaves none of the batch behind.
        ``changes`` is the total number of rows changed (triggers included).
        """
        items = _checked_many(self, seq_of_params)
        lock = self._core.lock
        lock.acquire()
        try:
            cursor = self._take_cursor()
            conn = self._conn
            begin, commit, undo = _batch_sql(conn, self._core.begin_sql)
            was_busy = self._busy
            self._busy = True
            try:
                conn.execute(begin)
                before = conn.total_changes()
                try:
                    cursor.executemany(self._sql, items)
                    if self._returns_rows:
                        for _ in cursor:
                            pass
                    result = _new_run_result(
                        RunResult, (conn.total_changes() - before, conn.last_insert_rowid())
                    )
                except BaseException as exc:
                    if conn.in_transaction:
                        for sql in undo:
                            conn.execute(sql)
                    if self._changes_schema:
                        self._after_write()  # what was undone may have changed the schema
                    error = self._failed(exc, cursor, None)
                    if error is None:
                        raise
                    raise error from None
                try:
                    conn.execute(commit)
                except BaseException:
                    if conn.in_transaction:
                        for sql in undo:
                            conn.execute(sql)
                    raise
                if self._changes_schema:
                    self._after_write()
            finally:
                self._busy = was_busy
        finally:
            lock.release()
        return result


def _batch_sql(conn: apsw.Connection, begin_sql: str) -> tuple[str, str, tuple[str, ...]]:
    """SQL that makes a ``run_many`` batch atomic: begin, commit, and undo on failure."""
    if conn.in_transaction:
        return (
            "SAVEPOINT appdb_run_many",
            "RELEASE appdb_run_many",
            ("ROLLBACK TO appdb_run_many", "RELEASE appdb_run_many"),
        )
    return begin_sql, "COMMIT", ("ROLLBACK",)


def _checked_many(statement: Statement, seq_of_params: Iterable[Any]) -> Iterator[Any]:
    """Validate each item of a ``run_many`` batch the way single runs are validated."""
    if isinstance(seq_of_params, (str, bytes, Mapping)):
        raise TypeError("run_many() takes an iterable of parameter sequences or mappings")
    iterator = iter(seq_of_params)
    return _checked_items(statement, iterator)


def _checked_items(statement: Statement, iterator: Iterator[Any]) -> Iterator[Any]:
    for item in iterator:
        if isinstance(item, (tuple, list)):
            yield item
        elif isinstance(item, Mapping):
            if len(item) > len(statement._named):
                raise extra_names_error(statement._sql, statement._names, item)
            yield item
        elif isinstance(item, _SINGLE_VALUES):
            yield (item,)
        else:
            yield item


class RowIterator:
    """Iterator over the rows of one execution; resets the statement when done."""

    __slots__ = ("__weakref__", "_cursor", "_statement")

    def __init__(self, statement: Statement, cursor: apsw.Cursor) -> None:
        self._statement = statement
        self._cursor: apsw.Cursor | None = cursor

    def __iter__(self) -> RowIterator:
        return self

    def __next__(self) -> Any:
        cursor = self._cursor
        if cursor is None:
            raise StopIteration
        statement = self._statement
        core = statement._core
        lock = core.lock
        lock.acquire()
        try:
            if core.closed:
                self._cursor = None
                raise _closed_error(core.path)
            try:
                row = next(cursor)
            except StopIteration:
                self._cursor = None
                cursor.close(True)
                raise
            except BaseException:
                self._cursor = None
                cursor.close(True)
                raise
            return statement._row(row)
        finally:
            lock.release()

    def close(self) -> None:
        """Stop iterating and reset the statement now."""
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            core = self._statement._core
            core.lock.acquire()
            try:
                if not core.closed:
                    cursor.close(True)
            finally:
                core.lock.release()

    def __enter__(self) -> RowIterator:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Under the connection lock: closing while another thread runs a statement
        # raises ThreadingViolationError, which a finalizer can only swallow, and the
        # statement then stays active and pins a read snapshot (the WAL cannot reset).
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            core = self._statement._core
            core.lock.acquire()
            try:
                if not core.closed:
                    cursor.close(True)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass
            finally:
                core.lock.release()
