"""Opening and configuring SQLite connections: one function configures every connection.

Like APSW's ``bestpractice`` module, ``configure_connection`` applies one bundle of
small named policies, in order, to every connection appdb opens: the writer, each
reader of the pool, a child process's reopened connections after ``fork()``, and
the private copies that migration dry runs and ``verify`` work on. ``settings_kept``
puts a connection's settings back after SQL that may change them (a migration).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import apsw

from ._walguard import guard_size, install_wal_guard
from .errors import DatabaseOpenError
from .pragmas import WRITE_PRAGMAS, known_pragmas, pragma_sql
from .types import TypeMap

__all__ = ["ConnectionSpec", "configure_connection", "open_connection", "settings_kept"]

logger = logging.getLogger("appdb")

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
) -> None:
    """Apply appdb's policies and ``pragmas`` to ``connection`` (every connection appdb uses).

    ``reader`` marks a pool reader (``query_only``, no WAL guard); ``readonly`` a
    connection that must never write the file. ``on_connect`` runs last (user
    functions, collations, extra pragmas). ``types`` (``appdb.types.TypeMap``) adapts
    values SQLite does not store natively. Errors reading the file become
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
    if wal_guard if wal_guard is not None else not (readonly or reader):
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
        connection = apsw.Connection(spec.path, flags=flags, statementcachesize=apsw_cache, vfs=spec.vfs)
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
        )
    except BaseException:
        connection.close(True)
        raise
    return connection


# -- keeping them -----------------------------------------------------------------------
#: Pragmas that SQL can change for one connection (file-level ones such as
#: ``user_version``, ``page_size`` or ``auto_vacuum`` belong to the migrations). A
#: connection can also leave WAL, so ``journal_mode`` is kept too (set back last).
KEPT_PRAGMAS = (
    "foreign_keys",
    "trusted_schema",
    "recursive_triggers",
    "cell_size_check",
    "query_only",
    "busy_timeout",
    "synchronous",
    "cache_size",
    "cache_spill",
    "temp_store",
    "automatic_index",
    "reverse_unordered_selects",
    "ignore_check_constraints",
    "legacy_alter_table",
    "secure_delete",
    "mmap_size",
    "journal_size_limit",
    "max_page_count",
    "threads",
    "analysis_limit",
    "writable_schema",
    "read_uncommitted",
    "fullfsync",
    "checkpoint_fullfsync",
    "count_changes",
    "full_column_names",
    "short_column_names",
    "empty_result_callbacks",
    "locking_mode",
    "wal_autocheckpoint",
    "journal_mode",
)
#: ``sqlite3_db_config`` switches (only Python code can change them); those with a
#: pragma above are kept through the pragma.
KEPT_DBCONFIG = tuple(
    getattr(apsw, f"SQLITE_DBCONFIG_{name}")
    for name in (
        "DEFENSIVE",
        "DQS_DML",
        "DQS_DDL",
        "ENABLE_LOAD_EXTENSION",
        "ENABLE_TRIGGER",
        "ENABLE_VIEW",
        "ENABLE_QPSG",
        "TRIGGER_EQP",
        "ENABLE_FTS3_TOKENIZER",
        "NO_CKPT_ON_CLOSE",
        "LEGACY_FILE_FORMAT",
        "ENABLE_ATTACH_CREATE",
        "ENABLE_ATTACH_WRITE",
        "ENABLE_COMMENTS",
    )
    if hasattr(apsw, f"SQLITE_DBCONFIG_{name}")
)
#: APSW's Python-level hooks of a connection (appdb's value types use ``convert_binding``).
KEPT_HOOKS = ("exec_trace", "row_trace", "convert_binding", "convert_jsonb")
#: ``PRAGMA case_sensitive_like`` cannot be read; this answers 1 while LIKE ignores case.
_LIKE_IGNORES_CASE = "SELECT 'a' LIKE 'A'"


