"""Edges of the facade: failed scripts, transactions left open, reused Transaction objects, backups."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb


def _rows(path: Path) -> list[object]:
    with appdb.init_database(path, row_type="tuple") as db:
        return [row[0] for row in db.prepare("SELECT v FROM t ORDER BY v").all()]


# -- exec() scripts that fail ---------------------------------------------------------


def test_failed_script_rolls_back_the_transaction_it_opened(db: appdb.AppDatabase, db_path: Path) -> None:
    db.exec("CREATE TABLE t (v)")
    with pytest.raises(apsw.SQLError, match="no such table: nosuch"):
        db.exec("BEGIN; INSERT INTO t VALUES (1); INSERT INTO nosuch VALUES (2); COMMIT")
    assert not db.in_transaction
    # later work commits for real, instead of becoming a savepoint of a forgotten transaction
    with db.transaction():
        db.prepare("INSERT INTO t VALUES (?)").run(42)
    assert not db.in_transaction
    db.close()
    assert _rows(db_path) == [42]


def test_failed_script_keeps_what_committed_before_the_failure(db: appdb.AppDatabase, db_path: Path) -> None:
    db.exec("CREATE TABLE t (v)")
    with pytest.raises(apsw.SQLError):
        db.exec("INSERT INTO t VALUES (1); BEGIN; INSERT INTO t VALUES (2); INSERT INTO nosuch VALUES (3)")
    assert not db.in_transaction
    db.close()
    assert _rows(db_path) == [1]


def test_failed_script_inside_a_transaction_is_left_to_it(db: appdb.AppDatabase, db_path: Path) -> None:
    db.exec("CREATE TABLE t (v)")
    with db.transaction():
        db.exec("INSERT INTO t VALUES (1)")
        with pytest.raises(apsw.SQLError):
            db.exec("INSERT INTO t VALUES (2); INSERT INTO nosuch VALUES (3)")
        assert db.in_transaction  # the caller's transaction is still theirs to commit
    db.close()
    assert _rows(db_path) == [1, 2]


def test_a_transaction_begun_by_sql_may_span_exec_calls(db: appdb.AppDatabase, db_path: Path) -> None:
    db.exec("CREATE TABLE t (v)")
    db.exec("BEGIN; INSERT INTO t VALUES (1)")
    assert db.in_transaction
    db.exec("INSERT INTO t VALUES (2); COMMIT")
    db.close()
    assert _rows(db_path) == [1, 2]


def test_close_rolls_back_an_open_transaction_and_warns(
    db: appdb.AppDatabase, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.exec("CREATE TABLE t (v); INSERT INTO t VALUES (1)")
    db.exec("BEGIN; INSERT INTO t VALUES (2)")
    with caplog.at_level(logging.WARNING, logger="appdb"):
        db.close()  # never raises
    assert db.closed
    warnings = [r for r in caplog.records if r.name == "appdb" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(db_path) in message
    assert "uncommitted changes were discarded" in message
    assert _rows(db_path) == [1]


def test_close_without_an_open_transaction_does_not_warn(
    db: appdb.AppDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    db.exec("CREATE TABLE t (v); BEGIN; INSERT INTO t VALUES (1); COMMIT")
    with caplog.at_level(logging.WARNING, logger="appdb"):
        db.close()
    assert not [r for r in caplog.records if r.name == "appdb"]


# -- reusing one Transaction object -------------------------------------------------------


def test_reentering_an_active_transaction_is_refused(db: appdb.AppDatabase, db_path: Path) -> None:
    db.exec("CREATE TABLE t (v)")
    insert = db.prepare("INSERT INTO t VALUES (?)")
    tx = db.transaction()
    with pytest.raises(RuntimeError, match=r"call db\.transaction\(\) again"):
        with tx:
            insert.run(1)
            with tx:
                insert.run(2)
    assert not db.in_transaction  # the outer block rolled back and ended
    assert db.prepare("SELECT count(*) FROM t").scalar() == 0
    # once a block has ended, the same object may run another one; nesting a fresh one works
    with tx:
        insert.run(3)
        with db.transaction():
            insert.run(4)
    with tx:
        insert.run(5)
    assert not db.in_transaction
    db.close()
    assert _rows(db_path) == [3, 4, 5]


# -- backup ------------------------------------------------------------------------------------


def _fill(db: appdb.AppDatabase, megabytes: int) -> None:
    db.exec("CREATE TABLE t (v)")
    insert = db.prepare("INSERT INTO t VALUES (randomblob(100000))")
    with db.transaction():
        for _ in range(megabytes * 10):
            insert.run()


def test_overlapping_backups_to_one_destination(db: appdb.AppDatabase, tmp_path: Path) -> None:
    _fill(db, 5)
    dest = tmp_path / "backups" / "bk.db"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def backup() -> None:
        start.wait()
        try:
            db.backup(dest, overwrite=True)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=backup) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert os.listdir(dest.parent) == ["bk.db"]  # no temporary file or -wal/-shm left behind
    assert dest.stat().st_mode & 0o777 == 0o600
    copy = apsw.Connection(str(dest), flags=apsw.SQLITE_OPEN_READONLY)
    assert copy.execute("PRAGMA integrity_check").get == "ok"
    assert copy.execute("SELECT count(*) FROM t").get == 50
    copy.close()


@pytest.mark.parametrize("spelling", ["same", "relative", "symlink", "hardlink", "wal"])
def test_backup_onto_the_database_itself_is_refused(
    db: appdb.AppDatabase, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    db.exec("CREATE TABLE t (v); INSERT INTO t VALUES (1)")
    if spelling == "same":
        dest = db.path
    elif spelling == "relative":
        monkeypatch.chdir(db_path.parent)
        dest = os.path.join("..", db_path.parent.name, ".", db_path.name)
    elif spelling == "symlink":
        dest = str(tmp_path / "link.db")
        os.symlink(db_path, dest)
    elif spelling == "hardlink":
        dest = str(tmp_path / "hard.db")
        os.link(db_path, dest)
    else:
        dest = db.path + "-wal"
    before = sorted(os.listdir(db_path.parent))
    with pytest.raises(ValueError, match="is the database being backed up"):
        db.backup(dest, overwrite=True)
    assert sorted(os.listdir(db_path.parent)) == before
    db.prepare("INSERT INTO t VALUES (?)").run(2)
    assert db.is_healthy()
    db.close()
    assert _rows(db_path) == [1, 2]


def test_failed_backup_leaves_no_files(impl: ModuleType, db_path: Path, tmp_path: Path) -> None:
    db = appdb.init_database(db_path)
    db.exec("CREATE TABLE t (v); INSERT INTO t VALUES (1)")
    db.close()
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(appdb.DatabaseClosedError):
        db.backup(folder / "bk.db")
    assert os.listdir(folder) == []


def test_overlapping_backups_without_overwrite_never_replace_each_other(
    impl: object, tmp_path: Path
) -> None:
    sources = []
    for n in range(2):
        db = appdb.init_database(tmp_path / f"src{n}.db")
        db.exec(f"CREATE TABLE t (n); INSERT INTO t VALUES ({n})")
        sources.append(db)
    dest = tmp_path / "backup.db"
    barrier = threading.Barrier(2)
    outcomes: dict[int, str] = {}

    def back_up(n: int) -> None:
        barrier.wait()
        try:
            sources[n].backup(dest)
            outcomes[n] = "ok"
        except FileExistsError:
            outcomes[n] = "exists"

    threads = [threading.Thread(target=back_up, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["exists", "ok"]
    winner = next(n for n, outcome in outcomes.items() if outcome == "ok")
    copy = apsw.Connection(str(dest))
    assert copy.execute("SELECT n FROM t").get == winner  # the file the winner wrote, untouched
    copy.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".backup")) == []
    for db in sources:
        db.close()
