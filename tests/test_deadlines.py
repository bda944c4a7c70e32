"""Deadlines (issue #9): ``db.deadline(seconds)`` and ``init_database(..., query_timeout=...)``.

A statement still running at its deadline is interrupted and raises
``appdb.QueryTimeout``; what it wrote is rolled back (its whole transaction when
it was part of one), everything committed before stays, and the connection it
ran on keeps working. The endless statements below never finish by themselves,
so a missing deadline shows up as a hang, which ``bounded`` turns into a failure.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
from conftest import in_thread, open_snapshots

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
ENDLESS_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
ENDLESS_INSERT = (
    "INSERT INTO t (name) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT 'x' || x FROM c"
)
#: Finite but far beyond 1,000 VM steps: a leftover expired deadline would interrupt it.
LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT count(*) FROM c"
)
SHORT = 0.05  # seconds: the deadlines of the statements below that must time out
ROOMY = 0.1  # seconds: a query_timeout that quick statements always finish within
HANG = 10.0  # a statement that should have been interrupted and is still running after this has hung


def bounded(fn: Callable[[], Any], timeout: float = HANG) -> Any:
    """Run ``fn`` in another thread; return its result or raise its error; fail if it hangs."""
    return in_thread(fn, timeout, hung="the statement was never interrupted")


def timed_out(fn: Callable[[], Any]) -> appdb.QueryTimeout:
    with pytest.raises(appdb.QueryTimeout) as caught:
        bounded(fn)
    return caught.value


def items_for(seconds: float) -> Iterator[tuple[str]]:
    """``run_many`` items that keep coming for ``seconds`` (so that a missed deadline fails, not hangs)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield ("x",)


def timed_out_here(fn: Callable[[], Any]) -> appdb.QueryTimeout:
    """Like ``timed_out`` but in this thread (for calls that cannot hang)."""
    with pytest.raises(appdb.QueryTimeout) as caught:
        fn()
    return caught.value


@pytest.fixture
def tdb(impl: ModuleType, db_path: Path) -> Iterator[appdb.AppDatabase]:
    """A file database with 2 readers and 3 committed rows in ``t``."""
    database = appdb.init_database(db_path, readers=2)
    database.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    database.exec("INSERT INTO t (name) VALUES ('a'), ('b'), ('c')")
    yield database
    database.close()


def test_query_timeout_is_an_appdb_error_and_a_timeout_error(impl: ModuleType) -> None:
    assert issubclass(appdb.QueryTimeout, appdb.Error)
    assert issubclass(appdb.QueryTimeout, TimeoutError)


def test_invalid_deadline_seconds(tdb: appdb.AppDatabase) -> None:
    for seconds in (0, -1, -0.5, math.nan, -math.inf, True, False, None, "1", b"1", [1]):
        with pytest.raises(ValueError), tdb.deadline(seconds):
            pass
    assert tdb.prepare(LONG).scalar() == 20000  # no deadline was left behind


@pytest.mark.parametrize("seconds", [0, -1, math.nan, True, "1"])
def test_invalid_query_timeout(impl: ModuleType, db_path: Path, seconds: Any) -> None:
    with pytest.raises(ValueError):
        appdb.init_database(db_path, query_timeout=seconds)


# -- every kind of call, on a reader and on the writer -----------------------------------------------
def test_reads_on_a_reader_time_out(tdb: appdb.AppDatabase) -> None:
    endless = tdb.prepare(ENDLESS)
    assert endless.parallel is True
    for call in ("get", "all", "scalar"):

        def run(call: str = call) -> None:
            with tdb.deadline(SHORT):
                getattr(endless, call)()

        error = timed_out(run)
        assert isinstance(error, TimeoutError)
        # the reader it ran on is back in the pool, usable, holding no snapshot
        assert tdb.pool_status().busy == 0
        assert open_snapshots(tdb) == 0
        assert tdb.prepare(LONG).scalar() == 20000
        assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3


def test_reads_on_the_writer_time_out(tdb: appdb.AppDatabase) -> None:
    endless = tdb.prepare(ENDLESS)
    for call in ("get", "all", "scalar", "iterate"):

        def run(call: str = call) -> None:
            with tdb.transaction():
                tdb.prepare("INSERT INTO t (name) VALUES ('gone')").run()
                with tdb.deadline(SHORT):
                    if call == "iterate":
                        list(endless.iterate())
                    else:
                        getattr(endless, call)()

        timed_out(run)
        assert not tdb.in_transaction
        with tdb.writer() as connection:  # the writer runs long statements again: no handler left over
            assert connection.execute(LONG).get == 20000
        assert tdb.transaction(lambda db: db.prepare(LONG).scalar()) == 20000
        assert tdb.prepare("SELECT name FROM t ORDER BY id").all() == [{"name": n} for n in "abc"]


