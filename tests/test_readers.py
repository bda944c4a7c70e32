"""The reader pool (issue #9): pool size, connection setup, routing, isolation, sharing, close().

Every statement a thread runs outside its own transaction that only reads the
main database runs on a pool reader; everything else runs on the writer. The
SQL function ``role()``, registered by ``on_connect`` on every connection, says
which kind of connection ran a statement.
"""

from __future__ import annotations

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
from conftest import in_thread, open_snapshots

HANG = 10.0  # seconds after which a blocked call counts as a hang (never reached when all is well)


def label(connection: apsw.Connection) -> None:
    """on_connect: ``role()`` answers 'reader' on a pool reader (query_only) and 'writer' otherwise."""
    role = "reader" if connection.execute("PRAGMA query_only").get else "writer"
    connection.create_scalar_function("role", lambda: role, 0)


def open_db(path: Path | str, **options: Any) -> appdb.AppDatabase:
    options.setdefault("on_connect", label)
    return appdb.init_database(path, **options)


@pytest.fixture
def ldb(impl: ModuleType, db_path: Path) -> Iterator[appdb.AppDatabase]:
    """A file database with 3 readers, ``role()`` on every connection and the 5-row table ``t``."""
    database = open_db(db_path, readers=3)
    database.exec(
        """
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL);
        INSERT INTO t (name, score) VALUES ('a', 1.5), ('b', 2.5), ('c', NULL), ('d', 4.0), ('e', 5.0);
        """
    )
    yield database
    database.close()


def start_threads(targets: list[Callable[[], None]]) -> tuple[list[threading.Thread], list[BaseException]]:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for thread in threads:
        thread.start()
    return threads, errors


def join_all(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    for thread in threads:
        thread.join(HANG)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


def run_in_child(fn: Callable[[], None], tmp_path: Path, timeout: float = 30.0) -> None:
    """Run ``fn`` in a forked child; fail with its traceback, its crash signal, or a hang."""
    report = tmp_path / f"child-{time.monotonic_ns()}.txt"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result travels back through its exit status
        code = 0
        try:
            fn()
        except BaseException:
            code = 1
            report.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    give_up = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > give_up:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child process hung")
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        pytest.fail(f"the child process crashed with signal {os.WTERMSIG(status)}")
    if os.WEXITSTATUS(status) != 0:
        pytest.fail("the child process failed:\n" + (report.read_text() if report.exists() else "?"))


# -- pool size -----------------------------------------------------------------------
def test_default_readers_between_4_and_8(impl: ModuleType, db_path: Path) -> None:
    assert 4 <= appdb.default_readers() <= 8
    with appdb.init_database(db_path) as db:
        assert db.readers == appdb.default_readers()


@pytest.mark.parametrize(("readers", "expected"), [(None, "default"), (0, 0), (1, 1), (3, 3)])
def test_pool_size_reported(impl: ModuleType, db_path: Path, readers: int | None, expected: Any) -> None:
    with appdb.init_database(db_path, readers=readers) as db:
        assert db.readers == (appdb.default_readers() if expected == "default" else expected)
        status = db.pool_status()
        assert status.readers == db.readers
        assert status.open == 0  # readers open lazily


@pytest.mark.parametrize("readers", [None, 0, 3])
def test_memory_database_has_no_readers(impl: ModuleType, readers: int | None) -> None:
    with open_db(":memory:", readers=readers) as db:
        assert db.readers == 0
        db.exec("CREATE TABLE m (x); INSERT INTO m VALUES (1)")
        select = db.prepare("SELECT x, role() AS r FROM m")
        assert select.parallel is False
        assert select.get() == {"x": 1, "r": "writer"}


@pytest.mark.parametrize("readers", [-1, True, 1.5, "2"])
def test_invalid_readers(impl: ModuleType, db_path: Path, readers: Any) -> None:
    with pytest.raises(ValueError):
        appdb.init_database(db_path, readers=readers)


def test_readers_zero_runs_everything_on_the_writer(impl: ModuleType, db_path: Path) -> None:
    with open_db(db_path, readers=0) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)")
        select = db.prepare("SELECT role() AS r, count(*) AS n FROM t")
        assert select.parallel is False
        assert select.get() == {"r": "writer", "n": 2}
        assert in_thread(select.get) == {"r": "writer", "n": 2}
        assert db.pool_status() == appdb.PoolStatus(0, 0, 0, 0)


