"""Read the bookkeeping table another migration tool left in a database.

dbmate, goose, sqlx, golang-migrate and diesel each record applied migrations in a
table of their own; :func:`read_ledger` turns one into a :class:`ForeignLedger` and
:func:`to_adopt` matches it with appdb's migrations. Nothing here writes: the runner
records the result (``MigrationRunner.adopt``). Every function expects the caller to
hold the database's lock, so it reads through the raw connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import apsw

from ..errors import MigrationError
from .model import Migration

__all__ = ["SOURCES", "TABLES", "ForeignLedger", "find_sources", "pick_source", "read_ledger", "to_adopt"]

#: The tools whose ledgers can be adopted, as ``source=`` and ``appdb adopt --from`` take them.
SOURCES = ("dbmate", "goose", "sqlx", "golang-migrate", "diesel")

#: Each tool's bookkeeping table (dbmate and golang-migrate share one name).
TABLES = {
    "dbmate": "schema_migrations",
    "goose": "goose_db_version",
    "sqlx": "_sqlx_migrations",
    "golang-migrate": "schema_migrations",
    "diesel": "__diesel_schema_migrations",
}

_MAX_VERSION = 2**63 - 1  # appdb_migrations.version is an INTEGER PRIMARY KEY
_DIGITS = re.compile(r"[0-9]+\Z")
_TRUE_TEXT = {"1", "t", "true", "y", "yes", "on"}


@dataclass(frozen=True)
class ForeignLedger:
    """What another tool's table says is applied.

    ``versions`` lists applied versions (ascending). golang-migrate records only its
    current version: then ``versions`` is empty and ``through`` says every migration
    up to and including it is applied.
    """

    source: str
    table: str
    versions: tuple[int, ...] = ()
    through: int | None = None

    @property
    def label(self) -> str:
        """``"dbmate's schema_migrations"``: used in every message."""
        return f"{self.source}'s {self.table}"


# -- finding the table ---------------------------------------------------------------
def _columns(connection: apsw.Connection, table: str) -> set[str] | None:
    """Column names of ``main.table`` (lower case), or None when there is no such table."""
    found = connection.execute(
        "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?", (table,)
    ).get
    if found is None:
        return None
    return {str(row[1]).lower() for row in connection.execute(f'PRAGMA main.table_info("{table}")')}


def find_sources(connection: apsw.Connection) -> list[str]:
    """The tools whose bookkeeping table is in the database, in ``SOURCES`` order.

    ``schema_migrations`` is golang-migrate's when it has a ``dirty`` column, else dbmate's.
    """
    found: list[str] = []
    for source in SOURCES:
        columns = _columns(connection, TABLES[source])
        if columns is None:
            continue
        if source in ("dbmate", "golang-migrate") and ("dirty" in columns) != (source == "golang-migrate"):
            continue
        found.append(source)
    return found


def _choices() -> str:
    return "|".join(("auto", *SOURCES))


def pick_source(connection: apsw.Connection, source: str) -> str:
    """``source`` checked against the database; ``"auto"`` becomes the one tool found."""
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"unknown migration tool {source!r}: choose one of {_choices()}")
    found = find_sources(connection)
    if source == "auto":
        if len(found) == 1:
            return found[0]
        tables = ", ".join(f"{TABLES[s]} ({s})" for s in SOURCES if s != "golang-migrate")
        if not found:
            raise MigrationError(
                f"no other tool's migration table in this database (looked for {tables}, "
                "and schema_migrations with a dirty column for golang-migrate), so there is nothing "
                f"to adopt (--from takes {_choices()})"
            )
        raise MigrationError(
            "the database holds the migration tables of several tools: "
            + ", ".join(f"{s} ({TABLES[s]})" for s in found)
            + f"; say which one to adopt with --from {'|'.join(found)} (source=...)"
        )
    if source not in found:
        twin = {"dbmate": "golang-migrate", "golang-migrate": "dbmate"}.get(source)
        hint = f" (its {TABLES[source]} is {twin}'s: use --from {twin})" if twin in found else ""
        raise MigrationError(
            f"the database has no {source} migration table {TABLES[source]}{hint}; nothing to adopt"
        )
    return source


# -- reading rows ----------------------------------------------------------------------
def _version(value: object, label: str) -> int:
    """A version read from ``label`` as an int, or ``MigrationError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise MigrationError(f"{label} holds version {value!r}, which is not a whole number")
    if isinstance(value, str):
        if not _DIGITS.match(value.strip()):
            raise MigrationError(f"{label} holds version {value!r}, which is not a string of digits")
        value = int(value)
    if not 0 <= value <= _MAX_VERSION:
        raise MigrationError(f"{label} holds version {value}, outside 0 to {_MAX_VERSION}")
    return value


