"""``run_many``'s atomic batch: begin, commit, and undo on failure (shared by both twins)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apsw

from ._types import RunResult

__all__ = ["batch_sql", "run_many"]


def batch_sql(connection: apsw.Connection, begin_sql: str) -> tuple[str, str, tuple[str, ...]]:
    """SQL that makes a ``run_many`` batch atomic: begin, commit, and undo on failure."""
    if connection.in_transaction:
        return (
            "SAVEPOINT appdb_run_many",
            "RELEASE appdb_run_many",
            ("ROLLBACK TO appdb_run_many", "RELEASE appdb_run_many"),
        )
    return begin_sql, "COMMIT", ("ROLLBACK",)


def _undo(connection: apsw.Connection, undo: tuple[str, ...]) -> None:
    if connection.in_transaction:
        for sql in undo:
            connection.execute(sql)


def run_many(core: Any, statement: Any, items: Iterator[Any]) -> RunResult:
    """Run ``statement`` once per item on the writer, all or nothing; total changes, last rowid."""
    connection = core.acquire_writer()
    try:
        begin, commit, undo = batch_sql(connection, core.begin_sql)
        connection.execute(begin)
        before = connection.total_changes()
        try:
            statement._execute_many(connection, items)
            result = RunResult(connection.total_changes() - before, connection.last_insert_rowid())
        except BaseException:
            _undo(connection, undo)
            if statement.changes_schema:
                core.schema_changed()  # what was undone may have changed the schema
            raise
        try:
            connection.execute(commit)
        except BaseException:
            _undo(connection, undo)
            raise
        if statement.changes_schema:
            core.schema_changed()
        return result
    finally:
        core.release_writer()