# -- how connections are configured -------------------------------------------------------
def test_every_connection_configured_alike_and_readers_query_only(impl: ModuleType, db_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    connections: list[apsw.Connection] = []
    lock = threading.Lock()
    gate = threading.Barrier(2)

    def meet() -> int:
        gate.wait(HANG)  # passes only when two statements run at the same time
        return 1

    def on_connect(connection: apsw.Connection) -> None:
        def pragma(name: str) -> Any:
            return connection.execute(f"PRAGMA {name}").get

        settings = {
            "query_only": pragma("query_only"),
            "foreign_keys": pragma("foreign_keys"),
            "trusted_schema": pragma("trusted_schema"),
            "journal_mode": pragma("journal_mode"),
            "cache_size": pragma("cache_size"),
            "defensive": connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1),
            "dqs_dml": connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, -1),
            "dqs_ddl": connection.config(apsw.SQLITE_DBCONFIG_DQS_DDL, -1),
            "load_extension": connection.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, -1),
        }
        with lock:
            seen.append(settings)
            connections.append(connection)
        connection.create_scalar_function("meet", meet, 0)
        label(connection)

    expected = {
        "query_only": 0,
        "foreign_keys": 1,
        "trusted_schema": 0,
        "journal_mode": "wal",
        "cache_size": -1234,
        "defensive": 1,
        "dqs_dml": 0,
        "dqs_ddl": 0,
        "load_extension": 0,
    }
    with appdb.init_database(db_path, readers=2, on_connect=on_connect, pragmas={"cache_size": -1234}) as db:
        assert len(seen) == 1  # only the writer: readers open on first use
        assert connections[0] is db.connection
        assert seen[0] == expected
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        select = db.prepare("SELECT meet() AS m, role() AS r FROM t")
        results: list[Any] = []
        threads, errors = start_threads([lambda: results.append(select.get())] * 2)
        join_all(threads, errors)
        assert results == [{"m": 1, "r": "reader"}] * 2
        assert db.pool_status().open == 2
        assert len(seen) == 3
        assert seen[1:] == [{**expected, "query_only": 1}] * 2
        # an idle reader refuses every write, whatever SQL reaches it
        assert open_snapshots(db) == 0
        for reader in connections[1:]:
            with pytest.raises(apsw.ReadOnlyError):
                reader.execute("INSERT INTO t VALUES (2)")
            with pytest.raises(apsw.ReadOnlyError):
                reader.execute("CREATE TABLE never (x)")
        assert db.prepare("SELECT count(*) FROM t").scalar() == 1


def test_on_connect_runs_on_writer_and_each_reader(impl: ModuleType, db_path: Path) -> None:
    calls: list[str] = []
    gate = threading.Barrier(3)

    def meet(x: int) -> int:
        gate.wait(HANG)  # passes only when three statements run at the same time
        return x * 2

    def on_connect(connection: apsw.Connection) -> None:
        calls.append("reader" if connection.execute("PRAGMA query_only").get else "writer")
        connection.create_scalar_function("meet_double", meet, 1)

    with appdb.init_database(db_path, readers=3, on_connect=on_connect) as db:
        assert calls == ["writer"]
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (21)")
        select = db.prepare("SELECT meet_double(x) AS d FROM t")
        assert select.parallel is True
        results: list[Any] = []

        def call() -> None:
            results.append(select.get())

        threads, errors = start_threads([call, call, call])
        join_all(threads, errors)
        assert results == [{"d": 42}] * 3
        assert sorted(calls) == ["reader", "reader", "reader", "writer"]
        assert db.pool_status().open == 3


def test_pool_never_exceeds_its_size(impl: ModuleType, db_path: Path) -> None:
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def gauge() -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.005)
        with lock:
            state["now"] -= 1
        return 1

    def on_connect(connection: apsw.Connection) -> None:
        connection.create_scalar_function("gauge", gauge, 0)

    with appdb.init_database(db_path, readers=2, on_connect=on_connect) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        select = db.prepare("SELECT gauge() AS g FROM t")
        assert select.parallel is True

        def work() -> None:
            for _ in range(6):
                assert select.get() == {"g": 1}

        threads, errors = start_threads([work] * 6)
        join_all(threads, errors)
        assert 1 <= state["max"] <= 2
        status = db.pool_status()
        assert 1 <= status.open <= 2
        assert status.busy == 0


def test_a_waiting_reader_is_not_starved(impl: ModuleType, db_path: Path) -> None:
    """Threads that keep every reader busy in a loop must not lock a further reading thread out."""
    with appdb.init_database(db_path, readers=2) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        select = db.prepare("SELECT x FROM t WHERE rowid = ?")
        stop = threading.Event()
        counts = [0, 0]

        def hog(n: int) -> None:
            while not stop.is_set():
                select.get(1)
                counts[n] += 1

        hogs, hog_errors = start_threads([lambda: hog(0), lambda: hog(1)])
        try:
            give_up = time.monotonic() + HANG
            while min(counts) < 200 and time.monotonic() < give_up:  # both readers in steady use
                time.sleep(0.001)
            # a liveness bound, not a speed check: a fair pool serves this in milliseconds
            assert (
                in_thread(lambda: [select.scalar(1) for _ in range(5)], timeout=3.0, hung="starved")
                == [1] * 5
            )
        finally:
            stop.set()
        join_all(hogs, hog_errors)


