"""Find migrations in a directory or an importable package; errors name the file.

Which files make up each migration is :mod:`.layout`'s job, reading SQL text
:mod:`.formats`'; this module loads Python files and sets each migration's checksum:
the SHA-256 of its file's text (line endings normalised, an SQL file's byte-order mark
dropped), or, for a migration made of several files (``.up.sql`` + ``.down.sql``, a
diesel folder), of each file's text after a line naming it (``-- up.sql --``), in the
order ``up.sql``, ``down.sql``, ``metadata.toml``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from types import ModuleType
from typing import Union

from ..errors import MigrationError
from .diesel import run_in_transaction
from .formats import parse_sql, parse_step, strip_bom
from .layout import FILE_PATTERN, Entry, Unit, find_units
from .model import Migration, checksum_text
from .options import Options

__all__ = ["FILE_PATTERN", "MigrationSource", "discover_migrations", "parse_sql", "resolve_migrations"]

MigrationSource = Union[str, "os.PathLike[str]", Sequence[Migration]]

_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def discover_migrations(source: str | os.PathLike[str]) -> list[Migration]:
    """Load every migration from a directory path or an importable package name.

    Reads appdb's ``{version}_{name}.sql`` (``-- migrate:up``/``-- migrate:down``
    sections after optional ``-- destructive: true``, ``-- transactional: false`` and
    ``-- foreign_keys: off`` header lines) and ``{version}_{name}.py`` (``migration =
    Migration(...)`` or module-level ``up(db)``, optional ``down(db)``, ``destructive``,
    ``transactional``, ``foreign_keys``), and other tools' folders as they are: dbmate,
    goose, sqlx, golang-migrate (``.up.sql``/``.down.sql``) and diesel (one folder per
    migration).

    Args:
        source: A directory, or the dotted name of an importable package that holds
            the migration files.

    Returns:
        The migrations, sorted by version.

    Raises:
        appdb.MigrationError: ``source`` is neither a directory nor an importable
            package, or a file is invalid (the message names it): a bad name or
            format, two migrations with the same version, not UTF-8, a Python file
            that fails to import or defines no migration.
    """
    text = os.fspath(source)
    if os.path.isdir(text):
        return _collect(_DirRoot(text), text, package=False)
    if not isinstance(source, str) or os.path.exists(text):
        raise MigrationError(f"migrations source {text!r} is not a directory")
    if not _PACKAGE_NAME.match(text):
        raise MigrationError(
            f"migrations source {text!r} is neither a directory nor an importable package name"
        )
    try:
        package = importlib.import_module(text)
    except ImportError as exc:
        raise MigrationError(
            f"migrations source {text!r} is neither a directory nor an importable package ({exc})"
        ) from exc
    if not hasattr(package, "__path__"):
        raise MigrationError(f"migrations source {text!r} is a module, not a package of migration files")
    return _collect(importlib.resources.files(text), text, package=True)


def resolve_migrations(source: MigrationSource) -> list[Migration]:
    """A directory, package name or sequence of ``Migration`` as a sorted, checked list.

    Args:
        source: A directory, an importable package name (both read by
            [`discover_migrations`][appdb.migrations.discover_migrations]), or a
            sequence of [`Migration`][appdb.migrations.Migration] objects.

    Returns:
        The migrations, sorted by version.

    Raises:
        TypeError: The sequence holds something other than ``Migration`` objects.
        appdb.MigrationError: Two migrations share a version, or discovery failed.
    """
    if isinstance(source, (str, os.PathLike)):
        return discover_migrations(source)
    migrations = list(source)
    for item in migrations:
        if not isinstance(item, Migration):
            raise TypeError(f"migrations must be Migration objects, not {type(item).__name__}: {item!r}")
    _check_unique(migrations)
    return sorted(migrations, key=lambda m: m.version)


class _DirRoot:
    """The few ``Traversable`` operations discovery needs, over a plain directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.basename(path)

    def iterdir(self) -> list[_DirRoot]:
        return [_DirRoot(os.path.join(self.path, n)) for n in sorted(os.listdir(self.path))]

    def is_file(self) -> bool:
        return os.path.isfile(self.path)

    def is_dir(self) -> bool:
        return os.path.isdir(self.path)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read()

    def __str__(self) -> str:
        return self.path


def _collect(root: Entry, where: str, package: bool) -> list[Migration]:
    migrations = [_load(unit, where if package else None) for unit in find_units(root, where, package)]
    _check_unique(migrations)
    return sorted(migrations, key=lambda m: m.version)


