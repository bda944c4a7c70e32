"""The default pragma set, and validation of user-supplied pragmas.

Pragma names are checked against SQLite's own list (``PRAGMA pragma_list``) and
values must be integers or simple words, so a pragma option can never inject SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import apsw

from .errors import InvalidPragmaError

__all__ = ["DEFAULT_PRAGMAS", "JOURNAL_SIZE_LIMIT", "PragmaValue", "pragma_sql", "validate_pragmas"]

PragmaValue = int | str | bool
"""The type of a pragma value: an int, a bool (``1``/``0``) or a simple word such as ``WAL``."""

JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is truncated back to after a checkpoint (64 MiB)."""

DEFAULT_PRAGMAS: Mapping[str, PragmaValue] = MappingProxyType({
    "journal_mode": "WAL",
    "foreign_keys": "ON",
    "busy_timeout": 5000,
    "synchronous": "NORMAL",
    "wal_autocheckpoint": 1000,
    "temp_store": "MEMORY",
    "cache_size": -64000,
    "journal_size_limit": JOURNAL_SIZE_LIMIT,
    "trusted_schema": "OFF",
})
"""The pragmas of every connection appdb opens, applied in this order.

``init_database(pragmas=...)`` adds to them or overrides them (see
[`validate_pragmas`][appdb.pragmas.validate_pragmas]); ``journal_mode`` is skipped on
read-only opens. A read-only mapping (changing it would change every later open):
``dict(DEFAULT_PRAGMAS)`` gives a copy to change.
"""

#: Pragmas that write to the database file and are skipped on read-only opens.
WRITE_PRAGMAS = frozenset({"journal_mode"})

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_known: frozenset[str] | None = None


def known_pragmas() -> frozenset[str]:
    """SQLite's own list of pragma names (read once from an in-memory database)."""
    global _known
    if _known is None:
        connection = apsw.Connection(":memory:")
        try:
            _known = frozenset(row[0] for row in connection.execute("PRAGMA pragma_list"))
        finally:
            connection.close()
    return _known


def _split_name(name: object) -> tuple[str | None, str]:
    if not isinstance(name, str):
        raise InvalidPragmaError(f"pragma name must be a str, not {type(name).__name__}: {name!r}")
    # an exact copy: a str subclass could override rpartition/lower/__format__ to smuggle SQL in
    name = str.__str__(name)
    schema, dot, bare = name.rpartition(".")
    if dot and not _WORD.match(schema):
        raise InvalidPragmaError(f"invalid schema name in pragma {name!r}")
    if bare.lower() not in known_pragmas():
        raise InvalidPragmaError(f"unknown pragma {name!r}: not in SQLite's pragma list")
    return (schema if dot else None), bare.lower()


def _value_sql(name: str, value: object) -> str:
    # Exact copies of the data: an int or str subclass could override __str__ or
    # __format__ to return text that was never validated (SQL injection).
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, str) and (_WORD.match(value) or _INTEGER.match(value)):
        return str.__str__(value)
    raise InvalidPragmaError(
        f"invalid value {value!r} for pragma {name!r}: use an int or a simple word such as ON or WAL"
    )


def pragma_sql(name: str, value: object = None) -> str:
    """Build ``PRAGMA name`` or ``PRAGMA name=value`` from checked parts.

    The name must be in SQLite's pragma list (optionally prefixed by a schema,
    ``"main.cache_size"``) and the value an int, a bool or a simple word, so the
    result can never carry other SQL.

    Args:
        name: The pragma name, optionally ``schema.name``; matched case-insensitively.
        value: The value to set; ``None`` builds the statement that reads the pragma.

    Returns:
        The SQL text, for example ``"PRAGMA cache_size=-64000"``.

    Raises:
        appdb.InvalidPragmaError: The name is not a ``str``, not a known pragma, has an
            invalid schema part, or the value is not an int, bool or simple word.
    """
    schema, bare = _split_name(name)
    target = f"{schema}.{bare}" if schema else bare
    if value is None:
        return f"PRAGMA {target}"
    return f"PRAGMA {target}={_value_sql(name, value)}"


def validate_pragmas(pragmas: Mapping[str, object] | None) -> dict[str, object]:
    """The defaults overridden by ``pragmas``: what ``init_database(pragmas=...)`` applies.

    Args:
        pragmas: ``{name: value}`` to add to or override
            [`DEFAULT_PRAGMAS`][appdb.pragmas.DEFAULT_PRAGMAS]; ``None`` for the defaults.

    Returns:
        A new dict: the defaults in their order, then the added pragmas; names
        lower-cased.

    Raises:
        appdb.InvalidPragmaError: ``pragmas`` is not a mapping, or one of its names or
            values is rejected (the message names it); a ``None`` value is rejected.
    """
    merged: dict[str, object] = dict(DEFAULT_PRAGMAS)
    if pragmas is None:
        return merged
    if not isinstance(pragmas, Mapping):
        raise InvalidPragmaError(f"pragmas must be a mapping of name to value, not {type(pragmas).__name__}")
    for name, value in pragmas.items():
        if value is None:
            raise InvalidPragmaError(f"invalid value None for pragma {name!r}")
        pragma_sql(name, value)  # validates name and value
        if isinstance(value, str):
            value = str.__str__(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = int(value)
        merged[str.__str__(name).lower()] = value
    return merged
