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
from libc.stdlib cimport malloc, realloc, free
cimport cython

cdef extern from "_native.h":
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    ctypedef long long sqlite3_int64
    int SQLITE_OK, SQLITE_ROW, SQLITE_DONE, SQLITE_MISUSE, SQLITE_VERSION_NUMBER
    int appdb_native_loaded()
    int appdb_native_version()
    int appdb_prepare(sqlite3* db, const char* sql, int n, sqlite3_stmt** out)
    int appdb_bind(sqlite3_stmt* st, int i, object value)
    object appdb_column(sqlite3_stmt* st, int i)
    object appdb_row_tuple(sqlite3_stmt* st, int n)
    object appdb_row_dict(sqlite3_stmt* st, int n, object names, object template)
    int appdb_pending() except -1
    int sqlite3_step(sqlite3_stmt* st) nogil
    int sqlite3_reset(sqlite3_stmt* st)
    int sqlite3_clear_bindings(sqlite3_stmt* st)
    int sqlite3_finalize(sqlite3_stmt* st) nogil
    ctypedef struct sqlite3_mutex
    sqlite3* sqlite3_db_handle(sqlite3_stmt* st)
    sqlite3_mutex* sqlite3_db_mutex(sqlite3* db)
    int sqlite3_mutex_try(sqlite3_mutex* m)
    void sqlite3_mutex_leave(sqlite3_mutex* m)
    int sqlite3_column_count(sqlite3_stmt* st)
    int sqlite3_txn_state(sqlite3* db, const char* schema)
    int sqlite3_get_autocommit(sqlite3* db)
    int sqlite3_stmt_status(sqlite3_stmt* st, int op, int reset)
    int SQLITE_STMTSTATUS_VM_STEP
    int SQLITE_TXN_READ, SQLITE_TXN_WRITE
    int sqlite3_bind_parameter_count(sqlite3_stmt* st)
    const char* sqlite3_bind_parameter_name(sqlite3_stmt* st, int i)
    int sqlite3_extended_errcode(sqlite3* db)
    const char* sqlite3_errmsg(sqlite3* db)
    int sqlite3_error_offset(sqlite3* db)
    sqlite3_int64 sqlite3_changes64(sqlite3* db)
    sqlite3_int64 sqlite3_last_insert_rowid(sqlite3* db)

import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

import apsw

from . import _batch, _limits, _pool
from ._fork import leak
from ._sqlinfo import binding_error, describe, duplicate_columns_error, extra_names_error, needs_writer
from ._types import CacheStats, RunResult
from .errors import DatabaseClosedError

__all__ = ["ConnectionLock", "DatabaseCore", "RowIterator", "Slot", "Statement"]

cdef object _BindingsError = apsw.BindingsError
cdef object _apsw_Error = apsw.Error
cdef object _SQLError = apsw.SQLError
cdef object _Mapping = Mapping
cdef object _Sequence = Sequence
cdef object _RunResult = RunResult
cdef object _monotonic = time.monotonic
cdef object _limits_start = _limits.start
cdef object _limits_nowait = _limits.nowait
cdef object _checkout_slow = _pool.checkout_slow
cdef object _checkout_at_once = _pool.checkout_at_once
cdef object _return_spare = _pool.return_spare
cdef object _discard = _pool.discard
cdef object _hand_over = _pool.hand_over
cdef object _close_readers = _pool.close_readers
cdef tuple _ROW_TYPES = ("dict", "tuple")

# What a statement call returns.
DEF _GET = 0
DEF _SCALAR = 1
DEF _ALL = 2
DEF _RUN = 3

#: A waiter that has waited this long (s) for the writer lock makes the next
#: release hand the lock to a waiter (starvation mode).
STARVATION_SECONDS = 0.001
cdef double _STARVATION = STARVATION_SECONDS

cdef long long _forks = 0

# A lock that is never released: waiting on it with a timeout is a nap without the GIL.
cdef PyThread_type_lock _nap = PyThread_allocate_lock()
if _nap == NULL:
    raise MemoryError("cannot allocate a lock")
PyThread_acquire_lock(_nap, WAIT_LOCK)


def _count_fork():
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


# -- the native path ---------------------------------------------------------------
# Statements run through SQLite's C API (see _native.h) once this module has been
# loaded into APSW's SQLite as an extension. That happens once per process, here,
# on a throwaway in-memory connection: the routines table belongs to the library,
# not to a connection. Anything that goes wrong leaves the APSW-cursor path, which
# behaves identically (it is the pure-Python twin's path), and NATIVE_STATUS says why.

cdef object _FALLBACK = object()  # a native call that APSW's cursor must make instead


cdef int _version_number(str version) except -1:
    cdef list parts = [int(p) for p in version.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1000000 + parts[1] * 1000 + parts[2]


def _load_native():
    if os.environ.get("APPDB_NO_NATIVE", "") not in ("", "0"):
        return False, "off: APPDB_NO_NATIVE is set"
    path = __file__
    try:
        connection = apsw.Connection(":memory:")
        try:
            connection.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 1)
            connection.load_extension(path, "appdb_fastcache_init")
        finally:
            connection.close()
    except (apsw.Error, AttributeError, OSError, TypeError) as exc:
        return False, f"off: APSW could not load {path} as a SQLite extension ({type(exc).__name__}: {exc})"
    if not appdb_native_loaded():
        return False, "off: SQLite did not call appdb_fastcache_init"
    runtime = appdb_native_version()
    expected = _version_number(apsw.sqlite_lib_version())
    if runtime != expected:
        return False, f"off: the extension reached SQLite {runtime}, APSW reports {apsw.sqlite_lib_version()}"
    if runtime < SQLITE_VERSION_NUMBER:
        return False, f"off: SQLite {apsw.sqlite_lib_version()} is older than the header compiled in ({SQLITE_VERSION_NUMBER})"
    return True, f"on: SQLite {apsw.sqlite_lib_version()}'s C API, reached as a loadable extension of APSW"


cdef bint _native_on
_native_on, NATIVE_STATUS = _load_native()
#: True when statements run through SQLite's C API (else through APSW's cursors).
NATIVE = _native_on


# A step to the next row keeps the GIL when the previous step ran fewer virtual
# machine instructions than this (a few microseconds): releasing and retaking it
# cost 400 instructions per row (callgrind), 10% of all() over 100 rows. Steps
# after the first cannot wait for a lock (the statement holds its snapshot), and a
# costlier one releases the GIL as APSW does.
cdef int _STEP_KEEPS_GIL_BELOW = 1000


cdef inline int _step_next(sqlite3_stmt* st, int* mark) noexcept:
    """Step a statement that returned a row; ``mark`` holds the VM counter before the previous step."""
    cdef int rc
    cdef int now = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0)
    cdef int cost = now - mark[0]
    mark[0] = now
    if 0 <= cost < _STEP_KEEPS_GIL_BELOW:
        return sqlite3_step(st)
    with nogil:
        rc = sqlite3_step(st)
    return rc


cdef inline void _finalize(sqlite3_stmt* st) noexcept:
    """Finalize a handle of a connection this thread may wait for (a closing connection's).

    Without the GIL: it waits for the connection's mutex, which another thread may
    hold mid-step while it waits for the GIL (a SQL function, a hook, a progress
    handler); finalizing with the GIL held deadlocked (tests/test_native_lifecycle.py).
    """
    with nogil:
        sqlite3_finalize(st)


# Handles whose connection was busy in another thread when they had to go (a statement
# collected, close() beside other threads' calls), with their connections kept alive:
# finalized by the next thread that holds that connection (_bury_drain).
cdef list _graveyard = []


