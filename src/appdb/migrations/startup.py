"""What ``init_database(..., migrations=...)`` runs when a database opens."""

from __future__ import annotations

import logging

from ..database import AppDatabase
from ..errors import MigrationError
from .discovery import MigrationSource, resolve_migrations
from .model import MigrationResult
from .runner import MigrationRunner

__all__ = ["apply_on_open"]

logger = logging.getLogger("appdb")


def apply_on_open(
    db: AppDatabase, migrations: MigrationSource, *, allow_destructive: bool = False
) -> list[MigrationResult]:
    """Apply pending migrations as a database opens; return the results.

    Non-destructive migrations apply automatically. A destructive one (declared or
    detected) stops the run unless ``allow_destructive``: it is ``blocked``, later
    ones ``skipped``, a warning says how to approve it, and the database opens at
    the last safe version. A failed migration raises ``MigrationError``; so do
    pending migrations on a read-only database and changed checksums.

    Args:
        db: The open database.
        migrations: A directory, an importable package name, or a sequence of
            [`Migration`][appdb.migrations.Migration] objects.
        allow_destructive: Apply destructive migrations too.

    Returns:
        One [`MigrationResult`][appdb.migrations.MigrationResult] per pending
        migration considered.

    Raises:
        appdb.MigrationError: A migration failed (rolled back), could not be loaded,
            changed after it was applied, is pending on a read-only database, or the
            write lock stayed held past the runner's ``lock_wait``.
        TypeError: ``migrations`` holds something other than ``Migration`` objects.
        appdb.DatabaseClosedError: ``db`` is closed.
    """
    ordered = resolve_migrations(migrations)
    results = MigrationRunner(db).run_migrations(ordered, allow_destructive=allow_destructive)
    for result in results:
        if result.status == "failed":
            raise result.error or MigrationError(f"migration {result.version} ({result.name}) failed")
        if result.status == "blocked":
            skipped = [r for r in results if r.status == "skipped"]
            later = f"; {len(skipped)} later migration(s) were skipped" if skipped else ""
            logger.warning(
                "%s. The database %r stays at version %d%s.",
                result.error,
                db.path,
                db.get_schema_version(),
                later,
            )
    return results
