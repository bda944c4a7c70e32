"""``init_database`` and the ``AppDatabase`` facade."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import apsw

from . import _select
from ._backup import write_backup
from ._constants import MIGRATIONS_TABLE
from ._files import file_identity, file_intact, prepare_file
from ._types import CacheStats, CheckpointResult
from ._walguard import guard_size, install_wal_guard
from .errors import DatabaseClosedError, DatabaseOpenError
from .pragmas import WRITE_PRAGMAS, pragma_sql, validate_pragmas
from .transaction import MODES, Transaction

if TYPE_CHECKING:
    from ._fastcache_py import Statement
    from .migrations import Migration, MigrationResult

__all__ = ["AppDatabase", "Transaction", "init_database"]

logger = logging.getLogger("appdb")

T = TypeVar("T")

_CHECKPOINT_MODES = {
    "passive": apsw.SQLITE_CHECKPOINT_PASSIVE,
    "full": apsw.SQLITE_CHECKPOINT_FULL,
    "restart": apsw.SQLITE_CHECKPOINT_RESTART,
    "truncate": apsw.SQLITE_CHECKPOINT_TRUNCATE,
}
_OPEN_ERRORS = (apsw.NotADBError, apsw.CorruptError, apsw.CantOpenError, apsw.IOError, apsw.PermissionsError)


class PrepareMethod(Protocol):
    def __call__(self, sql: str, *, row_type: str | None = None) -> Statement: ...


def init_database(
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
) -> AppDatabase:
    """Open (creating if needed) a tuned SQLite database and apply its migrations.

    ``path`` is a file path or ``":memory:"``; a missing parent directory is
    created. ``readonly=True`` never modifies the database file. ``migrations``
    is a directory, an importable package name or a list of ``Migration``; with
    ``run_migrations`` they are applied before this returns (destructive ones only
    with ``allow_destructive=True``). ``pragmas`` overrides or adds pragmas.
    ``vfs`` names a registered SQLite VFS to open the file through (default: SQLite's).
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"path must be a str or os.PathLike[str], not {type(path).__name__}")
    if row_type not in ("dict", "tuple"):
        raise ValueError(f"row_type must be 'dict' or 'tuple', not {row_type!r}")
    if not isinstance(statement_cache_size, int) or statement_cache_size < 0:
        raise ValueError(f"statement_cache_size must be an int >= 0, not {statement_cache_size!r}")
    settings = validate_pragmas(pragmas)
    memory = text == ":memory:" or text == ""
    if not memory:
        prepare_file(text, readonly)
    if vfs is not None and not isinstance(vfs, str):
        raise TypeError(f"vfs must be the name of a registered VFS (str), not {type(vfs).__name__}")
    connection = _connect(text, readonly, statement_cache_size, vfs)
    try:
        _configure(connection, text, readonly, settings)
    except BaseException:
        connection.close(True)
        raise
    db = AppDatabase(
        connection, text, readonly=readonly, statement_cache_size=statement_cache_size, row_type=row_type
    )
    if run_migrations and migrations is not None:
        try:
            from .migrations import apply_on_open

            db.migration_results = apply_on_open(db, migrations, allow_destructive=allow_destructive)
        except BaseException:
            db.close()
            raise
    return db


def _connect(path: str, readonly: bool, statement_cache_size: int, vfs: str | None = None) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY
    if not readonly:
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    # APSW keeps the compiled statements. Its cache is scanned linearly on every
    # execute, so it stays at APSW's default size (100) rather than growing with ours.
    apsw_cache = max(16, min(100, statement_cache_size))
    try:
        return apsw.Connection(path, flags=flags, statementcachesize=apsw_cache, vfs=vfs)
    except _OPEN_ERRORS as exc:
        raise DatabaseOpenError(f"cannot open database {path!r}: {exc}") from exc


