"""Edge cases of statements: re-entry, schema changes, resets, threads, signals."""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from collections import namedtuple

import apsw
import pytest

import appdb
from conftest import open_snapshots


def test_get_never_evaluates_a_second_row(small: appdb.AppDatabase) -> None:
    small.exec("CREATE TABLE v (n INTEGER); INSERT INTO v VALUES (1), (-9223372036854775808)")
    # abs() of the second row overflows: get() and scalar() must not step onto it
    stmt = small.prepare("SELECT abs(n) AS a FROM v ORDER BY rowid")
    assert stmt.get() == {"a": 1}
    assert stmt.scalar() == 1
    assert open_snapshots(small) == 0
    with pytest.raises(apsw.SQLError, match="overflow"):
        stmt.all()
    assert open_snapshots(small) == 0


def test_point_lookups_and_scans_both_reset(small: appdb.AppDatabase) -> None:
    for sql in (
        "SELECT * FROM t WHERE id = ?",  # at most one row
        "SELECT * FROM t WHERE id >= ? ORDER BY id",  # many rows
        "SELECT count(*) FROM t WHERE id >= ?",  # aggregate
    ):
        stmt = small.prepare(sql)
        for _ in range(3):
            assert stmt.get(1) is not None
            assert open_snapshots(small) == 0