cdef int _finalize_or_bury(sqlite3_stmt* st, object connection) except -1:
    """Finalize now if no thread is inside SQLite on the handle's connection, else later.

    Never waits: waiting with the GIL deadlocks (see _finalize), and waiting without it
    lets APSW calls of other threads find the connection's mutex taken, which APSW
    reports as ThreadingViolationError ("Connection is busy in another thread").
    """
    cdef sqlite3_mutex* mutex = sqlite3_db_mutex(sqlite3_db_handle(st))
    if sqlite3_mutex_try(mutex) == SQLITE_OK:  # with the GIL held, no APSW call can start meanwhile
        sqlite3_finalize(st)
        sqlite3_mutex_leave(mutex)
    else:
        _graveyard.append((connection, <size_t>st, <size_t>sqlite3_db_handle(st)))
    return 0


cdef int _bury_drain(sqlite3* db) except -1:
    """Finalize the buried handles of ``db`` (the caller holds that connection)."""
    cdef list keep = []
    cdef size_t address = <size_t>db
    global _graveyard
    if not _graveyard:
        return 0
    buried, _graveyard = _graveyard, keep
    for entry in buried:
        if entry[2] == address:
            sqlite3_finalize(<sqlite3_stmt*><size_t>entry[1])
        else:
            keep.append(entry)
    return 0


cdef class _Native:
    """The native side of one connection: its ``sqlite3*`` and the statements holding handles on it.

    It is the connection's ``appdb_before_close`` hook (``appdb._connect.Connection``):
    before APSW closes the connection, every handle prepared on it is finalized
    (SQLite refuses to close a connection with live statements, and APSW then
    leaks it), under the writer lock for the writer, so no call is mid-step.
    """

    cdef sqlite3* db
    cdef readonly Py_ssize_t index
    cdef object users  # WeakSet of the Statements holding a handle on this connection
    cdef object iterators  # WeakSet of the RowIterators holding a handle on it between rows
    cdef object core  # weakref to the DatabaseCore (the writer's hook takes its lock)
    cdef Py_ssize_t out  # handles checked out by calls running now
    cdef long long forks

    def __init__(self, connection, Py_ssize_t index):
        self.db = <sqlite3*><size_t>connection.sqlite3_pointer()
        self.index = index
        self.users = weakref.WeakSet()
        self.iterators = weakref.WeakSet()
        self.core = None
        self.out = 0
        self.forks = _forks

    def __call__(self):
        cdef ConnectionLock lock = None
        cdef DatabaseCore core = None
        if self.db == NULL:
            return
        if self.forks != _forks:  # the parent's connection: never touch it here
            self.db = NULL
            return
        if self.index == 0 and self.core is not None:
            core = self.core()
            if core is not None:
                lock = core.lock
                lock._acquire()
        try:
            if self.out:
                raise apsw.ThreadingViolationError(
                    "cannot close the connection while one of its statements runs (re-entrantly, from this thread)"
                )
            _bury_drain(self.db)
            for iterator in list(self.iterators):
                (<RowIterator>iterator)._drop_native()
            self.iterators.clear()
            for statement in list(self.users):
                (<Statement>statement)._release_native(self)
            self.db = NULL
        finally:
            if lock is not None:
                lock._release()


cdef _Native _native_for(object connection, Py_ssize_t index):
    """A connection's native side, installed as its close hook (None: this connection stays on APSW's cursors)."""
    if not _native_on:
        return None
    try:
        if connection.appdb_before_close is not None:
            return None  # already someone else's
    except AttributeError:  # not appdb's Connection class: no hook, so no native handles
        return None
    native = _Native(connection, index)
    connection.appdb_before_close = native
    return native


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
    """Re-entrant lock: no system call uncontended, no convoy, no starvation.

    A free lock is taken by whoever asks (barging), and a release wakes nobody: a
    thread that releases and re-takes it keeps running instead of switching
    threads on every call (a lock convoy, measured: 4 threads reading through one
    lock that woke a waiter on every release ran at 0.15x one thread). Waiters
    sleep on an OS lock with the GIL released and look again every
    ``STARVATION_SECONDS``; one that finds the lock still taken asks for it, and
    the next release hands it over (the *baton*) and wakes it. So a thread calling
    in a loop cannot lock the others out, and a waiter gets the lock within about
    a millisecond of it being released. Signals (Ctrl-C) are checked at every
    wake-up. The state is only touched with the GIL held (the module is not
    marked free-threading compatible).
    """

    cdef PyThread_type_lock _gate
    cdef unsigned long _owner
    cdef Py_ssize_t _count
    cdef Py_ssize_t _waiters
    cdef bint _gate_open
    cdef bint _handoff
    cdef bint _starving
    cdef unsigned long long _handovers

    def __cinit__(self):
        self._gate = PyThread_allocate_lock()
        if self._gate == NULL:
            raise MemoryError("cannot allocate a lock")
        PyThread_acquire_lock(self._gate, WAIT_LOCK)  # closed until a release opens it
        self._gate_open = False
        self._handoff = False
        self._starving = False
        self._handovers = 0
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
            if not self._handoff and not (self._starving and self._waiters):
                self._owner = me
                self._count = 1
                return 0
        elif self._owner == me:
            self._count += 1
            return 0
        return self._acquire_contended(me)

    cdef int _acquire_contended(self, unsigned long me) except -1:
        cdef PyLockStatus status
        cdef bint woken
        cdef double started = _monotonic()
        cdef long long wait_us = <long long>(_STARVATION * 1e6)
        cdef unsigned long long arrived = self._handovers
        cdef bint eligible = False
        self._waiters += 1
        while True:
            if self._handoff and self._handovers == arrived and not eligible:
                # A hand-over issued before this thread came belongs to the waiters that
                # were there (often this thread just released the lock): nap instead of
                # taking it, and compete from the next one on.
                with nogil:
                    PyThread_acquire_lock_timed(_nap, wait_us, 0)
                eligible = True
                woken = False
            else:
                with nogil:
                    status = PyThread_acquire_lock_timed(self._gate, wait_us, 0)
                woken = status == PY_LOCK_ACQUIRED
            if woken:  # a hand-over: the lock is reserved for a waiter
                self._gate_open = False
            if self._count == 0 and (woken or not self._handoff):
                self._handoff = False
                self._starving = False
                self._waiters -= 1
                self._owner = me
                self._count = 1
                return 0
            try:
                if _monotonic() - started >= _STARVATION:
                    self._starving = True  # the next release hands the lock over
                PyErr_CheckSignals()  # raises KeyboardInterrupt & co.
            except BaseException:
                self._waiters -= 1
                self._pass_baton_on()
                raise

    cdef void _pass_baton_on(self) noexcept:
        """A waiter gave up: drop a baton (or wake-up) left for nobody."""
        if self._waiters == 0 and self._gate_open and PyThread_acquire_lock(self._gate, NOWAIT_LOCK):
            self._gate_open = False
            self._handoff = False
            self._starving = False

    cdef inline int _release(self) except -1:
        if self._count == 0 or self._owner != <unsigned long>PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = 0
            if self._starving and self._waiters and not self._handoff:
                self._handoff = True
                self._handovers += 1
                if not self._gate_open:
                    self._gate_open = True
                    PyThread_release_lock(self._gate)
        return 0

    cdef inline bint _try_acquire(self):
        """Take the lock if that needs no waiting (re-entry included)."""
        cdef unsigned long me = PyThread_get_thread_ident()
        if self._count == 0:
            if not self._handoff and not (self._starving and self._waiters):
                self._owner = me
                self._count = 1
                return True
            return False
        if self._owner == me:
            self._count += 1
            return True
        return False

    cdef inline bint _owned(self):
        return self._count > 0 and self._owner == PyThread_get_thread_ident()

    def owned(self):
        """True when the calling thread holds the lock."""
        return self._owned()

    def depth(self):
        """How many times the calling thread holds the lock (0 when it does not)."""
        return self._count if self._owner == PyThread_get_thread_ident() else 0

    def acquire(self):
        self._acquire()

    def release(self):
        self._release()

    def __enter__(self):
        self._acquire()

    def __exit__(self, et, ev, tb):
        self._release()