def _truthy(value: object) -> bool:
    """An SQL boolean as the Go and Rust drivers store it (integers; text tolerated)."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_TEXT
    return bool(value)


def _require(connection: apsw.Connection, source: str, needed: set[str]) -> str:
    table = TABLES[source]
    columns = _columns(connection, table) or set()
    missing = sorted(needed - columns)
    if missing:
        raise MigrationError(
            f"{source}'s {table} has no column(s) {', '.join(missing)}: it is not the table {source} "
            "creates, so appdb cannot read it"
        )
    return table


def _one_row_each(source: str) -> Callable[[apsw.Connection], ForeignLedger]:
    """A reader for a table with one row per applied version (dbmate, diesel: digits as text)."""

    def read(connection: apsw.Connection) -> ForeignLedger:
        table = _require(connection, source, {"version"})
        label = f"{source}'s {table}"
        rows = connection.execute(f"SELECT version FROM main.{table}")
        return ForeignLedger(source, table, tuple(sorted(_version(row[0], label) for row in rows)))

    return read


def _golang_migrate(connection: apsw.Connection) -> ForeignLedger:
    table = _require(connection, "golang-migrate", {"version", "dirty"})
    label = f"golang-migrate's {table}"
    rows = connection.execute(f"SELECT version, dirty FROM main.{table}").fetchall()
    if len(rows) > 1:
        raise MigrationError(
            f"{label} has {len(rows)} rows; golang-migrate keeps exactly one (its current version), so "
            "appdb cannot tell which is right. Run `migrate version` with golang-migrate and keep only "
            "that row"
        )
    if not rows:
        return ForeignLedger("golang-migrate", table)
    raw, dirty = rows[0]
    if _truthy(dirty):
        raise MigrationError(
            f"{label} says version {raw} is dirty: a migration failed half-way, so the schema is in an "
            "unknown state. Repair the database by hand, mark the right version with golang-migrate's "
            "`migrate force V`, then adopt again; nothing was recorded"
        )
    current = _version(raw, label)
    return ForeignLedger("golang-migrate", table, through=current)


def _goose(connection: apsw.Connection) -> ForeignLedger:
    table = _require(connection, "goose", {"id", "version_id", "is_applied"})
    label = f"goose's {table}"
    latest: dict[int, bool] = {}  # the newest row of each version says whether it is applied
    for raw, applied in connection.execute(f"SELECT version_id, is_applied FROM main.{table} ORDER BY id"):
        latest[_version(raw, label)] = _truthy(applied)
    versions = sorted(v for v, applied in latest.items() if applied and v != 0)  # 0: goose's own row
    return ForeignLedger("goose", table, tuple(versions))


def _sqlx(connection: apsw.Connection) -> ForeignLedger:
    table = _require(connection, "sqlx", {"version", "description", "success"})
    label = f"sqlx's {table}"
    versions: list[int] = []
    for raw, description, success in connection.execute(
        f"SELECT version, description, success FROM main.{table} ORDER BY version"
    ):
        if not _truthy(success):
            raise MigrationError(
                f"{label} says migration {raw} ({description}) failed (success = false), so the schema "
                "may be half-changed. Repair the database, then delete that row or run the migration "
                "again with sqlx, and adopt again; nothing was recorded"
            )
        versions.append(_version(raw, label))
    return ForeignLedger("sqlx", table, tuple(versions))


_READERS: dict[str, Callable[[apsw.Connection], ForeignLedger]] = {
    "dbmate": _one_row_each("dbmate"),
    "goose": _goose,
    "sqlx": _sqlx,
    "golang-migrate": _golang_migrate,
    "diesel": _one_row_each("diesel"),
}


def read_ledger(connection: apsw.Connection, source: str = "auto") -> ForeignLedger:
    """What tool ``source`` (``"auto"``: the one found) recorded as applied.

    ``MigrationError`` when the table is missing or ambiguous, or says a migration
    failed or left the database dirty.
    """
    return _READERS[pick_source(connection, source)](connection)


# -- matching ----------------------------------------------------------------------------
def _number_list(versions: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in versions[:limit])
    return shown + (f" and {len(versions) - limit} more" if len(versions) > limit else "")


def to_adopt(ledger: ForeignLedger, migrations: Sequence[Migration], recorded: set[int]) -> list[Migration]:
    """The migrations ``ledger`` says are applied and appdb has not recorded, in version order.

    ``MigrationError`` when the ledger names a version with no migration among ``migrations``.
    """
    known = {m.version: m for m in migrations}
    if ledger.through is not None:
        unknown = [] if ledger.through in known else [ledger.through]
        applied = [v for v in sorted(known) if v <= ledger.through]
    else:
        unknown = [v for v in ledger.versions if v not in known]
        applied = list(ledger.versions)
    if 0 in unknown:
        raise MigrationError(
            f"{ledger.label} records version 0, but appdb's versions start at 1; renumber that "
            "migration and its row before adopting; nothing was recorded"
        )
    if unknown:
        raise MigrationError(
            f"{ledger.label} records version(s) {_number_list(unknown)} with no migration among those "
            "given; add their files to the migrations folder (from the other tool's folder) and adopt "
            "again; nothing was recorded"
        )
    return [known[v] for v in applied if v not in recorded]
