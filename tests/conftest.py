"""Every test runs against both implementations of the hot path.

The ``impl`` fixture makes a twin the one ``init_database`` builds on (through
``_select.using``, never by assigning module globals); ``impl_env`` is the
environment that makes a child process pick the same twin; ``db`` opens a real
WAL database file in the test's temporary folder.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import appdb
from appdb import _select


def _implementations() -> list[str]:
    # A missing compiled module is a failure, not a skip (``_select.load`` raises):
    # set APPDB_NO_EXTENSIONS=1 to test a pure-Python install on purpose.
    # APPDB_TEST_ONLY=cython (or python) narrows the run to one twin: .ci/run uses it
    # for the compiled wheel, whose pure-Python half the source tree's run and the
    # pure-Python wheel's run already cover.
    names = ["python"] if _select.NO_EXTENSIONS else ["cython", "python"]
    only = os.environ.get("APPDB_TEST_ONLY")
    if only:
        if only not in names:
            raise pytest.UsageError(f"APPDB_TEST_ONLY={only!r}: this run can test {names}")
        names = [only]
    return names


@pytest.fixture(params=_implementations())
def impl(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    with _select.using(request.param) as module:
        yield module


@pytest.fixture
def impl_env(impl: ModuleType) -> dict[str, str]:
    """An environment under which a child process picks ``impl``'s twin, as users pick theirs."""
    return _select.environment(impl_name(impl))


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


def impl_name(impl: ModuleType) -> str:
    """``"cython"`` or ``"python"``: the name of twin ``impl``."""
    return "python" if impl.__name__.endswith("_py") else "cython"


def open_snapshots(db: appdb.AppDatabase) -> int:
    """Read snapshots still open on any of ``db``'s connections (busy readers included)."""
    status = db.pool_status()
    return status.busy + status.snapshots


#: Seconds after which a blocked call counts as a hang (never reached when all is well).
HANG = 10.0


def in_thread(fn: Callable[[], Any], timeout: float = HANG, hung: str = "the call hung") -> Any:
    """Run ``fn`` in another thread and return its result or raise its error; fail if it hangs."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), hung
    if "error" in box:
        raise box["error"]
    return box.get("result")


# The docs examples (tests/test_docs.py) run the README and docs/ of a checkout; a copy of the
# tests beside an installed wheel (cibuildwheel, .ci/run) has neither, and runs the rest. The
# docs show a compiled install on Linux (bash transcripts, `appdb.IMPLEMENTATION` printing
# "cython"), which is how the docs workflow and .ci/run run them.
_HAS_DOCS = (Path(__file__).parent.parent / "mkdocs.yml").is_file()
_DOCS_HOST = sys.platform.startswith("linux") and not _select.NO_EXTENSIONS
collect_ignore = [] if _HAS_DOCS and _DOCS_HOST else ["test_docs.py"]