cdef class Slot:
    """One connection of a database: the writer (index 0) or a reader of the pool."""

    cdef public object connection
    cdef public Py_ssize_t index
    cdef public unsigned long owner
    cdef public bint spare
    cdef _Native _native

    def __init__(self, connection, Py_ssize_t index):
        self.connection = connection
        self.index = index
        self.owner = 0  # the thread using a reader, 0 while it is in the pool
        self.spare = False  # opened beyond the pool for short reads: kept in core.spares
        self._native = _native_for(connection, index)

    @property
    def native(self):
        """True when statements run on this connection through SQLite's C API."""
        return self._native is not None and self._native.db != NULL


cdef class DatabaseCore:
    """The connections (writer and reader pool) of one database, plus the LRU statement cache."""

    cdef readonly str path
    cdef public ConnectionLock lock
    cdef public ConnectionLock lane  # taken by short reads on the pool: see Statement._call_reader
    cdef readonly str row_type
    cdef readonly str begin_sql
    cdef readonly bint closed
    cdef public Slot writer
    cdef public object opener
    cdef readonly Py_ssize_t max_readers
    cdef list _idle  # a stack of idle readers: _idle[:_nidle]; never shrinks (no realloc per call)
    cdef Py_ssize_t _nidle
    cdef public list slots
    cdef public object cond
    cdef public Py_ssize_t waiters
    cdef public list handed  # readers handed to waiting threads (fairness: no barging past them)
    cdef public list spares  # idle readers opened beyond the pool, for short reads only
    cdef public Py_ssize_t opening
    cdef public long long epoch
    cdef public long long forks
    cdef public bint raw_transaction
    cdef readonly object query_timeout
    cdef readonly object types
    cdef readonly Py_ssize_t limits_active
    cdef readonly Py_ssize_t deadlines_active
    # (thread id, Limit) of the appdb.aio call running on the event loop, or None: _limits.inline
    cdef public object inline
    cdef object _changes
    cdef object _last_insert_rowid
    cdef Py_ssize_t _capacity
    cdef dict _cache
    cdef object _cache_lock
    cdef long long _clock
    cdef long long _hits
    cdef long long _misses
    cdef long long _evictions
    cdef long long _generation
    cdef object __weakref__

    def __init__(
        self, connection, str path, Py_ssize_t capacity, row_type, str begin_sql, *,
        Py_ssize_t readers=0, opener=None, query_timeout=None, types=None,
    ):
        if capacity < 0:
            raise ValueError(f"statement_cache_size must be >= 0, not {capacity}")
        if readers < 0:
            raise ValueError(f"readers must be >= 0, not {readers}")
        if readers and opener is None:
            raise ValueError("a reader pool needs an opener")
        self.path = path
        self.lock = ConnectionLock()
        self.lane = ConnectionLock()
        self.row_type = check_row_type(row_type)
        self.begin_sql = begin_sql
        self.closed = False
        self.set_writer(connection)
        self.opener = opener
        self.max_readers = readers
        self._idle = [None] * readers
        self._nidle = 0
        self.slots = []
        self.cond = threading.Condition()
        self.waiters = 0
        self.handed = []
        self.spares = []
        self.opening = 0
        self.epoch = 0
        self.forks = _forks
        self.raw_transaction = False
        self.query_timeout = query_timeout
        self.types = types
        self.limits_active = 0 if query_timeout is None else 1
        self.deadlines_active = self.limits_active
        self.inline = None
        self._capacity = capacity
        self._cache = {}
        self._cache_lock = threading.Lock()
        self._clock = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._generation = 0

    # -- connections -----------------------------------------------------------
    @property
    def connection(self):
        """The writer connection."""
        if self.forks != _forks:
            self.check_fork()
        return self.writer.connection

    def new_slot(self, connection, Py_ssize_t index):
        return Slot(connection, index)

    def set_writer(self, connection):
        """Make ``connection`` the writer (at open, and in a child process after fork)."""
        self.writer = Slot(connection, 0)
        if self.writer._native is not None:
            self.writer._native.core = weakref.ref(self)
        self._changes = connection.changes  # bound once: run() calls them every time
        self._last_insert_rowid = connection.last_insert_rowid

    def check_fork(self):
        """In a child process after ``fork()``: stop using the parent's connections."""
        if self.forks != _forks:
            _pool.after_fork(self, ConnectionLock())
            self._cache_lock = threading.Lock()  # another thread may have held it at the fork
            self.forks = _forks

    def acquire_writer(self):
        """Take the writer lock (re-entrant) and return the writer connection."""
        if self.forks != _forks:
            self.check_fork()
        self.lock._acquire()
        if self.closed:
            self.lock._release()
            raise _closed_error(self.path)
        return self.writer.connection

    def release_writer(self):
        self.lock._release()

    def checkout(self):
        """A reader for the calling thread (``checkin`` gives it back)."""
        if self.forks != _forks:
            self.check_fork()
        if self.max_readers == 0:
            raise ValueError("this database has no reader pool")
        return self._checkout()

    cdef inline Slot _checkout(self):
        cdef Slot slot
        if self.closed:
            raise _closed_error(self.path)
        if self._nidle:
            self._nidle -= 1
            slot = <Slot>PyList_GET_ITEM(self._idle, self._nidle)
            slot.owner = PyThread_get_thread_ident()
            return slot
        return <Slot>_checkout_slow(self)

    cdef inline Slot _checkout_at_once(self):
        """``_checkout`` for a short read, which holds the lane: never waits (``_pool.checkout_at_once``)."""
        cdef Slot slot
        if self.closed:
            raise _closed_error(self.path)
        if self._nidle:
            self._nidle -= 1
            slot = <Slot>PyList_GET_ITEM(self._idle, self._nidle)
            slot.owner = PyThread_get_thread_ident()
            return slot
        return <Slot>_checkout_at_once(self)

    def checkin(self, Slot slot):
        self._checkin(slot)

    cdef inline int _checkin(self, Slot slot) except -1:
        slot.owner = 0
        if self.closed or self.max_readers == 0:
            _discard(self, slot)
            return 0
        if slot.spare:  # never to long reads: they stay bounded by the pool's size
            _return_spare(self, slot)
            return 0
        if self.waiters:  # threads wait for a reader: hand it to one of them
            _hand_over(self, slot)
            return 0
        if self._nidle < PyList_GET_SIZE(self._idle):
            self._idle[self._nidle] = slot
        else:  # a reader opened beyond the pool size (nested use)
            self._idle.append(slot)
        self._nidle += 1
        return 0

    def idle_pop(self):
        """An idle reader taken out of the pool, or None (for the slow paths)."""
        if self._nidle == 0:
            return None
        self._nidle -= 1
        return self._idle[self._nidle]

    def idle_take_all(self):
        """Every idle reader, taken out of the pool."""
        taken = self._idle[:self._nidle]
        self._nidle = 0
        return taken

    def idle_push(self, Slot slot):
        """Put an idle reader (back) into the pool, without waking anyone."""
        if self._nidle < len(self._idle):
            self._idle[self._nidle] = slot
        else:
            self._idle.append(slot)
        self._nidle += 1

    def routes_to_reader(self):
        """True when a parallel statement called now by this thread would run on a reader."""
        return self.max_readers != 0 and not self.raw_transaction and not self.lock._owned()

    # -- limits ----------------------------------------------------------------
    def limits_enter(self, bint deadline=False):
        """A limit opens: calls look at ``appdb._limits`` (only short reads skip it without a deadline)."""
        self.limits_active += 1
        if deadline:
            self.deadlines_active += 1

    def limits_exit(self, bint deadline=False):
        self.limits_active -= 1
        if deadline:
            self.deadlines_active -= 1

    # -- the statement cache -------------------------------------------------------
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
        cdef str text = _exact_sql(sql)
        cdef Statement statement = Statement(self, text, as_dict)  # compiles outside any lock
        with self._cache_lock:  # several threads may miss on the same SQL at once
            if self.closed:
                raise _closed_error(self.path)
            found = PyDict_GetItem(self._cache, key)
            if found != NULL:  # another thread compiled it meanwhile
                return self._hit(<Statement>found)
            self._misses += 1
            if self._capacity == 0:
                return statement
            if len(self._cache) >= self._capacity:
                self._evict()
            self._clock += 1
            statement._last_used = self._clock
            self._cache[key] = statement
            return statement

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
        with self._cache_lock:
            self._cache.clear()

    def schema_changed(self):
        """Note a schema change: every statement re-reads its columns before its next run."""
        self._generation += 1

    @property
    def generation(self):
        """Counts the schema changes noted so far (see ``schema_changed``)."""
        return self._generation

    def mark_closed(self):
        """Mark the core closed, drop the cache and close idle readers; the caller closes the writer."""
        cdef Statement statement
        self.closed = True
        with self._cache_lock:
            statements = list(self._cache.values())
            self._cache.clear()
        for value in statements:
            statement = <Statement>value
            statement._drop_cursor()
        _close_readers(self)