@pytest.mark.parametrize("in_transaction", [False, True])
def test_iterate_steps_time_out(tdb: appdb.AppDatabase, in_transaction: bool) -> None:
    rows = tdb.prepare(ENDLESS_ROWS)  # every row comes at once; only the whole scan is endless
    seen: list[int] = []

    def run() -> None:
        with tdb.deadline(SHORT):
            if in_transaction:
                with tdb.transaction():
                    for row in rows.iterate():
                        seen.append(row["x"])
            else:
                for row in rows.iterate():
                    seen.append(row["x"])

    timed_out(run)
    assert len(seen) > 1
    assert seen[:3] == [1, 2, 3]
    assert tdb.pool_status().busy == 0
    assert open_snapshots(tdb) == 0
    assert not tdb.in_transaction
    assert tdb.prepare(LONG).scalar() == 20000


@pytest.mark.parametrize("in_transaction", [False, True])
def test_iterator_past_its_deadline_between_rows_lets_go(
    tdb: appdb.AppDatabase, in_transaction: bool
) -> None:
    """The deadline passes while the caller works between two rows: the next step raises and the
    iterator is finished, like after any other error (reader back in the pool, statement reset)."""
    rows = tdb.prepare("SELECT id FROM t ORDER BY id")
    kept: list[Any] = []

    def run() -> None:
        with tdb.deadline(SHORT):
            iterator = rows.iterate()
            kept.append(iterator)  # the caller still holds it (as a traceback would)
            assert next(iterator) == {"id": 1}
            time.sleep(SHORT * 1.5)
            next(iterator)

    if in_transaction:
        with pytest.raises(appdb.TransactionError), tdb.transaction():
            tdb.prepare("INSERT INTO t (name) VALUES ('lost')").run()
            timed_out_here(run)
            # a timeout on the writer ends its transaction, whatever the statement was
            assert not tdb.in_transaction
        assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3
    else:
        timed_out_here(run)
        assert tdb.pool_status().busy == 0
    assert open_snapshots(tdb) == 0
    assert list(kept[0]) == []  # finished: no more rows, no error
    tdb.checkpoint("truncate")


def test_write_transaction_rolls_back_and_committed_rows_remain(tdb: appdb.AppDatabase) -> None:
    insert = tdb.prepare("INSERT INTO t (name) VALUES (?)")
    endless = tdb.prepare(ENDLESS_INSERT)
    insert.run("committed before")

    def run() -> None:
        with tdb.transaction():
            insert.run("inside")
            assert tdb.prepare("SELECT count(*) FROM t").scalar() == 5
            with tdb.deadline(SHORT):
                endless.run()

    timed_out(run)
    assert not tdb.in_transaction
    names = tdb.prepare("SELECT name FROM t ORDER BY id").all()
    assert names == [{"name": n} for n in ("a", "b", "c", "committed before")]
    # the writer keeps working
    insert.run("after")
    with tdb.transaction():
        insert.run("after in transaction")
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 6
    assert tdb.prepare("PRAGMA integrity_check").scalar() == "ok"


def test_caught_timeout_inside_a_transaction_loses_the_whole_transaction(tdb: appdb.AppDatabase) -> None:
    insert = tdb.prepare("INSERT INTO t (name) VALUES (?)")
    endless = tdb.prepare(ENDLESS_INSERT)

    def run() -> None:
        with tdb.transaction():
            insert.run("lost")
            with pytest.raises(appdb.QueryTimeout), tdb.deadline(SHORT):
                endless.run()
            # SQLite rolled the whole transaction back: committing now cannot save "lost"
            assert not tdb.in_transaction

    with pytest.raises(appdb.TransactionError):
        bounded(run)
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3
    insert.run("fine")
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 4


def test_autocommit_write_times_out_and_writes_nothing(tdb: appdb.AppDatabase) -> None:
    endless = tdb.prepare(ENDLESS_INSERT)

    def run() -> None:
        with tdb.deadline(SHORT):
            endless.run()

    timed_out(run)
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3
    assert not tdb.in_transaction
    tdb.prepare("INSERT INTO t (name) VALUES ('d')").run()
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 4


