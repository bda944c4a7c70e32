"""Type stub for the compiled hot path ``appdb._fastcache`` (built from ``_fastcache.pyx``).

Its public surface is the one of the pure-Python twin ``appdb._fastcache_py``;
``.ci/run`` checks this stub against the compiled module and the twin with
``mypy.stubtest``. The attributes the twin sets in ``__init__`` are read-only
properties here, because the compiled classes declare them ``cdef readonly``;
the compiled classes are extension types, hence ``@disjoint_base``.
"""

import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

import apsw
from typing_extensions import disjoint_base

from ._types import CacheStats, RunResult
from .types import TypeMap

__all__ = ["ConnectionLock", "DatabaseCore", "RowIterator", "Slot", "Statement"]

STARVATION_SECONDS: float
#: True when statements run through SQLite's C API (the compiled twin's native path).
NATIVE: bool
#: "on: ..." or "off: <why>" (APPDB_NO_NATIVE, an APSW without extension loading, ...).
NATIVE_STATUS: str

def check_row_type(row_type: object) -> str: ...

@disjoint_base
class ConnectionLock:
    """Re-entrant writer lock: no system call uncontended, no convoy, no starvation."""

    def owned(self) -> bool: ...
    def depth(self) -> int: ...
    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def __enter__(self) -> None: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...

@disjoint_base
class Slot:
    """One connection of a database: the writer (index 0) or a reader of the pool."""

    connection: apsw.Connection
    index: int
    owner: int
    def __init__(self, connection: apsw.Connection, index: int) -> None: ...
    @property
    def native(self) -> bool:
        """True when statements run on this connection through SQLite's C API."""