@cython.no_gc_clear  # keeps the connections of its native handles alive until __dealloc__ finalizes them
cdef class Statement:
    """A prepared SQL statement bound to one database.

    Rows are dicts keyed by column name, or tuples (``row_type="tuple"``).
    """

    cdef DatabaseCore _core
    cdef str _sql
    cdef tuple _columns
    cdef dict _template  # dict.fromkeys(_columns): native dict rows are copies of it
    cdef object _convert  # appdb.types' row converter, or None (no column converts)
    cdef long long _cookie  # the schema cookie the statement was described at
    cdef tuple _names
    cdef frozenset _named
    cdef Py_ssize_t _n_named
    cdef bint _readonly
    cdef bint _parallel
    cdef bint _described
    cdef bint _txn_control
    cdef bint _short
    cdef bint _returns_rows
    cdef bint _single_row
    cdef bint _changes_schema
    cdef bint _as_dict
    cdef list _cursors
    cdef list _executes
    cdef bint _busy
    cdef long long _last_used
    cdef long long _generation
    cdef long long _epoch
    # The native path: a sqlite3_stmt per connection (indexed like _cursors), the
    # sqlite3* it was prepared on, and the connection object (kept alive, see
    # no_gc_clear above). A running call checks its handle out (the entry is NULL
    # meanwhile), so a re-entrant call prepares its own.
    cdef sqlite3_stmt** _handles
    cdef sqlite3** _handle_dbs
    cdef Py_ssize_t _nhandles
    cdef tuple _handle_connections  # a tuple: it has no tp_clear, so GC cannot empty it first
    cdef long long _handle_forks
    cdef bint _native  # False once the SQL is known to need APSW's cursor (several statements, say)
    cdef bytes _sql_utf8
    cdef int _nparams  # -1 until the first native prepare
    cdef tuple _param_keys  # the mapping key of each parameter, or None if one has no name
    cdef object __weakref__

    def __cinit__(self):
        self._handles = NULL
        self._handle_dbs = NULL
        self._nhandles = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._handles != NULL:
            if self._handle_forks == _forks:  # never finalize a parent's statement in a child
                for i in range(self._nhandles):
                    if self._handles[i] != NULL:
                        _finalize_or_bury(self._handles[i], <object>PyTuple_GET_ITEM(self._handle_connections, i))
            free(self._handles)
            free(self._handle_dbs)
            self._handles = NULL
            self._handle_dbs = NULL

    def __init__(self, DatabaseCore core, str sql, bint as_dict):
        self._core = core
        self._sql = sql
        self._as_dict = as_dict
        self._native = _native_on
        self._nparams = -1
        self._handle_connections = ()
        self._handle_forks = _forks
        self._cursors = [None] * (core.max_readers + 1)
        self._executes = [None] * (core.max_readers + 1)
        self._epoch = core.epoch
        self._busy = False
        self._last_used = 0
        self._parallel = True
        self._described = False
        self._describe_anywhere()

    cdef int _describe(self, object connection, bint on_reader) except -1:
        """(Re)read what SQLite says about the statement; the caller holds ``connection``."""
        cdef long long generation = self._core._generation
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
        self._template = dict.fromkeys(info.columns)
        self._cookie = info.schema_version
        self._names = info.parameter_names
        self._named = frozenset(n for n in info.parameter_names if n is not None and not n.isdigit())
        self._n_named = len(self._named)
        self._readonly = info.readonly
        self._parallel = info.parallel and (on_reader or self._parallel)
        self._txn_control = info.transaction_control
        self._short = info.short
        self._returns_rows = bool(info.columns)
        self._single_row = info.single_row
        self._changes_schema = info.changes_schema
        self._generation = generation
        self._described = True
        return 0

    cdef int _describe_anywhere(self) except -1:
        """Describe on a reader when this thread would read there, else on the writer.

        A statement that compiles on the writer but not on a reader (a temporary
        table, an attached database, a function registered on the writer only)
        always runs on the writer.
        """
        cdef DatabaseCore core = self._core
        cdef Slot slot
        if core.forks != _forks:
            core.check_fork()
        if core.routes_to_reader():
            slot = _pool.checkout_short(core)  # never waits while long reads hold every reader
            try:
                self._describe(slot.connection, True)
                return 0
            except _SQLError:
                pass
            finally:
                _pool.checkin_short(core, slot)
            self._parallel = False
        connection = core.acquire_writer()
        try:
            self._describe(connection, False)
        finally:
            core.lock._release()
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
        if not core.closed and (
            self._generation != core._generation or self._cookie != _pool.current_schema_version(core)
        ):
            self._describe_anywhere()  # a schema change here, or by another connection
        return self._columns

    @property
    def readonly(self):
        """True when the statement does not write to the database."""
        return self._readonly

    @property
    def parallel(self):
        """True when calls outside a transaction run on a reader, beside other threads."""
        return self._parallel and self._core.max_readers != 0

    @property
    def changes_schema(self):
        """True when running the statement changes the schema (DDL)."""
        return self._changes_schema

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

    cdef int _new_epoch(self) except -1:
        """After ``fork()``: the cursors belong to the parent's connections; never touch them."""
        for cursor in self._cursors:
            leak(cursor)
        self._forget_native_handles()
        self._cursors = [None] * (self._core.max_readers + 1)
        self._executes = [None] * (self._core.max_readers + 1)
        self._epoch = self._core.epoch
        return 0

    cdef void _drop_cursor(self):
        cdef list cursors = self._cursors
        self._cursors = [None] * len(cursors)
        self._executes = [None] * len(cursors)
        if self._epoch != self._core.epoch:
            for cursor in cursors:
                leak(cursor)
            self._forget_native_handles()
            return
        self._release_native(None)
        for cursor in cursors:
            if cursor is not None:
                try:
                    cursor.close(True)
                except Exception:  # its connection is closed already
                    pass

    cdef int _forget(self, object cursor, Py_ssize_t index) except -1:
        """Reset ``cursor``'s statement without stepping it (closing resets it)."""
        if index < PyList_GET_SIZE(self._cursors) and <object>PyList_GET_ITEM(self._cursors, index) is cursor:
            self._cursors[index] = None
            self._executes[index] = None
        cursor.close(True)
        return 0

    cdef inline object _cursor_on(self, Slot slot):
        """This statement's cursor on ``slot``'s connection (its ``execute`` is cached beside it)."""
        cdef Py_ssize_t index = slot.index
        cdef Py_ssize_t size = PyList_GET_SIZE(self._cursors)
        if index >= size:  # a reader opened beyond the pool size (nested use)
            self._cursors.extend([None] * (index + 1 - size))
            self._executes.extend([None] * (index + 1 - size))
        cursor = <object>PyList_GET_ITEM(self._cursors, index)
        if cursor is None:
            cursor = slot.connection.cursor()
            self._cursors[index] = cursor
            self._executes[index] = cursor.execute
        return cursor

    cdef inline object _first_row(self, object cursor, Py_ssize_t index):
        """Step to the first row, then leave the statement reset."""
        cdef bint more
        row = appdb_next_row(cursor)
        if row is not None:
            if not self._single_row:
                self._forget(cursor, index)  # never evaluate a second row
            else:
                try:
                    more = appdb_next_row(cursor) is not None
                except _apsw_Error:  # from a row nobody asked for
                    more = True
                if more:  # another connection changed the plan (e.g. dropped an index)
                    self._single_row = False
                    self._forget(cursor, index)
        return row

    cdef inline object _row(self, object row, object connection):
        cdef tuple columns
        cdef tuple values
        cdef dict d
        cdef Py_ssize_t i, n
        if not self._as_dict:
            if self._convert is not None:
                return self._converted(row, connection)
            return row
        values = <tuple>row
        columns = self._columns
        n = PyTuple_GET_SIZE(values)
        if n != PyTuple_GET_SIZE(columns):
            self._describe(connection, False)  # the schema changed under us (another connection)
            columns = self._columns
        if self._convert is not None:
            values = <tuple>self._convert(values)
        d = appdb_new_dict(n)
        for i in range(n):
            PyDict_SetItem(d, <object>PyTuple_GET_ITEM(columns, i), <object>PyTuple_GET_ITEM(values, i))
        return d

    cdef object _converted(self, object row, object connection):
        """``row`` through the type map's converters (only statements that have some)."""
        if PyTuple_GET_SIZE(<tuple>row) != PyTuple_GET_SIZE(self._columns):
            self._describe(connection, False)
        if self._convert is None:
            return row
        return self._convert(row)

    cdef inline object _execute(
        self, int kind, object cursor, object execute, Py_ssize_t index, object connection, object bindings
    ):
        """Run once on ``cursor`` (``execute`` is its bound method) and shape the result as ``kind`` asks."""
        cdef list rows
        cdef Py_ssize_t i, n
        cdef DatabaseCore core
        if execute is None:  # close() dropped the cached method meanwhile
            execute = cursor.execute
        if kind == _RUN:
            execute(self._sql, bindings)
            if self._returns_rows:
                for _ in cursor:
                    pass
            if index == 0:
                core = self._core
                result = appdb_new_pair(_RunResult, core._changes(), core._last_insert_rowid())
            else:  # a read run() on a reader: that connection's counters
                result = appdb_new_pair(_RunResult, connection.changes(), connection.last_insert_rowid())
        elif kind == _ALL:
            rows = execute(self._sql, bindings).fetchall()
            n = PyList_GET_SIZE(rows)
            if (self._as_dict or self._convert is not None) and n:
                for i in range(n):
                    rows[i] = self._row(<object>PyList_GET_ITEM(rows, i), connection)
            result = rows
        else:
            execute(self._sql, bindings)
            row = self._first_row(cursor, index)
            if kind == _SCALAR:
                if row is not None and self._convert is not None:
                    row = self._converted(row, connection)
                result = None if row is None or len(row) == 0 else row[0]
            else:
                result = None if row is None else self._row(row, connection)
        if self._changes_schema:
            self._core._generation += 1
        return result

    cdef object _failed(self, BaseException exc, object cursor, Py_ssize_t index, object bindings, object token):
        """Discard ``cursor`` after an error; return the translated error if any."""
        if self._core.closed:  # close() from another thread pulled the connection away
            return _closed_error(self._core.path)
        if cursor is not None:
            self._forget(cursor, index)
        if isinstance(exc, apsw.CursorClosedError):  # its connection was closed (a user's close())
            return apsw.ConnectionClosedError("The connection has been closed")
        if token is not None:
            error = token.translate(exc, self._sql)
            if error is not None:
                return error
        return binding_error(exc, self._sql, self._names, bindings)

    # -- the native path -----------------------------------------------------
    cdef void _forget_native_handles(self):
        """After ``fork()``: drop the parent's handles unfinalized, keeping their connections alive."""
        cdef Py_ssize_t i
        for i in range(self._nhandles):
            self._handles[i] = NULL
            self._handle_dbs[i] = NULL
        for connection in self._handle_connections:
            leak(connection)
        self._handle_connections = (None,) * self._nhandles
        self._handle_forks = _forks

    cdef int _release_native(self, _Native native) except -1:
        """Finalize the handles prepared on ``native``'s connection (all of them for None)."""
        cdef Py_ssize_t i
        if self._handle_forks != _forks:
            self._forget_native_handles()
            return 0
        cdef sqlite3_stmt* st
        for i in range(self._nhandles):
            st = self._handles[i]
            if st != NULL and (native is None or self._handle_dbs[i] == native.db):
                # Out of the array first: _finalize lets other threads run, and one of
                # them may be releasing the same handles (close() beside a reader's hook).
                self._handles[i] = NULL
                self._handle_dbs[i] = NULL
                connection = <object>PyTuple_GET_ITEM(self._handle_connections, i)  # alive until finalized
                if native is None:  # close(): readers may be mid-call in other threads
                    _finalize_or_bury(st, connection)
                else:  # the connection's own close hook
                    _finalize(st)
                self._set_handle_connection(i, None)
                del connection
        return 0

    cdef int _set_handle_connection(self, Py_ssize_t index, object connection) except -1:
        cdef list connections = list(self._handle_connections)
        connections[index] = connection
        self._handle_connections = tuple(connections)
        return 0

    cdef int _grow_handles(self, Py_ssize_t size) except -1:
        cdef Py_ssize_t i
        cdef sqlite3_stmt** handles = <sqlite3_stmt**>realloc(self._handles, size * sizeof(sqlite3_stmt*))
        if handles == NULL:
            raise MemoryError()
        self._handles = handles
        cdef sqlite3** dbs = <sqlite3**>realloc(self._handle_dbs, size * sizeof(sqlite3*))
        if dbs == NULL:
            raise MemoryError()
        self._handle_dbs = dbs
        for i in range(self._nhandles, size):
            self._handles[i] = NULL
            self._handle_dbs[i] = NULL
        self._handle_connections = self._handle_connections + (None,) * (size - self._nhandles)
        self._nhandles = size
        return 0

    cdef sqlite3_stmt* _native_prepare(self, _Native native) except? NULL:
        """A new handle on ``native``'s connection; NULL when this call must use APSW's cursor."""
        cdef sqlite3_stmt* st = NULL
        cdef const char* name
        cdef int rc, i
        if self._sql_utf8 is None:
            try:
                self._sql_utf8 = self._sql.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: APSW's cursor reports them
                self._native = False
                return NULL
        if len(self._sql_utf8) > 0x7FFFFFFF:
            self._native = False
            return NULL
        rc = appdb_prepare(native.db, self._sql_utf8, <int>len(self._sql_utf8), &st)
        if rc != SQLITE_OK:  # several statements, none, or an error APSW reports in its words
            if st == NULL and rc == SQLITE_MISUSE:  # not exactly one statement (appdb_prepare)
                self._native = False
            return NULL
        if self._nparams < 0:
            keys = []
            for i in range(1, sqlite3_bind_parameter_count(st) + 1):
                name = sqlite3_bind_parameter_name(st, i)
                if name == NULL or name[0] == b"?":
                    keys = None  # positional: a mapping goes through APSW's cursor
                    break
                keys.append((<bytes>name)[1:].decode("utf-8"))  # APSW drops the :, $ or @
            self._param_keys = None if keys is None else tuple(keys)
            self._nparams = sqlite3_bind_parameter_count(st)
        native.users.add(self)
        return st

    cdef int _native_bind(self, sqlite3_stmt* st, object bindings) except -1:
        """Bind ``bindings``: 1 when done, 0 when APSW's cursor must bind them (and report errors)."""
        cdef Py_ssize_t i, n
        cdef int rc
        cdef PyObject* found
        cdef type t = type(bindings)
        cdef tuple keys
        if t is tuple or t is list:
            n = len(bindings)
            if n != self._nparams:
                return 0
            for i in range(n):
                if t is tuple:
                    rc = appdb_bind(st, <int>(i + 1), <object>PyTuple_GET_ITEM(bindings, i))
                else:
                    rc = appdb_bind(st, <int>(i + 1), <object>PyList_GET_ITEM(bindings, i))
                if rc != 1:
                    return 0
            return 1
        if t is dict and self._param_keys is not None:
            keys = self._param_keys
            for i in range(PyTuple_GET_SIZE(keys)):
                found = PyDict_GetItem(bindings, <object>PyTuple_GET_ITEM(keys, i))
                if found == NULL or appdb_bind(st, <int>(i + 1), <object>found) != 1:
                    return 0
            return 1
        return 0

    cdef object _native_error(self, sqlite3* db):
        """APSW's exception for the error SQLite just reported on ``db`` (same class, message, attributes)."""
        cdef int code = sqlite3_extended_errcode(db)
        exc = apsw.exception_for(code)
        exc.args = ((<bytes>sqlite3_errmsg(db)).decode("utf-8", "replace"),)
        exc.error_offset = sqlite3_error_offset(db)
        return exc

    cdef sqlite3_stmt* _take_handle(self, _Native native, Py_ssize_t index) except? NULL:
        """Check this statement's handle on ``native``'s connection out (preparing one if needed).

        NULL when the call must go through APSW's cursor. ``_give_handle`` puts it back.
        """
        cdef sqlite3_stmt* st
        cdef DatabaseCore core
        if native.db == NULL:  # the connection was closed: APSW's cursor reports it
            return NULL
        if self._handle_forks != _forks:  # in a child process since the handles were made
            core = self._core
            if core.forks != _forks:
                core.check_fork()
            if self._epoch != core.epoch:
                self._new_epoch()  # a file database: the parent's handles are never touched
            else:
                self._handle_forks = _forks  # in memory: the copied connection and its handles are ours
        if _graveyard:
            _bury_drain(native.db)
        if index >= self._nhandles:
            self._grow_handles(index + 1)
        st = self._handles[index]
        if st != NULL and self._handle_dbs[index] == native.db:
            self._handles[index] = NULL  # checked out
            return st
        return self._native_prepare(native)

    cdef int _give_handle(self, _Native native, Py_ssize_t index, sqlite3_stmt* st, object connection) except -1:
        """Reset a checked-out handle and put it back (or finalize it, if another took its place)."""
        sqlite3_reset(st)  # no read snapshot outlives the call
        if (
            index < self._nhandles and self._handles[index] == NULL
            and native.db != NULL and self._handle_forks == _forks
        ):
            self._handles[index] = st
            self._handle_dbs[index] = native.db
            if <object>PyTuple_GET_ITEM(self._handle_connections, index) is not connection:
                self._set_handle_connection(index, connection)
        else:  # a re-entrant call put its own back first
            sqlite3_finalize(st)  # on this thread's connection
        if _graveyard:
            _bury_drain(native.db)
        return 0

    cdef int _first_step(self, sqlite3_stmt* st, sqlite3* db) noexcept:
        """The first step of a run."""
        cdef int rc
        # SQLite runs without the GIL, as under APSW, so other threads run meanwhile,
        # unless the statement cannot wait for a lock (it holds the snapshot or the
        # write lock it needs already) nor loop: then handing the GIL over and back
        # costs more than the step (410 of 9,686 instructions of a get() inside a
        # transaction, callgrind).
        if (
            self._short and not sqlite3_get_autocommit(db)
            and sqlite3_txn_state(db, NULL) >= (SQLITE_TXN_READ if self._readonly else SQLITE_TXN_WRITE)
        ):
            return sqlite3_step(st)
        with nogil:
            rc = sqlite3_step(st)
        return rc

    cdef object _native_call(self, int kind, Slot slot, object connection, object bindings):
        """Run once through SQLite's C API; ``_FALLBACK`` when APSW's cursor must run it."""
        cdef _Native native = slot._native
        cdef Py_ssize_t index = slot.index
        cdef sqlite3* db = native.db
        cdef sqlite3_stmt* st
        cdef int rc, n, mark
        cdef list rows
        st = self._take_handle(native, index)
        if st == NULL:
            return _FALLBACK
        native.out += 1
        try:
            if not self._native_bind(st, bindings):
                sqlite3_clear_bindings(st)
                return _FALLBACK
            mark = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0)
            rc = self._first_step(st, db)
            if kind == _RUN:
                while rc == SQLITE_ROW:
                    appdb_pending()
                    rc = _step_next(st, &mark)
                if rc == SQLITE_DONE:
                    appdb_pending()
                    result = appdb_new_pair(_RunResult, sqlite3_changes64(db), sqlite3_last_insert_rowid(db))
            elif kind == _ALL:
                rows = []
                while rc == SQLITE_ROW:
                    appdb_pending()
                    rows.append(self._native_row(st, connection))
                    rc = _step_next(st, &mark)
                if rc == SQLITE_DONE:
                    appdb_pending()
                    result = rows
            else:
                if rc == SQLITE_ROW:
                    appdb_pending()
                    if kind == _SCALAR and self._convert is None:
                        n = sqlite3_column_count(st)
                        result = appdb_column(st, 0) if n else None
                    elif kind == _SCALAR:
                        row = self._converted(appdb_row_tuple(st, sqlite3_column_count(st)), connection)
                        result = row[0] if len(row) else None
                    else:
                        result = self._native_row(st, connection)
                    rc = SQLITE_DONE
                elif rc == SQLITE_DONE:
                    appdb_pending()
                    result = None
            if rc != SQLITE_DONE:
                appdb_pending()  # an APSW callback's exception wins, as in APSW
                raise self._native_error(db)
        finally:
            native.out -= 1
            self._give_handle(native, index, st, connection)
        if self._changes_schema:
            self._core._generation += 1
        return result

    cdef inline object _native_row(self, sqlite3_stmt* st, object connection):
        cdef int n = sqlite3_column_count(st)
        if self._convert is None and n == PyTuple_GET_SIZE(self._columns):
            if self._as_dict:
                return appdb_row_dict(st, n, self._columns, self._template)
            return appdb_row_tuple(st, n)
        return self._row(appdb_row_tuple(st, n), connection)  # converters, or the schema changed

    # -- routing -----------------------------------------------------------
    cdef object _call(self, int kind, object bindings):
        cdef DatabaseCore core = self._core
        if core.forks != _forks:
            core.check_fork()
        if (
            self._parallel
            and core.max_readers != 0
            and not core.raw_transaction
            and core.lock._owner != PyThread_get_thread_ident()
        ):
            return self._call_reader(kind, bindings)
        return self._call_writer(kind, bindings)

    cdef object _call_reader(self, int kind, object bindings):
        cdef DatabaseCore core = self._core
        cdef ConnectionLock lane = core.lane
        cdef Slot slot
        cdef bint retry = False
        cdef bint short = self._short
        cdef Py_ssize_t limited
        # A short read needs a token only for a deadline (no budget, nothing to cancel in
        # microseconds): skipping the lookup is 10% of an inline appdb.aio read.
        limited = core.deadlines_active if short else core.limits_active
        token = _limits_start(core, False, short) if limited else None
        if short:
            # Short reads take turns on the lane, then on one reader (see the docs,
            # "Transactions and threads"): threads waiting there sleep instead of
            # fighting over the GIL, and the reader on top of the idle stack stays hot.
            # The lane comes first, and its holder never waits for a reader (one more
            # opens when long reads hold them all), so a thread that holds a reader
            # (an open iterate()) and waits for the lane cannot deadlock with it.
            if not lane._try_acquire():
                if core.limits_active:
                    _limits_nowait(core)  # an event loop must not wait here
                lane._acquire()
            try:
                slot = core._checkout_at_once()
            except BaseException:
                lane._release()
                raise
        else:
            slot = core._checkout()
        try:
            if self._epoch != core.epoch:
                self._new_epoch()
            connection = slot.connection
            cursor = None
            if self._generation != core._generation:
                self._describe(connection, True)
            try:
                if token is not None:
                    token.arm(connection)
                if self._native and slot._native is not None:
                    result = self._native_call(kind, slot, connection, bindings)
                    if result is not _FALLBACK:
                        return result
                cursor = self._cursor_on(slot)
                return self._execute(
                    kind, cursor, <object>PyList_GET_ITEM(self._executes, slot.index), slot.index, connection,
                    bindings,
                )
            except BaseException as exc:
                error = self._failed(exc, cursor, slot.index, bindings, token)
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
            try:
                core._checkin(slot)  # first: the next short read takes this reader again
            finally:
                if short:
                    lane._release()
        result = self._call_writer(kind, bindings)  # a read has no side effects: run it again
        self._parallel = False  # it works there and not on a reader
        return result

    cdef object _call_writer(self, int kind, object bindings):
        cdef DatabaseCore core = self._core
        cdef ConnectionLock lock
        cdef bint busy
        token = _limits_start(core, True, self._short) if core.limits_active else None
        lock = core.lock
        lock._acquire()
        try:
            if core.closed:
                raise _closed_error(core.path)
            if self._epoch != core.epoch:
                self._new_epoch()
            connection = core.writer.connection
            if self._generation != core._generation:
                self._describe(connection, False)
            busy = self._busy
            cursor = None
            self._busy = True
            try:
                if token is not None:
                    token.arm(connection)
                result = _FALLBACK
                if self._native and core.writer._native is not None:
                    result = self._native_call(kind, core.writer, connection, bindings)
                if result is _FALLBACK:
                    cursor = <object>PyList_GET_ITEM(self._cursors, 0)
                    if cursor is None or busy:
                        cursor = connection.cursor()  # re-entered: a fresh cursor of its own
                        execute = cursor.execute
                        if not busy:
                            self._cursors[0] = cursor
                            self._executes[0] = execute
                    else:
                        execute = <object>PyList_GET_ITEM(self._executes, 0)
                    result = self._execute(kind, cursor, execute, 0, connection, bindings)
            except BaseException as exc:
                error = self._failed(exc, cursor, 0, bindings, token)
                if error is None:
                    raise
                raise error from None
            finally:
                self._busy = busy
                if token is not None:
                    token.disarm(connection)
                if self._txn_control and lock._count == 1:
                    core.raw_transaction = connection.in_transaction
        finally:
            lock._release()
        return result

    # -- execution ---------------------------------------------------------
    def get(self, *params, **named):
        """Run the query and return its first row, or None when there is none."""
        return self._call(_GET, self._bindings(params, named))

    def scalar(self, *params, **named):
        """Return the first column of the first row, or None when there is no row."""
        return self._call(_SCALAR, self._bindings(params, named))

    def all(self, *params, **named):
        """Run the query and return every row as a list."""
        return self._call(_ALL, self._bindings(params, named))

    def run(self, *params, **named):
        """Execute a write and return ``RunResult(changes, last_insert_rowid)``."""
        return self._call(_RUN, self._bindings(params, named))

    def iterate(self, *params, **named):
        """Run the query and return an iterator over its rows.

        The statement is reset as soon as the rows run out, or the iterator is
        closed (``close()`` or ``with``) or garbage collected (a ``for`` loop
        directly over ``iterate()`` that breaks drops it at once).
        """
        bindings = self._bindings(params, named)
        cdef DatabaseCore core = self._core
        cdef Slot slot = None
        if core.forks != _forks:
            core.check_fork()
        if self._parallel and core.routes_to_reader():
            slot = core._checkout()
            connection = slot.connection
        else:
            connection = core.acquire_writer()
        try:
            if self._generation != core._generation:
                self._describe(connection, slot is not None)
            if self._native:
                iterator = self._iterate_native(core.writer if slot is None else slot, connection, bindings)
                if iterator is not None:
                    return iterator
            cursor = connection.cursor()
            token = _limits_start(core, False, self._short) if core.limits_active else None
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
                core._checkin(slot)
            raise
        finally:
            if slot is None:
                core.lock._release()
        return RowIterator(self, cursor, slot)

    cdef object _iterate_native(self, Slot slot, object connection, object bindings):
        """``iterate`` through SQLite's C API: a RowIterator, or None for APSW's cursor.

        Like APSW's ``execute``, the first step runs here, so errors and side effects
        happen at the ``iterate()`` call. The caller holds ``slot`` (and gives a
        reader back if this raises).
        """
        cdef DatabaseCore core = self._core
        cdef _Native native = slot._native
        cdef sqlite3_stmt* st
        cdef sqlite3* db
        cdef int rc, mark
        cdef RowIterator iterator
        if native is None:
            return None
        db = native.db
        st = self._take_handle(native, slot.index)
        if st == NULL:
            return None
        if not self._native_bind(st, bindings):
            sqlite3_clear_bindings(st)
            self._give_handle(native, slot.index, st, connection)
            return None
        token = _limits_start(core, False, self._short) if core.limits_active else None
        native.out += 1
        try:
            if token is not None:
                token.writer = slot.index == 0  # a timeout on the writer ends its transaction
                token.arm(connection)
            mark = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0)
            rc = self._first_step(st, db)
            appdb_pending()
            if rc != SQLITE_ROW and rc != SQLITE_DONE:
                raise self._native_error(db)
        except BaseException as exc:
            native.out -= 1
            self._give_handle(native, slot.index, st, connection)
            error = token.translate(exc, self._sql) if token is not None else None
            if error is None:
                raise
            raise error from None
        finally:
            if token is not None:
                token.disarm(connection)
        native.out -= 1
        if self._changes_schema:
            core._generation += 1
        iterator = RowIterator(self, None, None if slot.index == 0 else slot)
        iterator._own(st, native, slot.index, connection, mark)
        if rc == SQLITE_DONE:  # no rows: done now (the reader goes back at once)
            iterator._finish()
        return iterator

    def run_many(self, seq_of_params):
        """Execute once per item of ``seq_of_params`` (sequences, mappings or single values).

        The batch is atomic: outside a transaction it runs in one, inside one it
        runs in a savepoint, so a failing item leaves none of the batch behind.
        ``changes`` is the total number of rows changed (triggers included).
        """
        return _batch.run_many(self._core, self, _CheckedMany(self, seq_of_params))

    def _execute_many(self, connection, items):
        """``executemany`` on the writer (``_batch.run_many`` holds the lock and the transaction)."""
        cdef bint busy
        if self._epoch != self._core.epoch:
            self._new_epoch()
        if self._native and self._core.writer._native is not None:
            if self._execute_many_native(connection, items):
                return
        busy = self._busy
        cursor = <object>PyList_GET_ITEM(self._cursors, 0)
        if cursor is None or busy:
            cursor = connection.cursor()
            if not busy:
                self._cursors[0] = cursor
                self._executes[0] = cursor.execute
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


    cdef bint _execute_many_native(self, object connection, object items) except? False:
        """``_execute_many`` through SQLite's C API; False when nothing ran and APSW's cursor must.

        An item the native binder leaves to APSW (a buffer, an adapted type, a wrong
        count) runs through a cursor of its own, in order, in the same transaction.
        """
        cdef _Native native = self._core.writer._native
        cdef sqlite3* db = native.db
        cdef sqlite3_stmt* st = self._take_handle(native, 0)
        cdef int rc, mark
        if st == NULL:
            return False
        native.out += 1
        try:
            for item in items:
                if self._native_bind(st, item):
                    mark = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0)
                    rc = self._first_step(st, db)
                    while rc == SQLITE_ROW:  # RETURNING rows nobody reads
                        appdb_pending()
                        rc = _step_next(st, &mark)
                    appdb_pending()
                    if rc != SQLITE_DONE:
                        raise self._native_error(db)
                    sqlite3_reset(st)
                else:
                    sqlite3_clear_bindings(st)
                    cursor = connection.cursor()
                    try:
                        cursor.execute(self._sql, item)
                        for _ in cursor:
                            pass
                    finally:
                        cursor.close(True)
        except BaseException as exc:
            error = self._failed(exc, None, 0, None, None)
            if error is None:
                raise
            raise error from None
        finally:
            native.out -= 1
            self._give_handle(native, 0, st, connection)
        return True