def test_short_reads_never_wait_for_a_reader_that_long_reads_hold(impl: ModuleType, db_path: Path) -> None:
    """Short reads take turns on one reader; when long reads hold every reader, one more opens.

    Waiting for a reader instead, with readers handed over in turn, made every short
    read a thread switch once the threads outnumbered the readers.
    """
    with open_db(db_path, readers=1) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)")
        point = db.prepare("SELECT x, role() AS role FROM t WHERE rowid = ?")
        scan = db.prepare("SELECT x FROM t ORDER BY x")
        rows = scan.iterate()
        assert next(rows) == {"x": 1}  # this thread holds the only reader
        assert db.pool_status().busy == 1
        # another thread's short read runs at once, on one more reader
        assert in_thread(lambda: point.get(2), timeout=HANG, hung="waited for the reader") == {
            "x": 2,
            "role": "reader",
        }
        assert point.get(3) == {"x": 3, "role": "reader"}  # and this thread's, inside its loop
        assert [row["x"] for row in rows] == [2, 3]
        status = db.pool_status()
        assert (status.open, status.busy, status.snapshots) == (2, 0, 0)


def test_many_threads_on_a_small_pool(impl: ModuleType, db_path: Path) -> None:
    """More threads than readers: short reads run one at a time on a reader, long reads beside them."""
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def gauge() -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.0005)
        with lock:
            state["now"] -= 1
        return 1

    def on_connect(connection: apsw.Connection) -> None:
        label(connection)
        connection.create_scalar_function("gauge", gauge, 0)

    with open_db(db_path, readers=2, on_connect=on_connect) as db:
        db.exec(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, x); "
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) "
            "INSERT INTO t (x) SELECT i * 2 FROM c"
        )
        short = db.prepare("SELECT gauge() AS g, role() AS role, x FROM t WHERE id = ?")
        long = db.prepare("SELECT sum(x) AS total, role() AS role FROM t WHERE id <= ?")
        assert short.get(1) == {"g": 1, "role": "reader", "x": 2}

        def work(n: int) -> None:
            for i in range(1, 101):
                assert short.get(i) == {"g": 1, "role": "reader", "x": 2 * i}
                if i % 10 == n:
                    assert long.get(i) == {"total": i * (i + 1), "role": "reader"}

        threads, errors = start_threads([lambda n=n: work(n) for n in range(8)])
        join_all(threads, errors)
        assert state["max"] == 1  # short reads took turns
        status = db.pool_status()
        assert status.open <= 3 and status.busy == 0 and status.snapshots == 0


@pytest.mark.parametrize("readers", [1, 2])
def test_short_reads_first_then_long_reads_on_a_small_pool(
    impl: ModuleType, db_path: Path, readers: int
) -> None:
    """A short read on an empty pool opens a pool reader, not a spare that long reads could never use."""
    with open_db(db_path, readers=readers) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)")

        def calls() -> Any:
            return (
                db.prepare("SELECT x FROM t WHERE rowid = ?").get(1),
                db.prepare("SELECT count(*) FROM t").scalar(),
                list(db.prepare("SELECT x FROM t ORDER BY x").iterate()),
            )

        assert in_thread(calls, timeout=HANG, hung="a long read waited for ever") == (
            {"x": 1},
            2,
            [{"x": 1}, {"x": 2}],
        )
        assert db.pool_status().open == 1


def test_prepare_never_waits_for_a_reader_that_long_reads_hold(impl: ModuleType, db_path: Path) -> None:
    """Describing a new statement (prepare, columns) takes a reader as a short read does."""
    with open_db(db_path, readers=1) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)")
        rows = db.prepare("SELECT x FROM t ORDER BY x").iterate()
        assert next(rows) == {"x": 1}  # this thread holds the only reader

        def prepare_and_run() -> Any:
            statement = db.prepare("SELECT x * 10 AS y FROM t WHERE rowid = ?")  # short: no loop
            return statement.columns, statement.get(2)

        assert in_thread(prepare_and_run, timeout=HANG, hung="prepare waited for the reader") == (
            ("y",),
            {"y": 20},
        )
        assert list(rows) == [{"x": 2}]
        status = db.pool_status()
        assert (status.open, status.busy, status.snapshots) == (2, 0, 0)


