# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, freethreading_compatible=False, binding=False
"""Compiled hot path of appdb: the statement cache, statements and row conversion.

Mirror of ``appdb._fastcache_py`` (the pure-Python twin and test oracle): every
public behaviour, exception type and message must match it.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport (
    PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
    PyThread_acquire_lock, PyThread_release_lock, PyThread_get_thread_ident,
    WAIT_LOCK, NOWAIT_LOCK, PyLockStatus, PY_LOCK_ACQUIRED,
)

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(
        PyThread_type_lock lock, long long microseconds, int intr_flag) nogil

cdef extern from *:
    """
    /* Next row of an iterator; None at the end (rows are tuples, never None). */
    static PyObject* appdb_next_row(PyObject* it) {
        PyObject* row = PyIter_Next(it);
        if (row == NULL && !PyErr_Occurred()) { Py_RETURN_NONE; }
        return row;
    }
    """
    object appdb_next_row(object it)

cdef extern from *:
    """
    /* A dict with room for n keys without resizing. */
    #if CYTHON_COMPILING_IN_CPYTHON && PY_VERSION_HEX < 0x030D0000
      #define appdb_new_dict(n) _PyDict_NewPresized(n)
    #else
      #define appdb_new_dict(n) PyDict_New()
    #endif
    """
    dict appdb_new_dict(Py_ssize_t n)

cdef extern from *:
    """
    /* An instance of the 2-field tuple subclass t (RunResult) without the
       temporary tuple and argument parsing of tuple.__new__. */
    static PyObject* appdb_new_pair(PyObject* t, PyObject* a, PyObject* b) {
        PyTypeObject* type = (PyTypeObject*)t;
        PyObject* pair = type->tp_alloc(type, 2);
        if (pair == NULL) return NULL;
        Py_INCREF(a); PyTuple_SET_ITEM(pair, 0, a);
        Py_INCREF(b); PyTuple_SET_ITEM(pair, 1, b);
        return pair;
    }
    """
    object appdb_new_pair(object t, object a, object b)
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM

from collections.abc import Mapping

import apsw

from ._sqlinfo import binding_error, describe, extra_names_error
from ._types import CacheStats, RunResult
from .errors import DatabaseClosedError

__all__ = ["ConnectionLock", "DatabaseCore", "RowIterator", "Statement"]

cdef object _BindingsError = apsw.BindingsError
cdef object _apsw_Error = apsw.Error
cdef object _Mapping = Mapping
cdef object _RunResult = RunResult
cdef tuple _ROW_TYPES = ("dict", "tuple")


cdef inline bint _is_scalar(object value):
    cdef type t = type(value)
    return t is int or t is str or t is float or t is bytes or value is None


cdef tuple _SINGLE_VALUES = (int, str, float, bytes, bytearray, memoryview, type(None))


cdef object _closed_error(str path):
    return DatabaseClosedError(f"the database is closed: {path}")


cdef str _exact_sql(object sql):
    if type(sql) is str:
        return <str>sql
    if isinstance(sql, str):
        return str.__str__(sql)  # the text itself, whatever a subclass overrides
    raise TypeError(f"SQL must be a str, not {type(sql).__name__}")


def check_row_type(row_type):
    if row_type not in _ROW_TYPES:
        raise ValueError(f"row_type must be 'dict' or 'tuple', not {row_type!r}")
    return row_type


cdef class ConnectionLock:
    """Re-entrant lock that serialises threads on one connection, first come first served.

    The uncontended path only touches a few fields under the GIL (no system
    call). When threads wait, a release hands the lock over to one of them (the
    *baton*) instead of letting the releasing thread, which still holds the GIL,
    take it straight back: a thread that calls statements in a loop cannot lock
    the others out. Waiting happens on an OS lock with the GIL released, waking
    every 50 ms to let signals (Ctrl-C) through. The module is not marked
    free-threading compatible, so the GIL is always there.
    """

    cdef PyThread_type_lock _gate
    cdef unsigned long _owner
    cdef Py_ssize_t _count
    cdef Py_ssize_t _waiters
    cdef bint _gate_open
    cdef bint _handoff

    def __cinit__(self):
        self._gate = PyThread_allocate_lock()
        if self._gate == NULL:
            raise MemoryError("cannot allocate a lock")
        PyThread_acquire_lock(self._gate, WAIT_LOCK)  # closed until a release hands over
        self._gate_open = False
        self._handoff = False
        self._owner = 0
        self._count = 0
        self._waiters = 0

    def __dealloc__(self):
        if self._gate != NULL:
            if not self._gate_open:
                PyThread_release_lock(self._gate)
            PyThread_free_lock(self._gate)

    cdef inline int _acquire(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if self._count == 0:
            if self._waiters == 0 and not self._handoff:
                self._owner = me
                self._count = 1
                return 0
        elif self._owner == me:
            self._count += 1
            return 0
        return self._acquire_contended(me)

    cdef int _acquire_contended(self, unsigned long me) except -1:
        cdef PyLockStatus status
        self._waiters += 1
        while True:
            with nogil:
                status = PyThread_acquire_lock_timed(self._gate, 50000, 0)
            if status == PY_LOCK_ACQUIRED:  # the baton: the lock is ours
                self._gate_open = False
                self._handoff = False
                self._waiters -= 1
                self._owner = me
                self._count = 1
                return 0
            try:
                PyErr_CheckSignals()  # raises KeyboardInterrupt & co.
            except BaseException:
                self._waiters -= 1
                self._pass_baton_on()
                raise

    cdef void _pass_baton_on(self) noexcept:
        """A waiter gave up: if a baton was left for nobody, hand it on or drop it."""
        if self._handoff and self._gate_open and PyThread_acquire_lock(self._gate, NOWAIT_LOCK):
            self._gate_open = False
            self._handoff = False
            if self._waiters:
                self._handoff = True
                self._gate_open = True
                PyThread_release_lock(self._gate)

    cdef inline int _release(self) except -1:
        if self._count == 0 or self._owner != <unsigned long>PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = 0
            if self._waiters and not self._handoff:
                self._handoff = True
                self._gate_open = True
                PyThread_release_lock(self._gate)
        return 0

    def acquire(self):
        self._acquire()

    def release(self):
        self._release()

    def __enter__(self):
        self._acquire()

    def __exit__(self, et, ev, tb):
        self._release()


cdef class DatabaseCore:
    """Connection state shared by the facade and its statements, plus the LRU cache."""

    cdef readonly object connection
    cdef readonly str path
    cdef readonly ConnectionLock lock
    cdef readonly str row_type
    cdef readonly str begin_sql
    cdef readonly bint closed
    cdef Py_ssize_t _capacity
    cdef dict _cache
    cdef long long _clock
    cdef long long _hits
    cdef long long _misses
    cdef long long _evictions
    cdef long long _generation
    cdef object __weakref__

    def __init__(self, connection, str path, Py_ssize_t capacity, row_type, str begin_sql):
        if capacity < 0:
            raise ValueError(f"statement_cache_size must be >= 0, not {capacity}")
        self.connection = connection
        self.path = path
        self.lock = ConnectionLock()
        self.row_type = check_row_type(row_type)
        self.begin_sql = begin_sql
        self.closed = False
        self._capacity = capacity
        self._cache = {}
        self._clock = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._generation = 0

    def prepare(self, sql, *, row_type=None):
        """Return the cached ``Statement`` for ``sql`` (and row type), compiling it on a miss."""
        cdef PyObject* found
        if self.closed:
            raise _closed_error(self.path)
        if row_type is None or row_type == self.row_type:
            key = sql
        else:
            key = (sql, row_type)
        try:
            found = PyDict_GetItem(self._cache, key)
        except TypeError:  # unhashable: not SQL text, reported by _prepare_miss
            found = NULL
        if found != NULL:
            return self._hit(<Statement>found)
        return self._prepare_miss(key, sql, row_type)

    cdef inline Statement _hit(self, Statement statement):
        self._clock += 1
        statement._last_used = self._clock
        self._hits += 1
        return statement

    cdef Statement _prepare_miss(self, object key, object sql, object row_type):
        cdef bint as_dict = check_row_type(self.row_type if row_type is None else row_type) == "dict"
        cdef PyObject* found
        cdef Statement statement
        cdef str text = _exact_sql(sql)
        self.lock._acquire()  # several threads may miss on the same SQL at once
        try:
            if self.closed:
                raise _closed_error(self.path)
            found = PyDict_GetItem(self._cache, key)
            if found != NULL:  # another thread compiled it meanwhile
                return self._hit(<Statement>found)
            statement = Statement(self, text, as_dict)
            self._misses += 1
            if self._capacity == 0:
                return statement
            if len(self._cache) >= self._capacity:
                self._evict()
            self._clock += 1
            statement._last_used = self._clock
            self._cache[key] = statement
            return statement
        finally:
            self.lock._release()

    cdef void _evict(self):
        cdef object oldest_key = None
        cdef long long oldest = -1
        cdef Statement statement
        for key, value in self._cache.items():
            statement = <Statement>value
            if oldest < 0 or statement._last_used < oldest:
                oldest = statement._last_used
                oldest_key = key
        del self._cache[oldest_key]
        self._evictions += 1

    def statement_cache_stats(self):
        """Hits, misses, evictions, current size and capacity of the statement cache."""
        return CacheStats(self._hits, self._misses, self._evictions, len(self._cache), self._capacity)

    def clear_statement_cache(self):
        """Forget every cached statement (statements already handed out keep working)."""
        self.lock._acquire()
        try:
            self._cache.clear()
        finally:
            self.lock._release()

    def schema_changed(self):
        """Note a schema change: every statement re-reads its columns before its next run."""
        self._generation += 1

    @property
    def generation(self):
        """Counts the schema changes noted so far (see ``schema_changed``)."""
        return self._generation

    def mark_closed(self):
        """Mark the core closed and drop the cache; the caller closes the connection."""
        cdef Statement statement
        self.closed = True
        for value in self._cache.values():
            statement = <Statement>value
            statement._drop_cursor()
        self._cache.clear()


cdef class Statement:
    """A prepared SQL statement bound to one database.

    Rows are dicts keyed by column name, or tuples (``row_type="tuple"``).
    """

    cdef DatabaseCore _core
    cdef object _conn
    cdef str _sql
    cdef tuple _columns
    cdef tuple _names
    cdef frozenset _named
    cdef Py_ssize_t _n_named
    cdef bint _readonly
    cdef bint _returns_rows
    cdef bint _single_row
    cdef bint _changes_schema
    cdef bint _as_dict
    cdef object _cursor
    cdef object _execute
    cdef object _changes
    cdef object _last_insert_rowid
    cdef bint _busy
    cdef long long _last_used
    cdef long long _generation
    cdef object __weakref__

    def __init__(self, DatabaseCore core, str sql, bint as_dict):
        self._core = core
        self._conn = core.connection
        self._sql = sql
        self._as_dict = as_dict
        self._cursor = None
        self._execute = None
        self._changes = core.connection.changes
        self._last_insert_rowid = core.connection.last_insert_rowid
        self._busy = False
        self._last_used = 0
        self._describe()

    cdef int _describe(self) except -1:
        """(Re)read what SQLite says about the statement; call with the lock held."""
        cdef long long generation = self._core._generation
        info = describe(self._conn, self._sql)
        self._columns = info.columns
        self._names = info.parameter_names
        self._named = frozenset(n for n in info.parameter_names if n is not None and not n.isdigit())
        self._n_named = len(self._named)
        self._readonly = info.readonly
        self._returns_rows = bool(info.columns)
        self._single_row = info.single_row
        self._changes_schema = info.changes_schema
        self._generation = generation
        return 0

    # -- properties --------------------------------------------------------
    @property
    def sql(self):
        """The SQL text of the statement."""
        return self._sql

    @property
    def columns(self):
        """Result column names (empty for statements that return no rows)."""
        cdef DatabaseCore core = self._core
        if self._generation != core._generation and not core.closed:
            core.lock._acquire()
            try:
                if not core.closed:
                    self._describe()
            finally:
                core.lock._release()
        return self._columns

    @property
    def readonly(self):
        """True when the statement does not write to the database."""
        return self._readonly

    @property
    def row_type(self):
        """``"dict"`` or ``"tuple"``."""
        return "dict" if self._as_dict else "tuple"

    def __repr__(self):
        return f"<appdb.Statement {self._sql!r}>"

    # -- helpers -----------------------------------------------------------
    cdef inline object _bindings(self, tuple params, dict named):
        cdef object first
        if named:
            if PyTuple_GET_SIZE(params):
                raise _BindingsError(
                    f"pass either positional or named values, not both, to statement {self._sql!r}"
                )
            if len(named) > self._n_named:
                raise extra_names_error(self._sql, self._names, named)
            return named
        if PyTuple_GET_SIZE(params) == 1:
            first = <object>PyTuple_GET_ITEM(params, 0)
            if _is_scalar(first):
                return params
            if isinstance(first, (tuple, list)):
                return first
            if isinstance(first, _Mapping):
                if len(first) > self._n_named:
                    raise extra_names_error(self._sql, self._names, first)
                return first
        return params

    cdef inline object _take_cursor(self):
        """The statement's own cursor, or a fresh one while it is in use (re-entry)."""
        cdef DatabaseCore core = self._core
        if core.closed:
            raise _closed_error(core.path)
        if self._generation != core._generation:
            self._describe()
        cursor = self._cursor
        if cursor is None or self._busy:
            cursor = self._conn.cursor()
            if not self._busy:
                self._cursor = cursor
                self._execute = cursor.execute
        return cursor

    cdef inline object _start(self, object cursor, object bindings):
        """Execute on ``cursor``, through the cached bound method when it is ours."""
        if cursor is self._cursor:
            return self._execute(self._sql, bindings)
        return cursor.execute(self._sql, bindings)

    cdef inline void _forget_cursor(self):
        self._cursor = None
        self._execute = None

    cdef void _drop_cursor(self):
        cursor = self._cursor
        self._forget_cursor()
        if cursor is not None:
            cursor.close(True)

    cdef int _reset(self, object cursor) except -1:
        """Reset ``cursor``'s statement without stepping it (closing resets it)."""
        if cursor is self._cursor:
            self._forget_cursor()
        cursor.close(True)
        return 0

    cdef object _failed(self, BaseException exc, object cursor, object bindings):
        """Discard ``cursor`` after an error; return the translated error if any."""
        if cursor is self._cursor:
            self._forget_cursor()
        cursor.close(True)
        return binding_error(exc, self._sql, self._names, bindings)

    cdef inline object _first_row(self, object cursor):
        """Step to the first row, then leave the statement reset."""
        cdef bint more
        row = appdb_next_row(cursor)
        if row is not None:
            if not self._single_row:
                self._reset(cursor)  # never evaluate a second row
            else:
                try:
                    more = appdb_next_row(cursor) is not None
                except _apsw_Error:  # from a row nobody asked for
                    more = True
                if more:  # another connection changed the plan (e.g. dropped an index)
                    self._single_row = False
                    self._reset(cursor)
        return row

    cdef inline object _row(self, object row):
        cdef tuple columns
        cdef tuple values
        cdef dict d
        cdef Py_ssize_t i, n
        if not self._as_dict:
            return row
        values = <tuple>row
        columns = self._columns
        n = PyTuple_GET_SIZE(values)
        if n != PyTuple_GET_SIZE(columns):
            columns = self._refresh_columns()
        d = appdb_new_dict(n)
        for i in range(n):
            PyDict_SetItem(d, <object>PyTuple_GET_ITEM(columns, i), <object>PyTuple_GET_ITEM(values, i))
        return d

    cdef tuple _refresh_columns(self):
        """The schema changed under us (another connection): read the columns again."""
        self._core.lock._acquire()
        try:
            self._describe()
        finally:
            self._core.lock._release()
        return self._columns

    # -- execution ---------------------------------------------------------
    def get(self, *params, **named):
        """Run the query and return its first row, or None when there is none."""
        bindings = self._bindings(params, named)
        cdef ConnectionLock lock = self._core.lock
        cdef bint was_busy
        lock._acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                self._start(cursor, bindings)
                row = self._first_row(cursor)
                if self._changes_schema:
                    self._core._generation += 1
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
            lock._release()
        return row

    def scalar(self, *params, **named):
        """Return the first column of the first row, or None when there is no row."""
        bindings = self._bindings(params, named)
        cdef ConnectionLock lock = self._core.lock
        cdef bint was_busy
        lock._acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                self._start(cursor, bindings)
                row = self._first_row(cursor)
                if self._changes_schema:
                    self._core._generation += 1
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock._release()
        if row is None or len(row) == 0:
            return None
        return row[0]

    def all(self, *params, **named):
        """Run the query and return every row as a list."""
        bindings = self._bindings(params, named)
        cdef ConnectionLock lock = self._core.lock
        cdef list rows
        cdef Py_ssize_t i, n
        cdef bint was_busy
        lock._acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                rows = self._start(cursor, bindings).fetchall()
                if self._changes_schema:
                    self._core._generation += 1
                n = PyList_GET_SIZE(rows)
                if self._as_dict and n:
                    for i in range(n):
                        rows[i] = self._row(<object>PyList_GET_ITEM(rows, i))
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock._release()
        return rows

    def iterate(self, *params, **named):
        """Run the query and return an iterator over its rows.

        The statement is reset as soon as the rows run out, or the iterator is
        closed (``close()`` or ``with``) or garbage collected (a ``for`` loop
        directly over ``iterate()`` that breaks drops it at once).
        """
        bindings = self._bindings(params, named)
        cdef ConnectionLock lock = self._core.lock
        cdef DatabaseCore core = self._core
        lock._acquire()
        try:
            if core.closed:
                raise _closed_error(core.path)
            if self._generation != core._generation:
                self._describe()
            cursor = self._conn.cursor()
            try:
                cursor.execute(self._sql, bindings)
                if self._changes_schema:
                    core._generation += 1
            except BaseException as exc:
                cursor.close(True)
                error = binding_error(exc, self._sql, self._names, bindings)
                if error is None:
                    raise
                raise error from None
        finally:
            lock._release()
        return RowIterator(self, cursor)

    def run(self, *params, **named):
        """Execute a write and return ``RunResult(changes, last_insert_rowid)``."""
        bindings = self._bindings(params, named)
        cdef ConnectionLock lock = self._core.lock
        cdef bint was_busy
        lock._acquire()
        try:
            cursor = self._take_cursor()
            was_busy = self._busy
            self._busy = True
            try:
                self._start(cursor, bindings)
                if self._returns_rows:
                    for _ in cursor:
                        pass
                result = appdb_new_pair(_RunResult, self._changes(), self._last_insert_rowid())
                if self._changes_schema:
                    self._core._generation += 1
            except BaseException as exc:
                error = self._failed(exc, cursor, bindings)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = was_busy
        finally:
            lock._release()
        return result

    def run_many(self, seq_of_params):
        """Execute once per item of ``seq_of_params`` (sequences, mappings or single values).

        The batch is atomic: outside a transaction it runs in one, inside one it
        runs in a savepoint, so a failing item leaves none of the batch behind.
        ``changes`` is the total number of rows changed (triggers included).
        """
        items = _CheckedMany(self, seq_of_params)
        cdef ConnectionLock lock = self._core.lock
        cdef bint was_busy
        lock._acquire()
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
                    result = appdb_new_pair(_RunResult, conn.total_changes() - before, conn.last_insert_rowid())
                except BaseException as exc:
                    if conn.in_transaction:
                        for sql in undo:
                            conn.execute(sql)
                    if self._changes_schema:
                        self._core._generation += 1  # what was undone may have changed the schema
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
                    self._core._generation += 1
            finally:
                self._busy = was_busy
        finally:
            lock._release()
        return result


