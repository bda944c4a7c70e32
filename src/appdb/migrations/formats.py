"""The text of an SQL migration file, in the formats appdb reads, as up and down steps.

- appdb and dbmate: ``-- migrate:up`` and ``-- migrate:down`` sections; dbmate's
  ``transaction:false`` may follow either marker on its line.
- goose: ``-- +goose Up`` and ``-- +goose Down`` sections; ``StatementBegin`` and
  ``StatementEnd`` lines are dropped (what is between them is kept as it is), ``NO
  TRANSACTION`` makes the migration non-transactional; directives are read as goose
  reads them (case and spaces do not matter).
- plain SQL (sqlx, golang-migrate, diesel): no markers, the whole file is one step;
  sqlx's ``-- no-transaction`` makes it non-transactional.

Header lines (see :mod:`.options`) may open a file in any format. A UTF-8 byte-order
mark is dropped. Markers of two formats in one file, other tools' directives and
near-misses of a marker are errors naming the line.
"""

from __future__ import annotations

import re

from ..errors import MigrationError
from .model import Migration
from .options import Options, flag, read_header

__all__ = ["lines_of", "parse_sql", "parse_step", "strip_bom"]

_MIGRATE = re.compile(r"\s*--\s*migrate:\s*(?P<section>[A-Za-z]+)(?P<options>(?:[ \t]+\S+)*)\s*\Z", re.I)
_MIGRATE_LIKE = re.compile(r"\s*--\s*migrate\s*[-_:\s]\s*(?:up|down)(?:\s+\S+:\S*)*\s*\Z", re.I)
_DIRECTIVE = re.compile(r"\s*--\s*\+(?P<tool>[A-Za-z][A-Za-z0-9_-]*)(?P<rest>.*)\Z")
_GOOSE_LIKE = re.compile(r"\s*--\s*(?:\+\s+goose|goose)\s+(?:up|down)\b", re.I)
_NO_TRANSACTION = re.compile(r"\s*--\s*no-transaction\s*\Z", re.I)
_GOOSE_IGNORED = frozenset({"envsuboff", "envsubstoff"})
_GOOSE_ENVSUB = frozenset({"envsubon", "envsubston"})


def strip_bom(text: str) -> str:
    """``text`` without a leading UTF-8 byte-order mark."""
    return text[1:] if text.startswith("\ufeff") else text