def test_the_spare_reader_never_serves_long_reads(impl: ModuleType, db_path: Path) -> None:
    """Long reads stay bounded by the pool's size; short reads open one spare beside it, once."""
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow() -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.005)
        with lock:
            state["now"] -= 1
        return 1

    def on_connect(connection: apsw.Connection) -> None:
        connection.create_scalar_function("slow", slow, 0)

    with appdb.init_database(db_path, readers=2, on_connect=on_connect) as db:
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, x); INSERT INTO t (x) VALUES (1), (2), (3)")
        short = db.prepare("SELECT x FROM t WHERE id = ?")
        long = db.prepare("SELECT slow() AS s, count(*) AS n FROM t")
        until = time.monotonic() + 0.5
        shorts = [0]

        def long_reads() -> None:
            while time.monotonic() < until:
                assert long.get() == {"s": 1, "n": 3}

        def short_reads() -> None:
            while time.monotonic() < until:
                assert short.get(2) == {"x": 2}
                shorts[0] += 1

        threads, errors = start_threads([long_reads] * 8 + [short_reads])
        join_all(threads, errors)
        assert shorts[0] > 0
        assert state["max"] == 2  # the pool's size, never more
        status = db.pool_status()
        assert (status.open, status.busy, status.snapshots) == (3, 0, 0)  # 2 readers and the spare


# -- routing -----------------------------------------------------------------------------
def test_parallel_flag(ldb: appdb.AppDatabase) -> None:
    for sql in (
        "SELECT name FROM t WHERE id = ?",
        "WITH x AS (SELECT id FROM t) SELECT count(*) FROM x",
        "VALUES (1), (2)",
        "SELECT role(), upper(name) FROM t",
        "SELECT * FROM main.t",
    ):
        assert ldb.prepare(sql).parallel is True, sql
    for sql in (
        "INSERT INTO t (name) VALUES ('x')",
        "UPDATE t SET score = 1",
        "DELETE FROM t WHERE id = 0",
        "CREATE TABLE IF NOT EXISTS other (x)",
        "PRAGMA user_version",
        "BEGIN",
        "SELECT * FROM temp.sqlite_temp_schema",
    ):
        assert ldb.prepare(sql).parallel is False, sql


def test_reads_run_on_readers_outside_transactions_and_on_the_writer_inside(ldb: appdb.AppDatabase) -> None:
    where = ldb.prepare("SELECT role()")
    rows = ldb.prepare("SELECT role() AS r FROM t WHERE id <= 2")
    assert where.scalar() == "reader"
    assert where.get() == {"role()": "reader"}
    assert rows.all() == [{"r": "reader"}] * 2
    assert [row["r"] for row in rows.iterate()] == ["reader"] * 2
    with ldb.transaction():
        assert where.scalar() == "writer"
        assert [row["r"] for row in rows.iterate()] == ["writer"] * 2
        with ldb.transaction():  # a savepoint: still this thread's transaction
            assert rows.all() == [{"r": "writer"}] * 2
        assert in_thread(where.scalar) == "reader"  # other threads keep their readers
    assert where.scalar() == "reader"
    with ldb.writer():
        assert where.scalar() == "writer"
        assert rows.get() == {"r": "writer"}
        assert in_thread(where.scalar) == "reader"
    assert where.scalar() == "reader"
    assert ldb.transaction(lambda db: db.prepare("SELECT role()").scalar()) == "writer"
    assert ldb.transaction(lambda db: where.scalar()) == "writer"
    assert where.scalar() == "reader"


def test_raw_sql_transaction_sends_everything_to_the_writer(ldb: appdb.AppDatabase) -> None:
    where = ldb.prepare("SELECT role()")
    count = ldb.prepare("SELECT count(*) FROM t")
    insert = ldb.prepare("INSERT INTO t (name) VALUES (?)")
    ldb.exec("BEGIN")
    insert.run("raw")
    assert where.scalar() == "writer"
    assert count.scalar() == 6  # its own uncommitted row
    assert in_thread(where.scalar) == "writer"
    ldb.exec("COMMIT")
    assert where.scalar() == "reader"
    assert in_thread(where.scalar) == "reader"
    assert count.scalar() == 6
    ldb.exec("BEGIN IMMEDIATE")
    insert.run("undone")
    assert count.scalar() == 7
    assert where.scalar() == "writer"
    ldb.exec("ROLLBACK")
    assert where.scalar() == "reader"
    assert count.scalar() == 6
    # the same through statements
    ldb.prepare("BEGIN").run()
    insert.run("stmt")
    assert where.scalar() == "writer"
    assert count.scalar() == 7
    ldb.prepare("COMMIT").run()
    assert where.scalar() == "reader"
    assert count.scalar() == 7
    assert not ldb.in_transaction


