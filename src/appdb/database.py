"""The ``AppDatabase`` facade: statements, transactions, deadlines and maintenance."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import apsw

from . import _ledger, _limits, _select
from ._backup import write_backup
from ._files import file_identity, file_intact
from ._policy import AUTO, EXTERNAL, refused_checkpoint
from ._types import CacheStats, CheckpointResult, PoolStatus
from ._walguard import guard_size, install_wal_guard
from .errors import DatabaseClosedError
from .pragmas import pragma_sql
from .transaction import MODES, Transaction

if TYPE_CHECKING:
    from ._fastcache_py import Statement
    from .migrations import MigrationResult
    from .types import TypeMap

__all__ = ["AppDatabase", "Transaction"]

logger = logging.getLogger("appdb")

T = TypeVar("T")

_CHECKPOINT_MODES = {
    "passive": apsw.SQLITE_CHECKPOINT_PASSIVE,
    "full": apsw.SQLITE_CHECKPOINT_FULL,
    "restart": apsw.SQLITE_CHECKPOINT_RESTART,
    "truncate": apsw.SQLITE_CHECKPOINT_TRUNCATE,
}


class PrepareMethod(Protocol):
    def __call__(self, sql: str, *, row_type: str | None = None) -> Statement: ...


def _schema_version(connection: apsw.Connection) -> int | None:
    """SQLite's schema cookie, or None when it cannot be read."""
    try:
        return int(connection.execute("PRAGMA schema_version").get)
    except apsw.Error:
        return None


def _user_closed(connection: apsw.Connection) -> bool:
    """True when the writer connection was closed behind appdb's back (``db.connection.close()``)."""
    try:
        connection.in_transaction  # noqa: B018  (raises once the connection is closed)
    except apsw.ConnectionClosedError:
        return True
    return False


