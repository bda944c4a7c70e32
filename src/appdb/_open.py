"""``init_database``: open (creating if needed) a tuned database, its reader pool, and migrate."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import apsw

from ._connect import ConnectionSpec, OnConnect, open_connection
from ._files import prepare_file
from ._policy import AUTO, EXTERNAL, check_policy, recorded_policy, settle_policy, write_policy
from .database import AppDatabase
from .errors import DatabaseOpenError
from .migrations import apply_on_open, resolve_migrations
from .pragmas import validate_pragmas
from .types import TypeMap

if TYPE_CHECKING:
    from .migrations import Migration

__all__ = ["default_readers", "init_database", "set_checkpoint_policy"]

#: Upper bound of the default pool size. Readers are opened only when threads
#: read at the same time, so the bound matters only for very busy servers.
MAX_DEFAULT_READERS = 8


def default_readers() -> int:
    """Readers of the pool when ``readers=None``: the CPU count, between 4 and 8.

    SQLite releases the GIL while it works, so readers run in parallel up to the
    number of cores; a few more than the cores keep threads that wait on I/O from
    queueing behind each other. Readers open lazily, so unused ones cost nothing.

    Returns:
        ``os.cpu_count()`` clamped to 4..8.
    """
    return max(4, min(os.cpu_count() or 1, MAX_DEFAULT_READERS))


def _check_options(
    text: str, row_type: str, statement_cache_size: int, readers: int | None, query_timeout: float | None
) -> None:
    if row_type not in ("dict", "tuple"):
        raise ValueError(f"row_type must be 'dict' or 'tuple', not {row_type!r}")
    if not isinstance(statement_cache_size, int) or statement_cache_size < 0:
        raise ValueError(f"statement_cache_size must be an int >= 0, not {statement_cache_size!r}")
    if readers is not None and (not isinstance(readers, int) or isinstance(readers, bool) or readers < 0):
        raise ValueError(f"readers must be None or an int >= 0, not {readers!r}")
    if query_timeout is not None and (
        isinstance(query_timeout, bool)
        or not isinstance(query_timeout, (int, float))
        or not query_timeout > 0
    ):
        raise ValueError(f"query_timeout must be None or a number of seconds > 0, not {query_timeout!r}")


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
    readers: int | None = None,
    query_timeout: float | None = None,
    on_connect: OnConnect | None = None,
    types: TypeMap | None = None,
    checkpoints: str | None = None,
) -> AppDatabase:
    """Open (creating if needed) a tuned SQLite database and apply its migrations.

    The database opens in WAL mode with appdb's default pragmas
    ([`DEFAULT_PRAGMAS`][appdb.DEFAULT_PRAGMAS]), a writer connection, and a pool of
    reader connections that open lazily. Every option is checked before any file is
    created, so a mistyped option or migrations path leaves nothing behind.

    Args:
        path: A file path or ``":memory:"``. A missing parent directory is
            created; a new database file is owner-only (``0600``).
        readonly: Open without ever modifying the file; the file must exist, and
            writes raise ``apsw.ReadOnlyError``.
        run_migrations: Apply ``migrations`` before returning (``False``: only open).
        migrations: A directory, an importable package name, or a sequence of
            [`Migration`][appdb.migrations.Migration] objects.
        allow_destructive: Apply migrations that drop or lose data. Without it, the
            first destructive migration is ``blocked``, later ones ``skipped``, a
            warning says how to approve it, and the database opens at the last safe
            version (see [`migration_results`][appdb.AppDatabase.migration_results]).
        pragmas: Pragmas to add or override, ``{name: value}``; checked by
            [`validate_pragmas`][appdb.pragmas.validate_pragmas].
        statement_cache_size: Prepared statements kept per database (``0``: none).
        row_type: ``"dict"`` (rows are dicts keyed by column name) or ``"tuple"``;
            the default of every statement.
        vfs: The name of a registered SQLite VFS to open the file through
            (``None``: SQLite's default).
        readers: Size of the pool of read connections beside the writer (``None``:
            [`default_readers()`][appdb.default_readers]; ``0``: the writer runs
            everything). ``":memory:"`` databases always use ``0``.
        query_timeout: Seconds any one statement (or ``run_many`` batch, or ``exec``
            script) may run before it is interrupted with
            [`QueryTimeout`][appdb.QueryTimeout] (``None``: no limit).
        on_connect: Called with every ``apsw.Connection`` appdb opens (the writer and
            each reader): register functions and collations there.
        types: A [`TypeMap`][appdb.types.TypeMap] (for example
            [`appdb.types.standard()`][appdb.types.standard]) that binds everyday
            Python values and converts columns by declared type; a copy is taken.
        checkpoints: Who checkpoints the WAL: ``"auto"`` (appdb's WAL guard) or
            ``"external"`` (another process such as Litestream; appdb never
            checkpoints, not even on close). ``None`` follows the policy recorded in
            the database (``"auto"`` when there is none); the first writable open
            with ``"external"`` records it. Change a record with
            [`set_checkpoint_policy`][appdb.set_checkpoint_policy].

    Returns:
        The open database. Close it with ``close()`` or use it as a context manager.

    Raises:
        TypeError: ``path``, ``vfs``, ``on_connect`` or ``types`` has the wrong type,
            or ``migrations`` holds something other than ``Migration`` objects.
        ValueError: ``row_type``, ``statement_cache_size``, ``readers``,
            ``query_timeout`` or ``checkpoints`` is out of range.
        appdb.InvalidPragmaError: A pragma name or value was rejected.
        appdb.DatabaseOpenError: The file cannot be created or opened, is a
            directory, is not a SQLite database, or (``readonly``) does not exist.
        appdb.CheckpointPolicyError: ``checkpoints`` differs from the policy recorded
            in the database; nothing was changed.
        appdb.MigrationError: A migration could not be found, loaded or applied (it
            was rolled back), an applied migration's file changed, or migrations
            are pending on a read-only database. The database is closed.
        apsw.BusyError: Another connection held the write lock past ``busy_timeout``
            while the database was being set up.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"path must be a str or os.PathLike[str], not {type(path).__name__}")
    _check_options(text, row_type, statement_cache_size, readers, query_timeout)
    if vfs is not None and not isinstance(vfs, str):
        raise TypeError(f"vfs must be the name of a registered VFS (str), not {type(vfs).__name__}")
    if on_connect is not None and not callable(on_connect):
        raise TypeError(f"on_connect must be callable, not {type(on_connect).__name__}")
    if types is not None:
        if not isinstance(types, TypeMap):
            raise TypeError(f"types must be an appdb.types.TypeMap, not {type(types).__name__}")
        types = types.copy()  # later changes to the caller's map do not reach this database
    requested = check_policy(checkpoints)
    settings = validate_pragmas(pragmas)
    # Found and checked before anything is created: a mistyped migrations path must not
    # leave an empty database file (and its folder) behind.
    ordered = resolve_migrations(migrations) if run_migrations and migrations is not None else None
    memory = text in (":memory:", "")
    if not memory:
        prepare_file(text, readonly)
    pool_size = 0 if memory else (default_readers() if readers is None else readers)
    spec = ConnectionSpec(
        path=text,
        readonly=readonly,
        vfs=vfs,
        pragmas=settings,
        statement_cache_size=statement_cache_size,
        on_connect=on_connect,
        types=types,
        checkpoints=requested,
    )
    connection = open_connection(spec)
    try:
        policy = settle_policy(connection, requested, path=text, readonly=readonly)
    except BaseException:
        # Refused under a policy the file does not have: closing must not checkpoint either.
        connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        connection.close(True)
        raise
    spec = replace(spec, checkpoints=policy)  # readers and reopened writers use the same one
    db = AppDatabase(
        connection,
        text,
        readonly=readonly,
        statement_cache_size=statement_cache_size,
        row_type=row_type,
        readers=pool_size,
        opener=partial(_open_more, spec),
        query_timeout=query_timeout,
        types=types,
        checkpoints=policy,
    )
    if ordered is not None:
        try:
            db.migration_results = apply_on_open(db, ordered, allow_destructive=allow_destructive)
        except BaseException:
            db.close()
            raise
    return db


def _open_more(spec: ConnectionSpec, reader: bool) -> apsw.Connection:
    """Open another connection like the first: a pool reader, or a new writer after fork().

    The file opened fine before, so a failure now (an I/O error, a full disk) is
    the statement's error: SQLite's own exception, not ``DatabaseOpenError``.
    """
    try:
        return open_connection(spec, reader=reader)
    except DatabaseOpenError as exc:
        if isinstance(exc.__cause__, apsw.Error):
            raise exc.__cause__ from None
        raise


def set_checkpoint_policy(path: str | os.PathLike[str], policy: str) -> str:
    """Record ``policy`` ("auto" or "external") as the checkpoint policy of the database at ``path``.

    The only way to change a recorded policy: stop the processes that use the
    database first, since processes already open keep the policy they opened with.
    The change runs no checkpoint, even when its connection closes.

    Args:
        path: The database file; it must exist.
        policy: ``"auto"`` (appdb's WAL guard checkpoints) or ``"external"``
            (another process such as Litestream does).

    Returns:
        The policy recorded before (``"auto"`` when there was none).

    Raises:
        ValueError: ``policy`` is not ``"auto"`` or ``"external"``.
        appdb.DatabaseOpenError: The file does not exist or cannot be opened as a
            SQLite database.
        apsw.BusyError: Another connection held the write lock past ``busy_timeout``.
        apsw.ReadOnlyError: The file or its folder is not writable.
    """
    text = os.fspath(path)
    wanted = check_policy(policy, allow_none=False)
    assert wanted is not None
    if not os.path.isfile(text):
        raise DatabaseOpenError(f"cannot set the checkpoint policy: database {text!r} does not exist")
    # Opened under "external" whatever the change: committing the record and closing never checkpoint.
    connection = open_connection(ConnectionSpec(path=text, checkpoints=EXTERNAL))
    try:
        connection.execute("BEGIN IMMEDIATE")  # the old value is read under the write lock
        try:
            before = recorded_policy(connection) or AUTO
            write_policy(connection, wanted, replace=True)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        connection.close(True)
    return before
