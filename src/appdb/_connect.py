"""Opening and configuring SQLite connections: one function configures every connection.

Like APSW's ``bestpractice`` module, ``configure_connection`` applies one bundle of
small named policies, in order, to every connection appdb opens: the writer, each
reader of the pool, a child process's reopened connections after ``fork()``, and
the private copies that migration dry runs and ``verify`` work on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import apsw

from ._policy import AUTO, EXTERNAL, recorded_policy
from ._walguard import install_wal_guard
from .errors import DatabaseOpenError
from .pragmas import WRITE_PRAGMAS, pragma_sql
from .types import TypeMap

__all__ = ["Connection", "ConnectionSpec", "configure_connection", "open_connection"]

OnConnect = Callable[[apsw.Connection], None]

_OPEN_ERRORS = (apsw.NotADBError, apsw.CorruptError, apsw.CantOpenError, apsw.IOError, apsw.PermissionsError)

#: busy_timeout (ms) used until the pragmas are applied, unless they set another.
DEFAULT_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class ConnectionSpec:
    """Everything needed to open one more connection to the same database."""

    path: str
    readonly: bool = False
    vfs: str | None = None
    pragmas: Mapping[str, object] = field(default_factory=dict)
    statement_cache_size: int = 256
    on_connect: OnConnect | None = None
    types: TypeMap | None = None
    #: "auto", "external", or None: follow the policy recorded in the database.
    checkpoints: str | None = None


class Connection(apsw.Connection):
    """APSW's connection, closing appdb's native statements first.

    The compiled hot path prepares statements on the connection through SQLite's
    C API, where APSW cannot see them; SQLite refuses to close a connection with
    live statements (APSW then reports ``BusyError`` and leaks the connection). So
    ``close()`` first calls ``appdb_before_close``, which finalizes them, whoever
    closes the connection: appdb, or a user through ``AppDatabase.connection``.
    """

    __slots__ = ("appdb_before_close",)

    appdb_before_close: Callable[[], None] | None

    def close(self, force: bool = False) -> None:
        hook = getattr(self, "appdb_before_close", None)
        if hook is not None:
            hook()
        super().close(force)


# -- the policies ------------------------------------------------------------------
def defensive(connection: apsw.Connection) -> None:
    """No SQL may corrupt the file on purpose (``writable_schema``, raw page writes)."""
    connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)


def no_double_quoted_strings(connection: apsw.Connection) -> None:
    """``"name"`` is always an identifier: a misspelt column fails instead of becoming text."""
    connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    connection.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)


def no_extension_loading(connection: apsw.Connection) -> None:
    """SQL cannot load shared libraries (``load_extension()``)."""
    connection.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)


def busy_handling(connection: apsw.Connection, pragmas: Mapping[str, object]) -> int:
    """Wait for other connections from the very first read; return the timeout in ms.

    Several processes opening (or creating, or switching to WAL) the same file at
    once otherwise get "database is locked" before the ``busy_timeout`` pragma is
    applied.
    """
    timeout = pragmas.get("busy_timeout")
    timeout_ms = DEFAULT_BUSY_TIMEOUT_MS
    if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout >= 0:
        timeout_ms = timeout
    elif isinstance(timeout, str) and timeout.isdigit():
        timeout_ms = int(timeout)
    connection.set_busy_timeout(timeout_ms)
    return timeout_ms


def apply_pragmas(
    connection: apsw.Connection, pragmas: Mapping[str, object], *, readonly: bool, deadline: float
) -> None:
    """The pragmas, in order (those that write the file are skipped on read-only connections)."""
    for name, value in pragmas.items():
        if readonly and name.rpartition(".")[2] in WRITE_PRAGMAS:
            continue
        execute_patiently(connection, pragma_sql(name, value), deadline)


def value_types(connection: apsw.Connection, types: TypeMap) -> None:
    """Bind values SQLite does not store natively through ``types`` (APSW asks only for those)."""
    connection.convert_binding = types.bind


def reader_only(connection: apsw.Connection) -> None:
    """A pool reader can never write, whatever SQL reaches it."""
    connection.execute("PRAGMA query_only = 1")


def external_checkpoints(connection: apsw.Connection) -> None:
    """Another process (Litestream) owns checkpoints: this connection never runs one by itself.

    Litestream asks applications to turn SQLite's autocheckpoint off
    (``wal_autocheckpoint = 0``, https://litestream.io/tips/); the WAL guard stays off
    too. Closing the last connection to a file normally checkpoints the WAL and
    deletes it: ``NO_CKPT_ON_CLOSE`` leaves it to the owner.
    """
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)


# -- the bundle ----------------------------------------------------------------------
def configure_connection(
    connection: apsw.Connection,
    pragmas: Mapping[str, object],
    *,
    readonly: bool = False,
    reader: bool = False,
    path: str = "",
    on_connect: OnConnect | None = None,
    wal_guard: bool | None = None,
    types: TypeMap | None = None,
    checkpoints: str | None = AUTO,
) -> None:
    """Apply appdb's policies and ``pragmas`` to ``connection`` (every connection appdb uses).

    ``reader`` marks a pool reader (``query_only``, no WAL guard); ``readonly`` a
    connection that must never write the file. ``on_connect`` runs last (user
    functions, collations, extra pragmas). ``types`` (``appdb.types.TypeMap``) adapts
    values SQLite does not store natively. ``checkpoints`` is the checkpoint policy
    ("auto": the WAL guard on writers; "external": see ``external_checkpoints``;
    None: the one recorded in the database). Errors reading the file become
    ``DatabaseOpenError`` naming ``path``.
    """
    defensive(connection)
    no_double_quoted_strings(connection)
    no_extension_loading(connection)
    timeout_ms = busy_handling(connection, pragmas)
    deadline = time.monotonic() + max(timeout_ms, 1000) / 1000
    try:
        # Reading the schema first turns "not a database" into one clear error.
        execute_patiently(connection, "SELECT count(*) FROM sqlite_schema", deadline)
        apply_pragmas(connection, pragmas, readonly=readonly or reader, deadline=deadline)
    except (apsw.NotADBError, apsw.CorruptError) as exc:
        raise DatabaseOpenError(
            f"cannot open database {path!r}: the file is not a SQLite database or is corrupted ({exc})"
        ) from exc
    except (apsw.CantOpenError, apsw.IOError, apsw.PermissionsError, apsw.ReadOnlyError) as exc:
        raise DatabaseOpenError(f"cannot open database {path!r}: {exc}") from exc
    if types is not None:
        value_types(connection, types)
    if reader:
        reader_only(connection)
    if (checkpoints or recorded_policy(connection) or AUTO) == EXTERNAL:
        external_checkpoints(connection)
    elif wal_guard if wal_guard is not None else not (readonly or reader):
        install_wal_guard(connection)
    if on_connect is not None:
        on_connect(connection)


def open_connection(spec: ConnectionSpec, *, reader: bool = False) -> apsw.Connection:
    """Open and configure one connection described by ``spec``."""
    flags = apsw.SQLITE_OPEN_READONLY
    if not spec.readonly:
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    # APSW keeps the compiled statements. Its cache is scanned linearly on every
    # execute, so it stays at APSW's default size (100) rather than growing with ours.
    apsw_cache = max(16, min(100, spec.statement_cache_size))
    try:
        connection = Connection(spec.path, flags=flags, statementcachesize=apsw_cache, vfs=spec.vfs)
        connection.appdb_before_close = None
    except _OPEN_ERRORS as exc:
        raise DatabaseOpenError(f"cannot open database {spec.path!r}: {exc}") from exc
    try:
        configure_connection(
            connection,
            spec.pragmas,
            readonly=spec.readonly,
            reader=reader,
            path=spec.path,
            on_connect=spec.on_connect,
            types=spec.types,
            checkpoints=spec.checkpoints,
        )
    except BaseException:
        connection.close(True)
        raise
    return connection


def execute_patiently(connection: apsw.Connection, sql: str, deadline: float) -> None:
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