# -- the block -------------------------------------------------------------------------------
def test_the_deadline_counts_from_the_start_of_the_block(tdb: appdb.AppDatabase) -> None:
    quick = tdb.prepare("SELECT count(*) FROM t")
    with tdb.deadline(SHORT):
        time.sleep(SHORT * 1.5)
        with pytest.raises(appdb.QueryTimeout):
            quick.scalar()
        with pytest.raises(appdb.QueryTimeout), tdb.transaction():
            quick.scalar()
        with pytest.raises(appdb.QueryTimeout):
            tdb.prepare("INSERT INTO t (name) VALUES ('late')").run()
    assert quick.scalar() == 3  # after the block, no deadline
    assert tdb.prepare(LONG).scalar() == 20000


def test_statements_within_the_deadline_run_normally(tdb: appdb.AppDatabase) -> None:
    with tdb.deadline(60):
        assert tdb.prepare(LONG).scalar() == 20000
        assert tdb.transaction(lambda db: db.prepare(LONG).scalar()) == 20000
        tdb.prepare("INSERT INTO t (name) VALUES ('d')").run()
        assert [row["name"] for row in tdb.prepare("SELECT name FROM t ORDER BY id").iterate()] == list(
            "abcd"
        )
    with tdb.deadline(math.inf):  # no bound at all
        assert tdb.prepare(LONG).scalar() == 20000


def test_nested_deadlines_keep_the_earlier_one(tdb: appdb.AppDatabase) -> None:
    quick = tdb.prepare("SELECT count(*) FROM t")
    with tdb.deadline(SHORT):
        with tdb.deadline(3600):  # cannot extend the outer deadline
            time.sleep(SHORT * 1.5)
            with pytest.raises(appdb.QueryTimeout):
                quick.scalar()
    assert quick.scalar() == 3

    with tdb.deadline(3600):
        with tdb.deadline(SHORT):  # the inner, earlier deadline applies inside
            time.sleep(SHORT * 1.5)
            with pytest.raises(appdb.QueryTimeout):
                quick.scalar()
        assert quick.scalar() == 3  # back to the outer, later deadline
        assert tdb.prepare(LONG).scalar() == 20000

    def nested_endless() -> None:
        with tdb.deadline(SHORT), tdb.deadline(3600):
            tdb.prepare(ENDLESS).scalar()

    timed_out(nested_endless)


def test_a_deadline_binds_only_its_own_thread(tdb: appdb.AppDatabase) -> None:
    quick = tdb.prepare("SELECT count(*) FROM t")
    insert = tdb.prepare("INSERT INTO t (name) VALUES (?)")
    inside = threading.Event()
    expired = threading.Event()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def limited() -> None:
        try:
            with tdb.deadline(SHORT):
                inside.set()
                time.sleep(SHORT * 1.5)
                try:
                    quick.scalar()
                except appdb.QueryTimeout:
                    outcome["limited"] = "timed out"
                expired.set()
                assert done.wait(HANG)
        except BaseException as exc:
            outcome["error"] = exc
            expired.set()

    thread = threading.Thread(target=limited)
    thread.start()
    try:
        assert inside.wait(HANG)
        assert expired.wait(HANG)
        # this thread has no deadline, even while the other thread's block is open and expired
        assert quick.scalar() == 3
        assert tdb.prepare(LONG).scalar() == 20000
        insert.run("free")
        with tdb.transaction():
            insert.run("free too")
            assert tdb.prepare(LONG).scalar() == 20000
        assert [row["name"] for row in tdb.prepare("SELECT name FROM t").iterate()][-1] == "free too"
    finally:
        done.set()
        thread.join(HANG)
    assert outcome == {"limited": "timed out"}


def test_a_deadline_binds_only_its_own_database(impl: ModuleType, tmp_path: Path) -> None:
    with (
        appdb.init_database(tmp_path / "one.db", readers=1) as one,
        appdb.init_database(tmp_path / "two.db", readers=1) as two,
    ):
        with one.deadline(SHORT):
            time.sleep(SHORT * 1.5)
            with pytest.raises(appdb.QueryTimeout):
                one.prepare("SELECT 1").scalar()
            assert two.prepare(LONG).scalar() == 20000
            with two.transaction():
                assert two.prepare(LONG).scalar() == 20000