@disjoint_base
class DatabaseCore:
    """The connections (writer and reader pool) of one database, plus the LRU statement cache."""

    lock: ConnectionLock
    lane: ConnectionLock
    writer: Slot
    opener: Callable[[bool], apsw.Connection] | None
    slots: list[Slot]
    cond: threading.Condition
    waiters: int
    handed: list[Slot]
    opening: int
    epoch: int
    forks: int
    raw_transaction: bool
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
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def row_type(self) -> str: ...
    @property
    def begin_sql(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def max_readers(self) -> int: ...
    @property
    def query_timeout(self) -> float | None: ...
    @property
    def types(self) -> TypeMap | None: ...
    @property
    def limits_active(self) -> int: ...
    @property
    def deadlines_active(self) -> int: ...
    # (thread id, limit) of the appdb.aio call running on the event loop: appdb._limits.find
    inline: tuple[int, Any] | None
    @property
    def connection(self) -> apsw.Connection: ...
    def new_slot(self, connection: apsw.Connection, index: int) -> Slot: ...
    def set_writer(self, connection: apsw.Connection) -> None: ...
    def check_fork(self) -> None: ...
    def acquire_writer(self) -> apsw.Connection: ...
    def release_writer(self) -> None: ...
    def checkout(self) -> Slot: ...
    def checkin(self, slot: Slot) -> None: ...
    def idle_pop(self) -> Slot | None: ...
    def idle_take_all(self) -> list[Slot]: ...
    def idle_push(self, slot: Slot) -> None: ...
    def routes_to_reader(self) -> bool: ...
    def limits_enter(self, deadline: bool = False) -> None: ...
    def limits_exit(self, deadline: bool = False) -> None: ...
    def prepare(self, sql: str, *, row_type: str | None = None) -> Statement: ...
    def statement_cache_stats(self) -> CacheStats: ...
    def clear_statement_cache(self) -> None: ...
    def schema_changed(self) -> None: ...
    @property
    def generation(self) -> int: ...
    def mark_closed(self) -> None: ...

@disjoint_base
class Statement:
    """A prepared SQL statement bound to one database (``appdb.Statement``).

    Made by ``AppDatabase.prepare(sql)``, never directly. Values are bound
    positionally (``stmt.get(1, "a")`` for ``?`` placeholders, or one sequence:
    ``stmt.get([1, "a"])``) or by name (``stmt.get(id=1)`` or one mapping:
    ``stmt.get({"id": 1})`` for ``:id``). Rows are dicts keyed by column name, or
    tuples (``row_type="tuple"``). Outside a transaction, read-only statements run
    on the reader pool; inside ``db.transaction()`` (or ``db.writer()``) everything
    runs on the writer.
    """

    def __init__(self, core: DatabaseCore, sql: str, as_dict: bool) -> None: ...
    @property
    def sql(self) -> str:
        """The SQL text of the statement."""
    @property
    def columns(self) -> tuple[str, ...]:
        """Result column names, re-read after a schema change (empty for statements that return no rows)."""
    @property
    def readonly(self) -> bool:
        """True when the statement does not write to the database."""
    @property
    def parallel(self) -> bool:
        """True when calls outside a transaction run on a reader, beside other threads."""
    @property
    def changes_schema(self) -> bool:
        """True when running the statement changes the schema (DDL)."""
    @property
    def row_type(self) -> str:
        """``"dict"`` or ``"tuple"``."""
    def get(self, *params: Any, **named: Any) -> Any:
        """Run the query and return its first row, or None when there is none.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The first row (a ``dict`` or a ``tuple``), or ``None``.

        Raises:
            apsw.BindingsError: Both positional and named values, the wrong number of
                values, a missing named value, or names the statement does not use.
            TypeError: A value SQLite cannot store (and no ``types`` map adapts it).
            OverflowError: An integer outside SQLite's 64 bits.
            appdb.ConversionError: The database's ``types`` map failed on a value or
                a column.
            appdb.DatabaseClosedError: The database is closed.
            appdb.QueryTimeout: The statement ran past a deadline or ``query_timeout``.
            apsw.Error: SQLite's own error (``apsw.SQLError``, ``apsw.BusyError``...).
            appdb.DuplicateColumnError: Dict rows, and two result columns share a name.
        """
    def scalar(self, *params: Any, **named: Any) -> Any:
        """Return the first column of the first row, or None when there is no row.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The value (converted by the ``types`` map, if any), or ``None``.

        Raises:
            apsw.BindingsError: Both positional and named values, the wrong number of
                values, a missing named value, or names the statement does not use.
            TypeError: A value SQLite cannot store (and no ``types`` map adapts it).
            OverflowError: An integer outside SQLite's 64 bits.
            appdb.ConversionError: The database's ``types`` map failed on a value or
                a column.
            appdb.DatabaseClosedError: The database is closed.
            appdb.QueryTimeout: The statement ran past a deadline or ``query_timeout``.
            apsw.Error: SQLite's own error (``apsw.SQLError``, ``apsw.BusyError``...).
        """
    def all(self, *params: Any, **named: Any) -> list[Any]:
        """Run the query and return every row as a list.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            The rows (``dict`` or ``tuple`` each); empty when there are none.

        Raises:
            apsw.BindingsError: Both positional and named values, the wrong number of
                values, a missing named value, or names the statement does not use.
            TypeError: A value SQLite cannot store (and no ``types`` map adapts it).
            OverflowError: An integer outside SQLite's 64 bits.
            appdb.ConversionError: The database's ``types`` map failed on a value or
                a column.
            appdb.DatabaseClosedError: The database is closed.
            appdb.QueryTimeout: The statement ran past a deadline or ``query_timeout``.
            apsw.Error: SQLite's own error (``apsw.SQLError``, ``apsw.BusyError``...).
            appdb.DuplicateColumnError: Dict rows, and two result columns share a name.
        """
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
            apsw.BindingsError: Both positional and named values, the wrong number of
                values, a missing named value, or names the statement does not use.
            TypeError: A value SQLite cannot store (and no ``types`` map adapts it).
            OverflowError: An integer outside SQLite's 64 bits.
            appdb.ConversionError: The database's ``types`` map failed on a value or
                a column.
            appdb.DatabaseClosedError: The database is closed.
            appdb.QueryTimeout: The statement ran past a deadline or ``query_timeout``.
            apsw.Error: SQLite's own error (``apsw.SQLError``, ``apsw.BusyError``...).
            appdb.DuplicateColumnError: Dict rows, and two result columns share a name.
        """
    def run(self, *params: Any, **named: Any) -> RunResult:
        """Execute a write (or any statement) and return what it changed.

        Args:
            *params: Positional values, or one sequence or mapping of them.
            **named: Named values (for ``:name`` placeholders).

        Returns:
            ``RunResult(changes, last_insert_rowid)``: rows changed by this statement
            and the connection's last inserted rowid.

        Raises:
            apsw.BindingsError: Both positional and named values, the wrong number of
                values, a missing named value, or names the statement does not use.
            TypeError: A value SQLite cannot store (and no ``types`` map adapts it).
            OverflowError: An integer outside SQLite's 64 bits.
            appdb.ConversionError: The database's ``types`` map failed on a value or
                a column.
            appdb.DatabaseClosedError: The database is closed.
            appdb.QueryTimeout: The statement ran past a deadline or ``query_timeout``.
            apsw.Error: SQLite's own error (``apsw.SQLError``, ``apsw.BusyError``...).
            apsw.ConstraintError: A ``UNIQUE``, ``NOT NULL``, ``CHECK`` or foreign-key
                constraint failed.
            apsw.ReadOnlyError: A write on a database opened ``readonly=True``.
        """
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
            apsw.Error: SQLite's own error (``apsw.BusyError``, ``apsw.SQLError``...).
        """
    def _execute_many(self, connection: apsw.Connection, items: Iterator[Any]) -> None: ...

@disjoint_base
class RowIterator:
    """Iterator over the rows of one execution (``Statement.iterate()``); resets the statement when done.

    Use it in a ``for`` loop or as a context manager (``with stmt.iterate() as rows:``),
    which closes it when the block ends.
    """

    def __init__(self, statement: Statement, cursor: apsw.Cursor, slot: Slot | None) -> None: ...
    def __iter__(self) -> RowIterator: ...
    def __next__(self) -> Any: ...
    def close(self) -> None:
        """Reset the statement and give its connection back; safe to call twice."""
    def __enter__(self) -> RowIterator: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def __del__(self) -> None: ...
