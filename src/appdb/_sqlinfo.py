"""Statement introspection and binding-error messages, shared by both twins.

Nothing here is on the hot path: it runs when a statement is first prepared or
after an execution has already failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import apsw

from .errors import ConversionError, DuplicateColumnError

__all__ = [
    "StatementInfo",
    "binding_error",
    "describe",
    "duplicate_columns_error",
    "extra_names_error",
    "needs_writer",
    "schema_version",
]


class StatementInfo(NamedTuple):
    """What SQLite reports about a prepared statement before it runs."""

    columns: tuple[str, ...]
    parameter_names: tuple[str | None, ...]
    parameter_count: int
    readonly: bool
    #: The program can produce at most one row, so stepping past it is free.
    single_row: bool = False
    #: The statement changes the schema (its program writes the schema cookie).
    changes_schema: bool = False
    #: ``EXPLAIN`` or ``EXPLAIN QUERY PLAN``: rows describe the program, never one row.
    is_explain: bool = False
    #: A plain read of the main database (SELECT, VALUES, WITH; functions; no temp
    #: or attached tables): it can run on any connection, so on a pool reader.
    parallel: bool = False
    #: BEGIN, COMMIT, ROLLBACK, SAVEPOINT or RELEASE.
    transaction_control: bool = False
    #: The program has no loop (a lookup by primary or unique key, an expression):
    #: its work is a few microseconds whatever the table's size.
    short: bool = False
    #: Each result column's declared type (None for expressions): ``appdb.types``
    #: converters are chosen by it.
    declared_types: tuple[str | None, ...] = ()
    #: The schema cookie (``PRAGMA schema_version``) the statement was described at.
    schema_version: int = -1


#: Opcodes that may follow the one ``ResultRow`` of a program that yields at most one
#: row (``DecrJumpZero`` is a LIMIT countdown jumping forward to ``Halt``).
_AFTER_SINGLE_ROW = frozenset({"DecrJumpZero"})
#: Opcodes of programs that change the schema.
_SCHEMA_OPCODES = frozenset({"SetCookie", "ParseSchema", "DropTable", "DropIndex", "DropTrigger"})


#: Opcodes that loop over rows (or count them): a program without any is short.
_LOOP_OPCODES = frozenset(
    {"Next", "Prev", "VNext", "SorterNext", "SorterSort", "Sort", "Rewind", "Last", "Count", "VFilter"}
    | {"Yield"}
)


#: Stand-in for an EXPLAIN row whose P4 value is not UTF-8 text (see ``_opcodes``).
_UNREADABLE = "?"
#: Consecutive unreadable rows after which the program counts as unreadable (a guard
#: against an APSW that would raise again for the same row instead of stepping on).
_MAX_UNREADABLE = 100_000


def _opcodes(connection: apsw.Connection, sql: str) -> list[str] | None:
    """The opcodes of ``sql``'s program in order, or None when it cannot be read.

    EXPLAIN's P4 column shows values as text: a blob literal (``x'ff'``), or a
    default or literal of the schema the statement reads, can be bytes that are not
    UTF-8. APSW then raises ``UnicodeDecodeError`` for that row and steps on to the
    next one, so such a row becomes ``_UNREADABLE``. Only opcodes that load a value
    (``Blob``, ``String8``, ``Column``'s default, ``Halt``'s message) carry one.
    """
    cursor = connection.cursor()
    opcodes: list[str] = []
    try:
        rows = cursor.execute(sql, apsw._null_bindings, can_cache=False, explain=1)  # type: ignore[attr-defined]
        unreadable = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return opcodes
            except UnicodeDecodeError:
                unreadable += 1
                if unreadable > _MAX_UNREADABLE:
                    return None
                opcodes.append(_UNREADABLE)
                continue
            unreadable = 0
            opcodes.extend([_UNREADABLE] * (row[0] - len(opcodes)))  # rows come in address order
            opcodes.append(row[1])
    except apsw.Error:
        return None
    finally:
        cursor.close(True)


def _program_shape(connection: apsw.Connection, sql: str) -> tuple[bool, bool, bool]:
    """``(single_row, changes_schema, short)`` read from the statement's bytecode (EXPLAIN).

    ``single_row`` is conservative: True only for programs with exactly one
    ``ResultRow`` that halts right after it (point lookups by rowid or unique
    key, aggregates without GROUP BY, expressions). ``short``: no loop at all.
    An unreadable opcode is none of those after ``ResultRow`` and, to stay on the
    safe side, makes the program not short (schema opcodes never carry a value).
    """
    opcodes = _opcodes(connection, sql)
    if opcodes is None:
        return False, False, False
    changes_schema = not _SCHEMA_OPCODES.isdisjoint(opcodes)
    short = _LOOP_OPCODES.isdisjoint(opcodes) and _UNREADABLE not in opcodes
    if opcodes.count("ResultRow") != 1:
        return False, changes_schema, short
    after = opcodes[opcodes.index("ResultRow") + 1 :]
    single = "Halt" in after and all(op in _AFTER_SINGLE_ROW for op in after[: after.index("Halt")])
    return single, changes_schema, short


#: Authorizer actions of a statement that only reads the database.
_READ_ACTIONS = frozenset({apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE})
_TRANSACTION_ACTIONS = frozenset({apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT})
#: Functions whose answer depends on the connection: a read using them runs on the writer.
_CONNECTION_STATE = frozenset({"changes", "total_changes", "last_insert_rowid"})
#: Errors of a read that compiled on the writer but meets a reader without what it
#: needs (a function registered on the writer only, a temp table): run it there.
_WRITER_ONLY_ERRORS = ("no such function", "no such table", "no such collation", "no such module")


def needs_writer(exc: BaseException) -> bool:
    """True when ``exc`` from a reader means the read can only run on the writer."""
    if not isinstance(exc, apsw.SQLError):
        return False
    message = str(exc)
    return any(error in message for error in _WRITER_ONLY_ERRORS)


class _Actions:
    """An authorizer that notes what a statement does while it is compiled.

    It passes every request on to the authorizer already installed (a migration's
    watcher, the user's), so it never changes what SQLite allows.
    """

    __slots__ = ("actions", "other_database", "previous")

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.actions: set[int] = set()
        self.other_database = False

    def __call__(self, op: int, p1: Any, p2: Any, dbname: str | None, source: Any) -> int:
        self.actions.add(op)
        if op == apsw.SQLITE_READ and dbname not in (None, "main"):
            self.other_database = True
        elif op == apsw.SQLITE_FUNCTION and isinstance(p2, str) and p2.lower() in _CONNECTION_STATE:
            self.other_database = True  # it answers about the connection it runs on
        if self.previous is not None:
            return int(self.previous(op, p1, p2, dbname, source))
        return apsw.SQLITE_OK

    @property
    def parallel(self) -> bool:
        return not self.other_database and self.actions <= _READ_ACTIONS

    @property
    def transaction_control(self) -> bool:
        return not self.actions.isdisjoint(_TRANSACTION_ACTIONS)


def _trace(connection: apsw.Connection, sql: str) -> tuple[StatementInfo | None, str]:
    """Prepare ``sql`` without running it; return its info and the SQL it consumed."""
    found: list[tuple[StatementInfo | None, str]] = []
    previous = connection.authorizer
    actions = _Actions(previous)

    def tracer(cursor: apsw.Cursor, first: str, bindings: Any) -> bool:
        info = None
        if cursor.has_vdbe:
            description = cursor.get_description()
            info = StatementInfo(
                columns=tuple(d[0] for d in description),
                declared_types=tuple(d[1] for d in description),
                parameter_names=tuple(cursor.bindings_names),
                parameter_count=cursor.bindings_count,
                readonly=bool(cursor.is_readonly),
                is_explain=bool(cursor.is_explain),
                parallel=bool(cursor.is_readonly) and actions.parallel,
                transaction_control=actions.transaction_control,
            )
        found.append((info, first))
        return False

    cursor = connection.cursor()
    cursor.exec_trace = tracer
    connection.authorizer = actions
    try:
        # can_cache=False: a statement from APSW's cache may predate a schema change
        cursor.execute(sql, apsw._null_bindings, can_cache=False)  # type: ignore[attr-defined]
    except apsw.ExecTraceAbort:
        pass
    finally:
        connection.authorizer = previous
        cursor.close()
    if not found:  # nothing but whitespace: the tracer never ran
        return None, sql
    return found[0]


def schema_version(connection: apsw.Connection) -> int:
    """The schema cookie of ``connection``'s main database (changes with every schema change)."""
    return int(connection.execute("PRAGMA schema_version").get)


def _refresh_schema(connection: apsw.Connection) -> None:
    """Make ``connection`` notice schema changes committed by other connections.

    Compiling uses the schema the connection last read; only running a statement
    checks the schema cookie (and reloads on a change). A pool reader that has not
    run anything since another connection created a table would otherwise report
    "no such table", or old column names after a rename.
    """
    if connection.in_transaction:
        return  # inside its own transaction the connection's schema is the current one
    try:
        connection.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
    except apsw.Error:  # reported by the real compile below
        pass


def describe(connection: apsw.Connection, sql: str) -> StatementInfo:
    """Compile ``sql`` once and report its columns, parameters and read-only flag.

    Raises ``ValueError`` when ``sql`` holds no statement or more than one, and
    SQLite's own error (``apsw.SQLError`` ...) when it does not compile.
    """
    if not isinstance(sql, str):
        raise TypeError(f"SQL must be a str, not {type(sql).__name__}")
    _refresh_schema(connection)
    info, consumed = _trace(connection, sql)
    if info is None:
        raise ValueError(f"the SQL text contains no statement: {sql!r}")
    rest = sql[len(consumed) :]
    if rest.strip():
        extra, _ = _trace(connection, rest)
        if extra is not None:
            raise ValueError(
                "prepare() takes exactly one SQL statement (use exec() for scripts); "
                f"found more after {consumed.strip()!r}"
            )
    try:
        info = info._replace(schema_version=schema_version(connection))
    except apsw.Error:  # unreadable now (locked, say): the columns are checked again next time
        pass
    if info.is_explain:
        return info
    single_row, changes_schema, short = _program_shape(connection, sql)
    return info._replace(single_row=single_row, changes_schema=changes_schema, short=short)


def duplicate_columns_error(sql: str, columns: tuple[str, ...]) -> DuplicateColumnError | None:
    """The error for dict rows of ``sql`` when result columns share a name (a value would be lost)."""
    if len(set(columns)) == len(columns):
        return None
    seen: set[str] = set()
    duplicates: list[str] = []
    for name in columns:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    return DuplicateColumnError(
        f"statement {sql!r} returns several columns named {', '.join(repr(d) for d in duplicates)}: "
        "dict rows would keep only one of their values; give them distinct names with AS "
        "(SELECT a.name AS a_name, b.name AS b_name ...) or prepare it with row_type='tuple'"
    )


def _display(names: tuple[str | None, ...], index: int) -> str:
    """How to name parameter ``index`` (0-based) in a message."""
    name = names[index] if index < len(names) else None
    if name is None:
        return f"parameter {index + 1}"
    if name.isdigit():
        return f"parameter ?{name}"
    return f"parameter :{name}"


def _display_name(name: str) -> str:
    return f"?{name}" if name.isdigit() else f":{name}"


_INT64 = (-(2**63), 2**63 - 1)


def _out_of_range(names: tuple[str | None, ...], given: object) -> str | None:
    """Name the first integer in ``given`` that does not fit SQLite's 64-bit INTEGER."""
    if isinstance(given, Mapping):
        for key, value in given.items():
            if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
                return f"parameter {_display_name(str(key))}"
    elif isinstance(given, (tuple, list)):
        for index, value in enumerate(given):
            if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
                return _display(names, index)
    return None


def _missing_names(names: tuple[str | None, ...], given: object) -> str | None:
    """What is missing when a statement with only named parameters got no values at all."""
    named = [n for n in names if n is not None and not n.isdigit()]
    if not named or len(named) != len(names):
        return None
    if given is not None and not (isinstance(given, (tuple, list)) and not given):
        return None
    if len(named) == 1:
        return f"missing value for named parameter {_display_name(named[0])}"
    return f"missing values for named parameters {', '.join(_display_name(n) for n in named)}"


def extra_names_error(
    sql: str, names: tuple[str | None, ...], given: Mapping[str, Any]
) -> apsw.BindingsError:
    """The error for named values the statement does not use (APSW ignores them)."""
    known = {n for n in names if n is not None}
    extra = sorted(str(k) for k in given if k not in known)
    missing = sorted(n for n in known if n not in given)
    text = f"unexpected named value(s) {', '.join(repr(e) for e in extra)} for statement {sql!r}"
    if missing:
        text += f"; it expects {', '.join(':' + m for m in missing)}"
    elif known:
        text += f"; it takes {', '.join(':' + n for n in sorted(known))}"
    else:
        text += "; it takes no named parameters"
    return apsw.BindingsError(text)


def binding_error(
    exc: BaseException, sql: str, names: tuple[str | None, ...], given: object = None
) -> BaseException | None:
    """Translate an APSW binding failure into appdb's error, or None if it is not one.

    * a missing named value (APSW raises ``KeyError``) -> ``apsw.BindingsError``;
    * a wrong number of values -> ``apsw.BindingsError`` saying how many are expected
      (naming them when a statement with only named parameters got no values);
    * an unsupported value type -> ``TypeError`` naming the parameter;
    * an integer outside 64 bits -> ``OverflowError`` naming the parameter.
    """
    if isinstance(exc, ConversionError) and hasattr(exc, "where"):  # from appdb.types
        return ConversionError(f"{exc.where} of statement {sql!r}: {getattr(exc, 'detail', exc)}")
    if isinstance(exc, KeyError):
        key = exc.args[0] if exc.args else None
        if key in names:
            text = f"missing value for named parameter {_display_name(str(key))} in statement {sql!r}"
            if isinstance(given, Mapping):
                unknown = sorted(str(k) for k in given if k not in names)
                if unknown:
                    text += f"; unexpected named value(s) {', '.join(repr(u) for u in unknown)}"
            return apsw.BindingsError(text)
        return None
    if isinstance(exc, apsw.BindingsError):
        message = str(exc)
        if message.startswith("Incorrect number of bindings"):
            missing = _missing_names(names, given)
            if missing:
                return apsw.BindingsError(f"{missing} in statement {sql!r}")
            return apsw.BindingsError(
                f"statement {sql!r} takes {len(names)} parameter value(s): {message}"
            )
        return None
    if isinstance(exc, OverflowError):
        where = _out_of_range(names, given)
        if where is None:
            return None
        return OverflowError(
            f"integer too large for {where} of statement {sql!r}: SQLite integers are 64-bit "
            "(-2**63 .. 2**63-1); store larger numbers as text or blobs"
        )
    if isinstance(exc, TypeError):
        message = str(exc)
        marker = "argument #"
        if message.startswith("Bad binding argument type") and marker in message:
            tail = message.split(marker, 1)[1]
            number = tail.split(":", 1)[0]
            kind = tail.split("type", 1)[-1].strip()
            if number.isdigit():
                where = _display(names, int(number) - 1)
                return TypeError(
                    f"unsupported type {kind!r} for {where} of statement {sql!r}"
                    " (use None, int, float, str, bytes or a buffer)"
                )
        return None
    return None
