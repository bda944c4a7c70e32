"""``Transaction``: the context manager behind ``AppDatabase.transaction()``."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import apsw

from .errors import DatabaseClosedError, TransactionError

if TYPE_CHECKING:
    from .database import AppDatabase

__all__ = ["MODES", "Transaction"]

MODES = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE", "exclusive": "BEGIN EXCLUSIVE"}
"""``BEGIN`` statement of each transaction mode."""


class Transaction:
    """Context manager made by ``AppDatabase.transaction()``; savepoints when nested.

    One ``Transaction`` is one block: entering it again while it is active raises
    ``RuntimeError`` (call ``db.transaction()`` again for a nested block). Once its
    block has ended it may be entered again.
    """

    __slots__ = ("_active", "_db", "_generation", "_mode", "_savepoint")

    def __init__(self, db: AppDatabase, mode: str | None) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"transaction mode must be 'deferred', 'immediate' or 'exclusive', not {mode!r}")
        self._db = db
        self._mode = mode
        self._savepoint: str | None = None
        self._active = False
        self._generation = 0

    def __enter__(self) -> AppDatabase:
        db = self._db
        db._lock.acquire()
        if self._active:  # only this thread can be inside it: the lock is re-entrant
            db._lock.release()
            raise RuntimeError(
                "this transaction is already active: call db.transaction() again for a nested block "
                "instead of re-entering the same Transaction object"
            )
        try:
            db._check_open()
            connection = db._core.connection
            if connection.in_transaction:
                db._savepoints += 1
                self._savepoint = f"appdb_sp_{db._savepoints}"
                connection.execute(f"SAVEPOINT {self._savepoint}")
            else:
                self._savepoint = None
                connection.execute(MODES[self._mode] if self._mode else db._core.begin_sql)
        except BaseException:
            if self._savepoint is not None:
                db._savepoints -= 1
                self._savepoint = None
            db._lock.release()
            raise
        self._active = True
        self._generation = db._core.generation
        return db

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        db = self._db
        committed = False
        try:
            if db._core.closed:
                if et is None:
                    raise DatabaseClosedError(f"the database was closed inside a transaction: {db._path}")
                return
            connection = db._core.connection
            name = self._savepoint
            if et is None:
                if not connection.in_transaction:
                    raise TransactionError(
                        "the transaction had already ended before it could commit (SQLite rolls back "
                        "after errors such as a full disk, or SQL inside it ended it): nothing after "
                        "that point was saved"
                    )
                try:
                    connection.execute(f"RELEASE {name}" if name else "COMMIT")
                except BaseException:
                    self._rollback(connection, name)
                    raise
                committed = True
            else:
                self._rollback(connection, name)
        finally:
            if not committed and not db._core.closed and db._core.generation != self._generation:
                db._core.schema_changed()  # schema changes inside were undone: re-read columns
            if self._savepoint is not None:
                db._savepoints -= 1
                self._savepoint = None
            self._active = False
            db._lock.release()

    @staticmethod
    def _rollback(connection: apsw.Connection, name: str | None) -> None:
        if not connection.in_transaction:
            return  # SQLite already rolled everything back
        try:
            if name:
                connection.execute(f"ROLLBACK TO {name}")
                connection.execute(f"RELEASE {name}")
            else:
                connection.execute("ROLLBACK")
        except apsw.SQLError:
            # the savepoint vanished with an outer rollback; roll back what is left
            if connection.in_transaction and name is None:
                connection.execute("ROLLBACK")