cdef tuple _batch_sql(object conn, str begin_sql):
    """SQL that makes a ``run_many`` batch atomic: begin, commit, and undo on failure."""
    if conn.in_transaction:
        return (
            "SAVEPOINT appdb_run_many",
            "RELEASE appdb_run_many",
            ("ROLLBACK TO appdb_run_many", "RELEASE appdb_run_many"),
        )
    return begin_sql, "COMMIT", ("ROLLBACK",)


cdef class _CheckedMany:
    """Validate each item of a ``run_many`` batch the way single runs are validated."""

    cdef Statement _statement
    cdef object _it

    def __init__(self, Statement statement, seq_of_params):
        if isinstance(seq_of_params, (str, bytes, _Mapping)):
            raise TypeError("run_many() takes an iterable of parameter sequences or mappings")
        self._statement = statement
        self._it = iter(seq_of_params)

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._it)
        if isinstance(item, (tuple, list)):
            return item
        if isinstance(item, _Mapping):
            if len(item) > self._statement._n_named:
                raise extra_names_error(self._statement._sql, self._statement._names, item)
            return item
        if isinstance(item, _SINGLE_VALUES):
            return (item,)
        return item


cdef class RowIterator:
    """Iterator over the rows of one execution; resets the statement when done."""

    cdef Statement _statement
    cdef object _cursor
    cdef object __weakref__

    def __init__(self, Statement statement, cursor):
        self._statement = statement
        self._cursor = cursor

    def __iter__(self):
        return self

    def __next__(self):
        cursor = self._cursor
        if cursor is None:
            raise StopIteration
        cdef Statement statement = self._statement
        cdef DatabaseCore core = statement._core
        cdef ConnectionLock lock = core.lock
        lock._acquire()
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
            lock._release()

    def close(self):
        """Stop iterating and reset the statement now."""
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            core = self._statement._core
            core.lock._acquire()
            try:
                if not core.closed:
                    cursor.close(True)
            finally:
                core.lock._release()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close()

    def __del__(self):
        # Under the connection lock: closing while another thread runs a statement
        # raises ThreadingViolationError, which a finalizer can only swallow, and the
        # statement then stays active and pins a read snapshot (the WAL cannot reset).
        cursor = self._cursor
        if cursor is not None:
            self._cursor = None
            core = self._statement._core
            core.lock._acquire()
            try:
                if not core.closed:
                    cursor.close(True)
            except Exception:
                pass
            finally:
                core.lock._release()
