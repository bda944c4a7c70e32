"""Every module of the package imports on its own, first, in a fresh interpreter.

An import cycle can hide in one process (whatever was imported first decides the
order) and break in another; so each module gets its own interpreter, as in
multidict's test suite. ``-W error`` also turns a warning at import into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import appdb
from appdb import _select


def _modules() -> list[str]:
    names = {"appdb"} | {m.name for m in pkgutil.walk_packages(appdb.__path__, "appdb.")}
    # Listed only when built: a missing compiled module fails below, unless the
    # run says the install is pure Python on purpose.
    names.add("appdb._fastcache")
    if _select.NO_EXTENSIONS and importlib.util.find_spec("appdb._fastcache") is None:
        names.discard("appdb._fastcache")
    # Importing __main__ runs the command line; it is checked through ``python -m appdb``.
    names.discard("appdb.__main__")
    return sorted(names)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    source_root = str(Path(appdb.__file__).resolve().parents[1])  # this appdb, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-W", "error", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_module_list_is_complete() -> None:
    modules = _modules()
    assert {"appdb._ledger", "appdb._select", "appdb.database", "appdb.migrations.ledger"} <= set(modules)


@pytest.mark.parametrize("module", _modules())
def test_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = _run("-c", f"import {module}")
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr}"


def test_python_m_appdb_imports() -> None:
    done = _run("-m", "appdb", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"appdb {appdb.__version__}"
