"""Apply, roll back and validate migrations, one atomic transaction each."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import apsw

from .._settings import settings_kept
from ..database import AppDatabase
from ..errors import DestructiveMigrationError, MigrationError
from . import ledger
from .adopt import find_sources, read_ledger, to_adopt
from .detection import Watcher, capture, diff
from .discovery import MigrationSource, resolve_migrations
from .model import AppliedMigration, Finding, Migration, MigrationResult, Status, Step, ValidationReport
from .snapshot import snapshot

__all__ = ["MigrationRunner"]

logger = logging.getLogger("appdb")

Direction = Literal["up", "down"]
_STATUS_UP: dict[str, Status] = {"done": "applied", "blocked": "blocked", "failed": "failed"}
_STATUS_DOWN: dict[str, Status] = {"done": "rolled_back", "blocked": "blocked", "failed": "failed"}


#: How long a migration waits for the write lock that another process holds (seconds).
LOCK_WAIT = 600.0


class _LockedOut(MigrationError):
    """The database stayed locked by another connection for the whole wait."""


class _Blocked(Exception):
    """Raised inside a migration's transaction to roll back undeclared data loss."""

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("data loss")
        self.findings = findings


@dataclass
class _Outcome:
    status: Literal["done", "blocked", "failed", "already"]
    findings: list[Finding]
    duration_ms: float
    error: MigrationError | None = None


def _run_step(db: AppDatabase, step: Step) -> None:
    if isinstance(step, str):
        db.exec(step)
    else:
        step(db)


def destructive_error(
    migration: Migration, findings: list[Finding], direction: Direction = "up"
) -> DestructiveMigrationError:
    """The error of a blocked migration: what it would destroy and how to approve it."""
    losses = [f.message for f in findings if f.loses_data]
    what = "; ".join(losses) if losses else "it is marked destructive"
    how = (
        "run `appdb rollback --to V --allow-destructive` or rollback(..., allow_destructive=True)"
        if direction == "down"
        else "run `appdb migrate --allow-destructive`, or pass allow_destructive=True to init_database "
        "or run_migrations"
    )
    return DestructiveMigrationError(
        f"{_head(migration, direction)} would destroy data and needs approval: {what}. To approve it, {how}"
    )


