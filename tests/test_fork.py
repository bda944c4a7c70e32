"""Fork safety (issue #9): a database opened before ``os.fork()`` keeps working on both sides.

The child opens connections of its own on first use and never uses or closes the
parent's; the parent keeps its connections. ``opener_pid()``, registered by
``on_connect`` on every connection, names the process that opened the connection
a statement ran on. Children report failures through their exit status (and a
traceback file); a child that crashes or hangs fails the test.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
from conftest import open_snapshots

HANG = 20.0  # seconds after which a child or thread counts as hung (never reached when all is well)


def tag(connection: apsw.Connection) -> None:
    """on_connect: ``opener_pid()`` and ``role()`` ('reader' on query_only pool readers, else 'writer')."""
    pid = os.getpid()
    role = "reader" if connection.execute("PRAGMA query_only").get else "writer"
    connection.create_scalar_function("opener_pid", lambda: pid, 0)
    connection.create_scalar_function("role", lambda: role, 0)


@pytest.fixture
def fdb(impl: ModuleType, db_path: Path) -> Iterator[appdb.AppDatabase]:
    """A file database (2 readers, ``tag`` on every connection) with 20 'parent' rows in ``t``."""
    database = appdb.init_database(db_path, readers=2, on_connect=tag)
    database.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL, n INTEGER)")
    database.prepare("INSERT INTO t (who, n) VALUES ('parent', ?)").run_many(range(20))
    yield database
    database.close()


class Child:
    """A forked child process running ``fn``; ``wait()`` fails the test unless it exited with 0."""

    def __init__(self, fn: Callable[[], None], report_dir: Path) -> None:
        self.report = report_dir / f"child-{time.monotonic_ns()}.txt"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the result travels back through the exit status
            code = 0
            try:
                fn()
            except BaseException:
                code = 1
                self.report.write_text(traceback.format_exc())
            finally:
                os._exit(code)
        self.pid = pid

    def wait(self, timeout: float = HANG) -> None:
        give_up = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > give_up:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                pytest.fail("the child process hung")
            time.sleep(0.005)
        if os.WIFSIGNALED(status):
            pytest.fail(f"the child process crashed with signal {os.WTERMSIG(status)}")
        if os.WEXITSTATUS(status) != 0:
            text = self.report.read_text() if self.report.exists() else "(no traceback)"
            pytest.fail(f"the child process failed:\n{text}")


def in_child(fn: Callable[[], None], report_dir: Path) -> None:
    Child(fn, report_dir).wait()


def integrity(db: appdb.AppDatabase) -> str:
    return str(db.prepare("PRAGMA integrity_check").scalar())


def who_counts(db: appdb.AppDatabase) -> dict[str, int]:
    rows = db.prepare("SELECT who, count(*) AS c FROM t GROUP BY who", row_type="tuple").all()
    return dict(rows)


# -- the child uses connections of its own -----------------------------------------------------
def test_child_opens_its_own_connections_and_parent_is_unaffected(
    fdb: appdb.AppDatabase, db_path: Path, tmp_path: Path
) -> None:
    parent = os.getpid()
    where = fdb.prepare("SELECT opener_pid() AS pid, role() AS role")
    count = fdb.prepare("SELECT count(*) FROM t")
    insert = fdb.prepare("INSERT INTO t (who, n) VALUES (?, ?)")
    assert where.get() == {"pid": parent, "role": "reader"}
    assert fdb.transaction(lambda db: where.get()) == {"pid": parent, "role": "writer"}
    writer = fdb.connection
    assert fdb.pool_status().open >= 1
    wal = Path(f"{db_path}-wal")
    assert wal.exists()

    def child() -> None:
        me = os.getpid()
        assert where.get() == {"pid": me, "role": "reader"}
        assert [row["pid"] for row in where.iterate()] == [me]
        assert count.scalar() == 20
        assert fdb.connection is not writer
        with fdb.transaction():
            assert where.get() == {"pid": me, "role": "writer"}
            insert.run_many([("child", n) for n in range(10)])
            assert count.scalar() == 30
        insert.run("child", 10)
        assert count.scalar() == 31
        assert fdb.prepare("SELECT opener_pid()").scalar() == me
        with fdb.writer() as connection:
            assert connection.execute("SELECT opener_pid()").get == me
        fdb.exec("INSERT INTO t (who, n) VALUES ('child', 11)")
        assert who_counts(fdb) == {"child": 12, "parent": 20}
        assert integrity(fdb) == "ok"
        assert open_snapshots(fdb) == 0
        fdb.close()  # closes the child's own connections only

    in_child(child, tmp_path)
    assert fdb.connection is writer
    assert where.get() == {"pid": parent, "role": "reader"}
    assert fdb.transaction(lambda db: where.get()) == {"pid": parent, "role": "writer"}
    assert who_counts(fdb) == {"child": 12, "parent": 20}
    assert integrity(fdb) == "ok"
    insert.run("parent", 20)
    with fdb.transaction():
        insert.run("parent", 21)
    assert count.scalar() == 34
    assert wal.exists()
    fdb.checkpoint("truncate")
    assert wal.stat().st_size == 0
    assert fdb.is_healthy()


def test_child_of_a_child(fdb: appdb.AppDatabase, tmp_path: Path) -> None:
    insert = fdb.prepare("INSERT INTO t (who, n) VALUES (?, ?)")
    count = fdb.prepare("SELECT count(*) FROM t")
    pid = fdb.prepare("SELECT opener_pid()")

    def grandchild() -> None:
        assert pid.scalar() == os.getpid()
        insert.run("grandchild", 0)

    def child() -> None:
        assert pid.scalar() == os.getpid()
        insert.run("child", 0)
        in_child(grandchild, tmp_path)
        assert count.scalar() == 22
        assert pid.scalar() == os.getpid()
        insert.run("child", 1)

    in_child(child, tmp_path)
    assert who_counts(fdb) == {"child": 2, "grandchild": 1, "parent": 20}
    assert integrity(fdb) == "ok"


@pytest.mark.parametrize("first", ["iterator", "close", "database"])
def test_parent_has_an_open_iterate_at_fork(fdb: appdb.AppDatabase, tmp_path: Path, first: str) -> None:
    scan = fdb.prepare("SELECT id, who FROM t ORDER BY id", row_type="tuple")
    insert = fdb.prepare("INSERT INTO t (who, n) VALUES (?, ?)")
    iterator = scan.iterate()
    assert next(iterator) == (1, "parent")
    assert fdb.pool_status().busy == 1

    def child() -> None:
        if first == "iterator":
            # the rows come from a cursor of the parent's reader: the child must not step it
            with pytest.raises(appdb.Error):
                next(iterator)
        elif first == "close":
            iterator.close()  # must not reset or close the parent's cursor
            with pytest.raises(StopIteration):
                next(iterator)
        else:
            assert scan.all()[0] == (1, "parent")
            with pytest.raises(appdb.Error):
                next(iterator)
        assert [row[0] for row in scan.iterate()] == list(range(1, 21))
        insert.run("child", 0)
        with fdb.transaction():
            insert.run("child", 1)
            assert len(scan.all()) == 22
        assert [row[1] for row in scan.iterate()].count("child") == 2
        assert fdb.prepare("SELECT opener_pid()").scalar() == os.getpid()
        assert integrity(fdb) == "ok"
        iterator.close()  # never touches the parent's cursor
        gc.collect()

    in_child(child, tmp_path)
    # the parent's iterator carries on with its own snapshot
    assert [row[0] for row in iterator] == list(range(2, 21))
    assert fdb.pool_status().busy == 0
    assert open_snapshots(fdb) == 0
    assert who_counts(fdb) == {"child": 2, "parent": 20}
    assert integrity(fdb) == "ok"
    insert.run("parent", 20)
    assert len(scan.all()) == 23


def test_child_dropping_inherited_objects_leaves_parent_intact(
    impl: ModuleType, db_path: Path, tmp_path: Path
) -> None:
    box: list[Any] = [appdb.init_database(db_path, readers=2, on_connect=tag)]
    box[0].exec("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL, n INTEGER)")
    box.append(box[0].prepare("INSERT INTO t (who, n) VALUES (?, ?)"))
    box.append(box[0].prepare("SELECT id FROM t ORDER BY id"))
    box[1].run_many([("parent", n) for n in range(200)])  # frames in the WAL, not checkpointed
    box.append(box[2].iterate())
    next(box[3])
    wal = Path(f"{db_path}-wal")
    wal_size = wal.stat().st_size
    assert wal_size > 0

    def child() -> None:
        box.clear()
        gc.collect()  # the inherited database, statements and iterator are garbage here
        with appdb.init_database(db_path, readers=1) as own:
            assert own.prepare("SELECT count(*) FROM t").scalar() == 200
            own.prepare("INSERT INTO t (who, n) VALUES ('child', 0)").run()

    try:
        in_child(child, tmp_path)
        db = box[0]
        assert wal.exists()
        assert [row["id"] for row in box[3]] == list(range(2, 201))
        assert who_counts(db) == {"child": 1, "parent": 200}
        assert integrity(db) == "ok"
        box[1].run("parent", 200)
        assert db.prepare("SELECT count(*) FROM t").scalar() == 202
    finally:
        box[0].close()


# -- both sides at work at the same time ------------------------------------------------------
def test_parent_writes_in_a_thread_while_the_child_reads_and_writes(
    fdb: appdb.AppDatabase, tmp_path: Path
) -> None:
    insert = fdb.prepare("INSERT INTO t (who, n) VALUES (?, ?)")
    count_of = fdb.prepare("SELECT count(*) FROM t WHERE who = ?")
    fdb.prepare("SELECT 1").get()  # a reader is open at fork time

    def child() -> None:
        me = os.getpid()
        give_up = time.monotonic() + HANG
        seen = count_of.scalar("parent")
        while seen < 60:  # the parent's thread commits while this child lives
            assert time.monotonic() < give_up, "the parent's writes never became visible"
            time.sleep(0.002)
            now = count_of.scalar("parent")
            assert now >= seen
            seen = now
        for n in range(40):
            if n % 2:
                with fdb.transaction():
                    insert.run("child", n)
                    assert count_of.scalar("child") == n + 1
            else:
                insert.run("child", n)
            assert count_of.scalar("child") == n + 1
            now = count_of.scalar("parent")
            assert now >= seen
            seen = now
        assert fdb.prepare("SELECT opener_pid()").scalar() == me
        assert integrity(fdb) == "ok"

    stop = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def parent_writer() -> None:
        try:
            n = 20
            while not stop.is_set():
                if n % 3:
                    insert.run("parent", n)
                else:
                    with fdb.transaction():
                        insert.run("parent", n)
                n += 1
                written[0] += 1
                time.sleep(0.0005)
        except BaseException as exc:
            errors.append(exc)

    def parent_reader() -> None:
        try:
            last = 0
            while not stop.is_set():
                now = count_of.scalar("parent")
                assert now >= last
                last = now
        except BaseException as exc:
            errors.append(exc)

    process = Child(child, tmp_path)  # fork first: no thread of ours is inside SQLite at fork time
    threads = [threading.Thread(target=parent_writer), threading.Thread(target=parent_reader)]
    for thread in threads:
        thread.start()
    try:
        process.wait()
    finally:
        stop.set()
        for thread in threads:
            thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert written[0] >= 40
    assert who_counts(fdb) == {"child": 40, "parent": 20 + written[0]}
    assert integrity(fdb) == "ok"
    assert fdb.prepare("SELECT opener_pid()").scalar() == os.getpid()


def test_fork_while_another_thread_holds_the_writer(fdb: appdb.AppDatabase, tmp_path: Path) -> None:
    """The inherited writer lock is held by a thread that does not exist in the child.

    The child must use a lock of its own: it reads and writes while the parent's
    thread still holds the writer (no SQLite transaction is open in the parent).
    """
    insert = fdb.prepare("INSERT INTO t (who, n) VALUES (?, ?)")
    count = fdb.prepare("SELECT count(*) FROM t")
    holding = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with fdb.writer() as connection:
                assert not connection.in_transaction
                holding.set()
                assert release.wait(HANG)
                connection.execute("INSERT INTO t (who, n) VALUES ('held', 0)")
        except BaseException as exc:
            errors.append(exc)

    def child() -> None:
        assert count.scalar() == 20
        insert.run("child", 0)
        with fdb.transaction():
            insert.run("child", 1)
            assert count.scalar() == 22
        with fdb.writer() as connection:
            connection.execute("INSERT INTO t (who, n) VALUES ('child', 2)")
        fdb.exec("INSERT INTO t (who, n) VALUES ('child', 3)")
        assert who_counts(fdb) == {"child": 4, "parent": 20}
        assert fdb.prepare("SELECT opener_pid()").scalar() == os.getpid()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(HANG)
        in_child(child, tmp_path)  # finishes while the parent's thread still holds the writer
        assert count.scalar() == 24  # the parent's readers see the child's commits meanwhile
    finally:
        release.set()
        thread.join(HANG)
    assert errors == []
    assert who_counts(fdb) == {"child": 4, "held": 1, "parent": 20}
    assert integrity(fdb) == "ok"


def test_multiprocessing_fork_children_write_beside_the_parent(fdb: appdb.AppDatabase) -> None:
    insert = fdb.prepare("INSERT INTO t (who, n) VALUES (?, ?)")
    count_of = fdb.prepare("SELECT count(*) FROM t WHERE who = ?")
    pid = fdb.prepare("SELECT opener_pid()")
    context = multiprocessing.get_context("fork")

    def work(name: str) -> None:
        if pid.scalar() != os.getpid():
            raise SystemExit(3)
        for n in range(30):
            if n % 2:
                with fdb.transaction():
                    insert.run(name, n)
            else:
                insert.run(name, n)
            if count_of.scalar(name) != n + 1:
                raise SystemExit(4)

    processes = [context.Process(target=work, args=(f"proc{i}",)) for i in range(3)]
    for process in processes:
        process.start()
    for n in range(30):
        insert.run("parent", 100 + n)
    for process in processes:
        process.join(HANG)
        if process.is_alive():
            process.kill()
            process.join()
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert who_counts(fdb) == {"parent": 50, "proc0": 30, "proc1": 30, "proc2": 30}
    assert pid.scalar() == os.getpid()
    assert integrity(fdb) == "ok"


# -- in-memory databases ---------------------------------------------------------------------------
def test_memory_database_keeps_working_in_the_child(impl: ModuleType, tmp_path: Path) -> None:
    with appdb.init_database(":memory:") as db:
        db.exec("CREATE TABLE m (x INTEGER)")
        insert = db.prepare("INSERT INTO m VALUES (?)")
        total = db.prepare("SELECT count(*) AS n, sum(x) AS s FROM m")
        insert.run_many(range(10))
        iterator = db.prepare("SELECT x FROM m ORDER BY x").iterate()
        assert next(iterator) == {"x": 0}

        def child() -> None:
            assert total.get() == {"n": 10, "s": 45}  # its copy of the parent's data
            insert.run(100)
            with db.transaction():
                insert.run(200)
            assert total.get() == {"n": 12, "s": 345}
            assert [row["x"] for row in db.prepare("SELECT x FROM m ORDER BY x").iterate()][-2:] == [100, 200]
            assert integrity(db) == "ok"

        in_child(child, tmp_path)
        assert [row["x"] for row in iterator] == list(range(1, 10))
        assert total.get() == {"n": 10, "s": 45}  # the child's writes went to its copy
        insert.run(7)
        assert total.get() == {"n": 11, "s": 52}
        assert integrity(db) == "ok"
