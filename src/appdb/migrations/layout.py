"""Which files in a migrations folder make up each migration, and its version and name.

- ``{version}_{name}.sql`` / ``.py``: one file per migration (appdb, dbmate, goose, sqlx).
- ``{version}_{name}.up.sql`` with an optional ``{version}_{name}.down.sql`` (golang-migrate,
  sqlx): a ``.down.sql`` without its ``.up.sql`` is an error.
- a folder ``{version}_{name}/`` holding ``up.sql`` and optionally ``down.sql`` and
  ``metadata.toml`` (diesel): dashes in the version are dropped
  (``2015-11-29-054053_create_users`` is 20151129054053). diesel's
  ``00000000000000_diesel_initial_setup`` (Postgres helper functions, which diesel makes
  only for Postgres) is skipped. Folders without any of those files are ignored.

Names are letters, digits, ``_`` and ``-``; versions are 1 or more. Entries whose name
starts with ``_`` or ``.`` are ignored, as are files that are neither ``.sql`` nor ``.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import MigrationError

__all__ = ["DIESEL_SETUP", "FILE_PATTERN", "Entry", "Unit", "find_units"]

#: ``{version}_{name}.py``, ``.sql``, ``.up.sql`` or ``.down.sql`` (``direction`` is set for the last two).
FILE_PATTERN = re.compile(
    r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_-]+)(?:\.(?P<direction>up|down)(?=\.sql\Z))?\.(?P<ext>py|sql)\Z"
)
_FOLDER = re.compile(r"(?P<version>[0-9]+(?:-[0-9]+)*)_(?P<name>[A-Za-z0-9_-]+)\Z")
#: The files of a diesel migration folder, in checksum order.
FOLDER_FILES = ("up.sql", "down.sql", "metadata.toml")
#: diesel's Postgres-only setup folder, skipped.
DIESEL_SETUP = "00000000000000_diesel_initial_setup"


class Entry(Protocol):
    """The few ``importlib.resources`` ``Traversable`` operations discovery needs."""

    @property
    def name(self) -> str: ...
    def iterdir(self) -> Iterable[Entry]: ...
    def is_file(self) -> bool: ...
    def is_dir(self) -> bool: ...
    def read_bytes(self) -> bytes: ...


@dataclass
class Unit:
    """One migration's files: ``parts`` maps ``sql``/``py``/``up.sql``/``down.sql``/``metadata.toml``
    to the entry and the path to cite for it; ``where`` is the path cited for the migration."""

    version: int
    name: str
    where: str
    parts: dict[str, tuple[Entry, str]] = field(default_factory=dict)


def find_units(root: Entry, where: str, package: bool) -> list[Unit]:
    """The migrations in ``root`` (cited as ``where``), unsorted; bad names raise ``MigrationError``."""
    units: list[Unit] = []
    halves: dict[int, dict[str, tuple[str, Entry, str]]] = {}
    for entry in root.iterdir():
        name = entry.name
        if name.startswith(("_", ".")):
            continue
        path = _join(where, name, package)
        if entry.is_dir():
            units += _folder(entry, path, package)
            continue
        if not entry.is_file() or not name.endswith((".py", ".sql")):
            continue
        match = FILE_PATTERN.match(name)
        if match is None:
            raise MigrationError(
                f"migration file {path}: the name does not match {{version}}_{{name}}.sql, .py, "
                ".up.sql or .down.sql (for example 002_add_audit_log.sql; a name is letters, "
                "digits, '_' and '-')"
            )
        version = _version(match["version"], path)
        if match["direction"] is None:
            units.append(Unit(version, match["name"], path, {match["ext"]: (entry, path)}))
            continue
        pair = halves.setdefault(version, {})
        other = pair.get(match["direction"])
        if other is not None:
            raise MigrationError(f"duplicate migration version {version}: {other[2]} and {path}")
        pair[match["direction"]] = (match["name"], entry, path)
    return units + [_pair(version, pair) for version, pair in halves.items()]


def _join(where: str, name: str, package: bool) -> str:
    return f"{where}/{name}" if package else os.path.join(where, name)


def _version(digits: str, path: str) -> int:
    version = int(digits)
    if version < 1:
        raise MigrationError(f"migration file {path}: the version must be 1 or more")
    return version


def _pair(version: int, pair: dict[str, tuple[str, Entry, str]]) -> Unit:
    up, down = pair.get("up"), pair.get("down")
    if up is None:
        assert down is not None
        raise MigrationError(
            f"migration file {down[2]}: a .down.sql without its .up.sql (add "
            f"{version}_{down[0]}.up.sql, or remove this file)"
        )
    if down is not None and down[0] != up[0]:
        raise MigrationError(
            f"migration files {up[2]} and {down[2]}: the up and down files of version {version} "
            "have different names (rename one to match the other)"
        )
    unit = Unit(version, up[0], up[2], {"up.sql": (up[1], up[2])})
    if down is not None:
        unit.parts["down.sql"] = (down[1], down[2])
    return unit


def _folder(folder: Entry, path: str, package: bool) -> list[Unit]:
    """A diesel migration folder as a one-item list; ``[]`` for any other folder and diesel's setup."""
    found = {e.name: e for e in folder.iterdir() if e.name in FOLDER_FILES and e.is_file()}
    if not found or folder.name == DIESEL_SETUP:
        return []
    match = _FOLDER.match(folder.name)
    if match is None:
        raise MigrationError(
            f"migration folder {path}: the name does not match diesel's {{version}}_{{name}} "
            "(for example 2015-11-29-054053_create_users)"
        )
    version = _version(match["version"].replace("-", ""), path)
    if "up.sql" not in found:
        raise MigrationError(
            f"migration folder {path}: no up.sql (a migration folder needs up.sql; down.sql "
            "and metadata.toml are optional)"
        )
    unit = Unit(version, match["name"], path)
    for part in FOLDER_FILES:
        if part in found:
            unit.parts[part] = (found[part], _join(path, part, package))
    return [unit]