class MigrationRunner:
    """Applies and rolls back migrations on one database.

    ``db`` is an [`AppDatabase`][appdb.AppDatabase] or a bare ``apsw.Connection`` (wrapped).
    Each migration and its bookkeeping row commit in one ``BEGIN IMMEDIATE``
    transaction, taken before reading what is applied, so several processes can
    run the same migrations at once and each is applied exactly once. When another
    process holds the write lock longer than ``busy_timeout`` (it is applying a long
    migration, say), the runner keeps waiting for up to ``lock_wait`` seconds (10
    minutes by default), then re-reads what is applied; if the lock is still held
    after that, ``MigrationError`` says the database stayed locked.

    Every method that takes ``migrations`` accepts a directory, an importable
    package name, or a sequence of [`Migration`][appdb.migrations.Migration]
    objects, and raises [`MigrationError`][appdb.MigrationError] when they cannot be
    found or loaded (``TypeError`` for a sequence holding anything else).

    Args:
        db: The database: an [`AppDatabase`][appdb.AppDatabase], or an
            ``apsw.Connection`` (wrapped, without a reader pool).
        lock_wait: Seconds to keep waiting for the write lock another process holds.

    Raises:
        TypeError: ``db`` is neither an ``AppDatabase`` nor an ``apsw.Connection``.
    """

    def __init__(self, db: AppDatabase | apsw.Connection, *, lock_wait: float = LOCK_WAIT) -> None:
        if isinstance(db, apsw.Connection):
            db = AppDatabase(db, db.filename or ":memory:", readonly=bool(db.readonly("main")))
        if not isinstance(db, AppDatabase):
            raise TypeError(
                f"MigrationRunner needs an AppDatabase or apsw.Connection, not {type(db).__name__}"
            )
        self.db = db
        """The database the runner works on."""
        self.lock_wait = float(lock_wait)
        """Seconds to keep waiting for a write lock that another connection holds."""

    # -- reading ---------------------------------------------------------------
    def get_applied_migrations(self) -> list[AppliedMigration]:
        """Applied migrations, in the order they were applied.

        Returns:
            One [`AppliedMigration`][appdb.migrations.AppliedMigration] per row of
            appdb's bookkeeping table (empty when there is none).

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        with self.db.transaction(mode="deferred"):
            return ledger.read_applied(self.db.connection)

    def pending(self, migrations: MigrationSource, *, target: int | None = None) -> list[Migration]:
        """Migrations not applied yet (up to ``target`` when given), in version order.

        Args:
            migrations: A directory, an importable package name, or a sequence of
                [`Migration`][appdb.migrations.Migration] objects.
            target: The highest version to include (``None``: all).

        Returns:
            The pending migrations.

        Raises:
            appdb.MigrationError: The migrations could not be found or loaded.
            appdb.DatabaseClosedError: The database is closed.
        """
        applied = {a.version for a in self.get_applied_migrations()}
        return [
            m
            for m in resolve_migrations(migrations)
            if m.version not in applied and (target is None or m.version <= target)
        ]

    def validate(self, migrations: MigrationSource) -> ValidationReport:
        """Applied migrations whose checksum changed or whose file vanished; pending ones out of order.

        Reads only; nothing is changed.

        Args:
            migrations: A directory, an importable package name, or a sequence of
                [`Migration`][appdb.migrations.Migration] objects.

        Returns:
            A [`ValidationReport`][appdb.migrations.ValidationReport]; ``ok`` when
            nothing is wrong.

        Raises:
            appdb.MigrationError: The migrations could not be found or loaded.
            appdb.DatabaseClosedError: The database is closed.
        """
        known = {m.version: m for m in resolve_migrations(migrations)}
        applied = self.get_applied_migrations()
        versions = {a.version for a in applied}
        newest = max(versions, default=0)
        return ValidationReport(
            changed=tuple(
                a for a in applied if a.version in known and known[a.version].checksum != a.checksum
            ),
            missing=tuple(a for a in applied if a.version not in known),
            out_of_order=tuple(m for v, m in sorted(known.items()) if v not in versions and v < newest),
        )

    def repair(self, migrations: MigrationSource) -> list[AppliedMigration]:
        """Re-record the checksums of applied migrations whose files changed.

        For an edit that does not change what the migration did (a comment, say);
        each repair is logged as a warning on the ``appdb`` logger.

        Args:
            migrations: A directory, an importable package name, or a sequence of
                [`Migration`][appdb.migrations.Migration] objects.

        Returns:
            The repaired rows, with their new checksums.

        Raises:
            appdb.MigrationError: The database is read-only, or the migrations could
                not be found or loaded.
            appdb.DatabaseClosedError: The database is closed.
            apsw.BusyError: Another connection held the write lock past ``busy_timeout``.
        """
        self._check_writable("repair checksums")
        known = {m.version: m for m in resolve_migrations(migrations)}
        repaired: list[AppliedMigration] = []
        with self.db.transaction(mode="immediate"):
            connection = self.db.connection
            for applied in ledger.read_applied(connection):
                migration = known.get(applied.version)
                if migration is not None and migration.checksum != applied.checksum:
                    ledger.set_checksum(connection, applied.version, migration.checksum)
                    repaired.append(
                        AppliedMigration(
                            applied.version, applied.name, applied.applied_at, migration.checksum
                        )
                    )
        # INFO, not WARNING: the caller asked for it and gets the list back (a warning also
        # reached the command line through logging's last-resort handler, printing each twice).
        for item in repaired:
            logger.info("re-recorded the checksum of migration %s (%s)", item.version, item.name)
        return repaired

    def ledger_sources(self) -> list[str]:
        """The other tools whose migration tables are in the database (what ``adopt`` reads).

        Returns:
            Tool names among ``"dbmate"``, ``"goose"``, ``"sqlx"``,
            ``"golang-migrate"`` and ``"diesel"``; empty when there is none.

        Raises:
            appdb.DatabaseClosedError: The database is closed.
        """
        with self.db.transaction(mode="deferred"):
            return find_sources(self.db.connection)

    def adopt(self, migrations: MigrationSource, source: str = "auto") -> list[AppliedMigration]:
        """Record as applied, without running them, the migrations another tool recorded.

        ``source`` is ``"auto"`` (the one tool whose table is in the database) or one of
        ``"dbmate"``, ``"goose"``, ``"sqlx"``, ``"golang-migrate"``, ``"diesel"``. Every
        row and ``user_version`` commit in one transaction under the write lock; the
        other tool's table is only read. Versions appdb already recorded are skipped
        (adopting twice records nothing new), and a changed applied file raises as in
        ``run_migrations``. ``MigrationError``, with nothing recorded, when the table
        is missing or ambiguous, says a migration failed or is dirty, or names a
        version that has no migration here.

        Args:
            migrations: A directory, an importable package name, or a sequence of
                [`Migration`][appdb.migrations.Migration] objects.
            source: ``"auto"`` or the tool's name.

        Returns:
            The migrations recorded now (empty when there was nothing new).

        Raises:
            ValueError: ``source`` names no known tool.
            appdb.MigrationError: The database is read-only; the tool's table is
                missing or ambiguous, records a failed or dirty migration, or a version
                with no migration here; an applied migration changed; the migrations
                could not be loaded; or the write lock stayed held past ``lock_wait``.
            appdb.DatabaseClosedError: The database is closed.
        """
        ordered = resolve_migrations(migrations)
        self._check_writable("adopt another tool's migrations")
        self._check_checksums(ordered, repair=False)
        with self.db.writer(), self._locked("adopting another tool's migrations", "did not happen"):
            connection = self.db.connection
            foreign = read_ledger(connection, source)
            recorded = {a.version for a in ledger.read_applied(connection)}
            chosen = to_adopt(foreign, ordered, recorded)
            if chosen:
                ledger.ensure_table(connection)
                for migration in chosen:
                    ledger.record(connection, migration, 0.0)
                ledger.sync_user_version(connection)
            versions = {m.version for m in chosen}
            adopted = [a for a in ledger.read_applied(connection) if a.version in versions]
        for item in adopted:
            logger.info(
                "adopted migration %s (%s) from %s without running it", item.version, item.name, foreign.label
            )
        return adopted

    # -- applying --------------------------------------------------------------
    def run_migrations(
        self,
        migrations: MigrationSource,
        *,
        dry_run: bool = False,
        allow_destructive: bool = False,
        target: int | None = None,
        repair_checksums: bool = False,
    ) -> list[MigrationResult]:
        """Apply pending migrations in version order, stopping at the first blocked or failed one.

        Returns one result per pending migration considered: ``applied``, ``blocked``
        (destructive, declared or detected, and not approved: rolled back), ``failed``
        (rolled back; ``error`` names the migration), or ``skipped`` (after a stop).
        A ``transactional=False`` migration that is not approved runs on a private
        copy first and is ``blocked`` (or ``failed``) there before the real file changes.
        ``MigrationError`` when another connection keeps the write lock past ``lock_wait``.
        ``dry_run`` runs everything on a private copy and reports ``pending`` instead,
        with ``detected`` filled for every migration, skipped ones included. A changed
        checksum raises ``MigrationError`` unless ``repair_checksums`` re-records it.

        Args:
            migrations: A directory, an importable package name, or a sequence of
                [`Migration`][appdb.migrations.Migration] objects.
            dry_run: Run on a private copy and change nothing.
            allow_destructive: Apply destructive migrations (declared or detected) too.
            target: The highest version to apply (``None``: all).
            repair_checksums: Re-record changed checksums instead of raising.

        Returns:
            One [`MigrationResult`][appdb.migrations.MigrationResult] per pending
            migration considered, in version order.

        Raises:
            appdb.MigrationError: An applied migration changed, migrations are pending
                on a read-only database, the migrations could not be loaded, or the
                write lock stayed held past ``lock_wait``. A migration that fails does
                not raise: its result is ``failed`` with the error.
            appdb.DatabaseClosedError: The database is closed.
        """
        ordered = resolve_migrations(migrations)
        if dry_run:
            return self._dry_run(ordered, allow_destructive, target)
        self._check_checksums(ordered, repair_checksums)
        if self.db.readonly:
            waiting = self.pending(ordered, target=target)
            if waiting:
                raise MigrationError(
                    f"database {self.db.path!r} is open read-only but {len(waiting)} migration(s) are "
                    "pending "
                    f"({', '.join(m.label for m in waiting)}); open it writable to apply them"
                )
            return []
        results: list[MigrationResult] = []
        stopped = False
        for migration in ordered:
            if target is not None and migration.version > target:
                break
            if stopped:
                if migration.version not in self._applied_versions():
                    results.append(self._result(migration, "skipped"))
                continue
            outcome = self._apply(migration, allow_destructive)
            if outcome.status == "already":
                continue
            status: Status = _STATUS_UP[outcome.status]
            results.append(self._result(migration, status, outcome))
            stopped = outcome.status in ("blocked", "failed")
        return results

    def rollback(
        self, migrations: MigrationSource, *, to_version: int, allow_destructive: bool = False
    ) -> list[MigrationResult]:
        """Run ``down`` of every migration applied above ``to_version``, newest application first.

        Each step commits atomically with its bookkeeping (status ``rolled_back``).
        Before anything changes, every migration to undo must be known, unchanged and
        have a ``down`` step, else ``MigrationError``. A ``down`` step that would lose
        data is ``blocked`` (and undone) unless ``allow_destructive``.

        Args:
            migrations: A directory, an importable package name, or a sequence of
                [`Migration`][appdb.migrations.Migration] objects.
            to_version: The version to go back to (``0``: undo everything).
            allow_destructive: Run ``down`` steps that lose data.

        Returns:
            One [`MigrationResult`][appdb.migrations.MigrationResult] per migration
            undone or stopped (``rolled_back``, ``blocked``, ``failed``, ``skipped``).

        Raises:
            ValueError: ``to_version`` is not an int >= 0.
            appdb.MigrationError: A migration to undo is unknown, changed or has no
                ``down``; the database is read-only; the migrations could not be
                loaded; or the write lock stayed held past ``lock_wait``.
            appdb.DatabaseClosedError: The database is closed.
        """
        if isinstance(to_version, bool) or not isinstance(to_version, int) or to_version < 0:
            raise ValueError(f"to_version must be an int >= 0, not {to_version!r}")
        known = {m.version: m for m in resolve_migrations(migrations)}
        self._check_checksums(list(known.values()), repair=False)
        undo = [a for a in reversed(self.get_applied_migrations()) if a.version > to_version]
        for applied in undo:
            migration = known.get(applied.version)
            if migration is None:
                raise MigrationError(
                    f"cannot roll back to version {to_version}: migration {applied.version} "
                    f"({applied.name}) is "
                    "applied but not among the migrations given; nothing was rolled back"
                )
            if migration.down is None:
                raise MigrationError(
                    f"cannot roll back to version {to_version}: migration {migration.label} has no "
                    "down step; "
                    "nothing was rolled back"
                )
        if undo:
            self._check_writable("roll back migrations")
        results: list[MigrationResult] = []
        stopped = False
        for applied in undo:
            migration = known[applied.version]
            if stopped:
                if migration.version in self._applied_versions():
                    results.append(self._result(migration, "skipped"))
                continue
            outcome = self._revert(migration, allow_destructive)
            if outcome.status == "already":
                continue
            status = _STATUS_DOWN[outcome.status]
            results.append(self._result(migration, status, outcome))
            stopped = outcome.status in ("blocked", "failed")
        return results

    # -- internals ---------------------------------------------------------------
    @staticmethod
    def _result(migration: Migration, status: Status, outcome: _Outcome | None = None) -> MigrationResult:
        return MigrationResult(
            version=migration.version,
            name=migration.name,
            status=status,
            destructive=migration.destructive,
            duration_ms=outcome.duration_ms if outcome else 0.0,
            error=outcome.error if outcome else None,
            detected=list(outcome.findings) if outcome else [],
        )

    def _applied_versions(self) -> set[int]:
        return {a.version for a in self.get_applied_migrations()}

    def _check_writable(self, action: str) -> None:
        if self.db.readonly:
            raise MigrationError(f"cannot {action}: database {self.db.path!r} is open read-only")

    def _check_checksums(self, migrations: list[Migration], repair: bool) -> None:
        report = self.validate(migrations)
        if not report.changed:
            return
        if repair:
            self.repair(migrations)
            return
        known = {m.version: m for m in migrations}
        names = "; ".join(
            f"migration {known[a.version].label} (recorded {a.checksum[:12]}, "
            f"now {known[a.version].checksum[:12]})"
            for a in report.changed
        )
        raise MigrationError(
            f"applied migrations changed after they were applied: {names}. Restore the original "
            "files, or accept "
            "the change with `appdb validate --repair` (MigrationRunner.repair, or run_migrations(..., "
            "repair_checksums=True))"
        )

    @contextmanager
    def _foreign_keys_off(self, migration: Migration) -> Iterator[None]:
        """Foreign-key enforcement off around the migration (it is a no-op inside a transaction)."""
        connection = self.db.connection
        switch = not migration.foreign_keys and bool(connection.execute("PRAGMA foreign_keys").get)
        if switch:
            connection.execute("PRAGMA foreign_keys = OFF")
        try:
            yield
        finally:
            if switch:
                connection.execute("PRAGMA foreign_keys = ON")

    def _apply(self, migration: Migration, allow_destructive: bool) -> _Outcome:
        return self._execute(migration, "up", allow_destructive or migration.destructive, allow_destructive)

    def _revert(self, migration: Migration, allow_destructive: bool) -> _Outcome:
        return self._execute(migration, "down", allow_destructive, True)

    def _execute(
        self, migration: Migration, direction: Direction, approved: bool, declared_ok: bool
    ) -> _Outcome:
        """Run one step with its bookkeeping; ``declared_ok`` lets a declared-destructive one run."""
        db = self.db
        if direction == "up" and migration.destructive and not declared_ok:
            if migration.version in self._applied_versions():
                return _Outcome("already", [], 0.0)
            return _Outcome("blocked", [], 0.0, destructive_error(migration, []))
        step = migration.up if direction == "up" else migration.down
        assert step is not None
        # Holding the writer (re-entrant) keeps this database's other threads' writes out while
        # foreign keys are off and between the steps of a non-transactional migration. Settings
        # the step changes (a .dump's PRAGMA foreign_keys=OFF) are put back after it, whatever happened.
        with db.writer(), settings_kept(db.connection), self._foreign_keys_off(migration):
            if migration.transactional:
                return self._execute_atomic(migration, direction, step, approved)
            return self._execute_outside(migration, direction, step, approved)

    @contextmanager
    def _write_lock(self, migration: Migration, direction: Direction, *, ran: bool = False) -> Iterator[None]:
        """A ``BEGIN IMMEDIATE`` transaction for one migration step (see :meth:`_locked`)."""
        what = (
            "ran outside a transaction but could not be recorded"
            if ran
            else "did not run (nothing was changed by it)"
        )
        with self._locked(_head(migration, direction), what):
            yield

    @contextmanager
    def _locked(self, subject: str, what: str) -> Iterator[None]:
        """A ``BEGIN IMMEDIATE`` transaction, waiting up to ``lock_wait`` for another writer.

        ``BEGIN IMMEDIATE`` itself waits ``busy_timeout``; while it keeps failing with
        ``BusyError`` (another process is applying a long migration), try again. Past
        ``lock_wait``, ``MigrationError`` says ``f"{subject} {what}"`` and why.
        """
        deadline: float | None = None
        while True:
            began = False
            try:
                with self.db.transaction(mode="immediate"):
                    began = True
                    yield
                return
            except apsw.BusyError as exc:
                if began:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.lock_wait
                    logger.warning(
                        "%s waits for the write lock of %r: another process or connection holds it "
                        "(probably applying migrations); waiting up to %.0f s",
                        subject,
                        self.db.path,
                        self.lock_wait,
                    )
                if now >= deadline:
                    raise _LockedOut(
                        f"{subject} {what}: the database {self.db.path!r} stayed "
                        f"locked by another process or connection for {self.lock_wait:g} s (it may still "
                        "be applying migrations). Start again once the other one is done"
                    ) from exc
                time.sleep(min(0.05, max(deadline - now, 0.0)))

    def _is_done(self, migration: Migration, direction: Direction) -> bool:
        applied = migration.version in {a.version for a in ledger.read_applied(self.db.connection)}
        return applied if direction == "up" else not applied

    def _book(self, migration: Migration, direction: Direction, duration_ms: float) -> None:
        connection = self.db.connection
        if direction == "up":
            ledger.record(connection, migration, duration_ms)
        else:
            ledger.remove(connection, migration.version)
        ledger.sync_user_version(connection)

    def _execute_atomic(
        self, migration: Migration, direction: Direction, step: Step, approved: bool
    ) -> _Outcome:
        db = self.db
        connection = db.connection
        started = time.perf_counter()
        findings: list[Finding] = []
        try:
            with self._write_lock(migration, direction):  # the lock comes before reading what is applied
                ledger.ensure_table(connection)
                if self._is_done(migration, direction):
                    return _Outcome("already", [], 0.0)
                before = capture(connection)
                with Watcher(connection, foreign_keys=migration.foreign_keys) as watcher:
                    try:
                        _run_step(db, step)
                    except Exception as exc:
                        raise _step_error(migration, direction, exc, watcher) from exc
                findings = diff(before, capture(connection), watcher)
                if not approved and any(f.loses_data for f in findings):
                    raise _Blocked(findings)
                if not migration.foreign_keys:
                    _check_foreign_keys(connection, migration, direction)
                self._book(migration, direction, (time.perf_counter() - started) * 1000)
        except _Blocked as blocked:
            elapsed = (time.perf_counter() - started) * 1000
            return _Outcome(
                "blocked",
                blocked.findings,
                elapsed,
                destructive_error(migration, blocked.findings, direction),
            )
        except _LockedOut:
            raise
        except MigrationError as exc:
            return _Outcome("failed", findings, (time.perf_counter() - started) * 1000, exc)
        except Exception as exc:
            error = MigrationError(
                f"{_head(migration, direction)} failed and was rolled back: {_describe(exc)}"
            )
            error.__cause__ = exc
            return _Outcome("failed", findings, (time.perf_counter() - started) * 1000, error)
        return _Outcome("done", findings, (time.perf_counter() - started) * 1000)

    def _execute_outside(
        self, migration: Migration, direction: Direction, step: Step, approved: bool
    ) -> _Outcome:
        db = self.db
        connection = db.connection
        with self._write_lock(migration, direction):
            ledger.ensure_table(connection)
            if self._is_done(migration, direction):
                return _Outcome("already", [], 0.0)
        started = time.perf_counter()
        if not approved:
            # Nothing can undo it, so find out what it does on a private copy first.
            rehearsal = self._rehearse(migration, direction)
            if rehearsal is not None:
                rehearsal.duration_ms = (time.perf_counter() - started) * 1000
                return rehearsal
        before = capture(connection)
        try:
            with Watcher(connection, transactional=False) as watcher:
                _run_step(db, step)
        except Exception as exc:
            error = MigrationError(
                f"{_head(migration, direction)} failed: {_describe(exc)} (it runs outside a transaction, "
                "so whatever it did before the error was kept)"
            )
            error.__cause__ = exc
            return _Outcome("failed", [], (time.perf_counter() - started) * 1000, error)
        findings = diff(before, capture(connection), watcher)
        elapsed = (time.perf_counter() - started) * 1000
        with self._write_lock(migration, direction, ran=True):
            if not self._is_done(migration, direction):
                self._book(migration, direction, elapsed)
        if not approved and any(f.loses_data for f in findings):
            logger.warning(
                "%s ran outside a transaction and lost data without approval; it cannot be undone: %s",
                _head(migration, direction),
                "; ".join(f.message for f in findings if f.loses_data),
            )
        return _Outcome("done", findings, elapsed)

    def _rehearse(self, migration: Migration, direction: Direction) -> _Outcome | None:
        """Run a non-transactional step on a private copy: its outcome if it must not run here.

        ``blocked`` when it would lose data, ``failed`` when it fails on the copy;
        ``None`` when it may run on the real database.
        """
        with snapshot(self.db) as copy:
            outcome = MigrationRunner(copy)._execute(migration, direction, True, True)
        if outcome.status == "failed":
            cause = outcome.error.__cause__ if outcome.error is not None else None
            error = MigrationError(
                f"{_head(migration, direction)} failed on a private copy of the database, so it was not "
                f"run on the database itself: {_describe(cause) if cause else outcome.error} (it runs "
                "outside a transaction, so appdb tries it on a copy first when it is not approved as "
                "destructive)"
            )
            error.__cause__ = cause
            return _Outcome("failed", outcome.findings, 0.0, error)
        if any(f.loses_data for f in outcome.findings):
            return _Outcome(
                "blocked",
                outcome.findings,
                0.0,
                destructive_error(migration, outcome.findings, direction),
            )
        return None

    def _dry_run(
        self, ordered: list[Migration], allow_destructive: bool, target: int | None
    ) -> list[MigrationResult]:
        applied = self._applied_versions()
        waiting = [m for m in ordered if m.version not in applied and (target is None or m.version <= target)]
        results: list[MigrationResult] = []
        if not waiting:
            return results
        stopped, simulating = False, True
        with snapshot(self.db) as copy:
            simulator = MigrationRunner(copy)
            for migration in waiting:
                if stopped:
                    # keep simulating so the findings of skipped migrations show too
                    outcome = simulator._apply(migration, True) if simulating else None
                    simulating = simulating and outcome is not None and outcome.status == "done"
                    result = self._result(migration, "skipped", outcome)
                    result.error = None
                    results.append(result)
                    continue
                outcome = simulator._apply(migration, True)
                if outcome.status == "failed":
                    results.append(self._result(migration, "failed", outcome))
                    stopped, simulating = True, False
                elif (
                    migration.destructive or any(f.loses_data for f in outcome.findings)
                ) and not allow_destructive:
                    result = self._result(migration, "blocked", outcome)
                    result.error = destructive_error(migration, outcome.findings)
                    results.append(result)
                    stopped, simulating = True, True
                else:
                    results.append(self._result(migration, "pending", outcome))
        return results


def _head(migration: Migration, direction: Direction) -> str:
    return (
        f"migration {migration.label}" if direction == "up" else f"rolling back migration {migration.label}"
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _step_error(
    migration: Migration, direction: Direction, exc: Exception, watcher: Watcher
) -> MigrationError:
    if watcher.refusals and isinstance(exc, apsw.AuthError):
        return MigrationError(
            f"{_head(migration, direction)} was refused and rolled back: {watcher.refusals[-1]}"
        )
    return MigrationError(f"{_head(migration, direction)} failed and was rolled back: {_describe(exc)}")


def _check_foreign_keys(connection: apsw.Connection, migration: Migration, direction: Direction) -> None:
    rows = connection.execute("PRAGMA main.foreign_key_check").fetchall()
    if not rows:
        return
    table, rowid, parent, _ = rows[0]
    raise MigrationError(
        f"{_head(migration, direction)} would leave {len(rows):,} foreign-key violation(s) "
        f"(for example {table} row {rowid} refers to a missing row of {parent}); it was rolled back"
    )