class AppDatabase:
    """A tuned SQLite database: a writer connection, a pool of readers, cached statements.

    Create it with [`init_database`][appdb.init_database] (the constructor is
    internal). It is a context manager that closes on exit (entering a closed
    database raises [`DatabaseClosedError`][appdb.DatabaseClosedError]). All
    methods are safe to call from several threads; read-only statements called
    outside a transaction run on the reader pool, in parallel.

    Every method that touches the database raises
    [`DatabaseClosedError`][appdb.DatabaseClosedError] after
    [`close()`][appdb.AppDatabase.close]. SQLite's own errors surface as APSW's
    exception classes (``apsw.SQLError``, ``apsw.ConstraintError``,
    ``apsw.BusyError``...).
    """

    prepare: PrepareMethod
    """``prepare(sql: str, *, row_type: str | None = None) -> Statement``: a cached prepared statement.

    The same SQL (and row type) returns the very same
    [`Statement`][appdb.Statement] while it stays in the bounded LRU cache of
    ``statement_cache_size`` entries. Compiling checks the SQL at once, so a typo
    fails here, not at the first run.

    ``sql`` is one SQL statement with ``?``, ``?NNN``, ``:name``, ``@name`` or ``$name`` placeholders.
    ``row_type`` is ``"dict"`` or ``"tuple"`` (``None``: the database's default).

    Raises ``appdb.DatabaseClosedError`` after ``close()``, ``ValueError`` for an
    unknown ``row_type``, ``TypeError`` when ``sql`` is not a ``str``, and APSW's
    errors for SQL that does not compile (``apsw.SQLError``: syntax error, unknown
    table or column). (An attribute, not a method: it is the statement cache's own
    bound method, so the documentation cannot show its signature above.)
    """

    migration_results: list[MigrationResult]
    """What ``init_database`` did with each migration: one
    [`MigrationResult`][appdb.migrations.MigrationResult] per migration it looked at
    (``applied``, ``blocked``, ``skipped``...); empty when it ran none."""

    def __init__(
        self,
        connection: apsw.Connection,
        path: str,
        *,
        readonly: bool = False,
        statement_cache_size: int = 256,
        row_type: str = "dict",
        readers: int = 0,
        opener: Callable[[bool], apsw.Connection] | None = None,
        query_timeout: float | None = None,
        types: TypeMap | None = None,
        checkpoints: str = AUTO,
    ) -> None:
        begin = MODES["deferred"] if readonly else MODES["immediate"]
        self._core = _select.impl.DatabaseCore(
            connection,
            path,
            statement_cache_size,
            row_type,
            begin,
            readers=readers,
            opener=opener,
            query_timeout=query_timeout,
            types=types,
        )
        self._path = path
        self._readonly = readonly
        self._checkpoints = checkpoints
        self._memory = path in (":memory:", "")
        self._identity = None if self._memory else file_identity(path)
        self.prepare = self._core.prepare
        self.migration_results = []

    # -- properties ----------------------------------------------------------
    @property
    def connection(self) -> apsw.Connection:
        """The writer ``apsw.Connection``.

        Using it directly bypasses appdb's writer lock: hold it with
        [`writer()`][appdb.AppDatabase.writer] when other threads use the database.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        self._check_open()
        return self._core.connection  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        """The database path as given to ``init_database``."""
        return self._path

    @property
    def readonly(self) -> bool:
        """True when opened with ``readonly=True``."""
        return self._readonly

    @property
    def checkpoints(self) -> str:
        """The checkpoint policy: "auto" (appdb's WAL guard) or "external" (another process owns them)."""
        return self._checkpoints

    @property
    def types(self) -> TypeMap | None:
        """The ``appdb.types.TypeMap`` values are adapted and converted with, or None."""
        return self._core.types  # type: ignore[no-any-return]

    @property
    def readers(self) -> int:
        """Size of the reader pool (0: every statement runs on the one connection)."""
        return int(self._core.max_readers)

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return bool(self._core.closed)

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the writer connection."""
        if self._core.closed:
            return False
        return bool(self._core.connection.in_transaction)

    def __repr__(self) -> str:
        state = "closed" if self._core.closed else ("read-only" if self._readonly else "open")
        return f"<AppDatabase {self._path!r} {state}>"

    def __enter__(self) -> AppDatabase:
        self._check_open()  # a closed database would look usable inside the block
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._core.closed:
            raise DatabaseClosedError(f"the database is closed: {self._path}")

    @contextmanager
    def writer(self) -> Iterator[apsw.Connection]:
        """Hold the writer connection: other threads' writes wait until the block ends.

        A context manager (``with db.writer() as connection: ...``). Re-entrant.
        Reads of other threads keep running on the reader pool; this thread's
        statements inside the block run on the writer.

        Yields:
            The writer ``apsw.Connection``, for APSW calls appdb does not wrap.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        core = self._core
        connection = core.acquire_writer()
        try:
            yield connection
        finally:
            if core.lock.depth() == 1 and not core.closed:
                # A transaction begun with SQL in the block (exec("BEGIN") inside it) keeps
                # every statement on the writer once the block ends, until it is over.
                core.raw_transaction = connection.in_transaction
            core.release_writer()

    def pool_status(self) -> PoolStatus:
        """How many readers are open and busy, and whether an idle connection holds a snapshot.

        ``busy + snapshots == 0`` means no read snapshot is open anywhere (nothing
        keeps the WAL from being reset). Waits for the writer while another thread
        holds it.

        Returns:
            A [`PoolStatus`][appdb.PoolStatus]``(readers, open, busy, snapshots)``.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        core = self._core
        with self.writer() as connection:
            snapshots = 1 if connection.txn_state() else 0
            if core.max_readers == 0:
                return PoolStatus(0, 0, 0, snapshots)
            with core.cond:  # idle readers stay out of the pool while they are looked at
                idle = core.idle_take_all()
                try:
                    spares = list(core.spares)  # taken and given back under cond: idle here
                    snapshots += sum(1 for slot in idle + spares if slot.connection.txn_state())
                finally:
                    for slot in idle:
                        core.idle_push(slot)
                    core.cond.notify_all()
                opened = len(core.slots)
                idle += spares
        return PoolStatus(int(core.max_readers), opened, opened - len(idle), snapshots)

    # -- statements ------------------------------------------------------------
    def statement_cache_stats(self) -> CacheStats:
        """Counters of the statement cache behind [`prepare`][appdb.AppDatabase.prepare].

        Returns:
            A [`CacheStats`][appdb.CacheStats]``(hits, misses, evictions, size, capacity)``.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        self._check_open()
        return self._core.statement_cache_stats()  # type: ignore[no-any-return]

    def clear_statement_cache(self) -> None:
        """Empty the statement cache; statements already handed out keep working.

        Every statement re-reads its result columns before its next run.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        self._check_open()
        self._core.clear_statement_cache()
        self._core.schema_changed()  # and every statement re-reads its columns

    def exec(self, sql: str) -> None:
        """Run a script of one or more SQL statements (no parameters), on the writer.

        When a statement fails, the statements before it that committed stay
        committed; a transaction the script itself opened (``BEGIN ...``) is rolled
        back before the error is re-raised. Inside ``db.transaction()`` the error
        is left to that transaction. A transaction the script leaves open (``BEGIN``
        without ``COMMIT``) sends every statement to the writer until it ends.
        A script that changes the schema makes every statement re-read its columns.

        Args:
            sql: The SQL text; statements separated by ``;``.

        Raises:
            TypeError: ``sql`` is not a ``str``.
            appdb.DatabaseClosedError: The database is closed.
            appdb.QueryTimeout: The script ran past a deadline or ``query_timeout``
                (one bound for the whole script); its own transaction, or the one it
                ran in, is rolled back.
            apsw.Error: The error of the failing statement (``apsw.SQLError``,
                ``apsw.ConstraintError``, ``apsw.BusyError``...).
        """
        if not isinstance(sql, str):
            raise TypeError(f"exec() takes SQL text (str), not {type(sql).__name__}")
        core = self._core
        # One deadline for the whole script, as for one statement: the handler stays
        # installed from its first statement to its last.
        token = _limits.start(core, True) if core.limits_active else None
        with self.writer() as connection:
            outermost = core.lock.depth() == 1
            was_in_transaction = connection.in_transaction
            schema = _schema_version(connection)
            cursor = connection.cursor()
            try:
                try:
                    if token is not None:
                        token.arm(connection)  # raises QueryTimeout once the deadline has passed
                    for _ in cursor.execute(sql):
                        pass  # later statements run only as the cursor is read on
                finally:
                    if token is not None:
                        token.disarm(connection)
                    cursor.close(True)
                    if _schema_version(connection) != schema:
                        core.schema_changed()  # statements re-read their columns
            except BaseException as exc:
                if not was_in_transaction and connection.in_transaction:
                    try:
                        connection.execute("ROLLBACK")
                    except apsw.Error as undo_error:  # keep the script's own error
                        logger.debug("rolling back after a failed exec() script failed: %s", undo_error)
                # A timeout ends the transaction it was part of, the caller's too.
                error = token.translate(exc, sql) if token is not None else None
                if error is not None:
                    raise error from None
                raise
            finally:
                if outermost:
                    core.raw_transaction = connection.in_transaction

    # -- transactions and deadlines ------------------------------------------
    def transaction(
        self, fn: Callable[..., T] | None = None, /, *args: Any, mode: str | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(db, *args, **kwargs)`` in a transaction, or return a context manager.

        Commits when ``fn`` returns (and returns its value); rolls back and re-raises
        on any exception. Nested calls use savepoints. The block holds the writer:
        this thread's statements run there (and see its own changes); other threads
        keep reading committed data on the readers, and their writes wait.

        Args:
            fn: Called as ``fn(db, *args, **kwargs)`` inside the transaction.
                Without it, a [`Transaction`][appdb.Transaction] is returned for
                ``with db.transaction(): ...``.
            *args: Passed to ``fn``.
            mode: ``"deferred"``, ``"immediate"`` (default when writable) or
                ``"exclusive"``; ignored by nested blocks (savepoints).
            **kwargs: Passed to ``fn``.

        Returns:
            ``fn``'s return value, or the ``Transaction`` context manager (its
            ``with`` block gives the database) when ``fn`` is not given.

        Raises:
            ValueError: Unknown ``mode``.
            TypeError: ``args`` or ``kwargs`` given without ``fn``.
            appdb.DatabaseClosedError: The database is closed (also at commit, when
                it was closed inside the block).
            appdb.TransactionError: The transaction had already ended (SQLite rolled
                it back, or SQL inside ended it) before it could commit.
            apsw.BusyError: Another process held the write lock past ``busy_timeout``
                (at ``BEGIN IMMEDIATE`` or at commit).
            Exception: Whatever ``fn`` or the block raised, after the rollback.
        """
        context = Transaction(self._core, mode, self)
        if fn is None:
            if args or kwargs:
                raise TypeError("transaction() takes arguments for fn only when fn is given")
            return context
        with context:
            return fn(self, *args, **kwargs)

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Bound every statement this thread (or task) runs on this database inside the block.

        A context manager: ``with db.deadline(0.5): ...``. A statement still running
        ``seconds`` after the block began is interrupted and raises
        [`QueryTimeout`][appdb.QueryTimeout]; its changes are rolled back and the
        connection stays usable. Nested blocks keep the earlier deadline;
        ``float("inf")`` sets none.

        Args:
            seconds: The time budget of the whole block, a number > 0.

        Raises:
            ValueError: ``seconds`` is not a number > 0 (raised when the block is entered).
            appdb.QueryTimeout: From a statement inside the block, past the deadline.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"deadline seconds must be a number > 0, not {seconds!r}")
        if math.isinf(seconds):
            yield
            return
        core = self._core
        parent = _limits.find(core)
        deadline = time.monotonic() + seconds
        if parent is not None and parent.deadline is not None and parent.deadline < deadline:
            deadline, seconds = parent.deadline, parent.seconds or seconds
        limit = _limits.Limit(core, deadline, seconds, parent=_limits.current.get())
        token = _limits.current.set(limit)
        core.limits_enter(deadline=True)
        try:
            yield
        finally:
            core.limits_exit(deadline=True)
            _limits.current.reset(token)

    # -- maintenance -----------------------------------------------------------
    def is_healthy(self) -> bool:
        """True when the connection is open and can read its database file. Never raises.

        For health checks (``appdb health`` uses it): it runs a small query on the
        writer (waiting while another thread holds it) and checks that the file on
        disk is still the one opened and still a SQLite database, not deleted,
        replaced or overwritten behind the connection's back.

        Returns:
            ``False`` when the database is closed, the query fails, or the file was
            deleted, replaced or damaged; else ``True``.
        """
        try:
            if self._core.closed:
                return False
            with self.writer() as connection:
                connection.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            if not self._memory and not file_intact(self._path, self._identity):
                return False
            return True
        except Exception:
            return False

    def get_schema_version(self) -> int:
        """Highest applied migration version, 0 when none has been applied.

        Returns:
            The version read from appdb's migrations table.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        with self.writer() as connection:
            return _ledger.schema_version(connection)

    def checkpoint(self, mode: str = "passive", *, force: bool = False) -> CheckpointResult:
        """Run a WAL checkpoint on the writer.

        Args:
            mode: ``"passive"``, ``"full"``, ``"restart"`` or ``"truncate"``
                (SQLite's ``wal_checkpoint`` modes).
            force: Run a blocking mode even under the "external" checkpoint policy,
                where only ``passive`` runs otherwise.

        Returns:
            [`CheckpointResult`][appdb.CheckpointResult]``(wal_frames, checkpointed_frames)``.

        Raises:
            ValueError: Unknown ``mode``.
            appdb.CheckpointPolicyError: A mode other than ``passive`` under the
                "external" policy without ``force=True``.
            appdb.DatabaseClosedError: The database is closed.
            apsw.BusyError: A blocking mode could not finish because of readers or
                another writer.
        """
        if mode not in _CHECKPOINT_MODES:
            modes = ", ".join(_CHECKPOINT_MODES)
            raise ValueError(f"checkpoint mode must be one of {modes}, not {mode!r}")
        refused = None if force else refused_checkpoint(self._checkpoints, mode)
        if refused is not None:
            raise refused
        with self.writer() as connection:
            frames, done = connection.wal_checkpoint(mode=_CHECKPOINT_MODES[mode])
        return CheckpointResult(frames, done)

    def backup(self, dest_path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write a consistent copy of the database to ``dest_path``; return that path.

        Safe while other connections keep writing: the copy is one snapshot, read
        on a pool reader when there is one (writers are not held up). It is
        written to a private temporary file next to ``dest_path`` first and renamed
        into place, so a crash never leaves a half-written backup and overlapping
        backups never disturb each other. An existing file is replaced only with
        ``overwrite=True``; the database's own file is never a valid destination.
        The copy is owner-only (``0600``); a missing parent directory is created.

        Args:
            dest_path: Where to write the copy.
            overwrite: Replace an existing file at ``dest_path``.

        Returns:
            ``dest_path`` as a ``str``.

        Raises:
            TypeError: ``dest_path`` is not a path.
            ValueError: ``dest_path`` is the database itself or one of its
                ``-wal``/``-shm``/``-journal`` files.
            IsADirectoryError: ``dest_path`` is a directory.
            FileExistsError: ``dest_path`` exists and ``overwrite`` is false.
            appdb.DatabaseClosedError: The database is closed.
            OSError: The copy could not be written (full disk, permissions).
        """
        core = self._core

        def copy(target: apsw.Connection) -> None:
            self._check_open()
            if core.routes_to_reader():
                slot = core.checkout()
                try:
                    with target.backup("main", slot.connection, "main") as step:
                        step.step(-1)
                finally:
                    core.checkin(slot)
                return
            with self.writer() as connection, target.backup("main", connection, "main") as step:
                step.step(-1)

        return write_backup(
            dest_path,
            overwrite=overwrite,
            database=None if self._memory else self._path,
            identity=self._identity,
            copy=copy,
        )

    def pragma(self, name: str, value: int | str | bool | None = None) -> Any:
        """Read or set a pragma on the writer; the name and value are validated.

        Returns the single value when the pragma answers one value, a list of
        dict rows when it answers several, and None when it answers nothing.
        Connection settings changed here apply to the writer only; set them for
        every connection with ``init_database(pragmas=...)``.

        Args:
            name: The pragma, optionally with a schema (``"main.journal_mode"``).
            value: The value to set (``None``: read the pragma).

        Returns:
            The single value, a ``list`` of dict rows, or ``None``.

        Raises:
            appdb.InvalidPragmaError: Unknown pragma or invalid value.
            appdb.DatabaseClosedError: The database is closed.
            apsw.Error: SQLite refused the pragma (``apsw.ReadOnlyError`` on a
                read-only database, for example).
        """
        sql = pragma_sql(name, value)
        with self.writer() as connection:
            cursor = connection.cursor()
            rows: list[tuple[Any, ...]] = []
            names: list[str] = []
            try:
                for row in cursor.execute(sql):
                    if not names:
                        names = [d[0] for d in cursor.get_description()]
                    rows.append(row)
            finally:
                cursor.close(True)
            if sql.partition("=")[0].endswith("wal_autocheckpoint"):
                if value is not None:
                    # SQLite re-installed its own hook: put the guard back (none under "external")
                    if not self._readonly and self._checkpoints != EXTERNAL:
                        install_wal_guard(connection)
                elif (size := guard_size(connection)) is not None:
                    rows = [(size,)]
        if not rows:
            return None
        if len(rows) == 1 and len(rows[0]) == 1:
            return rows[0][0]
        return [dict(zip(names, row)) for row in rows]

    def close(self) -> None:
        """Close every connection and clear the statement cache. Safe to call twice.

        Calls made after ``close()`` (from any thread) raise ``DatabaseClosedError``;
        readers still busy in other threads' calls close as those calls return.
        A transaction still open (begun with SQL such as ``exec("BEGIN")`` and never
        ended) is rolled back, with a warning on the ``appdb`` logger: its
        uncommitted changes are discarded. ``close()`` itself never raises for it.

        It waits while another thread holds the writer (``writer()``,
        ``transaction()``). A writable database runs ``PRAGMA optimize`` first;
        SQLite checkpoints the WAL as the last connection closes, except under the
        "external" checkpoint policy.
        """
        core = self._core
        if core.closed:
            return
        try:
            connection = core.acquire_writer()
        except DatabaseClosedError:
            return
        try:
            if _user_closed(connection):  # someone closed db.connection itself: close the rest
                core.mark_closed()
                return
            if connection.in_transaction:
                logger.warning(
                    "closing database %r with a transaction still open: rolled back, its uncommitted "
                    "changes were discarded (end transactions begun with SQL by COMMIT or ROLLBACK, "
                    "or use db.transaction())",
                    self._path,
                )
                try:
                    connection.execute("ROLLBACK")
                except apsw.Error:  # closing discards it anyway
                    pass
            if not self._readonly and not connection.in_transaction:
                try:
                    connection.execute("PRAGMA optimize").fetchall()
                except apsw.Error:  # optional housekeeping; never block a close
                    pass
            core.mark_closed()
            connection.close(True)
        finally:
            core.release_writer()