def test_a_deadline_binds_only_its_own_task(tdb: appdb.AppDatabase) -> None:
    quick = tdb.prepare("SELECT count(*) FROM t")

    async def limited() -> str:
        with tdb.deadline(SHORT):
            await asyncio.sleep(SHORT * 1.5)
            try:
                quick.scalar()
            except appdb.QueryTimeout:
                return "timed out"
            return "ran"

    async def free() -> int:
        await asyncio.sleep(SHORT * 1.5)  # runs while the other task's block is open and expired
        return int(tdb.prepare(LONG).scalar())

    async def both() -> list[Any]:
        return list(await asyncio.gather(limited(), free()))

    assert bounded(lambda: asyncio.run(both())) == ["timed out", 20000]


# -- query_timeout -----------------------------------------------------------------------------
def test_query_timeout_bounds_every_statement(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, readers=2, query_timeout=ROOMY) as db:
        db.exec(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL); INSERT INTO t (name) VALUES ('a')"
        )
        quick = db.prepare("SELECT count(*) FROM t")
        endless = db.prepare(ENDLESS)
        timed_out(endless.scalar)
        timed_out(lambda: list(db.prepare(ENDLESS).iterate()))  # its first row step never ends
        timed_out(lambda: db.transaction(lambda d: endless.all()))
        timed_out(db.prepare(ENDLESS_INSERT).run)
        assert not db.in_transaction
        assert quick.scalar() == 1
        # per statement, not per database lifetime: quick statements keep running past it
        for i in range(3):
            time.sleep(ROOMY * 0.6)
            assert quick.scalar() == 1 + i
            db.prepare("INSERT INTO t (name) VALUES ('b')").run()
        assert quick.scalar() == 4
        # a tighter deadline block still applies
        with db.deadline(SHORT):
            time.sleep(SHORT * 1.5)
            with pytest.raises(appdb.QueryTimeout):
                quick.scalar()
        assert db.prepare("PRAGMA integrity_check").scalar() == "ok"
        assert open_snapshots(db) == 0


def test_query_timeout_on_a_single_connection(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, readers=0, query_timeout=ROOMY) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        timed_out(db.prepare(ENDLESS).scalar)
        assert db.prepare("SELECT x FROM t").scalar() == 1
    with appdb.init_database(":memory:", query_timeout=ROOMY) as memory:
        timed_out(memory.prepare(ENDLESS).get)
        assert memory.prepare("SELECT 2").scalar() == 2


