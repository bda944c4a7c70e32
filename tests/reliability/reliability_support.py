"""Shared helpers of the reliability suite (not a test module): child processes and checks.

The ``impl``, ``db`` and ``db_path`` fixtures come from ``tests/conftest.py`` and
parametrize every test over both twins; child processes pick the same twin the way
users do, through ``APPDB_NO_EXTENSIONS`` in their environment, so a test of the
``python`` twin never runs compiled code in its children.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import apsw
import pytest

from appdb import _select
from conftest import impl_name

WORKER = Path(__file__).resolve().parent / "worker.py"


def spawn(
    impl: ModuleType, command: str, path: os.PathLike[str] | str, *args: object
) -> subprocess.Popen[str]:
    """Start ``worker.py`` for ``command`` with the given twin; stdout is a text pipe."""
    name = impl_name(impl)
    return subprocess.Popen(
        [sys.executable, str(WORKER), name, command, str(path), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(Path(path).parent),
        env=_select.environment(name),
    )


def expect_line(process: subprocess.Popen[str], prefix: str) -> str:
    """The next stdout line of ``process``, which must start with ``prefix``."""
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith(prefix):
        _, err = process.communicate(timeout=30)
        pytest.fail(f"child said {line!r} instead of {prefix!r}; stderr:\n{err}")
    return line


def integrity(path: os.PathLike[str] | str) -> list[str]:
    """``PRAGMA integrity_check`` plus ``foreign_key_check`` through a plain APSW connection."""
    connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        problems += [repr(row) for row in connection.execute("PRAGMA foreign_key_check")]
    finally:
        connection.close()
    return problems


def twin_modules() -> dict[str, ModuleType]:
    """Both twins (only the pure-Python one when APPDB_NO_EXTENSIONS=1 says so)."""
    names = ["python"] if _select.NO_EXTENSIONS else ["python", "cython"]
    return {name: _select.load(name) for name in names}


def open_with(module: ModuleType, path: os.PathLike[str] | str, **options: object):  # type: ignore[no-untyped-def]
    """``init_database`` on a given twin, whatever the live one is."""
    import appdb

    with _select.using(impl_name(module)):
        return appdb.init_database(path, **options)  # type: ignore[arg-type]
