"""Keeping a connection's settings: read them before SQL that may change them, put them back after.

What a migration sets for its own use (``PRAGMA foreign_keys=OFF`` at the top of
``sqlite3 .dump`` output, ``trusted_schema``, a Python step's ``config()``) must not
stay on the application's writer: ``settings_kept`` wraps every migration step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import apsw

from ._walguard import guard_size, install_wal_guard
from .pragmas import known_pragmas, pragma_sql

__all__ = ["Settings", "read_settings", "restore_settings", "settings_kept"]

logger = logging.getLogger("appdb")


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
    """Attached databases (``temp`` is not one: SQLite opens it on demand, and it cannot be detached)."""
    return frozenset(str(row[1]) for row in connection.execute("PRAGMA database_list")) - {"temp"}


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
