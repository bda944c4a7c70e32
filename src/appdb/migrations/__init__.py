"""appdb's migration system: discovery, an atomic multi-process-safe runner,
destructive-change approval with data-loss detection by execution, rollback,
checksums, and adopting the ledgers of other migration tools.
"""

from __future__ import annotations

from .discovery import discover_migrations, parse_sql, resolve_migrations
from .model import AppliedMigration, Finding, Migration, MigrationResult, ValidationReport
from .runner import MigrationRunner
from .startup import apply_on_open
from .verify import VerifyReport, verify_migrations

__all__ = [
    "AppliedMigration",
    "Finding",
    "Migration",
    "MigrationResult",
    "MigrationRunner",
    "ValidationReport",
    "VerifyReport",
    "apply_on_open",
    "discover_migrations",
    "parse_sql",
    "resolve_migrations",
    "verify_migrations",
]
