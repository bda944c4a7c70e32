"""Opening databases: files, pragmas, read-only mode, validation of options."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb import _select
from conftest import impl_name


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_creates_parent_directory_and_owner_only_file(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "app.db"
    with appdb.init_database(path) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        assert path.is_file()
        assert _mode(path) == 0o600
        assert _mode(Path(f"{path}-wal")) == 0o600
        assert db.path == str(path)


def test_default_pragmas_are_applied(db: appdb.AppDatabase) -> None:
    assert db.pragma("journal_mode") == "wal"
    assert db.pragma("foreign_keys") == 1
    assert db.pragma("busy_timeout") == 5000
    assert db.pragma("synchronous") == 1  # NORMAL
    assert db.pragma("wal_autocheckpoint") == 1000
    assert db.pragma("temp_store") == 2  # MEMORY
    assert db.pragma("cache_size") == -64000
    assert db.pragma("journal_size_limit") == appdb.JOURNAL_SIZE_LIMIT == 64 * 1024 * 1024
    assert db.pragma("trusted_schema") == 0
    assert db.connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
    assert db.connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, -1) == 0


def test_defensive_mode_blocks_writable_schema(db: appdb.AppDatabase) -> None:
    db.exec("PRAGMA writable_schema = ON")
    with pytest.raises(apsw.Error):
        db.exec("UPDATE sqlite_schema SET sql = 'x' WHERE 0")


def test_double_quoted_strings_are_not_string_literals(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (name TEXT)")
    with pytest.raises(apsw.SQLError, match="no such column"):
        db.prepare('SELECT * FROM t WHERE name = "typo"')


def test_memory_database(impl: ModuleType) -> None:
    with appdb.init_database(":memory:") as db:
        db.exec("CREATE TABLE t (x)")
        assert db.prepare("INSERT INTO t VALUES (?)").run(1) == appdb.RunResult(1, 1)
        assert db.prepare("SELECT count(*) FROM t").scalar() == 1
        assert db.is_healthy()


def test_pragma_overrides_and_additions(impl: ModuleType, db_path: Path) -> None:
    overrides = {"busy_timeout": 100, "cache_size": "-2000", "mmap_size": 0}
    with appdb.init_database(db_path, pragmas=overrides) as db:
        assert db.pragma("busy_timeout") == 100
        assert db.pragma("cache_size") == -2000
        assert db.pragma("mmap_size") == 0
        assert db.pragma("journal_mode") == "wal"


def test_default_pragmas_cannot_be_changed_by_accident(impl: ModuleType, db_path: Path) -> None:
    with pytest.raises(TypeError):
        appdb.DEFAULT_PRAGMAS["busy_timeout"] = 1  # type: ignore[index]
    mine = dict(appdb.DEFAULT_PRAGMAS)
    mine["busy_timeout"] = 1  # a copy changes nothing else
    with appdb.init_database(db_path, pragmas=mine) as db:
        assert db.pragma("busy_timeout") == 1
    with appdb.init_database(db_path) as db:
        assert db.pragma("busy_timeout") == 5000


@pytest.mark.parametrize(
    ("pragmas", "named"),
    [
        ({"not_a_pragma": 1}, "not_a_pragma"),
        ({"journal_mode; DROP TABLE t": "WAL"}, "journal_mode; DROP TABLE t"),
        ({"journal_mode": "WAL; DROP TABLE t"}, "journal_mode"),
        ({"cache_size": 1.5}, "cache_size"),
        ({"cache_size": None}, "cache_size"),
        ({"user_version": "1); DROP TABLE t; --"}, "user_version"),
        ({"x.journal_mode)": "WAL"}, "x.journal_mode)"),
    ],
)
def test_bad_pragmas_raise_value_error_naming_the_pragma(
    impl: ModuleType, db_path: Path, pragmas: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match="pragma") as info:
        appdb.init_database(db_path, pragmas=pragmas)  # type: ignore[arg-type]
    assert isinstance(info.value, appdb.InvalidPragmaError)
    assert isinstance(info.value, appdb.Error)
    assert repr(named) in str(info.value)
    assert not db_path.exists()  # rejected before anything touched the disk


def test_pragma_method_validates_and_reads(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    assert db.pragma("user_version", 7) is None
    assert db.pragma("user_version") == 7
    info = db.pragma("table_info", "t")
    assert [row["name"] for row in info] == ["id", "name"]
    with pytest.raises(appdb.InvalidPragmaError, match="'bogus'"):
        db.pragma("bogus")
    with pytest.raises(appdb.InvalidPragmaError, match="user_version"):
        db.pragma("user_version", "1; DROP TABLE t")
    assert db.prepare("SELECT count(*) FROM t").scalar() == 0


def test_readonly_never_modifies_the_file(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        db.checkpoint("truncate")
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    mtime = os.stat(db_path).st_mtime_ns
    with appdb.init_database(db_path, readonly=True) as ro:
        assert ro.readonly
        assert ro.prepare("SELECT x FROM t").all() == [{"x": 1}]
        with pytest.raises(apsw.ReadOnlyError):
            ro.exec("INSERT INTO t VALUES (2)")
        with pytest.raises(apsw.ReadOnlyError):
            ro.prepare("INSERT INTO t VALUES (?)").run(3)
        with pytest.raises(apsw.ReadOnlyError):
            ro.transaction(lambda d: d.exec("DELETE FROM t"))
        with ro.transaction():  # deferred on a read-only database
            assert ro.prepare("SELECT count(*) FROM t").scalar() == 1
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before
    assert os.stat(db_path).st_mtime_ns == mtime


def test_readonly_missing_file_is_a_clear_error(impl: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "app.db"
    with pytest.raises(appdb.DatabaseOpenError, match="does not exist"):
        appdb.init_database(missing, readonly=True)
    assert not missing.parent.exists()


def test_directory_path_is_a_clear_error(impl: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(appdb.DatabaseOpenError, match="is a directory"):
        appdb.init_database(tmp_path)


def test_not_a_database_is_a_clear_error_and_file_is_untouched(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(appdb.DatabaseOpenError, match="not a SQLite database") as info:
        appdb.init_database(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"row_type": "list"}, "row_type"),
        ({"statement_cache_size": -1}, "statement_cache_size"),
    ],
)
def test_bad_options(impl: ModuleType, db_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        appdb.init_database(db_path, **kwargs)  # type: ignore[arg-type]
    assert not db_path.exists()


def test_row_type_tuple_default(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, row_type="tuple") as db:
        db.exec("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 2)")
        assert db.prepare("SELECT a, b FROM t").get() == (1, 2)
        assert db.prepare("SELECT a, b FROM t", row_type="dict").get() == {"a": 1, "b": 2}


def test_context_manager_closes(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path) as db:
        assert not db.closed
    assert db.closed
    assert not db.is_healthy()


def test_implementation_selector(impl: ModuleType) -> None:
    import subprocess
    import sys

    code = "import appdb; print(appdb.IMPLEMENTATION)"
    env = dict(os.environ, APPDB_NO_EXTENSIONS="1")
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert forced.stdout.strip() == "python"
    assert appdb.IMPLEMENTATION in ("cython", "python")


def test_a_child_picks_its_twin_through_its_environment(impl: ModuleType) -> None:
    import subprocess
    import sys

    code = "import appdb; print(appdb.IMPLEMENTATION)"
    env = _select.environment(impl_name(impl))
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert child.stdout.strip() == impl_name(impl)


def test_environment_sets_or_clears_the_switch() -> None:
    base = {"APPDB_NO_EXTENSIONS": "0", "OTHER": "kept"}
    assert _select.environment("python", base) == {"APPDB_NO_EXTENSIONS": "1", "OTHER": "kept"}
    assert base == {"APPDB_NO_EXTENSIONS": "0", "OTHER": "kept"}  # a copy
    if not _select.NO_EXTENSIONS:
        assert _select.environment("cython", base) == {"OTHER": "kept"}
    with pytest.raises(ValueError, match="twin must be one of cython, python, not 'pypy'"):
        _select.environment("pypy")


def test_using_makes_a_twin_live_and_restores_the_previous_one() -> None:
    live = _select.impl
    with _select.using("python") as module:
        assert module is _select.impl is _select.load("python")
        assert module.__name__ == "appdb._fastcache_py"
    assert _select.impl is live
    with pytest.raises(RuntimeError), _select.using("python"):
        raise RuntimeError
    assert _select.impl is live


def test_a_missing_compiled_twin_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "appdb._fastcache", None)  # what importing it finds: nothing
    live = _select.impl
    with pytest.raises(ImportError):
        _select.load("cython")
    with pytest.raises(ImportError), _select.using("cython"):
        pass
    assert _select.impl is live
