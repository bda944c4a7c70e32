"""The contenders: appdb (compiled and pure Python), raw APSW, and stdlib ``sqlite3``.

Each contender opens its own copy of the template database with the same pragmas
and builds one zero-argument callable per trial ("op") that performs a whole
batch of operations. Every op is written as that library's fastest idiomatic
code: bound methods are looked up once, outside the timed loop, for everyone.
A method returns ``None`` when the trial does not apply to the contender.
"""

from __future__ import annotations

import importlib
import platform
import sqlite3
from collections.abc import Callable
from itertools import repeat
from types import ModuleType
from typing import Any

import apsw

from bench_workload import (
    COLUMNS,
    ROW,
    SQL_ALL,
    SQL_GET,
    SQL_INSERT,
    SQL_PROBE_COUNT,
    SQL_PROBE_INSERT,
    SQL_SCAN,
    pragma_statements,
)

__all__ = [
    "CONTENDER_KEYS",
    "AppdbContender",
    "ApswContender",
    "Contender",
    "Op",
    "Sqlite3Contender",
    "create",
]

Op = Callable[[], object]

#: Display order; also the order of the table's columns.
CONTENDER_KEYS = ("appdb", "appdb-py", "apsw", "sqlite3", "sqlite3-dict")


class Contender:
    """Base class: one library, one connection, one database file."""

    key = ""
    label = ""
    rows = "tuple"  # "dict" or "tuple": the row type its read trials return
    writes = True  # False when its write code would be identical to another contender's

    def open(self, path: str) -> None:
        """Open ``path`` and apply the common pragmas."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""
        raise NotImplementedError

    def describe(self) -> str:
        """Library and SQLite versions, for the header."""
        raise NotImplementedError

    @property
    def sqlite_version(self) -> str:
        """Version of the SQLite library this contender runs on."""
        raise NotImplementedError

    def holds_read_snapshot(self) -> bool:
        """True when the connection still holds a read transaction (a half-read statement)."""
        raise NotImplementedError

    # Trial ops: each returns a callable running one whole batch, or None.
    def get(self, ids: list[int]) -> Op | None:
        return None

    def all(self, starts: list[int]) -> Op | None:
        return None

    def iterate(self, starts: list[int]) -> Op | None:
        return None

    def get_in_read_txn(self, ids: list[int]) -> Op | None:
        return None

    def prepare(self, n: int) -> Op | None:
        return None

    def insert(self, n: int) -> Op | None:
        return None

    def insert_in_txn(self, n: int) -> Op | None:
        return None

    def txn100(self, n: int) -> Op | None:
        return None

    def run_many(self, rows: list[tuple[Any, ...]]) -> Op | None:
        return None

    def scan(self) -> Op | None:
        return None


class AppdbContender(Contender):
    """appdb with dict rows, through the public API only; ``twin`` picks the hot path."""

    rows = "dict"

    def __init__(self, twin: str) -> None:
        self.twin = twin
        self.module: ModuleType = importlib.import_module(twin)  # ImportError when not built
        compiled = not twin.endswith("_py")
        self.key = "appdb" if compiled else "appdb-py"
        self.label = "appdb (compiled)" if compiled else "appdb (pure Python)"
        self.db: Any = None

    def open(self, path: str) -> None:
        import appdb
        from appdb import _select

        with _select.using("cython" if self.module.__name__ == "appdb._fastcache" else "python"):
            self.db = appdb.init_database(path)  # the facade picks its twin when it is built
        actual = type(self.db.prepare("SELECT 1")).__module__
        if actual != self.twin:
            raise RuntimeError(f"{self.label} runs on {actual}, expected {self.twin}")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def describe(self) -> str:
        import appdb

        versions = f"APSW {apsw.apsw_version()}, SQLite {self.sqlite_version}"
        return f"appdb {appdb.__version__} ({self.twin}), {versions}"

    @property
    def sqlite_version(self) -> str:
        return str(apsw.sqlite_lib_version())

    def holds_read_snapshot(self) -> bool:
        return bool(self.db.connection.txn_state() != apsw.SQLITE_TXN_NONE)

    def get(self, ids: list[int]) -> Op:
        get = self.db.prepare(SQL_GET).get

        def op() -> None:
            for rowid in ids:
                get(rowid)

        return op

    def all(self, starts: list[int]) -> Op:
        all_ = self.db.prepare(SQL_ALL).all

        def op() -> None:
            for start in starts:
                all_(start)

        return op

    def iterate(self, starts: list[int]) -> Op:
        iterate = self.db.prepare(SQL_ALL).iterate

        def op() -> None:
            for start in starts:
                for _row in iterate(start):
                    pass

        return op

    def get_in_read_txn(self, ids: list[int]) -> Op:
        get = self.db.prepare(SQL_GET).get
        transaction = self.db.transaction

        def op() -> None:
            with transaction(mode="deferred"):
                for rowid in ids:
                    get(rowid)

        return op

    def prepare(self, n: int) -> Op:
        prepare = self.db.prepare
        prepare(SQL_GET)

        def op() -> None:
            for _ in repeat(None, n):
                prepare(SQL_GET)

        return op

    def insert(self, n: int) -> Op:
        run = self.db.prepare(SQL_INSERT).run

        def op() -> None:
            for _ in repeat(None, n):
                run(ROW)

        return op

    def insert_in_txn(self, n: int) -> Op:
        run = self.db.prepare(SQL_INSERT).run
        transaction = self.db.transaction

        def op() -> None:
            with transaction():
                for _ in repeat(None, n):
                    run(ROW)

        return op

    def txn100(self, n: int) -> Op:
        run = self.db.prepare(SQL_INSERT).run
        transaction = self.db.transaction

        def op() -> None:
            for _ in repeat(None, n):
                with transaction():
                    for _ in repeat(None, 100):
                        run(ROW)

        return op

    def run_many(self, rows: list[tuple[Any, ...]]) -> Op:
        run_many = self.db.prepare(SQL_INSERT).run_many

        def op() -> None:
            run_many(rows)

        return op

    def scan(self) -> Op:
        iterate = self.db.prepare(SQL_SCAN).iterate

        def op() -> None:
            for _row in iterate():
                pass

        return op


class ApswContender(Contender):
    """Raw APSW: one reused cursor, tuple rows, APSW's own statement cache (100 entries).

    Its ``run`` equivalent executes and then reads ``changes()`` and
    ``last_insert_rowid()``: what appdb's ``RunResult`` carries.
    """

    key = "apsw"
    label = "raw APSW"
    rows = "tuple"

    def __init__(self) -> None:
        self.conn: apsw.Connection | None = None

    def open(self, path: str) -> None:
        self.conn = conn = apsw.Connection(path, statementcachesize=100)
        for statement in pragma_statements():
            conn.execute(statement).fetchall()
        conn.transaction_mode = "IMMEDIATE"  # as appdb's default; used by `with conn:`
        self.cursor = conn.cursor()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def describe(self) -> str:
        return f"APSW {apsw.apsw_version()}, SQLite {self.sqlite_version}"

    @property
    def sqlite_version(self) -> str:
        return str(apsw.sqlite_lib_version())

    def _conn(self) -> apsw.Connection:
        assert self.conn is not None
        return self.conn

    def holds_read_snapshot(self) -> bool:
        return bool(self._conn().txn_state() != apsw.SQLITE_TXN_NONE)

    def get(self, ids: list[int]) -> Op:
        execute = self.cursor.execute

        def op() -> None:
            for rowid in ids:
                execute(SQL_GET, (rowid,)).get  # noqa: B018 - steps to the end, resets

        return op

    def all(self, starts: list[int]) -> Op:
        execute = self.cursor.execute

        def op() -> None:
            for start in starts:
                execute(SQL_ALL, (start,)).fetchall()

        return op

    def iterate(self, starts: list[int]) -> Op:
        execute = self.cursor.execute

        def op() -> None:
            for start in starts:
                for _row in execute(SQL_ALL, (start,)):
                    pass

        return op

    def get_in_read_txn(self, ids: list[int]) -> Op:
        execute = self.cursor.execute
        conn = self._conn()

        def op() -> None:
            execute("BEGIN DEFERRED")
            try:
                for rowid in ids:
                    execute(SQL_GET, (rowid,)).get  # noqa: B018
            finally:
                conn.execute("COMMIT")

        return op

    def insert(self, n: int) -> Op:
        execute = self.cursor.execute
        changes = self._conn().changes
        last_insert_rowid = self._conn().last_insert_rowid

        def op() -> None:
            for _ in repeat(None, n):
                execute(SQL_INSERT, ROW)
                changes()
                last_insert_rowid()

        return op

    def insert_in_txn(self, n: int) -> Op:
        conn = self._conn()
        execute = self.cursor.execute
        changes = conn.changes
        last_insert_rowid = conn.last_insert_rowid

        def op() -> None:
            with conn:
                for _ in repeat(None, n):
                    execute(SQL_INSERT, ROW)
                    changes()
                    last_insert_rowid()

        return op

    def txn100(self, n: int) -> Op:
        conn = self._conn()
        execute = self.cursor.execute
        changes = conn.changes
        last_insert_rowid = conn.last_insert_rowid

        def op() -> None:
            for _ in repeat(None, n):
                with conn:
                    for _ in repeat(None, 100):
                        execute(SQL_INSERT, ROW)
                        changes()
                        last_insert_rowid()

        return op

    def run_many(self, rows: list[tuple[Any, ...]]) -> Op:
        conn = self._conn()
        executemany = self.cursor.executemany

        def op() -> None:
            with conn:
                before = conn.total_changes()
                executemany(SQL_INSERT, rows)
                (conn.total_changes() - before, conn.last_insert_rowid())

        return op

    def scan(self) -> Op:
        execute = self.cursor.execute

        def op() -> None:
            for _row in execute(SQL_SCAN):
                pass

        return op


class Sqlite3Contender(Contender):
    """Stdlib ``sqlite3`` in autocommit mode (``isolation_level=None``) with one reused cursor.

    ``dicts=True`` builds each row as ``dict(zip(COLUMNS, row))`` with the column
    names cached once (measured faster than a ``row_factory``). Its write code
    would be the tuple contender's, so it takes part in read trials only.
    Read snapshots: CPython's ``sqlite3`` steps one row ahead, so ``fetchone()``
    on a point query reaches the end and resets the statement.
    """

    def __init__(self, dicts: bool) -> None:
        self.dicts = dicts
        self.key = "sqlite3-dict" if dicts else "sqlite3"
        self.label = "sqlite3 dicts" if dicts else "sqlite3 tuples"
        self.rows = "dict" if dicts else "tuple"
        self.writes = not dicts
        self.conn: sqlite3.Connection | None = None
        self.path = ""

    def open(self, path: str) -> None:
        self.path = path
        self.conn = conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for statement in pragma_statements():
            conn.execute(statement).fetchall()
        self.cursor = conn.cursor()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def describe(self) -> str:
        return f"stdlib sqlite3 of Python {platform.python_version()}, SQLite {self.sqlite_version}"

    @property
    def sqlite_version(self) -> str:
        return sqlite3.sqlite_version

    def _conn(self) -> sqlite3.Connection:
        assert self.conn is not None
        return self.conn

    def holds_read_snapshot(self) -> bool:
        """A second connection (same library) commits a row; do we still see the old count?"""
        conn = self._conn()
        before = conn.execute(SQL_PROBE_COUNT).fetchone()[0]
        other = sqlite3.connect(self.path, isolation_level=None)
        try:
            other.execute(SQL_PROBE_INSERT)
        finally:
            other.close()
        return bool(conn.execute(SQL_PROBE_COUNT).fetchone()[0] == before)

    def get(self, ids: list[int]) -> Op:
        execute = self.cursor.execute
        if not self.dicts:

            def op() -> None:
                for rowid in ids:
                    execute(SQL_GET, (rowid,)).fetchone()

            return op
        names = COLUMNS

        def op_dict() -> None:
            for rowid in ids:
                row = execute(SQL_GET, (rowid,)).fetchone()
                if row is not None:
                    dict(zip(names, row))

        return op_dict

    def all(self, starts: list[int]) -> Op:
        execute = self.cursor.execute
        if not self.dicts:

            def op() -> None:
                for start in starts:
                    execute(SQL_ALL, (start,)).fetchall()

            return op
        names = COLUMNS

        def op_dict() -> None:
            for start in starts:
                [dict(zip(names, row)) for row in execute(SQL_ALL, (start,)).fetchall()]

        return op_dict

    def iterate(self, starts: list[int]) -> Op:
        execute = self.cursor.execute
        if not self.dicts:

            def op() -> None:
                for start in starts:
                    for _row in execute(SQL_ALL, (start,)):
                        pass

            return op
        names = COLUMNS

        def op_dict() -> None:
            for start in starts:
                for row in execute(SQL_ALL, (start,)):
                    dict(zip(names, row))

        return op_dict

    def get_in_read_txn(self, ids: list[int]) -> Op:
        execute = self.cursor.execute
        names = COLUMNS
        dicts = self.dicts

        def op() -> None:
            execute("BEGIN DEFERRED")
            try:
                if dicts:
                    for rowid in ids:
                        row = execute(SQL_GET, (rowid,)).fetchone()
                        if row is not None:
                            dict(zip(names, row))
                else:
                    for rowid in ids:
                        execute(SQL_GET, (rowid,)).fetchone()
            finally:
                execute("COMMIT")

        return op

    def insert(self, n: int) -> Op | None:
        if not self.writes:
            return None
        cursor = self.cursor
        execute = cursor.execute

        def op() -> None:
            for _ in repeat(None, n):
                execute(SQL_INSERT, ROW)
                _result = (cursor.rowcount, cursor.lastrowid)

        return op

    def insert_in_txn(self, n: int) -> Op | None:
        if not self.writes:
            return None
        cursor = self.cursor
        execute = cursor.execute

        def op() -> None:
            execute("BEGIN IMMEDIATE")
            try:
                for _ in repeat(None, n):
                    execute(SQL_INSERT, ROW)
                    _result = (cursor.rowcount, cursor.lastrowid)
            except BaseException:
                execute("ROLLBACK")
                raise
            execute("COMMIT")

        return op

    def txn100(self, n: int) -> Op | None:
        if not self.writes:
            return None
        cursor = self.cursor
        execute = cursor.execute

        def op() -> None:
            for _ in repeat(None, n):
                execute("BEGIN IMMEDIATE")
                try:
                    for _ in repeat(None, 100):
                        execute(SQL_INSERT, ROW)
                        _result = (cursor.rowcount, cursor.lastrowid)
                except BaseException:
                    execute("ROLLBACK")
                    raise
                execute("COMMIT")

        return op

    def run_many(self, rows: list[tuple[Any, ...]]) -> Op | None:
        if not self.writes:
            return None
        cursor = self.cursor
        execute = cursor.execute
        executemany = cursor.executemany

        def op() -> None:
            execute("BEGIN IMMEDIATE")
            try:
                executemany(SQL_INSERT, rows)
                _result = (cursor.rowcount, cursor.lastrowid)
            except BaseException:
                execute("ROLLBACK")
                raise
            execute("COMMIT")

        return op

    def scan(self) -> Op:
        execute = self.cursor.execute
        if not self.dicts:

            def op() -> None:
                for _row in execute(SQL_SCAN):
                    pass

            return op
        names = COLUMNS

        def op_dict() -> None:
            for row in execute(SQL_SCAN):
                dict(zip(names, row))

        return op_dict


def create(key: str) -> Contender:
    """Build the contender named ``key`` (raises ImportError when appdb's extension is missing)."""
    if key == "appdb":
        return AppdbContender("appdb._fastcache")
    if key == "appdb-py":
        return AppdbContender("appdb._fastcache_py")
    if key == "apsw":
        return ApswContender()
    if key == "sqlite3":
        return Sqlite3Contender(dicts=False)
    if key == "sqlite3-dict":
        return Sqlite3Contender(dicts=True)
    raise ValueError(f"unknown contender {key!r}")
