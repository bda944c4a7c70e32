"""``verify``: apply up, down, up on a private copy and compare schemas."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..database import AppDatabase
from .discovery import MigrationSource, resolve_migrations
from .runner import MigrationRunner
from .snapshot import empty_database, schema_fingerprint, snapshot

__all__ = ["VerifyReport", "verify_migrations"]


@dataclass
class VerifyReport:
    """Whether one migration is reversible: ``ok``, or ``problems`` saying why not."""

    version: int
    """The migration's version."""
    name: str
    """The migration's name."""
    problems: list[str] = field(default_factory=list)
    """One sentence per problem; empty when the migration is reversible."""
    checked: bool = True
    """False when it was not checked because an earlier migration failed."""

    @property
    def ok(self) -> bool:
        """True when up, down, up all ran and down restored the schema exactly."""
        return self.checked and not self.problems

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "version": self.version,
            "name": self.name,
            "ok": self.ok,
            "checked": self.checked,
            "problems": list(self.problems),
        }


def _difference(before: dict[str, object], after: dict[str, object]) -> str:
    parts = [f"adds {k}" for k in sorted(after.keys() - before.keys())]
    parts += [f"removes {k}" for k in sorted(before.keys() - after.keys())]
    parts += [f"changes {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return ", ".join(parts)


def verify_migrations(db: AppDatabase | None, migrations: MigrationSource) -> list[VerifyReport]:
    """Check that each pending migration is reversible, on a private copy of ``db``.

    For every migration not applied to ``db`` (every migration when ``db`` is None,
    on an empty database) it applies up, then down, then up again, and reports a
    migration without ``down``, a step that fails, a ``down`` that does not restore
    the schema, or an ``up`` that leaves a different schema the second time. The
    real database is never changed. After a failure later migrations are not checked.

    Args:
        db: The database whose pending migrations to check (it is copied, never
            changed), or ``None`` to check every migration from an empty database.
        migrations: A directory, an importable package name, or a sequence of
            [`Migration`][appdb.migrations.Migration] objects.

    Returns:
        One report per migration checked, in version order.

    Raises:
        appdb.MigrationError: The migrations could not be found or loaded.
        TypeError: ``migrations`` holds something other than ``Migration`` objects.
        appdb.DatabaseClosedError: ``db`` is closed.
    """
    ordered = resolve_migrations(migrations)
    reports: list[VerifyReport] = []
    with snapshot(db) if db is not None else empty_database() as copy:
        runner = MigrationRunner(copy)
        applied = {a.version for a in runner.get_applied_migrations()}
        broken = False
        for migration in (m for m in ordered if m.version not in applied):
            report = VerifyReport(migration.version, migration.name)
            reports.append(report)
            if broken:
                report.checked = False
                report.problems.append("not checked: an earlier migration failed")
                continue
            connection = copy.connection
            start = schema_fingerprint(connection)
            outcome = runner._apply(migration, True)
            if outcome.status == "failed":
                report.problems.append(f"up fails: {outcome.error}")
                broken = True
                continue
            first = schema_fingerprint(connection)
            if migration.down is None:
                report.problems.append("not reversible: it has no down step")
                continue
            outcome = runner._revert(migration, True)
            if outcome.status == "failed":
                report.problems.append(f"down fails: {outcome.error}")
                broken = True
                continue
            restored = schema_fingerprint(connection)
            if restored != start:
                report.problems.append(f"down does not restore the schema: it {_difference(start, restored)}")
            outcome = runner._apply(migration, True)
            if outcome.status == "failed":
                report.problems.append(f"up fails after down: {outcome.error}")
                broken = True
                continue
            again = schema_fingerprint(connection)
            if again != first:
                report.problems.append(
                    f"up after down leaves a different schema: it {_difference(first, again)}"
                )
    return reports