@dataclass(frozen=True)
class Settings:
    """What :func:`read_settings` found on a connection."""

    pragmas: dict[str, object]
    dbconfig: dict[int, int]
    hooks: dict[str, object]
    like_ignores_case: object
    wal_guard: int | None
    databases: frozenset[str]


def _databases(connection: apsw.Connection) -> frozenset[str]:
    return frozenset(str(row[1]) for row in connection.execute("PRAGMA database_list"))


def _pragma(connection: apsw.Connection, name: str) -> object:
    # can_cache=False: these would push the application's statements out of APSW's cache
    return connection.execute(f"PRAGMA {name}", can_cache=False).get


def _like_ignores_case(connection: apsw.Connection) -> object:
    try:
        return connection.execute(_LIKE_IGNORES_CASE).get
    except apsw.Error:  # like() replaced by the application's own function: left to it
        return None


def _dbconfig(connection: apsw.Connection) -> dict[int, int]:
    values: dict[int, int] = {}
    for op in KEPT_DBCONFIG:
        try:
            values[op] = connection.config(op, -1)
        except ValueError:  # a switch this APSW does not know
            pass
    return values


def read_settings(connection: apsw.Connection) -> Settings:
    """The settings of ``connection`` that SQL or Python code may change (see ``restore_settings``)."""
    known = known_pragmas()
    return Settings(
        pragmas={name: _pragma(connection, name) for name in KEPT_PRAGMAS if name in known},
        dbconfig=_dbconfig(connection),
        hooks={name: getattr(connection, name) for name in KEPT_HOOKS},
        like_ignores_case=_like_ignores_case(connection),
        wal_guard=guard_size(connection),
        databases=_databases(connection),
    )


def restore_settings(connection: apsw.Connection, saved: Settings) -> list[str]:
    """Put back every setting that differs from ``saved``; return those that could not be.

    Only what changed is set again, so the file-level ``journal_mode`` is left alone
    unless it did change. Databases attached since are detached. A setting SQLite
    refuses to change now (inside a transaction) is named in the result.
    """
    failed: list[str] = []

    def run(what: str, sql: str, bindings: tuple[object, ...] = ()) -> None:
        try:
            connection.execute(sql, bindings).fetchall()
        except apsw.Error as exc:
            failed.append(f"{what} ({exc})")

    for op, switch in saved.dbconfig.items():
        if connection.config(op, -1) != switch:
            connection.config(op, switch)
    for attribute, hook in saved.hooks.items():
        if getattr(connection, attribute) is not hook:
            setattr(connection, attribute, hook)
    for name in sorted(_databases(connection) - saved.databases):
        run(f"detaching {name}", "DETACH DATABASE ?", (name,))
    for name, value in saved.pragmas.items():
        if _pragma(connection, name) != value:
            run(f"{name} = {value}", pragma_sql(name, value))
    if saved.like_ignores_case is not None and _like_ignores_case(connection) != saved.like_ignores_case:
        run("case_sensitive_like", f"PRAGMA case_sensitive_like = {0 if saved.like_ignores_case else 1}")
    if saved.wal_guard is not None:
        # The guard is SQLite's WAL hook, which any wal_autocheckpoint (0 too) replaces
        # without a trace: put it back whatever happened.
        run("wal_autocheckpoint", f"PRAGMA wal_autocheckpoint = {saved.wal_guard}")
        install_wal_guard(connection)
    return failed


@contextmanager
def settings_kept(connection: apsw.Connection) -> Iterator[None]:
    """Run the block, then put ``connection``'s settings back as they were before it.

    What a migration sets for its own use (``PRAGMA foreign_keys=OFF`` at the top of
    ``sqlite3 .dump`` output, ``trusted_schema``, a Python step's ``config()``) must
    not stay on the application's writer. A setting that cannot be put back is
    reported by a warning on the ``appdb`` logger.
    """
    saved = read_settings(connection)
    try:
        yield
    finally:
        failed = restore_settings(connection, saved)
        if failed:
            logger.warning("could not restore connection settings after a migration: %s", "; ".join(failed))


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
