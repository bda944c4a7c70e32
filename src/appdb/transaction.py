"""``Transaction``: the context manager behind ``AppDatabase.transaction()``."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import apsw

from .errors import DatabaseClosedError, TransactionError

__all__ = ["MODES", "Transaction"]

MODES = {"deferred": "BEGIN DEFERRED", "immediate": "BEGIN IMMEDIATE", "exclusive": "BEGIN EXCLUSIVE"}
"""``BEGIN`` statement of each transaction mode."""


class Transaction:
    """Context manager made by ``AppDatabase.transaction()``; savepoints when nested.

    ``with db.transaction() as db:`` begins a transaction (``BEGIN IMMEDIATE`` by
    default; a ``SAVEPOINT`` inside another one), commits when the block ends and
    rolls back when it raises. One ``Transaction`` is one block: entering it again
    while it is active raises ``RuntimeError`` (call ``db.transaction()`` again for
    a nested block). Once its block has ended it may be entered again. The block
    holds the writer lock, so the calling thread's statements run on the writer.

    Entering raises [`DatabaseClosedError`][appdb.DatabaseClosedError] on a closed
    database and ``apsw.BusyError`` when another process holds the write lock past
    ``busy_timeout``. Leaving raises [`TransactionError`][appdb.TransactionError]
    when the transaction had already ended before it could commit, and
    ``DatabaseClosedError`` when the database was closed inside the block; an
    error of the block itself is re-raised after the rollback.
    """

    __slots__ = ("_active", "_core", "_db", "_generation", "_mode", "_savepoint")

    def __init__(self, core: Any, mode: str | None, db: Any) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"transaction mode must be 'deferred', 'immediate' or 'exclusive', not {mode!r}")
        self._core = core
        self._db = db
        self._mode = mode
        self._savepoint: str | None = None
        self._active = False
        self._generation = 0

    def __enter__(self) -> Any:
        core = self._core
        connection = core.acquire_writer()
        if self._active:  # only this thread can be inside it: the lock is re-entrant
            core.release_writer()
            raise RuntimeError(
                "this transaction is already active: call db.transaction() again for a nested block "
                "instead of re-entering the same Transaction object"
            )
        try:
            if connection.in_transaction:
                # the lock depth is unique per nesting level of this thread's blocks
                self._savepoint = f"appdb_sp_{core.lock.depth()}"
                connection.execute(f"SAVEPOINT {self._savepoint}")
            else:
                self._savepoint = None
                connection.execute(MODES[self._mode] if self._mode else core.begin_sql)
        except BaseException:
            self._savepoint = None
            core.release_writer()
            raise
        self._active = True
        self._generation = core.generation
        return self._db

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        core = self._core
        try:
            if core.closed:
                if et is None:
                    raise DatabaseClosedError(f"the database was closed inside a transaction: {core.path}")
                return
            connection = core.connection
            name = self._savepoint
            if et is None:
                if not connection.in_transaction:
                    raise TransactionError(
                        "the transaction had already ended before it could commit (SQLite rolls back "
                        "after errors such as a full disk or an interrupted write, or SQL inside it "
                        "ended it): nothing after that point was saved"
                    )
                try:
                    connection.execute(f"RELEASE {name}" if name else "COMMIT")
                except BaseException:
                    self._rollback(connection, name)
                    raise
            else:
                self._rollback(connection, name)
        finally:
            if not core.closed and core.generation != self._generation:
                # Rolled back: the schema changes inside were undone. Committed: readers
                # described statements against the old schema meanwhile. Either way,
                # every statement re-reads its columns.
                core.schema_changed()
            if self._savepoint is None and not core.closed:
                core.raw_transaction = False
            self._savepoint = None
            self._active = False
            core.release_writer()

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