def lines_of(text: str) -> list[str]:
    """The lines of ``text``, byte-order mark dropped and line endings normalised."""
    return strip_bom(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_sql(text: str, version: int, name: str, where: str) -> Migration:
    """Parse the text of an SQL migration file into a ``Migration``.

    Reads appdb's and dbmate's ``-- migrate:up``/``-- migrate:down`` sections, goose's
    ``-- +goose Up``/``-- +goose Down`` sections, or a plain file that is the up step
    as a whole (sqlx, golang-migrate, diesel), after optional header lines
    (``-- destructive: true``, ``-- transactional: false``, ``-- foreign_keys: off``).

    Args:
        text: The file's text.
        version: The migration's version.
        name: The migration's name.
        where: What to call the file in messages (its path); also the ``source``.

    Returns:
        The migration; its checksum is the hash of its steps (discovery replaces it
        with the hash of the file).

    Raises:
        appdb.MigrationError: The text has no SQL, mixes two formats' markers, has
            another tool's directive, a near-miss of a marker or an invalid header
            line (the message names the line).
    """
    options = Options(where)
    lines = lines_of(text)
    kind, _ = _format(lines, where)
    if kind == "goose":
        up, down = _goose(lines, options)
    elif kind == "migrate":
        up, down = _sections(lines, options)
    else:
        whole = _whole(lines, options)
        if whole is None:
            raise MigrationError(
                f"migration file {where}: no SQL in it (a file without '-- migrate:up' or "
                "'-- +goose Up' markers is the up step as a whole)"
            )
        up, down = whole, None
    return options.migration(version, name, up, down, source=where)


def parse_step(text: str, options: Options) -> str | None:
    """One file that is one step as a whole (``.up.sql``, diesel's ``down.sql``); ``None`` if no SQL.

    Its header lines go into ``options``, whose ``where`` names the file.
    """
    lines = lines_of(text)
    kind, line = _format(lines, options.where)
    if kind != "plain":
        raise MigrationError(
            f"migration file {options.where}, line {line}: this file is one step as a whole, "
            f"so it takes no section markers: remove '{lines[line - 1].strip()}'"
        )
    return _whole(lines, options)


def _format(lines: list[str], where: str) -> tuple[str, int]:
    """``("goose" | "migrate" | "plain", first marker's line)``; refuses mixed and unknown markers."""
    goose = migrate = 0
    for number, line in enumerate(lines, 1):
        directive = _DIRECTIVE.match(line)
        if directive is not None:
            if directive["tool"].lower() != "goose":
                raise MigrationError(
                    f"migration file {where}, line {number}: appdb does not read "
                    f"'-- +{directive['tool']}' directives; write the file with goose's "
                    "'-- +goose Up'/'-- +goose Down' or appdb's '-- migrate:up'/'-- migrate:down'"
                )
            goose = goose or number
        elif _MIGRATE.match(line):
            migrate = migrate or number
        elif _MIGRATE_LIKE.match(line) or _GOOSE_LIKE.match(line):
            raise MigrationError(
                f"migration file {where}, line {number}: {line.strip()!r} looks like a section "
                "marker but is not one: write '-- migrate:up' / '-- migrate:down' "
                "(or goose's '-- +goose Up' / '-- +goose Down')"
            )
    if goose and migrate:
        raise MigrationError(
            f"migration file {where} mixes goose's '-- +goose' markers (line {goose}) with "
            f"appdb/dbmate's '-- migrate:' markers (line {migrate}): keep one format per file"
        )
    if goose:
        return "goose", goose
    return ("migrate", migrate) if migrate else ("plain", 0)


def _is_sql(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("--")


def _preamble(line: str, number: int, options: Options) -> bool:
    """Read a line before the first section: ``False`` if it is SQL, else apply it if it is a header."""
    if _is_sql(line):
        return False
    if _NO_TRANSACTION.match(line):
        options.set("transactional", False, number)
    else:
        read_header(line, number, options)
    return True


def _whole(lines: list[str], options: Options) -> str | None:
    for number, line in enumerate(lines, 1):
        if not _preamble(line, number, options):
            return "\n".join(lines).strip()
    return None


def _marker_options(text: str, number: int, options: Options) -> None:
    """dbmate's ``key:value`` options after ``-- migrate:up``: only ``transaction:true|false``."""
    for pair in text.split():
        key, _, value = pair.partition(":")
        parsed = flag(value) if key == "transaction" else None
        if parsed is None:
            raise MigrationError(
                f"migration file {options.where}, line {number}: unknown option {pair!r} after "
                "the marker (the one option is dbmate's 'transaction:false')"
            )
        options.set("transactional", parsed, number)


def _sections(lines: list[str], options: Options) -> tuple[str, str | None]:
    where = options.where
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for number, line in enumerate(lines, 1):
        marker = _MIGRATE.match(line)
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
            _marker_options(marker["options"], number, options)
            current = section
            sections[section] = []
        else:
            _take(line, number, options, sections, current, "-- migrate:up")
    return _steps(sections, where, "'-- migrate:up'")


def _take(
    line: str, number: int, options: Options, sections: dict[str, list[str]], current: str | None, up: str
) -> None:
    """A line that is no marker: into the current section, else read before the first (``up``) one."""
    if current is not None:
        sections[current].append(line)
    elif not _preamble(line, number, options):
        raise MigrationError(
            f"migration file {options.where}, line {number}: SQL before '{up}' (move it into that section)"
        )


def _steps(sections: dict[str, list[str]], where: str, up_marker: str) -> tuple[str, str | None]:
    up = "\n".join(sections.get("up", [])).strip()
    if not up:
        raise MigrationError(f"migration file {where}: no {up_marker} section with SQL in it")
    down = "\n".join(sections["down"]).strip() if "down" in sections else ""
    return up, down or None


def _goose(lines: list[str], options: Options) -> tuple[str, str | None]:
    where = options.where
    sections: dict[str, list[str]] = {}
    current: str | None = None
    begun = 0  # line of an open StatementBegin
    for number, line in enumerate(lines, 1):
        directive = _DIRECTIVE.match(line)
        if directive is None:
            _take(line, number, options, sections, current, "-- +goose Up")
            continue
        at = f"migration file {where}, line {number}"
        word = re.sub(r"\s+", "", directive["rest"]).lower()
        if begun and word in ("up", "down", "statementbegin"):
            raise MigrationError(
                f"{at}: the '-- +goose StatementBegin' of line {begun} has no "
                "'-- +goose StatementEnd' before this line"
            )
        if word in ("up", "down"):
            if word in sections or (word == "up" and "down" in sections):
                raise MigrationError(f"{at}: a second '-- +goose Up' or '-- +goose Down', or Up after Down")
            if word == "down" and "up" not in sections:
                raise MigrationError(f"{at}: '-- +goose Down' before '-- +goose Up'")
            current = word
            sections[word] = []
        elif word == "statementbegin":
            if current is None:
                raise MigrationError(f"{at}: '-- +goose StatementBegin' before '-- +goose Up'")
            begun = number
        elif word == "statementend":
            if not begun:
                raise MigrationError(f"{at}: '-- +goose StatementEnd' without a '-- +goose StatementBegin'")
            begun = 0
        elif word == "notransaction":
            options.set("transactional", False, number)
        elif word in _GOOSE_ENVSUB:
            raise MigrationError(
                f"{at}: appdb does not substitute environment variables; remove "
                f"'{line.strip()}' and write the values into the SQL"
            )
        elif word not in _GOOSE_IGNORED:
            raise MigrationError(
                f"{at}: unknown goose directive '{line.strip()}' (goose knows Up, Down, "
                "StatementBegin, StatementEnd, NO TRANSACTION and ENVSUB ON/OFF)"
            )
    if begun:
        raise MigrationError(
            f"migration file {where}, line {begun}: '-- +goose StatementBegin' has no "
            "'-- +goose StatementEnd'"
        )
    return _steps(sections, where, "'-- +goose Up'")
