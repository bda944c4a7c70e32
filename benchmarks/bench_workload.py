"""The benchmark's data: schema, SQL of every trial, and the template database.

The shape follows better-sqlite3's published benchmark: a ``small`` table of
10,000 identical rows with a null, an integer, a real, a text and a blob column.
A second table, ``big``, has the same shape and feeds the full-scan trial.
Every contender gets its own byte-for-byte copy of one template file.
"""

from __future__ import annotations

import os
import shutil
from itertools import repeat

import apsw

__all__ = [
    "COLUMNS",
    "PRAGMAS",
    "ROW",
    "SMALL_ROWS",
    "SQL_ALL",
    "SQL_GET",
    "SQL_INSERT",
    "SQL_PROBE_COUNT",
    "SQL_PROBE_INSERT",
    "SQL_SCAN",
    "build_template",
    "fresh_copy",
    "pragma_statements",
]

#: One row of the ``small`` table, exactly as better-sqlite3's benchmark seeds it.
ROW: tuple[None, int, float, str, bytes] = (None, 0x7FFFFFFF, 1 / 3, "this is the text", b"this is the blob")
COLUMNS: tuple[str, ...] = ("nul", "integer", "real", "text", "blob")
SMALL_ROWS = 10_000

_SHAPE = "(nul, integer INTEGER, real REAL, text TEXT, blob BLOB)"
SQL_GET = "SELECT * FROM small WHERE rowid = ?"
SQL_ALL = "SELECT * FROM small WHERE rowid >= ? LIMIT 100"
SQL_INSERT = "INSERT INTO small (nul, integer, real, text, blob) VALUES (?, ?, ?, ?, ?)"
SQL_SCAN = "SELECT * FROM big"
# A side table the read-snapshot check writes to (never read by a trial).
SQL_PROBE_INSERT = "INSERT INTO probe (x) VALUES (1)"
SQL_PROBE_COUNT = "SELECT count(*) FROM probe"


def _default_pragmas() -> dict[str, int | str | bool]:
    from appdb import DEFAULT_PRAGMAS

    return dict(DEFAULT_PRAGMAS)


#: appdb's defaults; every contender's connection gets exactly these.
PRAGMAS = _default_pragmas()


def pragma_statements() -> list[str]:
    """``PRAGMA name=value`` for each default pragma, in appdb's order."""
    return [f"PRAGMA {name}={value}" for name, value in PRAGMAS.items()]


def new_template(path: str) -> apsw.Connection:
    """A connection to a new, empty template file at ``path`` (old files removed), set for bulk loading."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=OFF").fetchall()
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def build_template(path: str, scan_rows: int) -> None:
    """Create the template database: ``small`` (10,000 rows), ``big`` (``scan_rows``), ``probe``."""
    conn = new_template(path)
    try:
        with conn:
            conn.execute(f"CREATE TABLE small {_SHAPE}")
            conn.execute(f"CREATE TABLE big {_SHAPE}")
            conn.execute("CREATE TABLE probe (x)")
            cursor = conn.cursor()
            cursor.executemany("INSERT INTO small VALUES (?, ?, ?, ?, ?)", repeat(ROW, SMALL_ROWS))
            cursor.executemany("INSERT INTO big VALUES (?, ?, ?, ?, ?)", repeat(ROW, scan_rows))
        # WAL is persistent in the file, so every copy starts in WAL mode.
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            raise RuntimeError(f"template database left a {suffix} file behind: {path}{suffix}")


def fresh_copy(template: str, dest: str) -> str:
    """Copy the (closed, checkpointed) template file to ``dest`` and return ``dest``."""
    shutil.copyfile(template, dest)
    return dest
