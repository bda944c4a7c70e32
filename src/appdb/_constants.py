"""Names shared by the facade and the migration system."""

from __future__ import annotations

#: Bookkeeping table of applied migrations.
MIGRATIONS_TABLE = "appdb_migrations"
