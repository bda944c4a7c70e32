"""Everyday Python values in SQLite: an opt-in, typed mapping in both directions.

``init_database(..., types=appdb.types.standard())`` binds ``datetime``, ``date``,
``time``, ``Decimal``, ``UUID``, ``Enum``, ``dict`` and ``list`` values, and turns
columns declared ``DATE``, ``TIME``, ``DATETIME``/``TIMESTAMP``, ``DECIMAL``,
``UUID``, ``JSON`` and ``BOOLEAN`` back into Python values. Everything is stored as
plain SQLite values (ISO 8601 text, decimal text, JSON text) that other tools read.

Costs: nothing without ``types``. With it, values SQLite stores natively (``None``,
``int``, ``float``, ``str``, ``bytes``) never reach the map: APSW calls the adapter
(``Connection.convert_binding``) only for the others. Rows pay only for columns
whose declared type has a converter.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import apsw

from .errors import ConversionError

__all__ = ["ConversionError", "TypeMap", "declared_type_key", "standard"]

#: What SQLite stores natively; APSW binds these (and their subclasses) itself.
_NATIVE = (int, float, str, bytes, bytearray, memoryview, type(None))

Adapter = Callable[[Any], Any]
Converter = Callable[[Any], Any]

#: Adapters may return another adaptable value (an Enum whose value is a date):
#: this many steps at most, so a cycle fails instead of looping.
_MAX_ADAPT_STEPS = 8

_TYPE_WORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")


def declared_type_key(declared: str | None) -> str | None:
    """The key a column's declared type is matched on: its first word, upper case.

    ``"DECIMAL(10,2)"`` and ``"decimal text"`` both match ``"DECIMAL"``;
    ``"TIMESTAMP WITH TIME ZONE"`` matches ``"TIMESTAMP"``. Expressions and columns
    declared without a type have no key.

    Args:
        declared: A column's declared type as SQLite reports it, or ``None``.

    Returns:
        The first word in upper case, or ``None``.
    """
    if not declared:
        return None
    match = _TYPE_WORD.match(declared)
    return match.group(1).upper() if match else None


class _NoAdapter(TypeError):
    """No adapter applies to a value's type (its name is the message)."""


