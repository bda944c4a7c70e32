"""Dry runs and ``verify`` work on private copies that reject what the real run rejects.

The copies (``appdb.migrations.snapshot``) are configured like every other
connection: a double-quoted string literal is an error there too, not text that
a dry run or ``verify`` would accept and the real run then refuse.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb.cli import main
from appdb.migrations import MigrationRunner, verify_migrations
from appdb.migrations.snapshot import empty_database, snapshot

# SQLite names the identifier it could not find: no such column: "hello" (or: hello)
DQS_ERROR = ("no such column", "hello")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A table, then an insert whose string literal is (wrongly) double-quoted."""
    path = tmp_path / "migrations"
    path.mkdir()
    (path / "001_u.sql").write_text(
        "-- migrate:up\nCREATE TABLE u (x TEXT);\n-- migrate:down\nDROP TABLE u;\n"
    )
    (path / "002_hello.sql").write_text(
        '-- migrate:up\nINSERT INTO u VALUES ("hello");\n-- migrate:down\nDELETE FROM u;\n'
    )
    return path


def says_dqs_error(message: object) -> bool:
    return all(part in str(message) for part in DQS_ERROR)


def at_version_1(db_path: Path, folder: Path) -> None:
    """``db_path`` with only the first migration applied."""
    with appdb.init_database(db_path) as db:
        results = MigrationRunner(db).run_migrations(folder, target=1)
        assert [(r.version, r.status) for r in results] == [(1, "applied")]


def test_the_real_run_rejects_a_double_quoted_string(impl: ModuleType, db_path: Path, folder: Path) -> None:
    with pytest.raises(appdb.MigrationError) as info:
        appdb.init_database(db_path, migrations=folder)
    assert "migration 2 (hello)" in str(info.value) and says_dqs_error(info.value)
    with appdb.init_database(db_path) as db:
        assert db.get_schema_version() == 1
        assert db.prepare("SELECT count(*) FROM u").scalar() == 0


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_dry_run_rejects_it_too(impl: ModuleType, db_path: Path, folder: Path, existing: bool) -> None:
    if existing:
        at_version_1(db_path, folder)
    with appdb.init_database(db_path) as db:
        results = MigrationRunner(db).run_migrations(folder, dry_run=True)
        expected = [(2, "failed")] if existing else [(1, "pending"), (2, "failed")]
        assert [(r.version, r.status) for r in results] == expected
        assert says_dqs_error(results[-1].error)
        assert db.get_schema_version() == (1 if existing else 0)  # a dry run changes nothing


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_cli_dry_run_rejects_it_too(
    impl: ModuleType,
    db_path: Path,
    folder: Path,
    existing: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if existing:
        at_version_1(db_path, folder)
    # Without the file, the dry run works on an empty in-memory database.
    code = main(["--db", str(db_path), "--migrations", str(folder), "--json", "migrate", "--dry-run"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["dry_run"] is True
    failed = [r for r in data["results"] if r["status"] == "failed"]
    assert [r["version"] for r in failed] == [2] and says_dqs_error(failed[0]["error"])
    assert db_path.exists() is existing


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_verify_reports_it(impl: ModuleType, db_path: Path, folder: Path, existing: bool) -> None:
    if existing:
        at_version_1(db_path, folder)
        with appdb.init_database(db_path) as db:
            reports = verify_migrations(db, folder)
    else:
        reports = verify_migrations(None, folder)  # on an empty private database
    by_version = {r.version: r for r in reports}
    assert sorted(by_version) == ([2] if existing else [1, 2])
    assert existing or by_version[1].ok
    (problem,) = by_version[2].problems
    assert problem.startswith("up fails: migration 2 (hello)") and says_dqs_error(problem)


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_cli_verify_reports_it(
    impl: ModuleType,
    db_path: Path,
    folder: Path,
    existing: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if existing:
        at_version_1(db_path, folder)
    code = main(["--db", str(db_path), "--migrations", str(folder), "--json", "verify"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False
    problems = {m["version"]: m["problems"] for m in data["migrations"]}
    assert len(problems[2]) == 1 and says_dqs_error(problems[2][0])
    assert db_path.exists() is existing


def _dqs_rejected(connection: apsw.Connection) -> bool:
    try:
        connection.execute('SELECT "not a column"').fetchall()
    except apsw.SQLError:
        return True
    return False


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_a_snapshot_copies_the_connection_settings(impl: ModuleType, db_path: Path, on: bool) -> None:
    settings = {"foreign_keys": on, "trusted_schema": on, "recursive_triggers": on}
    with appdb.init_database(db_path, pragmas=settings) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)")
        with snapshot(db) as copy:
            assert {name: copy.pragma(name) for name in settings} == {name: int(on) for name in settings}
            assert copy.prepare("SELECT count(*) FROM t").scalar() == 2
            assert _dqs_rejected(copy.connection)
            copy.exec("DELETE FROM t")
        assert db.prepare("SELECT count(*) FROM t").scalar() == 2  # a private copy


@pytest.mark.parametrize("foreign_keys", [False, True])
def test_an_empty_database_has_the_safety_settings(impl: ModuleType, foreign_keys: bool) -> None:
    with empty_database(foreign_keys=foreign_keys) as empty:
        assert empty.pragma("foreign_keys") == int(foreign_keys)
        assert empty.pragma("trusted_schema") == 0
        assert _dqs_rejected(empty.connection)
