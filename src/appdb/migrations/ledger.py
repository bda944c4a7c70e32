"""Reading and writing the bookkeeping table of applied migrations, and ``PRAGMA user_version``.

The table's name and the schema-version query live in ``appdb._ledger``, shared
with the facade. Every function expects the caller to hold the database's lock (inside
``db.transaction()``), so it reads and writes through the raw connection.
"""

from __future__ import annotations

from datetime import datetime, timezone

import apsw

from .._ledger import MIGRATIONS_TABLE, schema_version, table_exists
from .model import AppliedMigration, Migration

__all__ = [
    "USER_VERSION_MAX",
    "ensure_table",
    "read_applied",
    "record",
    "remove",
    "schema_version",
    "set_checksum",
    "sync_user_version",
    "table_exists",
    "user_version",
]

#: The largest value ``PRAGMA user_version`` can hold (a signed 32-bit integer).
USER_VERSION_MAX = 2**31 - 1

_CREATE = f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    checksum TEXT NOT NULL,
    duration_ms REAL NOT NULL DEFAULT 0
)"""


def utc_now() -> str:
    """The current time as ISO-8601 UTC with microseconds, e.g. ``2025-01-31T12:00:00.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def as_int(value: object) -> int:
    """An SQL scalar (possibly a one-value row) as an int; 0 for NULL."""
    if isinstance(value, tuple):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float, str)) else 0


def ensure_table(connection: apsw.Connection) -> None:
    """Create the bookkeeping table if it is missing."""
    if not table_exists(connection):
        connection.execute(_CREATE)


def read_applied(connection: apsw.Connection) -> list[AppliedMigration]:
    """Applied migrations in the order they were applied."""
    if not table_exists(connection):
        return []
    rows = connection.execute(
        f"SELECT version, name, applied_at, checksum FROM {MIGRATIONS_TABLE} ORDER BY applied_at, version"
    ).fetchall()
    return [AppliedMigration(as_int(v), str(n), str(a), str(c)) for v, n, a, c in rows]


def record(connection: apsw.Connection, migration: Migration, duration_ms: float) -> None:
    """Record ``migration`` as applied now."""
    connection.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at, checksum, duration_ms) "
        "VALUES (?, ?, ?, ?, ?)",
        (migration.version, migration.name, utc_now(), migration.checksum, duration_ms),
    )


def remove(connection: apsw.Connection, version: int) -> None:
    """Forget that migration ``version`` was applied."""
    connection.execute(f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = ?", (version,))


def set_checksum(connection: apsw.Connection, version: int, checksum: str) -> None:
    """Re-record the checksum of an applied migration."""
    connection.execute(f"UPDATE {MIGRATIONS_TABLE} SET checksum = ? WHERE version = ?", (checksum, version))


def user_version(connection: apsw.Connection) -> int:
    """What ``PRAGMA user_version`` holds for the applied migrations (a signed 32-bit value).

    The highest applied version that fits in ``USER_VERSION_MAX``, plus one for each
    applied version that does not (timestamps such as ``20151129054053``), at most
    ``USER_VERSION_MAX``. With small versions only, that is the highest applied
    version; applying a migration never lowers it, rolling one back never raises it.
    """
    if not table_exists(connection):
        return 0
    small, large = connection.execute(
        f"SELECT coalesce(max(CASE WHEN version <= ?1 THEN version END), 0), "
        f"coalesce(sum(version > ?1), 0) FROM main.{MIGRATIONS_TABLE}",
        (USER_VERSION_MAX,),
    ).fetchall()[0]
    return min(as_int(small) + as_int(large), USER_VERSION_MAX)


def sync_user_version(connection: apsw.Connection) -> int:
    """Set ``PRAGMA user_version`` by the rule of :func:`user_version` and return it."""
    value = user_version(connection)
    connection.execute(f"PRAGMA user_version = {value}")
    return value
