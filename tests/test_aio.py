"""``appdb.aio``: the asyncio API, on both twins (``impl``), with real database files."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
import appdb.aio
from appdb.aio import AsyncDatabase
from conftest import open_snapshots

INFINITE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
ROWS = 1000


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 30))


async def open_db(path: Path, **options: Any) -> AsyncDatabase:
    db = await appdb.aio.init_database(path, **options)
    await db.exec(
        f"""
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS})
        INSERT INTO t (name, score) SELECT 'n' || x, x * 0.5 FROM c;
        """
    )
    return db


@pytest.mark.parametrize("row_type", ["dict", "tuple"])
def test_results_match_the_sync_api(impl: ModuleType, db_path: Path, row_type: str) -> None:
    async def main() -> None:
        async with await open_db(db_path, row_type=row_type) as db:
            sync = db.sync
            point = "SELECT * FROM t WHERE id = ?"
            scan = "SELECT id, name FROM t WHERE id <= ? ORDER BY id"
            for sql, args in ((point, (3,)), (point, (ROWS + 1,)), (scan, (600,)), (scan, (0,))):
                st = db.prepare(sql)
                assert await st.get(*args) == sync.prepare(sql).get(*args)
                assert await st.all(*args) == sync.prepare(sql).all(*args)
                assert await st.scalar(*args) == sync.prepare(sql).scalar(*args)
                assert [row async for row in st.iterate(*args)] == list(sync.prepare(sql).iterate(*args))
            named = db.prepare("SELECT name FROM t WHERE id = :id")
            assert await named.get(id=7) == sync.prepare("SELECT name FROM t WHERE id = :id").get(id=7)
            insert = db.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
            result = await insert.run("x", 1.0)
            assert result == appdb.RunResult(1, ROWS + 1)
            many = await insert.run_many([("y", 2.0), ("z", None)])
            assert many == appdb.RunResult(2, ROWS + 3)
            assert await db.prepare("SELECT count(*) FROM t").scalar() == ROWS + 3
            returning = db.prepare("UPDATE t SET score = -1 WHERE id > ? RETURNING id")
            assert not returning.parallel and not returning.readonly
            rows = [row async for row in returning.iterate(ROWS)]
            assert len(rows) == 3
            with pytest.raises(apsw.SQLError):
                await db.prepare("SELECT * FROM missing").get()

    run(main)


def test_statements_are_cached_and_describe_themselves(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            st = db.prepare("SELECT id, name FROM t WHERE id = ?")
            assert db.prepare("SELECT id, name FROM t WHERE id = ?") is st
            tuples = db.prepare("SELECT id, name FROM t WHERE id = ?", row_type="tuple")
            assert tuples is not st and tuples.row_type == "tuple" and st.row_type == "dict"
            assert st.sync is db.sync.prepare("SELECT id, name FROM t WHERE id = ?")
            assert st.sql == "SELECT id, name FROM t WHERE id = ?"
            assert st.columns == ("id", "name")
            assert st.readonly and st.parallel
            assert await tuples.get(2) == (2, "n2")
            assert db.path == str(db_path) and not db.closed and db.readers == db.sync.readers
            assert isinstance(db.sync, appdb.AppDatabase)
            assert "AsyncStatement" in repr(st)

    run(main)


def test_maintenance_methods(impl: ModuleType, db_path: Path, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_init.sql").write_text("-- migrate:up\nCREATE TABLE m (id INTEGER PRIMARY KEY);\n")

    async def main() -> None:
        async with await appdb.aio.init_database(db_path, migrations=migrations) as db:
            assert await db.get_schema_version() == 1
            assert await db.pragma("journal_mode") == "wal"
            await db.exec("INSERT INTO m DEFAULT VALUES; INSERT INTO m DEFAULT VALUES")
            assert await db.prepare("SELECT count(*) FROM m").scalar() == 2
            result = await db.checkpoint("truncate")
            assert isinstance(result, appdb.CheckpointResult)
            copy = await db.backup(tmp_path / "copy.db")
            with appdb.init_database(copy, run_migrations=False) as backup:
                assert backup.prepare("SELECT count(*) FROM m").scalar() == 2

    run(main)


def test_transactions_commit_roll_back_and_nest(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            insert = db.prepare("INSERT INTO t (name) VALUES (?)")
            count = db.prepare("SELECT count(*) FROM t WHERE name LIKE 'tx%'")
            async with db.transaction() as same:
                assert same is db
                await insert.run("tx1")
                assert await count.scalar() == 1  # its own write, on the writer
            assert await count.scalar() == 1
            with pytest.raises(LookupError):
                async with db.transaction():
                    await insert.run("tx2")
                    raise LookupError
            assert await count.scalar() == 1
            async with db.transaction(mode="exclusive"):
                await insert.run("tx3")
                with pytest.raises(LookupError):
                    async with db.transaction():  # a savepoint
                        await insert.run("tx4")
                        assert await count.scalar() == 3
                        raise LookupError
                async with db.transaction():
                    await insert.run("tx5")
                assert await count.scalar() == 3
            assert [
                r["name"] for r in await db.prepare("SELECT name FROM t WHERE name LIKE 'tx%'").all()
            ] == [
                "tx1",
                "tx3",
                "tx5",
            ]
            with pytest.raises(ValueError):
                db.transaction(mode="sideways")
            block = db.transaction()
            async with block:
                with pytest.raises(RuntimeError):
                    async with block:
                        pass
            assert not db.sync.in_transaction

    run(main)


def test_transaction_isolation_between_tasks(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            insert = db.prepare("INSERT INTO t (name) VALUES (?)")
            count = db.prepare("SELECT count(*) FROM t")
            began = asyncio.Event()
            finish = asyncio.Event()

            async def writer() -> None:
                async with db.transaction():
                    await insert.run("inside")
                    assert await count.scalar() == ROWS + 1
                    assert [
                        row async for row in db.prepare("SELECT id FROM t WHERE name = 'inside'").iterate()
                    ]
                    began.set()
                    await finish.wait()

            task = asyncio.create_task(writer())
            await began.wait()
            started = time.monotonic()
            assert await count.scalar() == ROWS  # committed data only, not blocked
            assert await db.prepare("SELECT count(*) FROM t WHERE name = 'inside'").all() == [{"count(*)": 0}]
            assert [row async for row in db.prepare("SELECT id FROM t WHERE id > ?").iterate(ROWS - 2)] == [
                {"id": ROWS - 1},
                {"id": ROWS},
            ]
            assert time.monotonic() - started < 1
            other = asyncio.create_task(insert.run("outside"))
            other_tx = asyncio.create_task(db.prepare("SELECT 1").get())
            await asyncio.sleep(0.05)
            assert not other.done()  # another task's write waits for the commit
            assert other_tx.done()  # reads do not
            finish.set()
            await task
            assert (await other).changes == 1
            names = await db.prepare("SELECT name FROM t WHERE id > ? ORDER BY id").all(ROWS)
            assert [r["name"] for r in names] == ["inside", "outside"]

    run(main)


def test_task_cancelled_inside_a_transaction_rolls_it_back(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            insert = db.prepare("INSERT INTO t (name) VALUES (?)")
            inside = asyncio.Event()

            async def work() -> None:
                async with db.transaction():
                    await insert.run("doomed")
                    inside.set()
                    await asyncio.sleep(10)

            task = asyncio.create_task(work())
            await inside.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await db.prepare("SELECT count(*) FROM t WHERE name = 'doomed'").scalar() == 0
            await insert.run("after")  # the writer and the lock are free again
            assert not db.sync.in_transaction

    run(main)


def test_deadline_interrupts_slow_queries(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            slow = db.prepare(INFINITE)
            started = time.monotonic()
            with pytest.raises(appdb.QueryTimeout):
                async with db.deadline(0.3):
                    await slow.scalar()
            assert 0.25 < time.monotonic() - started < 3
            started = time.monotonic()
            with pytest.raises(appdb.QueryTimeout):  # on the writer thread, inside a transaction
                async with db.deadline(0.2), db.transaction():
                    await slow.scalar()
            assert 0.15 < time.monotonic() - started < 3
            with pytest.raises(appdb.QueryTimeout):
                async with db.deadline(0.2):
                    async for _ in db.prepare(INFINITE.replace("count(*)", "x") + " WHERE x < 0").iterate():
                        pass
            with pytest.raises(ValueError):
                async with db.deadline(0):
                    pass
            assert await db.prepare("SELECT count(*) FROM t").scalar() == ROWS

    run(main)


def test_query_timeout_bounds_every_statement(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path, query_timeout=0.2) as db:
            started = time.monotonic()
            with pytest.raises(appdb.QueryTimeout):
                await db.prepare(INFINITE).scalar()
            assert 0.15 < time.monotonic() - started < 3
            assert await db.prepare("SELECT count(*) FROM t").scalar() == ROWS

    run(main)


def test_cancellation_interrupts_the_running_query(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path, readers=1) as db:
            slow = db.prepare(INFINITE)
            task = asyncio.create_task(slow.scalar())
            await asyncio.sleep(0.1)  # running in the only reader thread by now
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the reader thread is free again: a query that needs it completes
            async with db.deadline(0.1):
                with pytest.raises(appdb.QueryTimeout):
                    await slow.scalar()
            assert await asyncio.wait_for(db.prepare("SELECT count(*) FROM t").scalar(), 5) == ROWS
            # a write on the writer thread too
            endless = db.prepare(f"UPDATE t SET score = ({INFINITE}) WHERE id = 1")
            task = asyncio.create_task(endless.run())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            update = db.prepare("UPDATE t SET name = 'free' WHERE id = 1")
            assert (await asyncio.wait_for(update.run(), 5)).changes == 1
            assert await db.prepare("SELECT score FROM t WHERE id = 1").scalar() == 0.5

    run(main)


def test_cancellation_and_deadlines_interrupt_scripts_and_batches(impl: ModuleType, db_path: Path) -> None:
    endless_insert = f"INSERT INTO t (name) SELECT 'x' || x FROM ({INFINITE.replace('count(*)', 'x')})"

    def items_for(seconds: float) -> Iterator[tuple[str]]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            yield ("lost",)

    async def cancelled(awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        await asyncio.sleep(0.1)  # running on the writer thread by now
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main() -> None:
        async with await open_db(db_path) as db:
            insert = db.prepare("INSERT INTO t (name) VALUES (?)")
            await cancelled(db.exec(f"INSERT INTO t (name) VALUES ('kept'); {endless_insert}"))
            await cancelled(insert.run_many(items_for(10)))  # long past the test's patience
            await cancelled(db.prepare(endless_insert).run_many([()]))
            async with db.deadline(0.05):
                with pytest.raises(appdb.QueryTimeout):
                    await db.exec(INFINITE)
                with pytest.raises(appdb.QueryTimeout):
                    await db.prepare(endless_insert).run_many([()])
            # the writer thread is free again at once, and only the script's first insert stayed
            count = db.prepare("SELECT count(*) FROM t")
            assert (await asyncio.wait_for(insert.run_many([("after",)]), 5)).changes == 1
            assert await count.scalar() == ROWS + 2
        async with await appdb.aio.init_database(db_path, query_timeout=0.05) as db:
            with pytest.raises(appdb.QueryTimeout):
                await db.exec(endless_insert)
            with pytest.raises(appdb.QueryTimeout):
                await db.prepare(endless_insert).run_many([()])
            assert await db.prepare("SELECT count(*) FROM t").scalar() == ROWS + 2

    run(main)


@pytest.mark.parametrize("readers", [1, 3])  # the pool full, and the pool with room
def test_inline_reads_never_open_a_connection_on_the_loop(
    impl: ModuleType, db_path: Path, readers: int
) -> None:
    """When no reader is idle, an inline read moves to a thread rather than open one on the loop."""
    opened_by: list[str] = []

    def on_connect(connection: apsw.Connection) -> None:
        opened_by.append(threading.current_thread().name)

    async def main() -> None:
        async with await open_db(db_path, readers=readers, on_connect=on_connect) as db:
            scan = db.sync.prepare("SELECT id FROM t ORDER BY id")
            point = db.prepare("SELECT name FROM t WHERE id = ?")  # before: prepare runs on the loop
            held: dict[str, Any] = {}

            def hold_the_open_reader() -> None:
                held["rows"] = scan.iterate()
                assert next(held["rows"]) == {"id": 1}

            thread = threading.Thread(target=hold_the_open_reader)
            thread.start()
            thread.join()
            try:
                before = len(opened_by)
                assert await point.get(2) == {"name": "n2"}
                assert threading.main_thread().name not in opened_by[before:]
            finally:
                held["rows"].close()

    run(main)


def test_the_event_loop_keeps_running_during_a_slow_query(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            slow = db.prepare(INFINITE)
            point = db.prepare("SELECT * FROM t WHERE id = ?")
            done = False
            lateness = 0.0
            reads = 0

            async def probe() -> None:
                nonlocal lateness
                while not done:
                    started = time.monotonic()
                    await asyncio.sleep(0.005)
                    lateness = max(lateness, time.monotonic() - started - 0.005)

            async def reader(n: int) -> None:
                nonlocal reads
                while not done:
                    assert await point.get(n % ROWS + 1) is not None
                    reads += 1

            async def query() -> None:
                nonlocal done
                try:
                    async with db.deadline(0.4):
                        await slow.scalar()
                except appdb.QueryTimeout:
                    pass
                finally:
                    done = True

            started = time.monotonic()
            await asyncio.gather(probe(), query(), *(reader(n) for n in range(16)))
            assert time.monotonic() - started >= 0.35
            assert reads > 100
            assert lateness < 0.1, lateness

    run(main)


def test_iterate_closes_its_query_when_left_early(impl: ModuleType, db_path: Path) -> None:
    wal = Path(f"{db_path}-wal")

    async def main() -> None:
        async with await open_db(db_path) as db:
            scan = db.prepare("SELECT id FROM t ORDER BY id")
            await db.prepare("UPDATE t SET score = 0").run()
            async for row in scan.iterate():
                assert row == {"id": 1}
                assert open_snapshots(db.sync) == 1
                break
            gc.collect()  # CPython closes it at once; PyPy when it collects
            assert open_snapshots(db.sync) == 0
            await db.prepare("UPDATE t SET score = 1").run()
            await db.checkpoint("truncate")  # fails (BusyError) while a read snapshot is open
            assert wal.stat().st_size == 0
            rows = scan.iterate()
            assert await rows.__anext__() == {"id": 1}
            await rows.aclose()
            assert open_snapshots(db.sync) == 0
            with pytest.raises(StopAsyncIteration):
                await rows.__anext__()
            async with scan.iterate() as rows:
                assert await rows.__anext__() == {"id": 1}
            assert open_snapshots(db.sync) == 0
            async with db.transaction():  # on the writer
                async for _row in scan.iterate():
                    break
                await db.prepare("UPDATE t SET score = 2").run()
            gc.collect()
            await db.checkpoint("truncate")
            assert wal.stat().st_size == 0
            assert [r["id"] async for r in scan.iterate()] == list(range(1, ROWS + 1))
            assert open_snapshots(db.sync) == 0

    run(main)


def test_close_then_use_raises(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        db = await open_db(db_path)
        st = db.prepare("SELECT count(*) FROM t")
        rows = db.prepare("SELECT id FROM t").iterate()
        assert await rows.__anext__() == {"id": 1}
        await db.close()
        await db.close()  # twice is fine
        assert db.closed and db.sync.closed
        for call in (
            st.scalar,
            st.get,
            lambda: db.exec("SELECT 1"),
            lambda: db.checkpoint(),
            rows.__anext__,
            lambda: db.prepare("SELECT 2").get(),
        ):
            with pytest.raises(appdb.DatabaseClosedError):
                await call()
        with pytest.raises(appdb.DatabaseClosedError):
            async with db.transaction():
                pass

        async with await appdb.aio.init_database(db_path) as db2:
            assert await db2.prepare("SELECT count(*) FROM t").scalar() == ROWS
        assert db2.closed
        with pytest.raises(appdb.DatabaseClosedError):
            await db2.prepare("SELECT 1").get()

    run(main)


def test_close_waits_for_a_transaction_of_another_task(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        db = await open_db(db_path)
        insert = db.prepare("INSERT INTO t (name) VALUES (?)")
        inside = asyncio.Event()

        async def work() -> None:
            async with db.transaction():
                inside.set()
                await asyncio.sleep(0.05)
                await insert.run("committed")

        task = asyncio.create_task(work())
        await inside.wait()
        await db.close()
        await task
        with appdb.init_database(db_path) as sync:
            assert sync.prepare("SELECT count(*) FROM t WHERE name = 'committed'").scalar() == 1

    run(main)


def test_close_inside_a_transaction(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        db = await open_db(db_path)
        insert = db.prepare("INSERT INTO t (name) VALUES (?)")
        with pytest.raises(appdb.DatabaseClosedError):
            async with db.transaction():
                await insert.run("lost")
                await db.close()  # rolls the transaction back, as the sync close() does
        assert db.closed
        with appdb.init_database(db_path) as sync:
            assert sync.prepare("SELECT count(*) FROM t WHERE name = 'lost'").scalar() == 0

    run(main)


def test_tasks_started_inside_a_transaction_share_it(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            insert = db.prepare("INSERT INTO t (name) VALUES (?)")
            count = db.prepare("SELECT count(*) FROM t WHERE name = 'child'")
            with pytest.raises(LookupError):
                async with db.transaction():
                    await asyncio.gather(*(insert.run("child") for _ in range(5)))
                    assert await count.scalar() == 5
                    raise LookupError
            assert await count.scalar() == 0
            async with db.transaction():
                await asyncio.gather(*(insert.run("child") for _ in range(5)))
            assert await count.scalar() == 5

    run(main)


@pytest.mark.parametrize("where", ["memory", "no-readers"])
def test_without_readers_everything_runs_on_the_writer(impl: ModuleType, db_path: Path, where: str) -> None:
    async def main() -> None:
        if where == "memory":
            db = await open_db(Path(":memory:"))
        else:
            db = await open_db(db_path, readers=0)
        async with db:
            assert db.readers == 0
            st = db.prepare("SELECT * FROM t WHERE id = ?")
            assert not st.parallel
            results = await asyncio.gather(*(st.get(i) for i in range(1, 51)))
            assert [r["id"] for r in results] == list(range(1, 51))
            assert len([row async for row in db.prepare("SELECT id FROM t").iterate()]) == ROWS
            async with db.deadline(0.1):
                with pytest.raises(appdb.QueryTimeout):
                    await db.prepare(INFINITE).scalar()

    run(main)


def test_many_tasks_read_and_write(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        async with await open_db(db_path) as db:
            point = db.prepare("SELECT name FROM t WHERE id = ?")
            insert = db.prepare("INSERT INTO t (name) VALUES (?)")
            scan = db.prepare("SELECT sum(score) FROM t WHERE id <= ?")

            async def work(n: int) -> None:
                for i in range(40):
                    assert await point.get(i % ROWS + 1) == {"name": f"n{i % ROWS + 1}"}
                    if i % 10 == 0:
                        await insert.run(f"task{n}")
                    if i % 13 == 0:
                        async with db.transaction():
                            await insert.run(f"tx{n}")
                            assert await scan.scalar(ROWS) == ROWS * (ROWS + 1) / 4
                    if i % 7 == 0:
                        assert (
                            len([r async for r in db.prepare("SELECT id FROM t LIMIT 300").iterate()]) == 300
                        )

            await asyncio.gather(*(work(n) for n in range(32)))
            assert await db.prepare("SELECT count(*) FROM t").scalar() == ROWS + 32 * (4 + 4)

    run(main)


def test_open_errors_and_wrapping(impl: ModuleType, db_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await appdb.aio.init_database(db_path, readers=-1)
        sync = appdb.init_database(db_path)
        db = AsyncDatabase(sync)
        assert db.sync is sync
        assert await db.prepare("SELECT 41 + 1").scalar() == 42
        await db.close()
        assert sync.closed
        with pytest.raises(appdb.DatabaseClosedError):
            AsyncDatabase(sync)

    run(main)
    assert os.path.exists(db_path)


def test_the_inline_limit_ends_with_its_call(impl: ModuleType, db_path: Path) -> None:
    """A read on the event loop runs under a step budget and must not wait; the budget and the
    no-wait rule end with that call, even when it fails: sync calls made on the loop's thread
    between awaits, and calls from other threads meanwhile, run to the end as usual."""
    long_read = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) "
        "SELECT count(*) FROM c"
    )

    async def main() -> None:
        async with await open_db(db_path) as db:
            sync = db.sync
            point = db.prepare("SELECT name FROM t WHERE id = ?")
            malformed = db.prepare("SELECT json(?)")  # fails while it steps, on the loop
            assert await point.get(1) == {"name": "n1"}
            # Far beyond the inline budget: it would raise appdb._limits.BudgetExceeded if the
            # budget of the call before still applied on this thread.
            assert sync.prepare(long_read).scalar() == 200000
            with pytest.raises(apsw.SQLError, match="malformed JSON"):
                await malformed.get("{")
            assert sync.prepare(long_read).scalar() == 200000
            # Another thread while the loop's calls run: never limited by them.
            loop = asyncio.get_running_loop()
            other = loop.run_in_executor(None, sync.prepare(long_read).scalar)
            for i in range(1, 200):
                assert (await point.get(i))["name"] == f"n{i}"
            assert await other == 200000

    run(main)