def test_timeouts_in_many_threads_leave_every_connection_usable(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, readers=2) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        endless = db.prepare(ENDLESS)
        insert = db.prepare("INSERT INTO t VALUES (?)")
        errors: list[BaseException] = []
        outcomes: list[str] = []

        def work(n: int) -> None:
            try:
                if n % 2:
                    with db.transaction():
                        insert.run(n)
                        with db.deadline(SHORT):
                            endless.scalar()
                else:
                    with db.deadline(SHORT):
                        endless.scalar()
            except appdb.QueryTimeout:
                outcomes.append("timeout")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert outcomes == ["timeout"] * 4
        assert db.prepare("SELECT count(*) FROM t").scalar() == 1  # no thread's insert survived
        status = db.pool_status()
        assert status.busy == 0
        assert open_snapshots(db) == 0
        # every reader and the writer run long statements again
        results: list[int] = []
        gate = threading.Barrier(2)

        def long_read() -> None:
            gate.wait(HANG)
            results.append(db.prepare(LONG).scalar())

        readers = [threading.Thread(target=long_read) for _ in range(2)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(HANG)
        assert results == [20000, 20000]
        assert db.transaction(lambda d: d.prepare(LONG).scalar()) == 20000
        db.checkpoint("truncate")


# -- scripts and batches ---------------------------------------------------------------------
def test_exec_scripts_time_out(tdb: appdb.AppDatabase) -> None:
    def endless_script() -> None:
        with tdb.deadline(SHORT):
            tdb.exec(ENDLESS)

    error = timed_out(endless_script)
    assert ENDLESS in str(error) and f"{SHORT:g} s" in str(error)

    def committed_then_endless() -> None:
        with tdb.deadline(SHORT):  # statements before the one that timed out stay committed
            tdb.exec(f"INSERT INTO t (name) VALUES ('kept'); {ENDLESS_INSERT}")

    timed_out(committed_then_endless)

    def own_transaction() -> None:
        with tdb.deadline(SHORT):  # a transaction the script opened is rolled back
            tdb.exec(f"BEGIN; INSERT INTO t (name) VALUES ('lost'); {ENDLESS}; COMMIT")

    timed_out(own_transaction)
    assert not tdb.in_transaction
    assert [r["name"] for r in tdb.prepare("SELECT name FROM t ORDER BY id").all()] == ["a", "b", "c", "kept"]
    tdb.exec("INSERT INTO t (name) VALUES ('after')")  # the writer keeps working, unbounded
    tdb.exec(LONG)
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 5
    assert open_snapshots(tdb) == 0


def test_exec_timeout_inside_a_transaction_loses_the_whole_transaction(tdb: appdb.AppDatabase) -> None:
    def run() -> None:
        with tdb.transaction():
            tdb.prepare("INSERT INTO t (name) VALUES ('lost')").run()
            with tdb.deadline(SHORT):
                tdb.exec(ENDLESS)

    timed_out(run)
    assert not tdb.in_transaction
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3


def test_exec_starting_after_its_deadline_fails_at_once(tdb: appdb.AppDatabase) -> None:
    with tdb.deadline(SHORT):
        time.sleep(SHORT * 1.5)
        timed_out_here(lambda: tdb.exec("INSERT INTO t (name) VALUES ('late')"))
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "in_transaction"])
def test_run_many_batches_time_out_and_write_nothing(tdb: appdb.AppDatabase, in_transaction: bool) -> None:
    insert = tdb.prepare("INSERT INTO t (name) VALUES (?)")
    endless_items = items_for(HANG)  # each item is quick; the batch outlasts any deadline here
    endless_insert = tdb.prepare(ENDLESS_INSERT)

    def batch(statement: Any, items: Any) -> Callable[[], None]:
        def run() -> None:
            if in_transaction:
                with tdb.transaction():
                    insert.run("lost with its transaction")
                    with tdb.deadline(SHORT):
                        statement.run_many(items)
            else:
                with tdb.deadline(SHORT):
                    statement.run_many(items)

        return run

    error = timed_out(batch(insert, endless_items))
    assert "INSERT INTO t (name) VALUES (?)" in str(error)
    timed_out(batch(endless_insert, [(), ()]))  # its first item never ends
    assert not tdb.in_transaction
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 3
    assert insert.run_many([("d",), ("e",)]).changes == 2  # the writer keeps working, unbounded
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 5
    assert tdb.prepare("PRAGMA integrity_check").scalar() == "ok"


@pytest.mark.parametrize("call", ["run", "run_many"])
def test_a_timeout_ending_a_transaction_begun_with_sql_frees_the_readers(
    tdb: appdb.AppDatabase, call: str
) -> None:
    """While exec("BEGIN") holds a transaction every read goes to the writer; a timeout ends it."""
    endless = tdb.prepare(ENDLESS_INSERT)
    quick = tdb.prepare("SELECT count(*) FROM t")
    tdb.exec("BEGIN")

    def run() -> None:
        with tdb.deadline(SHORT):
            endless.run() if call == "run" else endless.run_many([()])

    timed_out(run)
    assert not tdb.in_transaction
    with tdb.writer():  # this thread holds the writer: another thread's read must not wait for it
        assert in_thread(quick.scalar, timeout=HANG, hung="the read waited for the writer") == 3


def test_query_timeout_bounds_scripts_and_batches(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, readers=1, query_timeout=ROOMY) as db:
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        timed_out(lambda: db.exec(ENDLESS))
        insert = db.prepare("INSERT INTO t (name) VALUES (?)")
        timed_out(lambda: insert.run_many(items_for(HANG)))
        assert db.prepare("SELECT count(*) FROM t").scalar() == 0
        # per script and per batch: quick ones keep running past it
        for _ in range(3):
            time.sleep(ROOMY * 0.6)
            db.exec("INSERT INTO t (name) VALUES ('a')")
            insert.run_many([("b",)])
        assert db.prepare("SELECT count(*) FROM t").scalar() == 6


def test_writer_runs_scripts_after_a_timeout(tdb: appdb.AppDatabase) -> None:
    def run() -> None:
        with tdb.deadline(SHORT), tdb.transaction():
            tdb.prepare(ENDLESS).scalar()

    timed_out(run)
    tdb.exec(LONG)  # on the writer, unbounded: no progress handler was left behind
    tdb.exec("INSERT INTO t (name) VALUES ('d')")
    with pytest.raises(apsw.SQLError):
        tdb.exec("SELECT * FROM no_such_table")
    assert tdb.prepare("SELECT count(*) FROM t").scalar() == 4
