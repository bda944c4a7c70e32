"""Private copies of a database for dry runs and ``verify``, and schema fingerprints."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from .._connect import configure_connection
from .._ledger import BOOKKEEPING_TABLES
from ..database import AppDatabase
from ..types import TypeMap
from .ledger import as_int

__all__ = ["empty_database", "schema_fingerprint", "snapshot"]

_SPACE = re.compile(r"\s+")


def _private_connection(types: TypeMap | None = None) -> apsw.Connection:
    # "" is a private temporary database: kept in memory, spilled to a temporary
    # file by SQLite when it grows, deleted on close.
    # Configured like every other connection (double-quoted strings off included), so a
    # dry run or verify rejects exactly the SQL the real run rejects.
    connection = apsw.Connection("")
    configure_connection(connection, {}, wal_guard=False, types=types)
    return connection


def _copy_settings(source: apsw.Connection, target: apsw.Connection) -> None:
    for name in ("foreign_keys", "trusted_schema", "recursive_triggers"):
        value = source.execute(f"PRAGMA {name}").get
        target.execute(f"PRAGMA {name} = {as_int(value)}")


@contextmanager
def snapshot(db: AppDatabase) -> Iterator[AppDatabase]:
    """A private, writable copy of ``db`` (one consistent snapshot), closed on exit."""
    target = _private_connection(db.types)  # a Python migration binds the same values there
    try:
        with db.transaction(mode="deferred"):  # holds the lock; the copy is one snapshot
            source = db.connection
            _copy_settings(source, target)
            with target.backup("main", source, "main") as copy:
                copy.step(-1)
    except BaseException:
        target.close()
        raise
    copy_db = AppDatabase(target, "", statement_cache_size=32, types=db.types)
    try:
        yield copy_db
    finally:
        copy_db.close()


@contextmanager
def empty_database(foreign_keys: bool = True) -> Iterator[AppDatabase]:
    """A private, empty database with appdb's safety settings."""
    connection = _private_connection()
    connection.execute(f"PRAGMA foreign_keys = {int(foreign_keys)}")
    connection.execute("PRAGMA trusted_schema = 0")
    database = AppDatabase(connection, "", statement_cache_size=32)
    try:
        yield database
    finally:
        database.close()


def schema_fingerprint(connection: apsw.Connection) -> dict[str, object]:
    """A comparable description of ``main``'s schema (tables by column, other objects by SQL)."""
    result: dict[str, object] = {}
    rows = connection.execute(
        "SELECT type, name, sql FROM main.sqlite_schema "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN (?, ?)",
        BOOKKEEPING_TABLES,
    ).fetchall()
    for kind, name, sql in rows:
        if kind == "table":
            columns = connection.execute(
                "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?, 'main')",
                (name,),
            ).fetchall()
            keys = connection.execute(
                'SELECT "table", "from", "to", on_update, on_delete '
                "FROM pragma_foreign_key_list(?, 'main')",
                (name,),
            ).fetchall()
            result[f"table {name}"] = (tuple(columns), tuple(sorted(keys, key=repr)))
        else:
            result[f"{kind} {name}"] = _SPACE.sub(" ", str(sql or "")).strip()
    return result
