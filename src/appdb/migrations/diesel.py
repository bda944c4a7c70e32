"""diesel's ``metadata.toml``: whether a migration folder runs in a transaction."""

from __future__ import annotations

import importlib
import re
from typing import Any

from ..errors import MigrationError

__all__ = ["run_in_transaction"]

_KEY = "run_in_transaction"
_LINE = re.compile(r"(?P<key>[A-Za-z0-9_-]+)\s*=\s*(?P<value>true|false)\s*(?:#.*)?\Z")


def run_in_transaction(text: str, where: str) -> bool | None:
    """``run_in_transaction`` from a ``metadata.toml``'s text (``None`` when absent).

    Read with ``tomllib`` (Python 3.11+); without it, only ``key = true|false`` lines
    and comments are understood. Any key but ``run_in_transaction`` is an error.
    """
    table = _load(text, where)
    unknown = sorted(set(table) - {_KEY})
    if unknown:
        raise MigrationError(
            f"migration file {where}: unknown key {', '.join(map(repr, unknown))} (diesel's "
            f"metadata.toml holds only '{_KEY} = false')"
        )
    value = table.get(_KEY)
    if value is not None and not isinstance(value, bool):
        raise MigrationError(f"migration file {where}: '{_KEY}' must be true or false, not {value!r}")
    return value


def _load(text: str, where: str) -> dict[str, Any]:
    try:
        tomllib = importlib.import_module("tomllib")
    except ImportError:
        return _simple(text, where)
    try:
        table: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MigrationError(f"migration file {where}: not valid TOML ({exc})") from exc
    return table


def _simple(text: str, where: str) -> dict[str, Any]:
    """The ``key = true|false`` lines of ``text``, for Pythons without ``tomllib``."""
    table: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            raise MigrationError(
                f"migration file {where}, line {number}: on Python 3.10 appdb reads only "
                f"'{_KEY} = true|false' lines here, not {stripped!r}"
            )
        table[match["key"]] = match["value"] == "true"
    return table
