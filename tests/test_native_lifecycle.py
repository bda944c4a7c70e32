"""The life of prepared statements and their connections, through the public API.

The compiled twin's native path prepares ``sqlite3_stmt`` handles on APSW's
connections behind APSW's back: every one must be finalized before its connection
closes (whoever closes it), and no call may crash, hang, leak a file or return a
wrong row whatever other threads do meanwhile. Every test runs on both twins: the
pure-Python twin is the reference the compiled one must match. Tests that could
crash or hang the interpreter run their scenario in a child process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
from appdb import _select
from conftest import HANG, impl_name, open_snapshots

needs_proc = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc/self/fd (Linux)"
)

#: Errors a call may raise once its database or connection is closed.
CLOSED_ERRORS = (appdb.DatabaseClosedError, apsw.ConnectionClosedError, apsw.CursorClosedError)


def native(impl: ModuleType) -> bool:
    """True when ``impl`` runs statements through SQLite's C API (the compiled twin's native path)."""
    return bool(getattr(impl, "NATIVE", False))


class ChildHung(AssertionError):
    """A child process stopped making progress (a deadlock: faulthandler dumped its threads)."""


def open_files(path: Path) -> int:
    """File descriptors of this process open on the database file, its -wal or its -shm."""
    real = os.path.realpath(path)
    names = {real, f"{real}-wal", f"{real}-shm"}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        count += target in names
    return count


@contextlib.contextmanager
def unraisable() -> Iterator[list[str]]:
    """Collect the exceptions finalizers report (``sys.unraisablehook``) inside the block."""
    seen: list[str] = []
    previous = sys.unraisablehook

    def hook(info: sys.UnraisableHookArgs) -> None:
        seen.append(f"{type(info.exc_value).__name__}: {info.exc_value}")

    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


def make_table(db: appdb.AppDatabase, rows: int = 50) -> None:
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL)")
    insert = db.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
    insert.run_many([(f"n{i}", i / 2) for i in range(1, rows + 1)])


def row(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"n{i}", "score": i / 2}


def run_child(
    script: str, env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter (a crash there fails a test instead of killing pytest)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildHung(f"the child process hung for {timeout} s; stderr: {exc.stderr!r}") from None


def check_child(done: subprocess.CompletedProcess[str]) -> str:
    """The child's stdout; raises ``ChildHung`` if it hung, fails with its output unless it exited with 0."""
    output = f"child exited with {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    if done.returncode == 1 and "Timeout (" in done.stderr:  # faulthandler.dump_traceback_later
        raise ChildHung(output)
    assert done.returncode == 0, output
    return done.stdout


def child_report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object the child printed last (see ``check_child``)."""
    report: dict[str, Any] = json.loads(check_child(done).strip().splitlines()[-1])
    return report


# -- 1. a user closes the writer (db.connection) directly -------------------------------------
def use_everything(db: appdb.AppDatabase) -> tuple[Any, Any, Any]:
    """Run statements every way on ``db`` (``t`` exists): (point query, insert, an unfinished iterator)."""
    point = db.prepare("SELECT id, name, score FROM t WHERE id = ?")
    insert = db.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
    scan = db.prepare("SELECT id FROM t WHERE id <= ? ORDER BY id", row_type="tuple")
    assert point.get(1) == row(1)
    assert point.all(2) == [row(2)]
    assert db.prepare("SELECT count(*) FROM t").scalar() == 50
    assert insert.run("x", 0.0).changes == 1
    insert.run_many([("y", 1.0), ("z", 2.0)])
    assert [r[0] for r in scan.iterate(3)] == [1, 2, 3]
    with db.transaction():
        assert point.get(3) == row(3)
        insert.run("in", 3.0)
        assert [r[0] for r in scan.iterate(2)] == [1, 2]
    with db.writer():  # an iterator left half-way on the writer
        unfinished = scan.iterate(10)
        assert next(unfinished) == (1,)
    return point, insert, unfinished


def later_calls(
    db: appdb.AppDatabase, point: Any, insert: Any, unfinished: Any
) -> dict[str, Callable[[], Any]]:
    """Calls made once the writer is closed (statements that ran on it, and new ones)."""
    fresh = db.prepare("SELECT name FROM t WHERE id = ?")
    return {
        "get": lambda: point.get(1),
        "all": lambda: point.all(1),
        "scalar": lambda: point.scalar(1),
        "iterate": lambda: list(point.iterate(1)),
        "run": lambda: insert.run("late", 0.0),
        "run_many": lambda: insert.run_many([("late", 0.0)]),
        "a statement prepared before, never run": lambda: fresh.get(1),
        "a statement prepared after": lambda: db.prepare("SELECT 42").get(),
        "next(unfinished)": lambda: next(unfinished),
        "next(unfinished) again": lambda: next(unfinished),
        "transaction": lambda: db.transaction(lambda d: None),
        "exec": lambda: db.exec("SELECT 1"),
        "pool_status": db.pool_status,
    }


def close_writer(db: appdb.AppDatabase) -> None:
    """``db.connection.close()``, as a user would: SQLite must not refuse (statements left behind)."""
    try:
        db.connection.close()
    except apsw.BusyError as exc:  # unfinalized statements: APSW leaks the connection
        pytest.fail(f"closing the writer raised {exc!r}")
    except apsw.Error:  # a clear error is acceptable; the files must be closed all the same
        pass


def open_readers(statement: Any, count: int = 3) -> None:
    """Run ``statement.get(2)`` in ``count`` threads at once (opening readers of the pool)."""
    start = threading.Barrier(count)

    def read() -> None:
        start.wait()
        statement.get(2)

    threads = [threading.Thread(target=read) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)


@needs_proc
def test_closing_the_writer_directly_finalizes_its_statements(impl: ModuleType, db_path: Path) -> None:
    def scenario() -> None:
        db = appdb.init_database(db_path, readers=0)
        make_table(db)
        point, insert, unfinished = use_everything(db)
        calls = later_calls(db, point, insert, unfinished)
        assert open_files(db_path) > 0
        close_writer(db)
        assert open_files(db_path) == 0  # readers=0: the writer was the only connection
        for name, call in calls.items():
            if name == "next(unfinished) again":  # its first next() reported the close
                continue
            with pytest.raises(CLOSED_ERRORS):
                call()

    scenario()
    gc.collect()
    assert open_files(db_path) == 0


@needs_proc
def test_closing_the_writer_directly_beside_a_reader_pool(impl: ModuleType, db_path: Path) -> None:
    def scenario() -> None:
        db = appdb.init_database(db_path, readers=2)
        make_table(db)
        point, insert, unfinished = use_everything(db)
        open_readers(point)
        connection = db.connection
        close_writer(db)
        with pytest.raises(CLOSED_ERRORS):
            insert.run("late", 0.0)
        with pytest.raises(CLOSED_ERRORS):
            next(unfinished)
        with pytest.raises(CLOSED_ERRORS):
            connection.execute("SELECT 1")

    scenario()
    gc.collect()
    assert open_files(db_path) == 0


def errors_after_closing_the_writer(path: Path) -> list[str]:
    """What each of ``later_calls`` raises once the writer was closed directly (the live twin)."""
    db = appdb.init_database(path, readers=0)
    make_table(db)
    calls = later_calls(db, *use_everything(db))
    db.connection.close()
    outcomes = []
    for name, call in calls.items():
        try:
            call()
            outcomes.append(f"{name}: no error")
        except BaseException as exc:
            outcomes.append(f"{name}: {type(exc).__module__}.{type(exc).__name__}")
    return outcomes


def test_after_closing_the_writer_both_twins_raise_the_same_errors(impl: ModuleType, tmp_path: Path) -> None:
    mine = errors_after_closing_the_writer(tmp_path / "mine.db")
    with _select.using("python"):
        reference = errors_after_closing_the_writer(tmp_path / "reference.db")
    gc.collect()
    assert mine == reference


@needs_proc
def test_closing_the_database_after_the_writer_was_closed_closes_the_rest(
    impl: ModuleType, db_path: Path
) -> None:
    def scenario() -> None:
        db = appdb.init_database(db_path, readers=2)
        make_table(db)
        point = db.prepare("SELECT id, name, score FROM t WHERE id = ?")
        open_readers(point)
        db.connection.close()
        db.close()
        assert db.closed
        assert open_files(db_path) == 0
        with pytest.raises(appdb.DatabaseClosedError):
            point.get(1)

    try:
        scenario()
    finally:
        gc.collect()


def test_closing_the_writer_inside_a_function_it_runs_is_refused(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, readers=0) as db:
        connection = db.connection

        def close_now(x: int) -> int:
            connection.close()
            return x

        connection.create_scalar_function("close_now", close_now, 1)
        with pytest.raises(apsw.ThreadingViolationError):
            db.prepare("SELECT close_now(?) AS v").get(1)
        assert db.prepare("SELECT 7 AS v").get() == {"v": 7}  # still open and usable


def test_closing_the_writer_from_another_thread_during_a_call(impl: ModuleType, db_path: Path) -> None:
    db = appdb.init_database(db_path, readers=0)
    slow = db.prepare(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)"
        " SELECT count(*) FROM c"
    )
    box: dict[str, Any] = {}
    calling = threading.Event()

    def call() -> None:
        calling.set()
        try:
            box["result"] = slow.scalar()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    calling.wait(HANG)
    time.sleep(0.05)  # well inside the call (unless this machine is very slow: see below)
    try:  # the native path waits for the call; APSW refuses while the connection is busy
        db.connection.close()
    except apsw.BusyError as exc:
        pytest.fail(f"closing the writer raised {exc!r}")
    except apsw.ThreadingViolationError:
        pass
    thread.join(HANG)
    assert not thread.is_alive()
    if "error" in box:  # the close came first after all
        assert isinstance(box["error"], CLOSED_ERRORS), box["error"]
    else:
        assert box["result"] == 1000000
    with contextlib.suppress(apsw.ConnectionClosedError):  # the writer is closed already
        db.close()


# -- 2. garbage collection -----------------------------------------------------------------
def busy_database(path: Path) -> tuple[appdb.AppDatabase, list[Any], list[Any]]:
    """A database whose many statements ran on the writer and the readers, in and out of transactions."""
    db = appdb.init_database(path, readers=3)
    make_table(db)
    sql = "SELECT id, name, score, {} AS k FROM t WHERE id >= ? ORDER BY id"
    statements = [db.prepare(sql.format(k)) for k in range(40)]
    insert = db.prepare("INSERT INTO t (name, score) VALUES (?, ?)")

    errors: list[BaseException] = []

    def use() -> None:
        try:
            for statement in statements:
                assert statement.get(1)["id"] == 1
                assert len(statement.all(49)) == 2
                assert statement.scalar(2) == 2
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    use()
    threads = [threading.Thread(target=use) for _ in range(3)]  # several readers at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
    assert errors == []
    with db.transaction():
        for statement in statements[:20]:
            statement.get(1)
            statement.all(50)
        insert.run("t", 1.0)
    iterators = [statement.iterate(1) for statement in statements[:3]]  # left open on readers
    for iterator in iterators:
        next(iterator)
    with db.writer():
        iterators.append(statements[3].iterate(1))  # and one on the writer
        next(iterators[-1])
    return db, [*statements, insert], iterators


@needs_proc
def test_a_database_dropped_without_close_leaves_no_open_files(impl: ModuleType, db_path: Path) -> None:
    with unraisable() as seen:
        db, statements, iterators = busy_database(db_path)
        assert open_files(db_path) > 0
        del db, statements, iterators
        gc.collect()
    assert open_files(db_path) == 0
    assert seen == []


@needs_proc
def test_statements_outliving_their_database_object_then_dropped_leave_no_open_files(
    impl: ModuleType, db_path: Path
) -> None:
    with unraisable() as seen:
        db, statements, iterators = busy_database(db_path)
        del db, iterators
        gc.collect()
        try:  # the statements keep their database alive: they work, or report it closed
            assert statements[0].get(2) == {**row(2), "k": 0}
            assert statements[-1].run("late", 0.0).changes == 1
        except appdb.DatabaseClosedError:
            pass
        del statements
        gc.collect()
    assert open_files(db_path) == 0
    assert seen == []


def test_collecting_a_dropped_database_reports_no_error(impl: ModuleType, tmp_path: Path) -> None:
    with unraisable() as seen:
        # The order gc clears objects in follows their generations: a reader opened after the
        # database's own objects moved to an older generation is cleared first. Automatic
        # collections stay off meanwhile, so the order is the same in every run.
        gc.collect()
        gc.disable()
        try:
            db = appdb.init_database(tmp_path / "app.db", readers=1)
            gc.collect(0)
            statement = db.prepare("SELECT 1 AS one")
            assert statement.get() == {"one": 1}  # on a reader opened now
            del db, statement
        finally:
            gc.enable()
        gc.collect()
        for n in range(3):  # and as it comes: many statements, collections whenever they happen
            db = appdb.init_database(tmp_path / f"app{n}.db", readers=n)
            statements = [db.prepare(f"SELECT {k} AS k") for k in range(50)]
            for k, statement in enumerate(statements):
                assert statement.get() == {"k": k}
            del db, statements, statement
            gc.collect()
    assert seen == []


# -- 3. everything at once, in a child process ------------------------------------------------
STRESS = """
    import faulthandler, gc, json, random, sys, threading, time
    import apsw
    import appdb
    from appdb import _select

    path, seconds, hang, mode = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    faulthandler.dump_traceback_later(hang, exit=True)  # a deadlock fails with every thread's stack
    POINT = "SELECT id, name, score FROM fixed WHERE id = ?"
    RANGE = "SELECT id, name FROM fixed WHERE id BETWEEN ? AND ? ORDER BY id"
    COUNT = "SELECT count(*) FROM fixed WHERE id <= ?"
    INSERT = "INSERT INTO log (worker, n) VALUES (?, ?)"
    with appdb.init_database(path) as first:
        first.exec("CREATE TABLE fixed (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
        first.exec("CREATE TABLE log (worker, n)")
        fill = first.prepare("INSERT INTO fixed VALUES (?, ?, ?)")
        fill.run_many([(i, f"name{i}", i / 2) for i in range(1, 101)])

    def open_box():
        db = appdb.init_database(path, readers=3)
        return db, {sql: db.prepare(sql) for sql in (POINT, RANGE, COUNT, INSERT)}

    box = {"now": open_box()}
    stop = time.monotonic() + seconds
    unexpected = []
    counts = {"calls": 0, "closed": 0, "reopened": 0, "dropped": 0, "collected": 0}

    def allowed(exc):
        if isinstance(exc, appdb.DatabaseClosedError):
            return True
        return isinstance(exc, apsw.Error) and "closed" in str(exc).lower()

    def one(db, st, rnd, me):
        k = rnd.randrange(1, 101)
        op = rnd.randrange(9)
        if op == 0:
            assert st[POINT].get(k) == {"id": k, "name": f"name{k}", "score": k / 2}
        elif op == 1:
            expected = [{"id": i, "name": f"name{i}"} for i in range(k, min(k + 4, 100) + 1)]
            assert st[RANGE].all(k, k + 4) == expected
        elif op == 2:
            assert st[COUNT].scalar(k) == k
        elif op == 3:
            assert st[INSERT].run(me, k).changes == 1
        elif op == 4:
            for row in st[RANGE].iterate(1, 100):
                if row["id"] == k:
                    break  # dropped half-way
        elif op == 5:
            assert [r["id"] for r in st[RANGE].iterate(k, k + 2)] == list(range(k, min(k + 2, 100) + 1))
        elif op == 6:
            with db.transaction():
                st[INSERT].run(me, -k)
                assert st[POINT].get(k)["id"] == k
        elif op == 7:
            st[INSERT].run_many([(me, k), (me, k + 1)])
        else:
            assert db.prepare(POINT).get(k)["id"] == k  # through the cache: perhaps a new Statement

    def worker(me):
        rnd = random.Random(me)
        while time.monotonic() < stop:
            db, st = box["now"]
            try:
                one(db, st, rnd, me)
                counts["calls"] += 1
            except BaseException as exc:
                if not allowed(exc):
                    unexpected.append(f"worker {me}: {type(exc).__module__}.{type(exc).__name__}: {exc!r}")
                    return
                counts["closed"] += 1
                time.sleep(0.0005)  # let the closer open the next database

    def closer():
        rnd = random.Random(1)
        while time.monotonic() < stop:
            time.sleep(rnd.uniform(0, 0.03))
            db, st = box["now"]
            action = rnd.choice([0, 1, 2, 3] if mode == "drops" else [0, 1, 3])
            try:
                if action == 0:  # close, then open a new database on the file
                    db.close()
                    box["now"] = open_box()
                    counts["reopened"] += 1
                elif action == 1:  # open a new one first, then close the old one
                    box["now"] = open_box()
                    db.close()
                    counts["reopened"] += 1
                elif action == 2:  # drop every statement (workers may be running them)
                    db.clear_statement_cache()
                    box["now"] = (db, {sql: db.prepare(sql) for sql in st})
                    counts["dropped"] += 1
                del db, st
                gc.collect()
                counts["collected"] += 1
            except BaseException as exc:
                unexpected.append(f"closer: {type(exc).__module__}.{type(exc).__name__}: {exc!r}")
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=closer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    box["now"][0].close()
    box.clear()
    gc.collect()
    print(json.dumps({"implementation": _select.IMPLEMENTATION, "unexpected": unexpected, **counts}))
"""


@pytest.mark.parametrize("mode", ["closes", "drops"])
def test_threads_calling_while_databases_close_and_reopen(
    impl: ModuleType, impl_env: dict[str, str], db_path: Path, mode: str
) -> None:
    """Four threads call shared statements while a fifth closes and reopens the database and collects.

    "drops" also drops every statement now and then (the cache cleared, the workers' last
    references gone), so statements finalize their handles while other threads step on the same
    connections (this deadlocked once: finalizing with the GIL held). "closes" leaves the
    statements to close().
    """
    db_path.parent.mkdir(parents=True)
    done = run_child(STRESS, impl_env, str(db_path), "3", "9", mode, timeout=60)
    report = child_report(done)
    assert report["implementation"] == impl_name(impl)
    assert report["unexpected"] == []
    assert report["calls"] > 1000
    assert report["reopened"] >= 5
    assert report["dropped"] >= (1 if mode == "drops" else 0)
    assert report["collected"] >= 10


# -- 4. re-entrancy: a SQL function running the statement that calls it ----------------------
@pytest.mark.parametrize("registered", ["on every connection", "on the writer"])
def test_a_function_running_the_same_statement_recursively(
    impl: ModuleType, db_path: Path, registered: str
) -> None:
    holder: dict[str, Any] = {}

    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * int(holder["statement"].scalar(n - 1))

    def install(connection: apsw.Connection) -> None:
        connection.create_scalar_function("factorial", factorial, 1)

    on_connect = install if registered == "on every connection" else None
    with appdb.init_database(db_path, readers=2, on_connect=on_connect) as db:
        if on_connect is None:
            install(db.connection)
        statement = holder["statement"] = db.prepare("SELECT factorial(?) AS v")
        assert [statement.scalar(n) for n in range(1, 11)] == [math.factorial(n) for n in range(1, 11)]
        assert statement.get(7) == {"v": 5040}
        assert statement.all(5) == [{"v": 120}]
        with db.transaction():
            assert statement.scalar(6) == 720
        iterator = statement.iterate(4)
        assert statement.scalar(3) == 6  # while the same statement's iterator is open
        assert list(iterator) == [{"v": 24}]
        assert open_snapshots(db) == 0


def test_a_function_running_the_same_statement_for_each_row(impl: ModuleType, db_path: Path) -> None:
    holder: dict[str, Any] = {}

    def below(k: int) -> int:  # the rows of the same query for a smaller bound
        return len(holder["statement"].all(k - 1))

    with appdb.init_database(db_path, on_connect=lambda c: c.create_scalar_function("below", below, 1)) as db:
        make_table(db, rows=6)
        sql = "SELECT id, below(id) AS n FROM t WHERE id <= ? ORDER BY id"
        statement = holder["statement"] = db.prepare(sql)
        expected = [{"id": i, "n": i - 1} for i in range(1, 7)]
        assert statement.all(6) == expected
        assert statement.get(6) == expected[0]
        assert list(statement.iterate(6)) == expected
        for got in statement.iterate(6):  # break out while the inner calls hold handles of their own
            assert got == expected[0]
            break
        with db.transaction():
            assert statement.all(4) == expected[:4]
        assert statement.all(6) == expected
        assert open_snapshots(db) == 0


def test_a_write_whose_function_runs_the_same_write(impl: ModuleType, db_path: Path) -> None:
    holder: dict[str, Any] = {}

    def deeper(depth: int) -> int:
        if depth > 0:
            holder["insert"].run(depth - 1)
        return depth

    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE log (depth INTEGER)")
        db.connection.create_scalar_function("deeper", deeper, 1)
        insert = holder["insert"] = db.prepare("INSERT INTO log (depth) VALUES (deeper(?))")
        assert insert.run(5).changes == 1
        with db.transaction():
            insert.run(3)
        depths = db.prepare("SELECT depth FROM log ORDER BY depth", row_type="tuple")
        assert [r[0] for r in depths.all()] == sorted([*range(6), *range(4)])
        assert open_snapshots(db) == 0


def test_iterating_while_the_same_statement_runs_again(impl: ModuleType, small: appdb.AppDatabase) -> None:
    scan = small.prepare("SELECT id, name FROM t WHERE id >= ? ORDER BY id")
    seen = []
    for got in scan.iterate(1):
        seen.append(got["id"])
        assert scan.get(got["id"]) == got  # the same statement, while its iterator holds a handle
        assert [r["id"] for r in scan.all(4)] == [4, 5]
        if got["id"] == 3:
            break
    assert seen == [1, 2, 3]
    with small.transaction():  # the same on the writer
        outer = scan.iterate(2)
        assert next(outer) == {"id": 2, "name": "b"}
        assert scan.all(5) == [{"id": 5, "name": "e"}]
        assert [r["id"] for r in outer] == [3, 4, 5]
    assert scan.all(4) == [{"id": 4, "name": "d"}, {"id": 5, "name": "e"}]
    assert open_snapshots(small) == 0


# -- 5. the same SQL from many threads at once -------------------------------------------------
def test_the_same_sql_from_eight_threads(impl: ModuleType, small: appdb.AppDatabase) -> None:
    sql = "SELECT id, name, score FROM t WHERE id = ?"
    expected = {
        1: {"id": 1, "name": "a", "score": 1.5},
        2: {"id": 2, "name": "b", "score": 2.5},
        3: {"id": 3, "name": "c", "score": None},
        4: {"id": 4, "name": "d", "score": 4.0},
        5: {"id": 5, "name": "e", "score": 5.0},
    }
    shared = small.prepare(sql)

    def work(n: int) -> int:
        wrong = 0
        for i in range(2000):
            k = (n + i) % 5 + 1
            statement = shared if i % 2 else small.prepare(sql)  # the cache hands out the same one
            kind = i % 4
            if kind == 0:
                wrong += statement.get(k) != expected[k]
            elif kind == 1:
                wrong += statement.all(k) != [expected[k]]
            elif kind == 2:
                wrong += statement.scalar(k) != k
            else:
                wrong += list(statement.iterate(k)) != [expected[k]]
        return wrong

    with ThreadPoolExecutor(max_workers=8) as pool:
        wrong = list(pool.map(work, range(8)))
    assert wrong == [0] * 8
    assert small.prepare(sql) is shared
    assert open_snapshots(small) == 0


# -- 6. closing the database while other threads are mid-call ----------------------------------
def close_during_calls(path: Path) -> dict[int, type[BaseException]]:
    """Close a database while six threads loop on calls; what each thread's loop ended with."""
    db = appdb.init_database(path)
    make_table(db, rows=5)
    point = db.prepare("SELECT id, name, score FROM t WHERE id = ?")
    scan = db.prepare("SELECT id FROM t ORDER BY id", row_type="tuple")
    insert = db.prepare("INSERT INTO t (name) VALUES (?)")
    calls = [0] * 6
    ends: dict[int, type[BaseException]] = {}
    start = threading.Barrier(7)

    def loop(n: int) -> None:
        start.wait()
        try:
            while True:
                if n in (0, 1):
                    assert point.get(n + 1) == row(n + 1)
                elif n in (2, 3):
                    assert scan.all()[:5] == [(i,) for i in range(1, 6)]
                elif n == 4:
                    assert [r[0] for r in scan.iterate()][:5] == [1, 2, 3, 4, 5]
                else:
                    assert insert.run("w").changes == 1
                calls[n] += 1
        except BaseException as exc:
            ends[n] = type(exc)

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    start.wait()
    deadline = time.monotonic() + HANG
    while min(calls) < 10 and time.monotonic() < deadline:  # every thread is well into its loop
        time.sleep(0.001)
    db.close()
    for thread in threads:
        thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads), "a call hung after close()"
    return ends


def test_close_while_threads_are_mid_call(impl: ModuleType, tmp_path: Path) -> None:
    for round_ in range(4):
        ends = close_during_calls(tmp_path / f"app{round_}.db")
        assert ends == {n: appdb.DatabaseClosedError for n in range(6)}
        gc.collect()


# -- deadlocks: a finalize that waits for a connection's mutex while holding the GIL ----------
DROP_DURING_A_STEP = """
    import faulthandler, sys, threading, time
    import appdb

    path, hang, busy = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    faulthandler.dump_traceback_later(hang, exit=True)
    db = appdb.init_database(path, readers=0, checkpoints="external")  # no WAL-guard hook either
    victim = db.prepare("SELECT 1 AS one")
    assert victim.get() == {"one": 1}  # it holds a statement on the writer now
    if busy == "apsw":  # a long step in APSW's cursor on the writer
        work = lambda: db.exec(
            "CREATE TABLE big AS WITH RECURSIVE c(x) AS"
            " (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c"
        )
    else:  # a step that calls a Python function (which sleeps without the GIL)
        db.connection.create_scalar_function("nap", lambda x: (time.sleep(0.3), x)[1], 1)
        work = db.prepare("SELECT nap(2) AS two").get
    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(0.05)
    db.clear_statement_cache()
    del victim  # the last reference: its statement on the writer is finalized here
    worker.join()
    db.close()
    print("ok")
"""


@pytest.mark.parametrize("busy", ["apsw", "function"])
def test_dropping_a_statement_while_another_thread_steps_on_its_connection(
    impl: ModuleType, impl_env: dict[str, str], db_path: Path, busy: str
) -> None:
    db_path.parent.mkdir(parents=True)
    done = run_child(DROP_DURING_A_STEP, impl_env, str(db_path), "2.5", busy, timeout=30)
    assert check_child(done).strip() == "ok"


CLOSE_UNDER_TIMEOUT = """
    import faulthandler, sys, threading, time
    import appdb

    faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)
    db = appdb.init_database(sys.argv[1], readers=2, query_timeout=60)
    scan = db.prepare(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
        " SELECT count(*) FROM c"
    )
    other = db.prepare("SELECT 1")
    started = threading.Barrier(3)
    ends = []

    def read():
        other.get()  # another statement holds a handle on this thread's reader
        started.wait()
        try:
            while True:
                scan.scalar()
        except appdb.DatabaseClosedError:
            ends.append("closed")

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.05)
    db.close()
    for thread in threads:
        thread.join()
    print(",".join(ends))
"""


def test_close_while_reads_run_under_a_query_timeout(
    impl: ModuleType, impl_env: dict[str, str], db_path: Path
) -> None:
    db_path.parent.mkdir(parents=True)
    done = run_child(CLOSE_UNDER_TIMEOUT, impl_env, str(db_path), "2.5", timeout=30)
    assert check_child(done).strip() == "closed,closed"
