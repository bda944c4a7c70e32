"""The bookkeeping table of applied migrations: its name and the schema version it records.

Imported by both the facade (``AppDatabase.get_schema_version``) and the migration
system, so it imports neither. The caller holds the database's lock and passes the
raw connection.
"""

from __future__ import annotations

import apsw

__all__ = ["BOOKKEEPING_TABLES", "MIGRATIONS_TABLE", "SETTINGS_TABLE", "schema_version", "table_exists"]

#: Bookkeeping table of applied migrations (in ``main``).
MIGRATIONS_TABLE = "appdb_migrations"
#: appdb's key/value bookkeeping table (in ``main``), created when a setting is first
#: written (the checkpoint policy: ``_policy.py``).
SETTINGS_TABLE = "appdb_settings"
#: appdb's own tables: never part of the application's schema (migration detection,
#: schema fingerprints).
BOOKKEEPING_TABLES = (MIGRATIONS_TABLE, SETTINGS_TABLE)


def table_exists(connection: apsw.Connection) -> bool:
    """True when the bookkeeping table exists."""
    found = connection.execute(
        "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).get
    return found is not None


def schema_version(connection: apsw.Connection) -> int:
    """Highest applied migration version; 0 when none is, or the table does not exist."""
    if not table_exists(connection):
        return 0
    version = connection.execute(f"SELECT coalesce(max(version), 0) FROM main.{MIGRATIONS_TABLE}").get
    return int(version)  # max() of INTEGER PRIMARY KEY values, or 0