cdef class _CheckedMany:
    """The items of a ``run_many`` batch, validated the way single runs are, and counted.

    ``index`` (0-based) and ``item`` (the values as bound; None while the item is
    fetched) let ``_batch`` name the item an error is about.
    """

    cdef Statement _statement
    cdef object _it
    cdef public Py_ssize_t index
    cdef public object item

    def __init__(self, Statement statement, seq_of_params):
        self._statement = statement
        self._it = _batch.parameter_lists(seq_of_params)
        self.index = -1
        self.item = None

    def __iter__(self):
        return self

    def __next__(self):
        self.index += 1
        self.item = None
        item = next(self._it)
        if isinstance(item, (tuple, list)):
            pass
        elif isinstance(item, _Mapping):
            if len(item) > self._statement._n_named:
                raise extra_names_error(self._statement._sql, self._statement._names, item)
        elif isinstance(item, _SINGLE_VALUES) or not isinstance(item, _Sequence):
            item = (item,)  # one value: a set or an unknown object fails naming parameter 1
        self.item = item
        return item


@cython.no_gc_clear  # keeps the connection of its native handle alive until it is given back
cdef class RowIterator:
    """Iterator over the rows of one execution; resets the statement when done.

    It holds the connection it runs on: a reader of the pool (given back when the
    rows run out or the iterator is closed) or the writer (taken per step).
    """

    cdef Statement _statement
    cdef object _cursor
    cdef Slot _slot
    cdef long long _epoch
    # The native path: the statement handle it holds (checked out of the Statement),
    # on native's connection; _fresh while the first step's row is unread.
    cdef sqlite3_stmt* _st
    cdef _Native _native
    cdef Py_ssize_t _index
    cdef object _connection
    cdef int _mark
    cdef bint _fresh
    cdef bint _dropped  # the connection closed under it (APSW closes its cursors then)
    cdef object __weakref__

    def __cinit__(self):
        self._st = NULL

    def __dealloc__(self):
        # Only when __del__ could not give the handle back: finalize it, unless inherited across fork().
        if self._st != NULL and self._statement is not None and self._statement._handle_forks == _forks:
            _finalize_or_bury(self._st, self._connection)
        self._st = NULL

    def __init__(self, Statement statement, cursor, Slot slot):
        self._statement = statement
        self._cursor = cursor
        self._slot = slot
        self._epoch = statement._core.epoch

    cdef void _own(self, sqlite3_stmt* st, _Native native, Py_ssize_t index, object connection, int mark):
        self._st = st
        self._native = native
        self._index = index
        self._connection = connection
        self._mark = mark
        self._fresh = True
        native.iterators.add(self)

    cdef void _drop_native(self):
        """The connection is closing (its hook, under the writer lock): finalize the handle."""
        cdef sqlite3_stmt* st = self._st
        if st != NULL:
            self._st = NULL
            self._dropped = True
            _finalize(st)

    def __iter__(self):
        return self

    def __next__(self):
        if self._native is not None:
            return self._next_native()
        cursor = self._cursor
        if cursor is None:
            raise StopIteration
        cdef Statement statement = self._statement
        cdef DatabaseCore core = statement._core
        cdef bint writer = self._slot is None
        if core.forks != _forks:
            core.check_fork()
        if writer:
            core.lock._acquire()
        try:
            if core.closed or self._epoch != core.epoch:
                self._finish()
                raise _closed_error(core.path)
            connection = cursor.connection
            token = _limits_start(core, False, statement._short) if core.limits_active else None
            try:
                if token is not None:
                    token.writer = writer  # a timeout on the writer ends its transaction
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
            if writer:
                core.lock._release()

    cdef object _next_native(self):
        cdef Statement statement = self._statement
        cdef DatabaseCore core = statement._core
        cdef bint writer = self._slot is None
        cdef _Native native = self._native
        cdef int rc
        if self._st == NULL:
            if self._dropped:  # as APSW's cursor, closed with its connection, says every time
                self._finish()
                raise apsw.CursorClosedError("The cursor has been closed")
            raise StopIteration
        if core.forks != _forks:
            core.check_fork()
        if writer:
            core.lock._acquire()
        try:
            if core.closed or self._epoch != core.epoch:
                self._finish()
                raise _closed_error(core.path)
            if self._st == NULL:  # closed while this thread waited for the lock
                self._finish()
                raise apsw.CursorClosedError("The cursor has been closed")
            connection = self._connection
            if self._fresh:
                self._fresh = False
            else:
                token = _limits_start(core, False, statement._short) if core.limits_active else None
                native.out += 1
                try:
                    if token is not None:
                        token.writer = writer  # a timeout on the writer ends its transaction
                        token.arm(connection)  # raises QueryTimeout once the deadline has passed
                    rc = _step_next(self._st, &self._mark)
                    appdb_pending()
                    if rc != SQLITE_ROW and rc != SQLITE_DONE:
                        raise statement._native_error(native.db)
                except BaseException as exc:
                    native.out -= 1
                    self._finish()
                    error = token.translate(exc, statement._sql) if token is not None else None
                    if error is None:
                        raise
                    raise error from None
                finally:
                    if token is not None:
                        token.disarm(connection)
                native.out -= 1
                if rc == SQLITE_DONE:
                    self._finish()
                    raise StopIteration
            try:
                return statement._native_row(self._st, connection)
            except BaseException:
                self._finish()
                raise
        finally:
            if writer:
                core.lock._release()

    cdef int _finish(self) except -1:
        """Reset the statement and give the reader back (call with the writer lock for the writer)."""
        if self._native is not None:
            return self._finish_native()
        cursor = self._cursor
        cdef Slot slot = self._slot
        self._cursor = None
        self._slot = None
        cdef DatabaseCore core = self._statement._core
        if self._epoch != core.epoch:  # inherited across fork(): never touch it
            leak(cursor)
            return 0
        if cursor is not None and not core.closed:
            try:
                cursor.close(True)
            except _apsw_Error:
                pass
        if slot is not None:
            core._checkin(slot)
        return 0

    cdef int _finish_native(self) except -1:
        cdef sqlite3_stmt* st = self._st
        cdef Slot slot = self._slot
        cdef _Native native = self._native
        self._st = NULL
        self._slot = None
        cdef DatabaseCore core = self._statement._core
        if self._epoch != core.epoch:  # inherited across fork(): never touch it, nor its reader
            leak(self._connection)
            return 0
        if st != NULL:
            native.iterators.discard(self)
            self._statement._give_handle(native, self._index, st, self._connection)
        if slot is not None:
            core._checkin(slot)
        return 0

    def close(self):
        """Stop iterating and reset the statement now."""
        if self._native is not None:
            if self._st == NULL and self._slot is None:
                return
            self._close_native()
            return
        if self._cursor is None:
            return
        cdef DatabaseCore core = self._statement._core
        if core.forks != _forks:
            core.check_fork()
        if self._slot is not None or self._epoch != core.epoch:
            self._finish()
            return
        core.lock._acquire()
        try:
            self._finish()
        finally:
            core.lock._release()

    cdef int _close_native(self) except -1:
        cdef DatabaseCore core = self._statement._core
        if core.forks != _forks:
            core.check_fork()
        if self._slot is not None or self._epoch != core.epoch:
            self._finish()
            return 0
        core.lock._acquire()
        try:
            self._finish()
        finally:
            core.lock._release()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close()

    def __del__(self):
        # On the writer, under its lock: closing while another thread runs a statement
        # raises ThreadingViolationError, which a finalizer can only swallow, and the
        # statement then stays active and pins a read snapshot (the WAL cannot reset).
        try:
            self.close()
        except Exception:
            pass