def _configure(
    connection: apsw.Connection, path: str, readonly: bool, settings: Mapping[str, object]
) -> None:
    connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    connection.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
    # Wait for other processes from the very first read: several processes opening
    # (or creating, or switching to WAL) the same file at once otherwise get
    # "database is locked" before the busy_timeout pragma below is applied.
    timeout = settings.get("busy_timeout")
    timeout_ms = 5000
    if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout >= 0:
        timeout_ms = timeout
    elif isinstance(timeout, str) and timeout.isdigit():
        timeout_ms = int(timeout)
    connection.set_busy_timeout(timeout_ms)
    deadline = time.monotonic() + max(timeout_ms, 1000) / 1000
    try:
        # Reading the schema first turns "not a database" into one clear error.
        _execute_patiently(connection, "SELECT count(*) FROM sqlite_schema", deadline)
        for name, value in settings.items():
            if readonly and name.rpartition(".")[2] in WRITE_PRAGMAS:
                continue
            _execute_patiently(connection, pragma_sql(name, value), deadline)
    except (apsw.NotADBError, apsw.CorruptError) as exc:
        raise DatabaseOpenError(
            f"cannot open database {path!r}: the file is not a SQLite database or is corrupted ({exc})"
        ) from exc
    except (apsw.CantOpenError, apsw.IOError, apsw.PermissionsError, apsw.ReadOnlyError) as exc:
        raise DatabaseOpenError(f"cannot open database {path!r}: {exc}") from exc
    if not readonly:
        install_wal_guard(connection)


def _execute_patiently(connection: apsw.Connection, sql: str, deadline: float) -> None:
    """Run ``sql``, retrying while another connection holds a conflicting lock.

    Switching a new file to WAL needs an exclusive lock, and when several processes
    open the same new file at once SQLite reports "database is locked" at once
    (a lock upgrade that would deadlock) instead of calling the busy handler.
    """
    pause = 0.001
    while True:
        try:
            connection.execute(sql).fetchall()
            return
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _schema_version(connection: apsw.Connection) -> int | None:
    """SQLite's schema cookie, or None when it cannot be read."""
    try:
        return int(connection.execute("PRAGMA schema_version").get)
    except apsw.Error:
        return None