def test_temp_tables_attached_databases_and_writer_only_functions(
    ldb: appdb.AppDatabase, tmp_path: Path
) -> None:
    ldb.exec("CREATE TEMP TABLE scratch (x); INSERT INTO scratch VALUES (7), (8)")
    temp = ldb.prepare("SELECT sum(x) AS s, role() AS r FROM scratch")
    assert temp.parallel is False
    assert temp.get() == {"s": 15, "r": "writer"}
    assert in_thread(temp.get) == {"s": 15, "r": "writer"}

    ldb.connection.create_scalar_function("writer_only", lambda x: x * 10, 1)
    function = ldb.prepare("SELECT writer_only(id) AS w, role() AS r FROM t WHERE id = 2")
    assert function.parallel is False
    assert function.get() == {"w": 20, "r": "writer"}
    assert in_thread(function.all) == [{"w": 20, "r": "writer"}]

    other = tmp_path / "other.db"
    ldb.exec(f"ATTACH DATABASE '{other}' AS other; CREATE TABLE other.o (x); INSERT INTO other.o VALUES (3)")
    attached = ldb.prepare("SELECT x, role() AS r FROM other.o")
    assert attached.parallel is False
    assert attached.all() == [{"x": 3, "r": "writer"}]
    assert in_thread(attached.scalar) == 3
    ldb.exec("DETACH DATABASE other")


def test_writer_only_function_prepared_inside_a_transaction(ldb: appdb.AppDatabase) -> None:
    ldb.connection.create_scalar_function("late", lambda: "late", 0)
    with ldb.transaction():
        late = ldb.prepare("SELECT late() AS l, role() AS r")  # compiled on the writer
        assert late.get() == {"l": "late", "r": "writer"}
    # outside, the readers do not know late(): it must still work, on the writer
    assert late.get() == {"l": "late", "r": "writer"}
    assert late.parallel is False
    assert in_thread(late.scalar) == "late"
    assert [row["r"] for row in late.iterate()] == ["writer"]


def test_transaction_in_one_thread_isolated_from_others(ldb: appdb.AppDatabase) -> None:
    names = ldb.prepare("SELECT name FROM t ORDER BY id", row_type="tuple")
    count = ldb.prepare("SELECT count(*) FROM t")
    where = ldb.prepare("SELECT role()")
    insert = ldb.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
    inserted = threading.Event()
    release = threading.Event()
    state: dict[str, Any] = {"committing": False}

    def owner() -> None:
        with ldb.transaction():
            insert.run("mine", 1.0)
            state["own_names"] = [row[0] for row in names.all()]
            state["own_count"] = count.scalar()
            state["own_role"] = where.scalar()
            state["own_iter"] = [row[0] for row in names.iterate()]
            inserted.set()
            assert release.wait(HANG)
            state["committing"] = True
        state["committed"] = True

    def other_writer() -> None:
        result = insert.run("theirs", 2.0)
        state["theirs_rowid"] = result.last_insert_rowid
        state["saw_commit"] = state["committing"]

    threads, errors = start_threads([owner])
    assert inserted.wait(HANG)
    try:
        # this thread reads committed data, on a reader, with the same statements, without waiting
        assert state["own_names"] == ["a", "b", "c", "d", "e", "mine"]
        assert state["own_iter"] == state["own_names"]
        assert state["own_count"] == 6
        assert state["own_role"] == "writer"
        assert [row[0] for row in names.all()] == ["a", "b", "c", "d", "e"]
        assert [row[0] for row in names.iterate()] == ["a", "b", "c", "d", "e"]
        assert count.scalar() == 5
        assert where.scalar() == "reader"
        assert not ldb.prepare("SELECT 1 FROM t WHERE name = 'mine'").all()
        # a write from another thread waits for the transaction
        writers, writer_errors = start_threads([other_writer])
        writers[0].join(0.3)
        assert writers[0].is_alive(), "a write did not wait for another thread's transaction"
        assert count.scalar() == 5  # reads still run while a write waits
        assert in_thread(count.scalar) == 5
    finally:
        release.set()
    join_all(threads, errors)
    join_all(writers, writer_errors)
    assert state["committed"] is True
    assert state["saw_commit"] is True
    assert state["theirs_rowid"] == 7
    assert [row[0] for row in names.all()] == ["a", "b", "c", "d", "e", "mine", "theirs"]
    assert open_snapshots(ldb) == 0


def test_rolled_back_transaction_never_visible_to_other_threads(ldb: appdb.AppDatabase) -> None:
    count = ldb.prepare("SELECT count(*) FROM t")
    insert = ldb.prepare("INSERT INTO t (name) VALUES (?)")
    inside = threading.Event()
    release = threading.Event()

    def owner() -> None:
        with pytest.raises(LookupError), ldb.transaction():
            insert.run("gone")
            assert count.scalar() == 6
            inside.set()
            assert release.wait(HANG)
            raise LookupError

    threads, errors = start_threads([owner])
    assert inside.wait(HANG)
    try:
        assert count.scalar() == 5
    finally:
        release.set()
    join_all(threads, errors)
    assert count.scalar() == 5
    assert in_thread(count.scalar) == 5


