"""Regressions found by reviewing the reader pool: deadlocks, hand-overs, routing, limits.

Each test failed before its fix (on at least one twin) and runs on both.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
import appdb.aio

HANG = 10.0  # a liveness bound, never a speed check


@pytest.fixture
def one_reader(impl: ModuleType, db_path: Path) -> Iterator[appdb.AppDatabase]:
    db = appdb.init_database(db_path, readers=1)
    db.exec(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v);"
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000)"
        " INSERT INTO t SELECT x, x FROM c"
    )
    yield db
    db.close()


def run_threads(*targets: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported to the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG)
        assert not thread.is_alive(), "deadlock"
    return errors


def test_a_thread_holding_a_reader_gets_a_short_read_while_another_waits(
    one_reader: appdb.AppDatabase,
) -> None:
    scan = one_reader.prepare("SELECT id FROM t")
    point = one_reader.prepare("SELECT v FROM t WHERE id = ?")
    holding = threading.Event()
    waiting = threading.Event()
    got: dict[str, Any] = {}

    def holder() -> None:
        rows = scan.iterate()
        next(rows)  # the only reader is this thread's now
        holding.set()
        waiting.wait(HANG)
        time.sleep(0.1)  # the other thread is waiting for a reader by now
        got["holder"] = point.get(2)
        rows.close()

    def other() -> None:
        holding.wait(HANG)
        waiting.set()
        got["other"] = point.get(3)

    assert run_threads(holder, other) == []
    assert got == {"holder": {"v": 2}, "other": {"v": 3}}


def test_an_inline_async_read_never_blocks_the_loop_on_the_lane(impl: ModuleType, db_path: Path) -> None:
    async def main() -> float:
        db = await appdb.aio.init_database(db_path, readers=1)
        try:
            await db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 1), (2, 2)")
            point = db.prepare("SELECT v FROM t WHERE id = ?")
            assert await point.get(1) == {"v": 1}
            rows = db.prepare("SELECT id FROM t").iterate()
            assert await rows.__anext__() == {"id": 1}  # holds the only reader
            worker = threading.Thread(target=point.sync.get, args=(2,), daemon=True)
            worker.start()  # takes a reader slot's turn: waits for the reader the rows hold
            await asyncio.sleep(0.1)
            ticks: list[float] = []

            async def ticker() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.005)

            tick = asyncio.ensure_future(ticker())
            await asyncio.sleep(0.02)
            started = time.monotonic()
            assert await asyncio.wait_for(point.get(2), HANG) == {"v": 2}
            await rows.aclose()
            worker.join(HANG)
            tick.cancel()
            if len(ticks) < 2:
                return time.monotonic() - started
            return max(b - a for a, b in itertools.pairwise(ticks))
        finally:
            await db.close()

    assert asyncio.run(main()) < 1.0  # the loop kept ticking (it froze for good before)


def test_a_looping_writer_does_not_starve_another(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE t (x); CREATE TABLE u (x)")
        heavy = db.prepare(
            "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000)"
            " SELECT x FROM c"
        )
        insert = db.prepare("INSERT INTO u VALUES (1)")
        stop = threading.Event()
        latencies: list[float] = []

        def hog() -> None:
            while not stop.is_set():
                with db.transaction():
                    heavy.run()

        def other() -> None:
            try:
                for _ in range(40):
                    started = time.monotonic()
                    insert.run()
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.003)
            finally:
                stop.set()

        assert run_threads(hog, other) == []
        assert len(latencies) == 40
        assert max(latencies) < 1.0  # it waited seconds when the releaser took its own hand-over


def test_connection_state_functions_answer_for_the_writer(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (x)")
    db.prepare("INSERT INTO t VALUES (?)").run_many([1, 2, 3])
    state = db.prepare("SELECT last_insert_rowid() AS r, changes() AS c, total_changes() > 0 AS t")
    assert state.parallel is False
    assert state.get() == {"r": 3, "c": 1, "t": 1}  # run_many: one row per statement


def test_run_of_a_read_on_a_reader_reports_no_changes(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (x)")
    db.prepare("INSERT INTO t VALUES (?)").run_many([1, 2, 3])
    assert db.prepare("SELECT * FROM t").run() == appdb.RunResult(0, 0)


def test_progress_handlers_of_others_survive_deadlines(impl: ModuleType, db_path: Path) -> None:
    calls = [0]

    def count() -> bool:
        calls[0] += 1
        return False

    def install(connection: apsw.Connection) -> None:
        connection.set_progress_handler(count, 100)

    scan = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT sum(x) FROM c"
    )
    with appdb.init_database(db_path, on_connect=install) as db:
        statement = db.prepare(scan)
        statement.scalar()
        before = calls[0]
        assert before > 0
        with db.deadline(5):
            statement.scalar()
        statement.scalar()
        assert calls[0] - before >= 2 * before  # still called after the deadline's handler went


def test_a_deadline_survives_a_nested_statement(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path) as db:
        inner = db.prepare(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10)"
            " SELECT count(*) FROM c"
        )

        def nested(x: int) -> int:
            return int(inner.scalar()) + x  # arms and disarms a handler of its own

        db.connection.create_scalar_function("nested", nested)
        endless = db.prepare(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT nested(x) - 9 FROM c) SELECT count(*) FROM c"
        )
        started = time.monotonic()
        with pytest.raises(appdb.QueryTimeout), db.deadline(0.3):
            endless.scalar()
        assert time.monotonic() - started < 5


def test_a_data_error_on_a_reader_is_raised_not_retried_on_the_writer(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (j TEXT); INSERT INTO t VALUES ('{\"a\": 1}'), ('not json')")
    read = db.prepare("SELECT json_extract(j, '$.a') AS a FROM t")
    assert read.parallel
    with pytest.raises(apsw.SQLError, match="malformed JSON"):
        read.all()
    assert read.parallel  # one bad row does not send the statement to the writer for good


def test_raw_begin_inside_a_writer_block_keeps_this_threads_reads_on_the_writer(
    db: appdb.AppDatabase,
) -> None:
    db.exec("CREATE TABLE t (x)")
    count = db.prepare("SELECT count(*) FROM t")
    with db.writer():
        db.exec("BEGIN")
    db.prepare("INSERT INTO t VALUES (1)").run()
    assert count.scalar() == 1  # its own uncommitted row
    seen: list[int] = []
    assert run_threads(lambda: seen.append(count.scalar())) == []
    db.exec("COMMIT")
    assert count.scalar() == 1


def test_fork_child_prepares_on_its_own_connections(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)")
        db.prepare("SELECT count(*) FROM t").scalar()  # a reader exists in the parent
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            status = 1
            try:
                pids: list[int] = []
                db.connection  # noqa: B018 - the child notices the fork here at the latest
                for connection in apsw.connections():
                    connection.exec_trace = lambda *a, p=pids: p.append(os.getpid()) or True
                fresh = db.prepare("SELECT x + 1 AS y FROM t")  # compiled in the child
                status = 0 if fresh.get() == {"y": 2} and parent not in pids else 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert db.prepare("SELECT count(*) FROM t").scalar() == 1
