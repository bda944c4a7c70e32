"""Transactions, savepoints, locking between threads and processes, maintenance."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb


def _count(db: appdb.AppDatabase) -> int:
    return int(db.prepare("SELECT count(*) FROM t").scalar())


def test_fn_form_commits_and_returns(small: appdb.AppDatabase) -> None:
    def add(db: appdb.AppDatabase, name: str, *, score: float) -> int:
        return db.prepare("INSERT INTO t (name, score) VALUES (?, ?)").run(name, score).last_insert_rowid

    assert small.transaction(add, "f", score=6.0) == 6
    assert not small.in_transaction
    assert _count(small) == 6


def test_fn_form_rolls_back_and_reraises(small: appdb.AppDatabase) -> None:
    def fail(db: appdb.AppDatabase) -> None:
        db.prepare("INSERT INTO t (name) VALUES ('x')").run()
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        small.transaction(fail)
    assert _count(small) == 5
    assert not small.in_transaction


def test_context_manager_form(small: appdb.AppDatabase) -> None:
    with small.transaction() as db:
        assert db is small
        assert small.in_transaction
        small.exec("DELETE FROM t WHERE id = 1")
    assert _count(small) == 4
    with pytest.raises(ValueError):
        with small.transaction():
            small.exec("DELETE FROM t")
            raise ValueError
    assert _count(small) == 4


def test_nested_failure_rolls_back_only_the_inner_part(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (name) VALUES (?)")
    with small.transaction():
        insert.run("outer")
        try:
            with small.transaction():
                insert.run("inner")
                raise RuntimeError("inner fails")
        except RuntimeError:
            pass
        small.transaction(lambda d: insert.run("inner ok"))
    names = [r["name"] for r in small.prepare("SELECT name FROM t WHERE id > 5 ORDER BY id").all()]
    assert names == ["outer", "inner ok"]


def test_outer_failure_rolls_back_committed_savepoints(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (name) VALUES (?)")
    with pytest.raises(RuntimeError):
        with small.transaction():
            with small.transaction():
                insert.run("inner")
            raise RuntimeError
    assert _count(small) == 5


def test_modes(small: appdb.AppDatabase, db_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        small.transaction(mode="eventually")
    # default on a writable database is IMMEDIATE: the write lock is taken at BEGIN
    other = apsw.Connection(str(db_path))
    other.set_busy_timeout(0)
    with small.transaction():
        with pytest.raises(apsw.BusyError):
            other.execute("INSERT INTO t (name) VALUES ('other')")
    with small.transaction(mode="deferred"):
        other.execute("INSERT INTO t (name) VALUES ('other')")  # no lock taken yet
    with small.transaction(mode="exclusive"):
        small.exec("DELETE FROM t WHERE name = 'other'")
    other.close()
    assert _count(small) == 5


def test_error_at_commit_rolls_back(small: appdb.AppDatabase) -> None:
    small.exec(
        """
        CREATE TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
        """
    )
    with pytest.raises(apsw.ConstraintError):
        with small.transaction():
            small.exec("INSERT INTO child VALUES (42)")  # violation shows up at COMMIT
    assert not small.in_transaction
    assert small.prepare("SELECT count(*) FROM child").scalar() == 0


def test_transaction_ended_inside_is_reported(small: appdb.AppDatabase) -> None:
    with pytest.raises(appdb.TransactionError, match="already ended"):
        with small.transaction():
            small.exec("INSERT INTO t (name) VALUES ('x'); ROLLBACK")
    assert _count(small) == 5


def test_other_threads_wait_for_a_transaction(small: appdb.AppDatabase) -> None:
    entered = threading.Event()
    order: list[str] = []
    insert = small.prepare("INSERT INTO t (name) VALUES (?)")

    def writer() -> None:
        entered.wait()
        insert.run("from thread")  # must not run inside the main thread's transaction
        order.append("thread wrote")

    thread = threading.Thread(target=writer)
    thread.start()
    with pytest.raises(RuntimeError):
        with small.transaction():
            insert.run("main")
            entered.set()
            time.sleep(0.2)  # give the thread every chance to sneak in
            order.append("main rolling back")
            raise RuntimeError
    thread.join(10)
    assert order == ["main rolling back", "thread wrote"]
    names = [r["name"] for r in small.prepare("SELECT name FROM t WHERE id > 5").all()]
    assert names == ["from thread"]


def test_schema_version_is_zero_without_migrations(db: appdb.AppDatabase) -> None:
    assert db.get_schema_version() == 0


def test_is_healthy(impl: ModuleType, db_path: Path) -> None:
    db = appdb.init_database(db_path)
    assert db.is_healthy()
    db_path.unlink()
    assert not db.is_healthy()
    db.close()
    assert not db.is_healthy()


def test_checkpoint(small: appdb.AppDatabase, db_path: Path) -> None:
    small.exec("INSERT INTO t (name) SELECT name FROM t")
    frames, done = small.checkpoint()
    assert frames >= 0 and done >= 0
    result = small.checkpoint("truncate")
    assert result == appdb.CheckpointResult(0, 0)
    assert Path(f"{db_path}-wal").stat().st_size == 0
    with pytest.raises(ValueError, match="checkpoint mode"):
        small.checkpoint("sometimes")


WRITER = textwrap.dedent(
    """
    import sys, time, apsw
    conn = apsw.Connection(sys.argv[1])
    conn.set_busy_timeout(5000)
    print("ready", flush=True)
    deadline = time.time() + 30
    n = 0
    while time.time() < deadline:
        with conn:
            conn.execute("INSERT INTO t (name, score) VALUES ('w', ?)", (n,))
        n += 1
        if sys.stdin.closed:
            break
    """
)


def test_backup_while_another_process_writes(small: appdb.AppDatabase, db_path: Path, tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        copies = [small.backup(tmp_path / f"copy{i}.db") for i in range(3)]
    finally:
        writer.kill()
        writer.wait()
    for path in copies:
        copy = apsw.Connection(path)
        assert copy.execute("PRAGMA integrity_check").get == "ok"
        rows = copy.execute("SELECT count(*) FROM t").get
        assert rows >= 5
        # one consistent snapshot: the writer's rows are numbered 0..n-1 with no gap
        n = copy.execute("SELECT count(*), coalesce(max(score), -1) FROM t WHERE name = 'w'").get
        assert n[0] == n[1] + 1
        copy.close()
    assert Path(copies[-1]).stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError, match="overwrite=True"):
        small.backup(copies[0])
    assert small.backup(copies[0], overwrite=True) == copies[0]


def test_backup_of_memory_database(impl: ModuleType, tmp_path: Path) -> None:
    with appdb.init_database(":memory:") as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (42)")
        dest = db.backup(tmp_path / "mem.db")
    with appdb.init_database(dest, readonly=True) as copy:
        assert copy.prepare("SELECT x FROM t").scalar() == 42


def test_exec_runs_every_statement_of_a_script(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE a (x); SELECT 1; INSERT INTO a VALUES (1); SELECT 2; INSERT INTO a VALUES (2)")
    assert db.prepare("SELECT count(*) FROM a").scalar() == 2
    with pytest.raises(TypeError):
        db.exec(None)  # type: ignore[arg-type]