def test_writer_block_lets_other_threads_read(ldb: appdb.AppDatabase) -> None:
    count = ldb.prepare("SELECT count(*) FROM t")
    where = ldb.prepare("SELECT role()")
    insert = ldb.prepare("INSERT INTO t (name) VALUES (?)")
    holding = threading.Event()
    release = threading.Event()
    state: dict[str, Any] = {"leaving": False}

    def holder() -> None:
        with ldb.writer() as connection:
            assert connection is ldb.connection
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t (name) VALUES ('held')")
            state["role"] = where.scalar()
            state["count"] = count.scalar()
            holding.set()
            assert release.wait(HANG)
            connection.execute("COMMIT")
            state["leaving"] = True

    def other_writer() -> None:
        insert.run("after")
        state["after_saw_leave"] = state["leaving"]

    threads, errors = start_threads([holder])
    assert holding.wait(HANG)
    try:
        assert state["role"] == "writer"
        assert state["count"] == 6
        assert count.scalar() == 5
        assert where.scalar() == "reader"
        writers, writer_errors = start_threads([other_writer])
        writers[0].join(0.3)
        assert writers[0].is_alive(), "a write did not wait for the writer block"
    finally:
        release.set()
    join_all(threads, errors)
    join_all(writers, writer_errors)
    assert state["after_saw_leave"] is True
    assert count.scalar() == 7


# -- sharing statements between threads --------------------------------------------------
def test_prepare_returns_one_statement_from_every_thread(ldb: appdb.AppDatabase) -> None:
    sql = "SELECT name FROM t WHERE id = ?"
    before = ldb.statement_cache_stats()
    gate = threading.Barrier(8)
    found: list[Any] = []
    lock = threading.Lock()

    def work() -> None:
        gate.wait(HANG)
        first = ldb.prepare(sql)
        second = ldb.prepare(sql)
        with lock:
            found.extend([first, second])

    threads, errors = start_threads([work] * 8)
    join_all(threads, errors)
    assert len(found) == 16
    assert all(statement is found[0] for statement in found)
    assert found[0] is ldb.prepare(sql)
    after = ldb.statement_cache_stats()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits == 16
    assert after.size == before.size + 1
    assert found[0].get(2) == {"name": "b"}
    # and in sequence, exactly
    mid = ldb.statement_cache_stats()
    other = ldb.prepare("SELECT score FROM t WHERE id = ?")
    assert ldb.prepare("SELECT score FROM t WHERE id = ?") is other
    assert in_thread(lambda: ldb.prepare("SELECT score FROM t WHERE id = ?")) is other
    end = ldb.statement_cache_stats()
    assert (end.hits - mid.hits, end.misses - mid.misses) == (2, 1)


