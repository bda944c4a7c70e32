"""Find migrations in a directory or an importable package; errors name the file."""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from types import ModuleType
from typing import Protocol, Union

from ..errors import MigrationError
from .model import Migration, checksum_text

__all__ = ["FILE_PATTERN", "MigrationSource", "discover_migrations", "parse_sql", "resolve_migrations"]

#: ``{version}_{name}.py`` or ``{version}_{name}.sql``.
FILE_PATTERN = re.compile(r"(?P<version>[0-9]+)_(?P<name>[A-Za-z0-9_]+)\.(?P<ext>py|sql)\Z")

MigrationSource = Union[str, "os.PathLike[str]", Sequence[Migration]]

_MARKER = re.compile(r"\s*--\s*migrate:\s*(?P<section>[A-Za-z]+)\s*\Z", re.IGNORECASE)
_HEADER = re.compile(
    r"\s*--\s*(?P<key>destructive|transactional|foreign_keys)\s*:\s*(?P<value>\S*)\s*\Z", re.I
)
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def discover_migrations(source: str | os.PathLike[str]) -> list[Migration]:
    """Load every migration file from a directory path or an importable package name.

    Files are ``{version}_{name}.py`` (exposing ``migration = Migration(...)`` or
    module-level ``up(db)``, optional ``down(db)``, ``destructive``, ``transactional``
    and ``foreign_keys``) and ``{version}_{name}.sql`` (sections ``-- migrate:up`` and
    ``-- migrate:down`` after optional ``-- destructive: true``, ``-- transactional:
    false`` and ``-- foreign_keys: off`` header lines). Returns them sorted by version;
    raises ``MigrationError`` naming the offending file.
    """
    text = os.fspath(source)
    if os.path.isdir(text):
        return _collect(_DirRoot(text), package=None)
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
    return _collect(importlib.resources.files(text), package=text)


def resolve_migrations(source: MigrationSource) -> list[Migration]:
    """A directory, package name or sequence of ``Migration`` as a sorted, checked list."""
    if isinstance(source, (str, os.PathLike)):
        return discover_migrations(source)
    migrations = list(source)
    for item in migrations:
        if not isinstance(item, Migration):
            raise TypeError(f"migrations must be Migration objects, not {type(item).__name__}: {item!r}")
    _check_unique(migrations)
    return sorted(migrations, key=lambda m: m.version)


class _Entry(Protocol):
    """The few ``importlib.resources`` ``Traversable`` operations discovery needs."""

    @property
    def name(self) -> str: ...
    def iterdir(self) -> Iterable[_Entry]: ...
    def is_file(self) -> bool: ...
    def read_bytes(self) -> bytes: ...


class _DirRoot:
    """The few ``Traversable`` operations discovery needs, over a plain directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.basename(path)

    def iterdir(self) -> Iterable[_DirRoot]:
        return [_DirRoot(os.path.join(self.path, n)) for n in sorted(os.listdir(self.path))]

    def is_file(self) -> bool:
        return os.path.isfile(self.path)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read()

    def __str__(self) -> str:
        return self.path


def _collect(root: _Entry, package: str | None) -> list[Migration]:
    migrations: list[Migration] = []
    for entry in root.iterdir():
        name = entry.name
        if name.startswith(("_", ".")) or not entry.is_file() or not name.endswith((".py", ".sql")):
            continue
        where = str(entry) if package is None else f"{package}/{name}"
        match = FILE_PATTERN.match(name)
        if match is None:
            raise MigrationError(
                f"migration file {where}: the name does not match {{version}}_{{name}}.py or .sql "
                "(for example 002_add_audit_log.sql)"
            )
        version = int(match["version"])
        if version < 1:
            raise MigrationError(f"migration file {where}: the version must be 1 or more")
        try:
            text = entry.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"migration file {where}: not valid UTF-8 ({exc})") from exc
        if match["ext"] == "sql":
            migration = parse_sql(text, version, match["name"], where)
        else:
            module = _load_module(entry, package, where)
            migration = _from_module(module, version, match["name"], where)
        migrations.append(replace(migration, checksum=checksum_text(text), source=where))
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


def _flag(value: str, key: str, where: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise MigrationError(
        f"migration file {where}: '-- {key}:' must be true or false (or on/off), not {value!r}"
    )


def parse_sql(text: str, version: int, name: str, where: str) -> Migration:
    """Parse an SQL migration file's header and ``-- migrate:up``/``-- migrate:down`` sections."""
    sections: dict[str, list[str]] = {}
    flags = {"destructive": False, "transactional": True, "foreign_keys": True}
    current: str | None = None
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        marker = _MARKER.match(line)
        if marker:
            section = marker["section"].lower()
            if section not in ("up", "down"):
                raise MigrationError(
                    f"migration file {where}, line {number}: unknown section 'migrate:{section}'"
                )
            if section in sections:
                raise MigrationError(
                    f"migration file {where}, line {number}: a second '-- migrate:{section}'"
                )
            current = section
            sections[section] = []
            continue
        header = _HEADER.match(line)
        if header and current is None:
            flags[header["key"].lower()] = _flag(header["value"], header["key"].lower(), where)
            continue
        if current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("--"):
            raise MigrationError(
                f"migration file {where}, line {number}: SQL before '-- migrate:up' "
                "(move it into the up section)"
            )
    up = "\n".join(sections.get("up", [])).strip()
    if not up:
        raise MigrationError(f"migration file {where}: no '-- migrate:up' section with SQL in it")
    down = "\n".join(sections["down"]).strip() if "down" in sections else ""
    return Migration(
        version,
        name,
        up,
        down or None,
        destructive=flags["destructive"],
        transactional=flags["transactional"],
        foreign_keys=flags["foreign_keys"],
        source=where,
    )


def _load_module(entry: _Entry, package: str | None, where: str) -> ModuleType:
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
