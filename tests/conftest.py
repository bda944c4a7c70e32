"""Every test runs against both implementations of the hot path.

The ``impl`` fixture swaps the twin that ``init_database`` builds on; ``db``
opens a real WAL database file in the test's temporary folder.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import appdb
from appdb import _select

NO_EXTENSIONS = os.environ.get("APPDB_NO_EXTENSIONS", "") not in ("", "0")


def _implementations() -> list[str]:
    names = ["python"]
    if not NO_EXTENSIONS:
        names.insert(0, "cython")
    return names


def load_impl(name: str) -> ModuleType:
    if name == "python":
        return importlib.import_module("appdb._fastcache_py")
    # A missing compiled module is a failure, not a skip: set APPDB_NO_EXTENSIONS=1
    # to test a pure-Python install on purpose.
    return importlib.import_module("appdb._fastcache")


@pytest.fixture(params=_implementations())
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = load_impl(request.param)
    monkeypatch.setattr(_select, "impl", module)
    yield module


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "app.db"


@pytest.fixture
def db(impl: ModuleType, db_path: Path) -> Iterator[appdb.AppDatabase]:
    database = appdb.init_database(db_path)
    yield database
    database.close()


@pytest.fixture
def small(db: appdb.AppDatabase) -> appdb.AppDatabase:
    """``db`` with a 5-row table ``t(id, name, score)``."""
    db.exec(
        """
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL);
        INSERT INTO t (name, score) VALUES ('a', 1.5), ('b', 2.5), ('c', NULL), ('d', 4.0), ('e', 5.0);
        """
    )
    return db


def open_snapshots(db: appdb.AppDatabase) -> int:
    """Read snapshots still open on any of ``db``'s connections (busy readers included)."""
    status = db.pool_status()
    return status.busy + status.snapshots