def test_threads_share_statements_and_read_their_writes(ldb: appdb.AppDatabase) -> None:
    point = ldb.prepare("SELECT name FROM t WHERE id = ?")
    scan = ldb.prepare("SELECT id FROM t WHERE id <= 5 ORDER BY id", row_type="tuple")
    mine = ldb.prepare("SELECT count(*) FROM t WHERE name = ?")
    insert = ldb.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
    update = ldb.prepare("UPDATE t SET score = score + 1 WHERE id = 1")
    gate = threading.Barrier(6)
    rounds = 60

    def work(n: int) -> None:
        tag = f"w{n}"
        gate.wait(HANG)
        for i in range(rounds):
            assert point.get(2) == {"name": "b"}
            assert [row[0] for row in scan.iterate()] == [1, 2, 3, 4, 5]
            assert scan.all() == [(1,), (2,), (3,), (4,), (5,)]
            if i % 3 == 0:
                with ldb.transaction():
                    insert.run(tag, i)
                    assert mine.scalar(tag) == i + 1  # its own rows, on the writer
                    update.run()
            else:
                insert.run(tag, i)
            # committed a moment ago on the writer: a reader must see it at once
            assert mine.scalar(tag) == i + 1

    threads, errors = start_threads([lambda n=n: work(n) for n in range(6)])
    join_all(threads, errors)
    assert ldb.prepare("SELECT count(*) FROM t WHERE id > 5").scalar() == 6 * rounds
    assert ldb.prepare("SELECT score FROM t WHERE id = 1").scalar() == 1.5 + 6 * (rounds // 3)
    assert open_snapshots(ldb) == 0


def test_read_after_write_and_schema_changes_reach_readers(ldb: appdb.AppDatabase) -> None:
    insert = ldb.prepare("INSERT INTO t (name) VALUES (?)")
    count = ldb.prepare("SELECT count(*) FROM t")
    for i in range(50):
        insert.run(f"n{i}")
        assert count.scalar() == 6 + i
    ldb.exec("CREATE TABLE fresh (x); INSERT INTO fresh VALUES (1)")
    fresh = ldb.prepare("SELECT * FROM fresh")
    assert fresh.parallel is True
    assert fresh.all() == [{"x": 1}]
    ldb.exec("ALTER TABLE fresh ADD COLUMN y DEFAULT 'why'")
    assert fresh.all() == [{"x": 1, "y": "why"}]
    assert fresh.columns == ("x", "y")
    assert in_thread(fresh.all) == [{"x": 1, "y": "why"}]
    with ldb.transaction():
        ldb.exec("CREATE TABLE inside (z); INSERT INTO inside VALUES (5)")
        assert ldb.prepare("SELECT z FROM inside").all() == [{"z": 5}]
    assert ldb.prepare("SELECT z FROM inside").scalar() == 5
    assert in_thread(ldb.prepare("SELECT z, role() AS r FROM inside").get) == {"z": 5, "r": "reader"}


@pytest.mark.parametrize("readers", [1, 3])
def test_iterate_nested_in_its_own_loop(impl: ModuleType, db_path: Path, readers: int) -> None:
    with open_db(db_path, readers=readers) as db:
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)")
        ids = db.prepare("SELECT id, role() AS r FROM t ORDER BY id", row_type="tuple")

        def nested() -> list[Any]:
            return [(a, b, ra, rb) for a, ra in ids.iterate() for b, rb in ids.iterate()]

        expected = [(a, b) for a in (1, 2, 3) for b in (1, 2, 3)]
        outside = in_thread(nested)
        assert [(a, b) for a, b, _, _ in outside] == expected
        assert {ra for _, _, ra, _ in outside} == {rb for _, _, _, rb in outside} == {"reader"}

        def nested_in_transaction() -> list[Any]:
            with db.transaction():
                db.prepare("INSERT INTO t VALUES (4)").run()
                return nested()

        inside = in_thread(nested_in_transaction)
        expected = [(a, b) for a in (1, 2, 3, 4) for b in (1, 2, 3, 4)]
        assert [(a, b) for a, b, _, _ in inside] == expected
        assert {ra for _, _, ra, _ in inside} == {"writer"}

        # an iterator begun outside keeps its reader while this thread opens a transaction
        def across() -> list[int]:
            iterator = ids.iterate()
            first = next(iterator)
            with db.transaction():
                db.prepare("INSERT INTO t VALUES (5)").run()
                got = [first[0]] + [row[0] for row in iterator]
            return got

        assert in_thread(across) == [1, 2, 3, 4]
        assert db.prepare("SELECT count(*) FROM t").scalar() == 5
        assert open_snapshots(db) == 0


# -- no snapshot left open ---------------------------------------------------------------
def test_no_read_snapshot_left_after_calls(impl: ModuleType, db_path: Path) -> None:
    with open_db(db_path, readers=3) as db:
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        insert = db.prepare("INSERT INTO t (v) VALUES (?)")
        insert.run_many(range(300))
        many = db.prepare("SELECT id, v FROM t ORDER BY id")
        first = db.prepare("SELECT v FROM t WHERE id > ? ORDER BY id")
        gate = threading.Barrier(4)

        def reads() -> None:
            gate.wait(HANG)
            for i in range(25):
                assert many.get() == {"id": 1, "v": 0}
                assert first.scalar(i) == i
                assert len(many.all()) >= 300
                assert next(iter(many.iterate()))["id"] == 1  # dropped after one row
                for _row in many.iterate():
                    break
                with many.iterate() as rows:
                    next(rows)
                partial = many.iterate()
                next(partial)
                partial.close()
                assert sum(1 for _ in many.iterate()) >= 300
            insert.run(-1)

        threads, errors = start_threads([reads] * 4)
        join_all(threads, errors)
        status = db.pool_status()
        assert status.busy == 0
        assert open_snapshots(db) == 0
        insert.run(1000)
        assert many.get() == {"id": 1, "v": 0}
        db.checkpoint("truncate")  # raises BusyError while any reader holds a snapshot
        wal = Path(f"{db_path}-wal")
        assert wal.stat().st_size == 0
        # the WAL restarts from its beginning and readers see what is written next
        insert.run(2000)
        assert db.prepare("SELECT max(v) FROM t").scalar() == 2000
        assert in_thread(lambda: db.prepare("SELECT count(*) FROM t").scalar()) == 300 + 4 + 2
        db.checkpoint("truncate")
        assert wal.stat().st_size == 0


def test_an_open_iterator_holds_a_snapshot_until_closed(impl: ModuleType, db_path: Path) -> None:
    # the check above can fail: an unfinished iterate() does block a TRUNCATE checkpoint
    with open_db(db_path, readers=2, pragmas={"busy_timeout": 50}) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)")
        iterator = db.prepare("SELECT x FROM t").iterate()
        assert next(iterator) == {"x": 1}
        assert open_snapshots(db) == 1
        with pytest.raises(apsw.BusyError):
            db.checkpoint("truncate")
        iterator.close()
        assert open_snapshots(db) == 0
        db.checkpoint("truncate")
        assert Path(f"{db_path}-wal").stat().st_size == 0