def _check_unique(migrations: Sequence[Migration]) -> None:
    seen: dict[int, Migration] = {}
    for migration in migrations:
        other = seen.get(migration.version)
        if other is not None:
            raise MigrationError(
                f"duplicate migration version {migration.version}: {other.source or other.name} "
                f"and {migration.source or migration.name}"
            )
        seen[migration.version] = migration


def _read(entry: Entry, where: str) -> str:
    try:
        return entry.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationError(f"migration file {where}: not valid UTF-8 ({exc})") from exc


def _load(unit: Unit, package: str | None) -> Migration:
    """The migration ``unit``'s files define, with its checksum and source."""
    if "py" in unit.parts:
        entry, where = unit.parts["py"]
        text = _read(entry, where)
        migration = _from_module(_load_module(entry, package, where), unit.version, unit.name, where)
        return replace(migration, checksum=checksum_text(text), source=where)
    if "sql" in unit.parts:
        entry, where = unit.parts["sql"]
        text = strip_bom(_read(entry, where))
        migration = parse_sql(text, unit.version, unit.name, where)
        return replace(migration, checksum=checksum_text(text))
    return _from_parts(unit)


def _from_parts(unit: Unit) -> Migration:
    """A migration made of an up file and, optionally, a down file and diesel's ``metadata.toml``."""
    texts = {part: strip_bom(_read(entry, where)) for part, (entry, where) in unit.parts.items()}
    options = Options(unit.parts["up.sql"][1])
    up = parse_step(texts["up.sql"], options)
    if up is None:
        raise MigrationError(f"migration file {options.where}: no SQL in it")
    down = None
    if "down.sql" in texts:
        options.where = unit.parts["down.sql"][1]
        down = parse_step(texts["down.sql"], options)
    if "metadata.toml" in texts:
        options.where = unit.parts["metadata.toml"][1]
        if run_in_transaction(texts["metadata.toml"], options.where) is False:
            options.set("transactional", False)
    if len(texts) == 1:
        checksum = checksum_text(texts["up.sql"])
    else:
        checksum = checksum_text("\n".join(f"-- {part} --\n{text}" for part, text in texts.items()))
    return options.migration(unit.version, unit.name, up, down, source=unit.where, checksum=checksum)


def _load_module(entry: Entry, package: str | None, where: str) -> ModuleType:
    try:
        if package is not None:
            return importlib.import_module(f"{package}.{entry.name[:-3]}")
        path = os.path.abspath(str(entry))
        digest = hashlib.sha1(path.encode()).hexdigest()[:12]
        module_name = f"_appdb_migration_{digest}_{entry.name[:-3]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module
    except SyntaxError as exc:
        raise MigrationError(f"migration file {where}: syntax error at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        raise MigrationError(f"migration file {where} failed to import: {type(exc).__name__}: {exc}") from exc


def _from_module(module: ModuleType, version: int, name: str, where: str) -> Migration:
    found = getattr(module, "migration", None)
    if found is not None:
        if not isinstance(found, Migration):
            raise MigrationError(
                f"migration file {where}: 'migration' must be an appdb.migrations.Migration, "
                f"not {type(found).__name__}"
            )
        if found.version != version:
            raise MigrationError(
                f"migration file {where}: the file name says version {version} but the Migration "
                f"inside says {found.version}"
            )
        return found
    declared = getattr(module, "version", None)
    if declared is not None and declared != version:
        raise MigrationError(
            f"migration file {where}: the file name says version {version} but 'version' inside "
            f"says {declared!r}"
        )
    up = getattr(module, "up", None)
    if not callable(up):
        raise MigrationError(
            f"migration file {where}: defines neither 'migration = Migration(...)' nor 'up(db)'"
        )
    down = getattr(module, "down", None)
    if down is not None and not callable(down):
        raise MigrationError(f"migration file {where}: 'down' must be a function taking the database")
    options: dict[str, bool] = {}
    for key, default in (("destructive", False), ("transactional", True), ("foreign_keys", True)):
        value = getattr(module, key, default)
        if not isinstance(value, bool):
            raise MigrationError(f"migration file {where}: '{key}' must be True or False, not {value!r}")
        options[key] = value
    return Migration(
        version,
        name,
        up,
        down,
        destructive=options["destructive"],
        transactional=options["transactional"],
        foreign_keys=options["foreign_keys"],
        source=where,
    )