class AppDatabase:
    """A tuned SQLite connection with cached prepared statements and transactions.

    Create it with :func:`init_database`. It is a context manager that closes on
    exit. All methods are safe to call from several threads.
    """

    prepare: PrepareMethod
    """``prepare(sql, *, row_type=None) -> Statement``: cached prepared statement.

    The same SQL (and row type) returns the very same ``Statement`` while it stays
    in the bounded LRU cache of ``statement_cache_size`` entries.
    """

    migration_results: list[MigrationResult]

    def __init__(
        self,
        connection: apsw.Connection,
        path: str,
        *,
        readonly: bool = False,
        statement_cache_size: int = 256,
        row_type: str = "dict",
    ) -> None:
        begin = MODES["deferred"] if readonly else MODES["immediate"]
        self._core = _select.impl.DatabaseCore(connection, path, statement_cache_size, row_type, begin)
        self._lock = self._core.lock
        self._path = path
        self._readonly = readonly
        self._memory = path in (":memory:", "")
        self._identity = None if self._memory else file_identity(path)
        self._savepoints = 0
        self.prepare = self._core.prepare
        self.migration_results = []

    # -- properties ----------------------------------------------------------
    @property
    def connection(self) -> apsw.Connection:
        """The underlying ``apsw.Connection``."""
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
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return bool(self._core.closed)

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on this connection."""
        if self._core.closed:
            return False
        return bool(self._core.connection.in_transaction)

    def __repr__(self) -> str:
        state = "closed" if self._core.closed else ("read-only" if self._readonly else "open")
        return f"<AppDatabase {self._path!r} {state}>"

    def __enter__(self) -> AppDatabase:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._core.closed:
            raise DatabaseClosedError(f"the database is closed: {self._path}")

    # -- statements ------------------------------------------------------------
    def statement_cache_stats(self) -> CacheStats:
        """Hits, misses, evictions, size and capacity of the statement cache."""
        return self._core.statement_cache_stats()  # type: ignore[no-any-return]

    def clear_statement_cache(self) -> None:
        """Empty the statement cache; statements already handed out keep working."""
        self._check_open()
        self._core.clear_statement_cache()
        self._core.schema_changed()  # and every statement re-reads its columns

    def exec(self, sql: str) -> None:
        """Run a script of one or more SQL statements (no parameters).

        When a statement fails, the statements before it that committed stay
        committed; a transaction the script itself opened (``BEGIN ...``) is rolled
        back before the error is re-raised. Inside ``db.transaction()`` the error
        is left to that transaction.
        """
        if not isinstance(sql, str):
            raise TypeError(f"exec() takes SQL text (str), not {type(sql).__name__}")
        with self._lock:
            self._check_open()
            connection = self._core.connection
            was_in_transaction = connection.in_transaction
            schema = _schema_version(connection)
            cursor = connection.cursor()
            try:
                try:
                    for _ in cursor.execute(sql):
                        pass  # later statements run only as the cursor is read on
                finally:
                    cursor.close(True)
                    if _schema_version(connection) != schema:
                        self._core.schema_changed()  # statements re-read their columns
            except BaseException:
                if not was_in_transaction and connection.in_transaction:
                    try:
                        connection.execute("ROLLBACK")
                    except apsw.Error as exc:  # keep the script's own error
                        logger.debug("rolling back after a failed exec() script failed: %s", exc)
                raise

    # -- transactions ----------------------------------------------------------
    def transaction(
        self, fn: Callable[..., T] | None = None, /, *args: Any, mode: str | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(db, *args, **kwargs)`` in a transaction, or return a context manager.

        Commits when ``fn`` returns (and returns its value); rolls back and re-raises
        on any exception. Nested calls use savepoints. ``mode`` is ``"deferred"``,
        ``"immediate"`` (default when writable) or ``"exclusive"``.
        """
        context = Transaction(self, mode)
        if fn is None:
            if args or kwargs:
                raise TypeError("transaction() takes arguments for fn only when fn is given")
            return context
        with context:
            return fn(self, *args, **kwargs)

    # -- maintenance -----------------------------------------------------------
    def is_healthy(self) -> bool:
        """True when the connection is open and can read its database file. Never raises."""
        try:
            if self._core.closed:
                return False
            with self._lock:
                if self._core.closed:
                    return False
                self._core.connection.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            if not self._memory and not file_intact(self._path, self._identity):
                return False
            return True
        except Exception:
            return False

    def get_schema_version(self) -> int:
        """Highest applied migration version, 0 when none has been applied."""
        with self._lock:
            self._check_open()
            connection = self._core.connection
            exists = connection.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
            ).get
            if not exists:
                return 0
            version = connection.execute(f"SELECT max(version) FROM {MIGRATIONS_TABLE}").get
            return int(version or 0)

    def checkpoint(self, mode: str = "passive") -> CheckpointResult:
        """Run a WAL checkpoint (``passive``, ``full``, ``restart`` or ``truncate``).

        Returns ``CheckpointResult(wal_frames, checkpointed_frames)``; raises
        ``apsw.BusyError`` when a blocking mode cannot finish because of readers.
        """
        if mode not in _CHECKPOINT_MODES:
            modes = ", ".join(_CHECKPOINT_MODES)
            raise ValueError(f"checkpoint mode must be one of {modes}, not {mode!r}")
        with self._lock:
            self._check_open()
            frames, done = self._core.connection.wal_checkpoint(mode=_CHECKPOINT_MODES[mode])
        return CheckpointResult(frames, done)

    def backup(self, dest_path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write a consistent copy of the database to ``dest_path``; return that path.

        Safe while other connections keep writing: the copy is one snapshot. It is
        written to a private temporary file next to ``dest_path`` first and renamed
        into place, so a crash never leaves a half-written backup and overlapping
        backups never disturb each other. An existing file is replaced only with
        ``overwrite=True``; the database's own file is never a valid destination
        (``ValueError``).
        """

        def copy(target: apsw.Connection) -> None:
            with self._lock:
                self._check_open()
                with target.backup("main", self._core.connection, "main") as step:
                    step.step(-1)

        return write_backup(
            dest_path,
            overwrite=overwrite,
            database=None if self._memory else self._path,
            identity=self._identity,
            copy=copy,
        )

    def pragma(self, name: str, value: int | str | bool | None = None) -> Any:
        """Read or set a pragma; the name and value are validated (no SQL can be injected).

        Returns the single value when the pragma answers one value, a list of
        dict rows when it answers several, and None when it answers nothing.
        """
        sql = pragma_sql(name, value)
        with self._lock:
            self._check_open()
            cursor = self._core.connection.cursor()
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
                connection = self._core.connection
                if value is not None:
                    if not self._readonly:  # SQLite re-installed its own hook: put the guard back
                        install_wal_guard(connection)
                elif (size := guard_size(connection)) is not None:
                    rows = [(size,)]
        if not rows:
            return None
        if len(rows) == 1 and len(rows[0]) == 1:
            return rows[0][0]
        return [dict(zip(names, row)) for row in rows]

    def close(self) -> None:
        """Close the connection and clear the statement cache. Safe to call twice.

        A transaction still open (begun with SQL such as ``exec("BEGIN")`` and never
        ended) is rolled back, with a warning on the ``appdb`` logger: its
        uncommitted changes are discarded. ``close()`` itself never raises for it.
        """
        if self._core.closed:
            return
        with self._lock:
            if self._core.closed:
                return
            connection = self._core.connection
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
            self._core.mark_closed()
            connection.close(True)