# -- close() ----------------------------------------------------------------------------
def test_calls_after_close_raise(ldb: appdb.AppDatabase) -> None:
    read = ldb.prepare("SELECT name FROM t WHERE id = ?")
    write = ldb.prepare("INSERT INTO t (name) VALUES (?)")
    iterator = read.iterate(1)
    other_iterator = ldb.prepare("SELECT id FROM t").iterate()
    assert next(other_iterator) == {"id": 1}
    ldb.close()
    ldb.close()  # twice is fine
    assert ldb.closed
    calls: list[Callable[[], Any]] = [
        lambda: read.get(1),
        lambda: read.all(1),
        lambda: read.scalar(1),
        lambda: list(read.iterate(1)),
        lambda: write.run("x"),
        lambda: write.run_many([("x",)]),
        lambda: ldb.prepare("SELECT 1"),
        lambda: ldb.prepare("SELECT name FROM t WHERE id = ?"),
        lambda: ldb.exec("SELECT 1"),
        lambda: ldb.transaction().__enter__(),
        lambda: ldb.writer().__enter__(),
        lambda: ldb.connection,
    ]
    for call in calls:
        with pytest.raises(appdb.DatabaseClosedError):
            call()
        with pytest.raises(appdb.DatabaseClosedError):
            in_thread(call)
    # an iterator begun before close() (on a reader) fails in this thread and in another
    with pytest.raises(appdb.DatabaseClosedError):
        next(iterator)
    with pytest.raises(appdb.DatabaseClosedError):
        in_thread(lambda: next(other_iterator))
    assert not ldb.is_healthy()


def test_close_while_another_thread_iterates(ldb: appdb.AppDatabase) -> None:
    started = threading.Event()
    closed = threading.Event()
    outcome: dict[str, Any] = {}

    def reader() -> None:
        iterator = ldb.prepare("SELECT id FROM t ORDER BY id").iterate()
        outcome["first"] = next(iterator)
        started.set()
        assert closed.wait(HANG)
        with pytest.raises(appdb.DatabaseClosedError):
            next(iterator)
        outcome["done"] = True

    threads, errors = start_threads([reader])
    assert started.wait(HANG)
    ldb.close()
    closed.set()
    join_all(threads, errors)
    assert outcome == {"first": {"id": 1}, "done": True}


@pytest.mark.parametrize("readers", [0, 3])
def test_close_while_threads_are_mid_call(impl: ModuleType, tmp_path: Path, readers: int) -> None:
    """Threads hammer the database while another closes it: no crash, no hang, then DatabaseClosedError."""

    def scenario() -> None:
        path = tmp_path / f"race{readers}-{time.monotonic_ns()}.db"
        db = open_db(path, readers=readers)
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) VALUES (1), (2), (3), (4)")
        point = db.prepare("SELECT v FROM t WHERE id = ?")
        scan = db.prepare("SELECT id, v FROM t ORDER BY id")
        insert = db.prepare("INSERT INTO t (v) VALUES (?)")
        slow = db.prepare(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) "
            "SELECT count(*) FROM c"
        )
        counter = iter(range(10**9))

        def in_transaction() -> None:
            with db.transaction():
                insert.run(next(counter))
                scan.all()

        operations: list[Callable[[], Any]] = [
            lambda: point.get(1),
            scan.all,
            lambda: list(scan.iterate()),
            lambda: next(iter(scan.iterate())),
            lambda: insert.run(next(counter)),
            in_transaction,
            slow.scalar,
            lambda: db.prepare(f"SELECT {next(counter)} AS n").get(),
        ]
        gate = threading.Barrier(len(operations) + 1)
        calls = [0] * len(operations)

        def hammer(index: int) -> None:
            operation = operations[index]
            gate.wait(HANG)
            while True:
                try:
                    operation()
                    calls[index] += 1
                except appdb.DatabaseClosedError:
                    break
                except apsw.Error:  # a call that was running when close() came
                    continue
            with pytest.raises(appdb.DatabaseClosedError):
                operation()

        threads, errors = start_threads([lambda i=i: hammer(i) for i in range(len(operations))])
        gate.wait(HANG)
        busy_until = time.monotonic() + 0.5
        while not all(calls) and time.monotonic() < busy_until:
            time.sleep(0.005)
        time.sleep(0.02)
        db.close()
        join_all(threads, errors)
        assert db.closed
        assert sum(calls) > len(operations), calls
        with appdb.init_database(path) as again:
            assert again.prepare("PRAGMA integrity_check").scalar() == "ok"
            assert again.prepare("SELECT count(*) FROM t").scalar() >= 4

    for _ in range(2):
        run_in_child(scenario, tmp_path)