class ParameterConversionError(ConversionError):
    """A parameter's value could not be adapted (appdb adds the statement to the message)."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where
        self.detail = detail


class TypeMap:
    """Adapters (Python value -> SQLite value) and converters (declared type -> Python value).

    ``adapt(python_type, fn)``: ``fn(value)`` returns ``None``, ``int``, ``float``,
    ``str`` or ``bytes`` (or another value the map adapts). Subclasses use their
    nearest registered base class. Types SQLite stores natively (and their
    subclasses, such as ``bool`` or ``IntEnum``) are bound by APSW and cannot be
    adapted.

    ``convert(declared_type, fn)``: ``fn(value)`` turns a non-NULL value of a
    column whose declared type's first word is ``declared_type`` (any case) into
    a Python value. NULL stays ``None``. Expressions have no declared type.

    ``init_database(types=...)`` takes a copy: later changes to this map do not
    affect databases already open. Start from [`standard()`][appdb.types.standard]
    for appdb's everyday types, or from an empty ``TypeMap()``.

    A failing adapter or converter surfaces as
    [`ConversionError`][appdb.ConversionError] naming the parameter or the column;
    a value no adapter applies to as APSW's ``TypeError`` naming the parameter.
    """

    __slots__ = ("_adapters", "_converters", "_resolved")

    def __init__(self) -> None:
        self._adapters: dict[type, Adapter] = {}
        self._converters: dict[str, Converter] = {}
        self._resolved: dict[type, Adapter | None] = {}

    def adapt(self, python_type: type, fn: Adapter) -> TypeMap:
        """Bind values of ``python_type`` (and its subclasses) as ``fn(value)``.

        Registering a type again replaces its adapter.

        Args:
            python_type: The class to adapt.
            fn: Returns ``None``, ``int``, ``float``, ``str`` or ``bytes`` (or another
                value the map adapts) for a value of ``python_type``; raising
                ``ValueError`` or ``TypeError`` refuses the value.

        Returns:
            This map, so calls chain.

        Raises:
            TypeError: ``python_type`` is not a class, or ``fn`` is not callable.
            ValueError: SQLite stores ``python_type`` natively (``int``, ``float``,
                ``str``, ``bytes``, ``None`` and their subclasses).
        """
        if not isinstance(python_type, type):
            raise TypeError(f"adapt() takes a type, not {python_type!r}")
        if issubclass(python_type, _NATIVE):
            raise ValueError(
                f"{python_type.__name__} is stored by SQLite natively (APSW binds it as "
                f"{_native_name(python_type)}); it cannot be adapted"
            )
        if not callable(fn):
            raise TypeError(f"the adapter for {python_type.__name__} must be callable, not {fn!r}")
        self._adapters[python_type] = fn
        self._resolved.clear()
        return self

    def convert(self, declared_type: str, fn: Converter) -> TypeMap:
        """Turn values of columns declared ``declared_type`` into ``fn(value)``.

        Registering a declared type again replaces its converter.

        Args:
            declared_type: One word (``"DATE"``), matched in any case against the
                first word of a column's declared type.
            fn: Turns a non-NULL value of such a column into a Python value.

        Returns:
            This map, so calls chain.

        Raises:
            ValueError: ``declared_type`` is not one word.
            TypeError: ``fn`` is not callable.
        """
        if not isinstance(declared_type, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", declared_type):
            raise ValueError(
                f"convert() takes one word of a declared column type (such as 'DATE'), not {declared_type!r}"
            )
        if not callable(fn):
            raise TypeError(f"the converter for {declared_type} must be callable, not {fn!r}")
        self._converters[declared_type.upper()] = fn
        return self

    def copy(self) -> TypeMap:
        """A new map with the same adapters and converters.

        Returns:
            The copy; changing it leaves this map alone.
        """
        other = TypeMap()
        other._adapters.update(self._adapters)
        other._converters.update(self._converters)
        return other

    @property
    def adapted_types(self) -> tuple[type, ...]:
        """The Python types with an adapter, in registration order."""
        return tuple(self._adapters)

    @property
    def converted_types(self) -> tuple[str, ...]:
        """The declared-type keys with a converter, in registration order."""
        return tuple(self._converters)

    def __repr__(self) -> str:
        adapted = ", ".join(t.__name__ for t in self._adapters)
        return f"<appdb.types.TypeMap adapts [{adapted}] converts [{', '.join(self._converters)}]>"

    # -- used by appdb -------------------------------------------------------------
    def _adapter_for(self, python_type: type) -> Adapter | None:
        try:
            return self._resolved[python_type]
        except KeyError:
            pass
        found = None
        for base in python_type.__mro__:
            found = self._adapters.get(base)
            if found is not None:
                break
        self._resolved[python_type] = found
        return found

    def to_sqlite(self, value: Any) -> Any:
        """``value`` as a value SQLite stores, through the adapters.

        Args:
            value: Any value.

        Returns:
            ``value`` itself when SQLite stores it natively, else the adapted value.

        Raises:
            TypeError: No adapter applies (in APSW's words, which appdb turns into
                a message naming the parameter).
            appdb.ConversionError: Adapters kept returning values to adapt (a cycle).
            Exception: Whatever an adapter raises.
        """
        for _ in range(_MAX_ADAPT_STEPS):
            if isinstance(value, _NATIVE):
                return value
            adapter = self._adapter_for(type(value))
            if adapter is None:
                raise _NoAdapter(type(value).__name__)
            value = adapter(value)
        raise ConversionError(f"adapters kept returning values to adapt; last {type(value).__name__}")

    def bind(self, cursor: apsw.Cursor, number: int, value: Any) -> Any:
        """APSW's ``convert_binding`` hook: adapt parameter ``number`` (1-based).

        appdb installs it on every connection of a database opened with
        ``types=``; you do not call it yourself.

        Args:
            cursor: The cursor binding the value.
            number: The parameter's position (1-based).
            value: A value SQLite does not store natively.

        Returns:
            The adapted value.

        Raises:
            TypeError: No adapter applies (APSW's message).
            appdb.ConversionError: The adapter failed; the message names the
                parameter and the value.
        """
        try:
            return self.to_sqlite(value)
        except _NoAdapter:
            # APSW's own message, so that the statement's error names the parameter
            # exactly as it does without a type map.
            raise TypeError(
                f"Bad binding argument type supplied - argument #{number}: type {_tp_name(type(value))}"
            ) from None
        except (ConversionError, ValueError, TypeError, OverflowError) as exc:
            raise ParameterConversionError(
                _parameter(cursor, number), f"cannot store {type(value).__name__} {_short_repr(value)}: {exc}"
            ) from exc

    def row_converter(
        self, sql: str, columns: Sequence[str], declared_types: Sequence[str | None]
    ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]] | None:
        """A function converting the rows of statement ``sql``, or None when no column converts.

        Statements call it when they (re)read their columns; you do not call it
        yourself.

        Args:
            sql: The statement's SQL (named in error messages).
            columns: The result column names.
            declared_types: Each column's declared type (``None`` for expressions).

        Returns:
            A function from a row tuple to the converted tuple (raising
            ``appdb.ConversionError`` naming the column when a converter fails), or
            ``None``.
        """
        converters = self._converters
        if not converters:
            return None
        plan = []
        for index, declared in enumerate(declared_types):
            key = declared_type_key(declared)
            fn = converters.get(key) if key is not None else None
            if fn is not None:
                plan.append((index, fn, columns[index], declared))
        if not plan:
            return None
        return _RowConverter(sql, tuple(plan))


class _RowConverter:
    """Converts the columns of a row that have a converter; NULL stays None."""

    __slots__ = ("_plan", "_sql")

    def __init__(self, sql: str, plan: tuple[tuple[int, Converter, str, str | None], ...]) -> None:
        self._sql = sql
        self._plan = plan

    def __call__(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for index, fn, name, declared in self._plan:
            value = values[index]
            if value is not None:
                try:
                    values[index] = fn(value)
                except Exception as exc:
                    raise ConversionError(
                        f"column {name!r} (declared {declared}) of statement {self._sql!r}: cannot convert "
                        f"{type(value).__name__} {_short_repr(value)}: {exc}"
                    ) from exc
        return tuple(values)


def _parameter(cursor: apsw.Cursor, number: int) -> str:
    """``"parameter :name"`` or ``"parameter 2"`` for parameter ``number`` (1-based)."""
    try:
        names = cursor.bindings_names
        name = names[number - 1] if number - 1 < len(names) else None
    except apsw.Error:
        name = None
    if name is None:
        return f"parameter {number}"
    return f"parameter ?{name}" if name.isdigit() else f"parameter :{name}"


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python


def _tp_name(python_type: type) -> str:
    """The type's name as CPython (and so APSW's messages) spells it: ``datetime.date``, ``Point``."""
    module = python_type.__module__
    if python_type.__flags__ & _HEAPTYPE or module == "builtins":
        return python_type.__name__
    return f"{module}.{python_type.__qualname__}"


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _native_name(python_type: type) -> str:
    for native in _NATIVE:
        if issubclass(python_type, native):
            return "NULL" if native is type(None) else native.__name__
    return python_type.__name__  # pragma: no cover - only natives get here


# -- the standard adapters and converters ----------------------------------------------
def _adapt_datetime(value: _dt.datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "naive datetime (no timezone): its instant is ambiguous; give it one, "
            "for example datetime.now(timezone.utc) or value.replace(tzinfo=timezone.utc)"
        )
    return value.isoformat()


def _adapt_date(value: _dt.date) -> str:
    return value.isoformat()


def _adapt_time(value: _dt.time) -> str:
    return value.isoformat()


def _adapt_decimal(value: decimal.Decimal) -> str:
    return str(value)


def _adapt_uuid(value: uuid.UUID) -> str:
    return str(value)


def _adapt_enum(value: enum.Enum) -> Any:
    return value.value


def _adapt_json(value: object) -> str:
    # allow_nan=False: NaN is not JSON, and SQLite's json functions reject it.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _iso_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError("expected ISO 8601 text")
    return value


def _convert_datetime(value: Any) -> _dt.datetime:
    text = _iso_text(value)
    if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not read "Z"
        text = text[:-1] + "+00:00"
    return _dt.datetime.fromisoformat(text)


def _convert_date(value: Any) -> _dt.date:
    return _dt.date.fromisoformat(_iso_text(value))


def _convert_time(value: Any) -> _dt.time:
    return _dt.time.fromisoformat(_iso_text(value))


def _convert_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, float):
        # A column declared DECIMAL has NUMERIC affinity: SQLite stored the text as
        # a REAL. repr() is the shortest text that round-trips, i.e. what was stored
        # for up to 15 significant digits.
        return decimal.Decimal(repr(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return decimal.Decimal(value)


def _convert_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return uuid.UUID(_iso_text(value))


def _convert_json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return json.loads(value)
    return value  # a number: NUMERIC affinity already made it one


def _convert_boolean(value: Any) -> Any:
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("expected 0 or 1")


def standard() -> TypeMap:
    """A new ``TypeMap`` with appdb's standard adapters and converters.

    | Python value | stored as | read back from columns |
    | --- | --- | --- |
    | aware ``datetime`` | ISO 8601 text with offset | ``DATETIME``, ``TIMESTAMP`` |
    | ``date`` | ``YYYY-MM-DD`` | ``DATE`` |
    | ``time`` | ``HH:MM:SS[.ffffff][+HH:MM]`` | ``TIME`` |
    | ``Decimal`` | its exact text | ``DECIMAL`` |
    | ``UUID`` | 36-character text | ``UUID`` |
    | ``Enum`` member | its value | (the value) |
    | ``dict``, ``list`` | compact JSON text | ``JSON`` |
    | ``bool`` | 0 or 1 (SQLite's own) | ``BOOLEAN``, ``BOOL`` |

    A naive ``datetime`` is refused (``ConversionError``): its instant is ambiguous.
    Text without an offset read from a ``DATETIME`` column (SQLite's own
    ``CURRENT_TIMESTAMP``, say) comes back as a naive ``datetime``.

    Returns:
        A new map each call: add to it or change it freely.
    """
    types = TypeMap()
    types.adapt(_dt.datetime, _adapt_datetime)
    types.adapt(_dt.date, _adapt_date)
    types.adapt(_dt.time, _adapt_time)
    types.adapt(decimal.Decimal, _adapt_decimal)
    types.adapt(uuid.UUID, _adapt_uuid)
    types.adapt(enum.Enum, _adapt_enum)
    types.adapt(dict, _adapt_json)
    types.adapt(list, _adapt_json)
    types.convert("DATETIME", _convert_datetime)
    types.convert("TIMESTAMP", _convert_datetime)
    types.convert("DATE", _convert_date)
    types.convert("TIME", _convert_time)
    types.convert("DECIMAL", _convert_decimal)
    types.convert("UUID", _convert_uuid)
    types.convert("JSON", _convert_json)
    types.convert("BOOLEAN", _convert_boolean)
    types.convert("BOOL", _convert_boolean)
    return types
