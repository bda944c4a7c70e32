"""``run_many``'s atomic batch: begin, commit, and undo on failure (shared by both twins)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apsw

from . import _limits
from ._sqlinfo import binding_error, describe
from ._types import RunResult
from .errors import ConversionError

__all__ = ["batch_sql", "item_error", "parameter_lists", "run_many"]

#: Errors binding one item's values: ``run_many`` says which item it was.
_ITEM_ERRORS = (TypeError, OverflowError, apsw.BindingsError, ConversionError)


def parameter_lists(seq_of_params: Iterable[Any]) -> Iterator[Any]:
    """The items of a ``run_many`` batch, refusing what has no order or is one value."""
    if isinstance(seq_of_params, (str, bytes, Mapping)):
        raise TypeError("run_many() takes an iterable of parameter sequences or mappings")
    if isinstance(seq_of_params, (set, frozenset)):
        raise TypeError(
            f"run_many() takes an ordered iterable of items, not a {type(seq_of_params).__name__}: "
            "the order a set yields its items in is undefined, and rowids, triggers and which "
            "duplicate wins depend on it; pass a list (sorted(...) for a stable order)"
        )
    return iter(seq_of_params)


def item_error(exc: BaseException, items: Any, connection: apsw.Connection, sql: str) -> BaseException | None:
    """``exc`` naming the batch item it is about, or None when it is no binding error.

    An error raised while an item was being fetched (``item`` still None) is the
    caller's iterable's own, left alone, unless the twin refused the item
    (``BindingsError``: values for names the statement does not use).
    """
    if not isinstance(exc, _ITEM_ERRORS):
        return None
    item = items.item
    if item is None and not isinstance(exc, apsw.BindingsError):
        return None
    if isinstance(exc, OverflowError):  # APSW's own "int too big to convert": name the value
        try:
            names = describe(connection, sql).parameter_names
        except apsw.Error:
            names = ()
        exc = binding_error(exc, sql, names, item) or exc
    try:
        return type(exc)(f"run_many item {items.index}: {exc}")
    except Exception:  # an exception class that takes other arguments
        return None


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


def run_many(core: Any, statement: Any, items: Any) -> RunResult:
    """Run ``statement`` once per item on the writer, all or nothing; total changes, last rowid.

    ``items`` is the twin's checked item iterator: it counts the items (``index``) and
    keeps the one being bound (``item``), so that an error can name it.
    """
    # One deadline for the whole batch, as for one statement (the commit is not bounded:
    # it only writes what already ran).
    token = _limits.start(core, True) if core.limits_active else None
    connection = core.acquire_writer()
    try:
        begin, commit, undo = batch_sql(connection, core.begin_sql)
        if token is not None:
            token.arm(connection)  # raises QueryTimeout once the deadline has passed
        try:
            connection.execute(begin)
            before = connection.total_changes()
            statement._execute_many(connection, items)
            result = RunResult(connection.total_changes() - before, connection.last_insert_rowid())
        except BaseException as exc:
            _undo(connection, undo)
            if statement.changes_schema:
                core.schema_changed()  # what was undone may have changed the schema
            error = token.translate(exc, statement.sql) if token is not None else None
            if error is not None:  # a timeout ends the transaction it was part of
                raise error from None
            error = item_error(exc, items, connection, statement.sql)
            if error is None:
                raise
            raise error.with_traceback(exc.__traceback__) from exc.__cause__
        finally:
            if token is not None:
                token.disarm(connection)
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
