"""Data-loss detection by execution: an authorizer log plus a schema and row-count diff.

Before a migration runs, :func:`capture` records every table of ``main`` (virtual
tables such as FTS5 ones included, their shadow tables left out) with its columns,
row count and non-null count per column (one scan per table). While it runs,
:class:`Watcher` (SQLite's authorizer) logs creations, drops, column drops, renames
and deletes, and refuses statements that would break the migration's transaction.
Afterwards :func:`diff` compares the two states: a table rebuild that keeps its
rows and values is a modification; lost tables, columns or rows holding data are
data loss, and so are values a rebuilt table (or a dropped and re-added column)
no longer holds. Plain ``UPDATE``s are not judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import apsw

from .._ledger import BOOKKEEPING_TABLES
from .model import Finding

__all__ = ["SchemaState", "TableState", "Watcher", "capture", "diff", "plural"]


def plural(count: int, noun: str) -> str:
    """``"1,234 rows"``, ``"1 row"``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def quote(name: str) -> str:
    """An SQL identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableState:
    """One table: its stored columns in order, its rows and non-null values per column.

    ``rootpage`` and ``sql`` come from ``sqlite_schema`` (they tell a table recreated
    under the same name from the one it replaced); ``virtual`` marks a virtual table.
    """

    name: str
    columns: tuple[str, ...]
    rows: int
    non_null: dict[str, int]
    rootpage: int = 0
    sql: str = ""
    virtual: bool = False


@dataclass(frozen=True)
class SchemaState:
    """The tables of ``main`` and its other schema objects (``(type, name) -> table name``)."""

    tables: dict[str, TableState]
    objects: dict[tuple[str, str], str]


def capture(connection: apsw.Connection) -> SchemaState:
    """Record the tables, columns, row counts and other schema objects of ``main``.

    Virtual tables are recorded too (``count(*)`` works on FTS5 and most modules);
    their shadow tables (type ``shadow`` in ``pragma_table_list``) are not, since
    they belong to their virtual table. A virtual table that cannot be read (its
    module is not loaded, say) is left out.
    """
    tables: dict[str, TableState] = {}
    stored = {
        str(row[0]): (int(row[1] or 0), str(row[2] or ""))
        for row in connection.execute(
            "SELECT name, rootpage, sql FROM main.sqlite_schema WHERE type = 'table'"
        )
    }
    listed = [
        (str(row[0]), row[1] == "virtual")
        for row in connection.execute(
            "SELECT name, type FROM pragma_table_list WHERE schema = 'main' AND type IN ('table', 'virtual')"
        )
        if not row[0].startswith("sqlite_") and row[0] not in BOOKKEEPING_TABLES
    ]
    for name, virtual in listed:
        rootpage, sql = stored.get(name, (0, ""))
        counted = _count(connection, name, virtual)
        if counted is not None:
            columns, rows, non_null = counted
            tables[name] = TableState(name, columns, rows, non_null, rootpage, sql, virtual)
    objects: dict[tuple[str, str], str] = {
        (row[0], row[1]): row[2]
        for row in connection.execute(
            "SELECT type, name, tbl_name FROM main.sqlite_schema WHERE type IN ('index', 'view', 'trigger')"
        )
        if not row[1].startswith("sqlite_")
    }
    return SchemaState(tables, objects)


def _count(
    connection: apsw.Connection, name: str, virtual: bool
) -> tuple[tuple[str, ...], int, dict[str, int]] | None:
    """``(columns, rows, non-null values per column)`` of one table, in one scan."""
    columns = tuple(
        row[0]
        for row in connection.execute(
            "SELECT name FROM pragma_table_xinfo(?, 'main') WHERE hidden = 0", (name,)
        )
    )
    counts = ", ".join(["count(*)", *(f"count({quote(c)})" for c in columns)])
    try:
        values = connection.execute(f"SELECT {counts} FROM main.{quote(name)}").get
    except apsw.Error:
        if not virtual:
            raise
        try:  # some modules cannot return column values (an external content table is gone, say)
            rows = connection.execute(f"SELECT count(*) FROM main.{quote(name)}").get
        except apsw.Error:
            return None
        return (), int(rows), {}
    assert isinstance(values, tuple)
    return columns, int(values[0]), dict(zip(columns, map(int, values[1:])))


@dataclass
class Watcher:
    """Authorizer that logs what a migration does and refuses what would break its transaction.

    In a transactional migration ``BEGIN``/``COMMIT``/``ROLLBACK`` and setting
    ``PRAGMA foreign_keys`` are refused (the first would end the migration's own
    transaction, the second is a no-op inside one); ``refusals`` says why.
    """

    connection: apsw.Connection | None = None
    transactional: bool = True
    #: The migration already runs with foreign keys off (``-- foreign_keys: off``).
    foreign_keys: bool = True
    dropped_tables: set[str] = field(default_factory=set)
    created_tables: set[str] = field(default_factory=set)
    altered_tables: set[str] = field(default_factory=set)
    dropped_columns: set[tuple[str, str]] = field(default_factory=set)
    deleted_from: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    _previous: Callable[..., int] | None = None

    def __enter__(self) -> Watcher:
        assert self.connection is not None
        self._previous = self.connection.authorizer
        self.connection.authorizer = self._authorize
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.connection is not None
        self.connection.authorizer = self._previous

    def _authorize(self, op: int, p1: str | None, p2: str | None, dbname: str | None, source: Any) -> int:
        if op == apsw.SQLITE_TRANSACTION and self.transactional:
            self.refusals.append(
                f"it runs {p1} itself; a transactional migration already runs inside a transaction "
                "(remove it, or mark the migration transactional=False)"
            )
            return apsw.SQLITE_DENY
        if op == apsw.SQLITE_PRAGMA and self.transactional and (p1 or "").lower() == "foreign_keys" and p2:
            if self.foreign_keys:
                advice = (
                    "declare foreign_keys=False on the migration, or '-- foreign_keys: off' in an SQL file"
                )
            else:  # a .dump that already got the header still has its PRAGMA line
                advice = (
                    "this migration already runs with foreign keys off ('-- foreign_keys: off' / "
                    "foreign_keys=False), so remove the PRAGMA foreign_keys line"
                )
            self.refusals.append(
                f"it sets PRAGMA foreign_keys, which SQLite ignores inside a transaction ({advice})"
            )
            return apsw.SQLITE_DENY
        if dbname == "main" or op == apsw.SQLITE_ALTER_TABLE:
            self._log(op, p1, p2, dbname)
        if self._previous is not None:
            return self._previous(op, p1, p2, dbname, source)
        return apsw.SQLITE_OK

    def _log(self, op: int, p1: str | None, p2: str | None, dbname: str | None) -> None:
        if op in (apsw.SQLITE_DROP_TABLE, apsw.SQLITE_DROP_VTABLE) and p1:
            self.dropped_tables.add(p1)
        elif op in (apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_VTABLE) and p1:
            self.created_tables.add(p1)
        elif op == apsw.SQLITE_DELETE and p1 and not p1.startswith("sqlite_"):
            self.deleted_from.add(p1)
        elif op == apsw.SQLITE_ALTER_TABLE and p1 == "main" and p2:
            self.altered_tables.add(p2)
            if dbname:  # ALTER TABLE ... DROP COLUMN passes the column here
                self.dropped_columns.add((p2, dbname))


def diff(before: SchemaState, after: SchemaState, watcher: Watcher | None) -> list[Finding]:
    """What changed between two states; findings with ``loses_data`` need approval."""
    log = watcher or Watcher()
    findings: list[Finding] = []
    created = {name: t for name, t in after.tables.items() if name not in before.tables}
    for name, old in before.tables.items():
        new = after.tables.get(name)
        if new is None:
            findings.append(_vanished_table(old, created, log))
            continue
        findings.extend(_changed_table(old, new, log))
    # An index or trigger goes with its table when the table is dropped, never when it is
    # renamed (it follows the table): one missing after a rename was dropped on its own.
    renamed = {f.table for f in findings if f.kind == "rename_table"}
    for (kind, name), table in before.objects.items():
        if (kind, name) in after.objects:
            continue
        if kind in ("index", "trigger") and table not in after.tables and table not in renamed:
            continue  # went with its table, whose finding says so
        findings.append(Finding(f"drop_{kind}", name, f"drops {kind} {name}", loses_data=False))
    return findings


def _vanished_table(old: TableState, created: dict[str, TableState], log: Watcher) -> Finding:
    name = old.name
    if name in log.altered_tables:
        for new_name, new in created.items():
            if new.columns == old.columns and new.rows == old.rows:
                del created[new_name]
                return Finding("rename_table", name, f"renames table {name} to {new_name}", loses_data=False)
    if old.rows:
        return Finding(
            "drop_table",
            name,
            f"drops table {name} ({plural(old.rows, 'row')})",
            loses_data=True,
            count=old.rows,
        )
    return Finding("drop_table", name, f"drops table {name} (it was empty)", loses_data=False)


def _changed_table(old: TableState, new: TableState, log: Watcher) -> list[Finding]:
    name = old.name
    findings: list[Finding] = []
    for position, column in enumerate(old.columns):
        if column in new.columns:
            continue
        values = old.non_null[column]
        renamed_to = _renamed_column(old, new, position, log)
        if renamed_to is not None and (name, column) not in log.dropped_columns:
            findings.append(
                Finding(
                    "rename_column",
                    name,
                    f"renames column {name}.{column} to {name}.{renamed_to}",
                    loses_data=False,
                    column=column,
                )
            )
        elif values:
            findings.append(
                Finding(
                    "drop_column",
                    name,
                    f"drops column {name}.{column} ({plural(values, 'non-null value')})",
                    loses_data=True,
                    column=column,
                    count=values,
                )
            )
        else:
            findings.append(
                Finding(
                    "drop_column", name, f"drops column {name}.{column} (it held no values)", False, column
                )
            )
    findings.extend(_lost_values(old, new, log))
    if new.rows < old.rows:
        lost = old.rows - new.rows
        findings.append(
            Finding(
                "delete_rows",
                name,
                f"deletes {plural(lost, 'row')} from {name} ({old.rows:,} -> {new.rows:,})",
                loses_data=True,
                count=lost,
            )
        )
    elif name in log.deleted_from and name not in log.dropped_tables:
        findings.append(
            Finding(
                "delete_rows",
                name,
                f"deletes rows from {name}, but the table did not shrink ({old.rows:,} -> {new.rows:,} rows)",
                loses_data=False,
            )
        )
    if _rebuilt(old, new, log) and not any(f.loses_data for f in findings):
        findings.append(
            Finding(
                "rebuild_table", name, f"rebuilds table {name} (all {plural(old.rows, 'row')} kept)", False
            )
        )
    return findings


def _rebuilt(old: TableState, new: TableState, log: Watcher) -> bool:
    """True when the table after the migration is a new table under the old name.

    It was dropped (and another created or renamed in its place), created again
    while the old one had been renamed away, or renamed over by another table
    (its root page changed). ``CREATE TABLE IF NOT EXISTS`` on it changes nothing.
    """
    name = old.name
    moved = new.rootpage != old.rootpage
    return (
        name in log.dropped_tables
        or (name in log.created_tables and (moved or new.sql != old.sql))
        or (name in log.altered_tables and moved)
    )


def _lost_values(old: TableState, new: TableState, log: Watcher) -> list[Finding]:
    """Values a rebuilt table, or a column dropped and added again, no longer holds.

    Judged by non-null counts, for columns present before and after: fewer non-null
    values than the rows the table lost can explain is data loss. Values overwritten
    in place (an ``UPDATE``, a default filled in) are not judged.
    """
    name = old.name
    rebuilt = _rebuilt(old, new, log)
    lost_rows = max(old.rows - new.rows, 0)
    findings: list[Finding] = []
    for column in old.columns:
        if column not in new.columns or column not in old.non_null or column not in new.non_null:
            continue
        if not (rebuilt or (name, column) in log.dropped_columns):
            continue
        before, after = old.non_null[column], new.non_null[column]
        if before - after > lost_rows:
            findings.append(
                Finding(
                    "lose_values",
                    name,
                    f"loses values of column {name}.{column} "
                    f"({plural(before, 'non-null value')} before, {after:,} after)",
                    loses_data=True,
                    column=column,
                    count=before - after,
                )
            )
    return findings


def _renamed_column(old: TableState, new: TableState, position: int, log: Watcher) -> str | None:
    """The new name of a column ``ALTER TABLE ... RENAME COLUMN`` renamed in place, if any."""
    if old.name not in log.altered_tables or old.name in log.dropped_tables or position >= len(new.columns):
        return None
    candidate = new.columns[position]
    if candidate in old.columns or len(new.columns) < len(old.columns):
        return None
    if new.non_null.get(candidate) != old.non_null[old.columns[position]]:
        return None
    return candidate