def test_columns_follow_renames_done_through_statements(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t WHERE id = 1")
    assert stmt.get() == {"id": 1, "name": "a", "score": 1.5}
    small.prepare("ALTER TABLE t RENAME COLUMN name TO title").run()
    assert stmt.get() == {"id": 1, "title": "a", "score": 1.5}
    assert stmt.columns == ("id", "title", "score")
    assert [row["title"] for row in stmt.iterate()] == ["a"]


def test_reentry_from_a_sql_function(small: appdb.AppDatabase) -> None:
    def g(n: int) -> int:
        if n <= 0:
            return 1
        return int(stmt.scalar(n - 1)) + int(stmt.scalar(n - 1))  # two nested calls in a row

    small.connection.create_scalar_function("g", g, 1)
    stmt = small.prepare("SELECT g(?)")
    assert stmt.scalar(4) == 16
    assert stmt.scalar(1) == 2
    assert open_snapshots(small) == 0


def test_concurrent_prepare_with_a_small_cache(impl: object, db_path: object) -> None:
    with appdb.init_database(":memory:", statement_cache_size=8) as db:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(300):
                    value = (i * 7 + n) % 40
                    assert db.prepare(f"SELECT {value} AS v").scalar() == value
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        stats = db.statement_cache_stats()
        assert stats.size <= 8
        assert stats.hits + stats.misses == 16 * 300
        sql = "SELECT 1 AS v"
        assert db.prepare(sql) is db.prepare(sql)


def test_run_many_is_atomic_inside_a_transaction(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (id, name) VALUES (?, ?)")
    with small.transaction():
        insert.run(10, "kept")
        with pytest.raises(apsw.ConstraintError):
            insert.run_many([(20, "x"), (21, "y"), (1, "duplicate")])
        insert.run(11, "kept too")
    ids = [row["id"] for row in small.prepare("SELECT id FROM t WHERE id >= 10 ORDER BY id").all()]
    assert ids == [10, 11]


def test_binding_edge_cases(small: appdb.AppDatabase) -> None:
    small.exec("CREATE TABLE flags (f)")
    insert = small.prepare("INSERT INTO flags VALUES (?)")
    assert insert.run_many([True, False, None, 3, 2.5, "x", b"y"]).changes == 7
    with pytest.raises(OverflowError, match="parameter 1"):
        insert.run(2**70)
    with pytest.raises(OverflowError, match="parameter :big"):
        small.prepare("SELECT :big").get(big=-(2**64))
    Pair = namedtuple("Pair", "a b")
    assert small.prepare("SELECT ? AS x, ? AS y").get(Pair(1, 2)) == {"x": 1, "y": 2}
    with pytest.raises(apsw.BindingsError, match=r"parameter \?1"):
        small.prepare("SELECT ?1, :a").get({"a": 1})


def test_weak_references_and_no_stray_attributes(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t")
    rows = stmt.iterate()
    assert weakref.ref(stmt)() is stmt
    assert weakref.ref(rows)() is rows
    with pytest.raises(AttributeError):
        stmt.tag = 1  # type: ignore[attr-defined]
    rows.close()


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(SIGINT) ends the whole process on Windows")
def test_ctrl_c_interrupts_a_thread_waiting_for_the_lock(small: appdb.AppDatabase) -> None:
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with small.transaction():
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(10)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        # reads run on the reader pool beside the transaction; a write waits for it
        assert small.prepare("SELECT count(*) FROM t").scalar() == 5
        with pytest.raises(KeyboardInterrupt):
            small.prepare("INSERT INTO t (name) VALUES ('never')").run()
    finally:
        release.set()
        holder.join(10)
        timer.cancel()
    assert small.prepare("SELECT count(*) FROM t").scalar() == 5


def test_columns_follow_schema_changes_made_by_scripts(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t WHERE id = 1")
    assert list(stmt.get()) == ["id", "name", "score"]
    small.exec("ALTER TABLE t DROP COLUMN score; ALTER TABLE t ADD COLUMN rank INTEGER DEFAULT 7")
    assert stmt.get() == {"id": 1, "name": "a", "rank": 7}
    assert stmt.columns == ("id", "name", "rank")


def test_clear_statement_cache(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT name FROM t WHERE id = 1")
    small.clear_statement_cache()
    assert small.statement_cache_stats().size == 0
    assert small.prepare("SELECT name FROM t WHERE id = 1") is not stmt
    assert stmt.get() == {"name": "a"}  # still works


def test_a_thread_looping_on_statements_does_not_lock_others_out(small: appdb.AppDatabase) -> None:
    small.exec(
        "CREATE TABLE big (n INTEGER);"
        "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 20000)"
        " INSERT INTO big SELECT x FROM s"
    )
    slow = small.prepare("SELECT sum(n) FROM big")  # a few ms, with the GIL released inside SQLite
    stop = threading.Event()
    loops = 0

    def hog() -> None:
        nonlocal loops
        while not stop.is_set():
            slow.scalar()
            loops += 1

    answer: list[object] = []

    def one_get() -> None:
        answer.append(small.prepare("SELECT name FROM t WHERE id = ?").get(1))

    hogger = threading.Thread(target=hog)
    hogger.start()
    try:
        while loops < 3:  # the hog is running
            stop.wait(0.01)
        getter = threading.Thread(target=one_get)
        getter.start()
        getter.join(60)  # a liveness bound, not a speed target: it used to wait forever
        assert not getter.is_alive(), "another thread's statements locked this one out"
    finally:
        stop.set()
        hogger.join(60)
    assert answer == [{"name": "a"}]


def test_get_survives_a_plan_change_made_by_another_connection(
    small: appdb.AppDatabase, db_path: object
) -> None:
    small.exec(
        "CREATE TABLE u (k INTEGER, v INTEGER); CREATE UNIQUE INDEX u_k ON u (k); INSERT INTO u VALUES (5, 1)"
    )
    stmt = small.prepare("SELECT abs(v) AS a FROM u WHERE k = ?")  # unique lookup: one row at most
    assert stmt.get(5) == {"a": 1}
    other = apsw.Connection(str(db_path))
    other.execute(
        "DROP INDEX u_k; INSERT INTO u VALUES (5, -9223372036854775808)"
    )  # now a scan, and its second row overflows abs()
    other.close()
    assert stmt.get(5) == {"a": 1}  # no error from the row nobody asked for
    assert stmt.get(5) == {"a": 1}
    assert open_snapshots(small) == 0


def test_explain_statements_are_not_single_row(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("EXPLAIN SELECT * FROM t")
    assert stmt.get() is not None
    assert len(stmt.all()) > 1
    assert open_snapshots(small) == 0


def test_rolled_back_schema_changes_do_not_leave_stale_columns(small: appdb.AppDatabase) -> None:
    star = small.prepare("SELECT * FROM t WHERE id = 1")
    with pytest.raises(RuntimeError):
        with small.transaction():
            small.exec("ALTER TABLE t RENAME COLUMN name TO renamed")
            assert star.get() == {"id": 1, "renamed": "a", "score": 1.5}
            raise RuntimeError("undo")
    assert star.get() == {"id": 1, "name": "a", "score": 1.5}
    assert star.columns == ("id", "name", "score")
    with small.transaction():
        try:
            with small.transaction():
                small.prepare("ALTER TABLE t RENAME COLUMN score TO points").run()
                assert star.columns == ("id", "name", "points")
                raise LookupError
        except LookupError:
            pass
        assert star.get() == {"id": 1, "name": "a", "score": 1.5}


def test_ddl_through_a_query_method_is_noticed(small: appdb.AppDatabase) -> None:
    star = small.prepare("SELECT * FROM t WHERE id = 1")
    assert star.columns == ("id", "name", "score")
    small.prepare("ALTER TABLE t RENAME COLUMN name TO label").all()
    assert star.columns == ("id", "label", "score")  # fresh before it even runs again
    assert star.get() == {"id": 1, "label": "a", "score": 1.5}
