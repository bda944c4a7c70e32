"""A migration file's options (destructive, transactional, foreign_keys) and appdb's header rule.

A comment line before a file's first section marker (or, in a file without markers,
before its first SQL line) is a *header* when its text begins with a word and a colon
and that word is one of the keys below, or close to one (``destructiv:``,
``transaction:``): a known key takes exactly one value (true/false, on/off, yes/no,
1/0) and nothing else; a near-miss key is an error naming the key it resembles. A key
written without its colon (``-- destructive true``) is an error too. Every other
comment (``-- Note: adds users``, ``-- author: ann``, ``-- create the users table``)
stays a comment.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from ..errors import MigrationError
from .model import Migration

__all__ = ["KEYS", "Options", "flag", "read_header"]

#: Header keys and their defaults.
KEYS: dict[str, bool] = {"destructive": False, "transactional": True, "foreign_keys": True}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_VALUES = "true or false (or on/off, yes/no, 1/0)"

_COMMENT = re.compile(r"\s*--(?P<body>.*)\Z", re.S)
_KEYED = re.compile(r"\s*(?P<key>[A-Za-z][A-Za-z0-9_ \t-]*?)\s*:(?P<rest>.*)\Z", re.S)
_UNCOLONED = re.compile(r"\s*(?P<key>[A-Za-z][A-Za-z0-9_-]*)(?:\s*=\s*|\s+)(?P<value>\S+)\s*\Z")
_CLOSE = 0.8


def flag(value: str) -> bool | None:
    """``True``/``False`` for a header value, ``None`` when it is not one."""
    lowered = value.lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _known(word: str) -> str | None:
    """The header key ``word`` is or resembles, else ``None``."""
    normal = re.sub(r"[\s-]+", "_", word.strip().lower())
    close = difflib.get_close_matches(normal, KEYS, n=1, cutoff=_CLOSE)
    return close[0] if close else None


@dataclass
class Options:
    """Options collected from one migration's files; a contradiction is an error.

    ``where`` is the file being read (it changes as a migration's files are read).
    """

    where: str
    values: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def set(self, key: str, value: bool, line: int | None = None) -> None:
        """Record ``key = value`` from ``line`` of the current file; a contradiction is an error."""
        here = self.where if line is None else f"{self.where}, line {line}"
        earlier = self.values.get(key)
        if earlier is None:
            self.values[key] = (value, here)
        elif earlier[0] != value:
            raise MigrationError(
                f"migration file {here}: sets {key} {str(value).lower()} but {earlier[1]} set it "
                f"{str(earlier[0]).lower()} (appdb keeps one setting per migration: remove one of them)"
            )

    def get(self, key: str) -> bool:
        """The value set for ``key``, or its default."""
        found = self.values.get(key)
        return KEYS[key] if found is None else found[0]

    def migration(
        self, version: int, name: str, up: str, down: str | None, *, source: str, checksum: str = ""
    ) -> Migration:
        """A ``Migration`` of these steps with these options."""
        return Migration(
            version,
            name,
            up,
            down,
            destructive=self.get("destructive"),
            transactional=self.get("transactional"),
            foreign_keys=self.get("foreign_keys"),
            checksum=checksum,
            source=source,
        )


def read_header(line: str, number: int, options: Options) -> bool:
    """Apply ``line`` to ``options`` if it is a header and say so; raise if it is a malformed one."""
    comment = _COMMENT.match(line)
    if comment is None:
        return False
    body = comment["body"]
    where = f"migration file {options.where}, line {number}"
    keyed = _KEYED.match(body)
    if keyed is not None:
        key = _known(keyed["key"])
        if key is None:
            return False
        if key != keyed["key"].lower():
            raise MigrationError(
                f"{where}: unknown header '-- {keyed['key']}:'; did you mean '-- {key}:'? "
                f"(the headers are {', '.join(KEYS)})"
            )
        value = keyed["rest"].strip()
        parsed = flag(value)
        if parsed is None:
            raise MigrationError(
                f"{where}: '-- {key}:' must be {_VALUES} with nothing after it, not "
                f"{value!r} (put a remark on a comment line of its own)"
            )
        options.set(key, parsed, number)
        return True
    uncoloned = _UNCOLONED.match(body)
    bare = body.strip()
    key = _known(uncoloned["key"]) if uncoloned else _known(bare) if bare.isidentifier() else None
    if key is not None and (uncoloned is None or flag(uncoloned["value"]) is not None):
        value = uncoloned["value"] if uncoloned else "true"
        raise MigrationError(f"{where}: a header needs a colon and a value: write '-- {key}: {value}'")
    return False
