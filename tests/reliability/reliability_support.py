"""Shared helpers of the reliability suite (not a test module): child processes and checks.

The ``impl``, ``db`` and ``db_path`` fixtures come from ``tests/conftest.py`` and
parametrize every test over both twins; child processes are told which twin to
use, so a test of the ``python`` twin never runs compiled code in its children.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import apsw
import pytest

WORKER = Path(__file__).resolve().parent / "worker.py"


def impl_name(impl: ModuleType) -> str:
    return "python" if impl.__name__.endswith("_py") else "cython"


def spawn(
    impl: ModuleType, command: str, path: os.PathLike[str] | str, *args: object
) -> subprocess.Popen[str]:
    """Start ``worker.py`` for ``command`` with the given twin; stdout is a text pipe."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), impl_name(impl), command, str(path), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(Path(path).parent),
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
    import importlib

    twins = {"python": importlib.import_module("appdb._fastcache_py")}
    if os.environ.get("APPDB_NO_EXTENSIONS", "") in ("", "0"):
        twins["cython"] = importlib.import_module("appdb._fastcache")
    return twins


def open_with(module: ModuleType, path: os.PathLike[str] | str, **options: object):  # type: ignore[no-untyped-def]
    """``init_database`` on a given twin, whatever the live one is."""
    import appdb
    from appdb import _select

    previous = _select.impl
    _select.impl = module
    try:
        return appdb.init_database(path, **options)  # type: ignore[arg-type]
    finally:
        _select.impl = previous
