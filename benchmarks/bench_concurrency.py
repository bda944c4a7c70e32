"""Concurrency trials (issue 9): threads sharing one appdb database, a CPU-heavy read, asyncio.

Three parts, all on their own template database (built once, copied per contender):

1. Point reads from threads for a fixed window: 1 thread, 4 threads, and 4 reader
   threads next to 1 writer thread. appdb shares ONE ``init_database(path)`` between
   all threads (as an application would); raw APSW and stdlib ``sqlite3`` get a
   connection per thread, their best case. Only reads are counted.
2. A CPU-heavy aggregate over 200,000 rows from 1 and from 2 threads: does a
   second thread add throughput (SQLite runs without the GIL, so a second core can)?
3. asyncio: 64 tasks doing point reads through ``appdb.aio``, aiosqlite and
   aiosqlitepool, and a loop-stall probe while one task runs a ~0.3 s query.

Fairness: each cell runs for the same wall-clock window, split into rounds whose
contender order rotates (as the trials interleave their repeats). Threads start on
a barrier after a warm-up, so connection opening and cold caches stay outside the
window; the window is from the first thread's start to the last thread's end, and
the operation that crosses the deadline is counted with its time. The writer is
paced (``WRITE_RATE`` transactions per second, not flat out) so every contender's
readers face the same write load: an unpaced writer would do more or less work
depending on the library and the GIL, and skew the reads it is there to disturb.
The machine's core count limits what threads can gain; it is printed in the header.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import apsw

from bench_report import Target, fmt_rate, judge
from bench_workload import COLUMNS, ROW, fresh_copy, new_template, pragma_statements

__all__ = ["ConcurrencyResults", "ConcurrencySettings", "run_concurrency"]

# ---------------------------------------------------------------------------------------------
# The data: ``t`` for point reads (the trials' row shape, with an ``id`` key as in issue 9),
# ``log`` for the writer's inserts, ``big`` (x, y, z) for the CPU-heavy reads.

T_ROWS = 10_000
BIG_ROWS = 200_000
SQL_POINT = "SELECT * FROM t WHERE id = ?"
POINT_COLUMNS = ("id", *COLUMNS)
# One pass over `big`: about 19 ms with APSW on the 2-core development VM.
SQL_HEAVY = "SELECT sum(x * y), count(*) FROM big WHERE z % 7 != 3"
# The stall probe's slow query: ? outer rows, each two rowid seeks into `big` (z is a
# permutation of the rowids). About 1.1 µs per outer row, so its length can be tuned
# continuously; it is calibrated with raw APSW to last SLOW_SECONDS.
SQL_SLOW = (
    "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < ?) "
    "SELECT sum(a.x * b.y % 7), count(*) FROM k "
    "JOIN big AS a ON a.rowid = k.i % 200000 + 1 JOIN big AS b ON b.rowid = a.z"
)
SQL_UPDATE = "UPDATE t SET integer = integer + 1 WHERE id = ?"
SQL_LOG = "INSERT INTO log (t_id, n) VALUES (?, ?)"

WRITE_RATE = 500  # writer transactions per second (each: 5 updates of `t` + 5 inserts into `log`)
WRITE_IDS = 5
CHUNK = 32  # point reads between two looks at the stop flag (about 100 µs of work)
TASKS = 64  # asyncio tasks in the async trial
POOL_SIZE = 4  # aiosqlitepool connections: as many as reader threads in part 1
SLOW_SECONDS = 0.3
PROBE_SLEEP = 0.005
STALL_LIMIT_MS = 50.0
WARM_UP_SECONDS = 0.05  # an untimed window per contender before each scenario's rounds


def build_concurrency_template(path: str) -> None:
    """``t`` (10,000 rows), ``log`` (empty) and ``big`` (200,000 rows of x, y, z), in WAL mode."""
    conn = new_template(path)
    try:
        with conn:
            conn.execute(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, nul, integer INTEGER, real REAL, text, blob)"
            )
            conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, t_id INTEGER, n INTEGER)")
            conn.execute("CREATE TABLE big (x INTEGER, y INTEGER, z INTEGER)")
            conn.cursor().executemany(
                "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)", ((i, *ROW) for i in range(1, T_ROWS + 1))
            )
            # Deterministic values; 2654435761 is odd and not a multiple of 5, so z runs
            # through every rowid once (a permutation) for SQL_SLOW's second seek.
            conn.execute(
                "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
                "INSERT INTO big SELECT i % 1000, i * 7919 % 1009, i * 2654435761 % ? + 1 FROM c",
                (BIG_ROWS, BIG_ROWS),
            )
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Thread contenders. Each builds its ops inside the thread that uses them; an op takes a list
# of ids (point reads; the heavy op ignores it) and returns nothing.

Op = Callable[[list[int]], object]
Close = Callable[[], object]


def _nothing() -> None:
    return None


def _busy_first(statements: list[str]) -> list[str]:
    """The common pragmas with ``busy_timeout`` first: threads open their connections at the same
    moment, and ``PRAGMA journal_mode=WAL`` (first in appdb's order) must wait for a lock, not fail."""
    return sorted(statements, key=lambda statement: not statement.startswith("PRAGMA busy_timeout"))


class ThreadContender:
    key = ""
    label = ""

    def open(self, path: str) -> None:
        """Remember ``path``; per-thread connections open inside their threads."""
        self.path = path
        # Held open for the whole section, as appdb's shared database holds its writer:
        # otherwise the last connection to close at the end of every window checkpoints
        # and deletes the WAL, and the next window starts from a fresh one (appdb's does not).
        self.keeper = apsw.Connection(path)

    def close(self) -> None:
        self.keeper.close()

    def describe(self) -> str:
        raise NotImplementedError

    def point_reader(self) -> tuple[Op, Close]:
        raise NotImplementedError

    def heavy_reader(self) -> tuple[Op, Close]:
        raise NotImplementedError

    def writer(self) -> tuple[Callable[[list[int], int], object], Close]:
        raise NotImplementedError


class AppdbThreads(ThreadContender):
    """One ``appdb.init_database(path)`` shared by every thread; ``readers=None``: default options."""

    def __init__(self, readers: int | None) -> None:
        self.readers = readers
        self.key = "appdb" if readers is None else f"appdb-r{readers}"
        self.label = "appdb" if readers is None else f"appdb readers={readers}"
        self.db: Any = None

    def open(self, path: str) -> None:
        import appdb

        options = {} if self.readers is None else {"readers": self.readers}
        self.db = appdb.init_database(path, **options)
        self.twin = type(self.db.prepare("SELECT 1")).__module__
        self.pool = ""

    def check_idle(self) -> None:
        """After the windows: no reader busy, no read snapshot left open (as the trials check);
        also notes the pool's size and how many readers the threads opened, for the header."""
        status = getattr(self.db, "pool_status", None)
        if status is None:  # a core without the reader pool
            return
        pool = status()
        self.pool = f"; pool: {pool.readers} readers, {pool.open} opened"
        if pool.busy or pool.snapshots:
            raise RuntimeError(
                f"{self.label} left readers busy or read snapshots open after its windows: {pool}"
            )

    @staticmethod
    def has_readers_option() -> bool:
        """Whether ``init_database`` takes ``readers`` (the reader pool, issue 9)."""
        import appdb

        return "readers" in inspect.signature(appdb.init_database).parameters

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def describe(self) -> str:
        import appdb

        options = "default options" if self.readers is None else f"readers={self.readers}"
        return (
            f"appdb {appdb.__version__} ({self.twin}): ONE shared init_database(path, {options}), "
            f"dicts{self.pool}"
        )

    def point_reader(self) -> tuple[Op, Close]:
        get = self.db.prepare(SQL_POINT).get

        def op(ids: list[int]) -> None:
            for rowid in ids:
                get(rowid)

        return op, _nothing

    def heavy_reader(self) -> tuple[Op, Close]:
        get = self.db.prepare(SQL_HEAVY).get
        return (lambda _ids: get()), _nothing

    def writer(self) -> tuple[Callable[[list[int], int], object], Close]:
        update = self.db.prepare(SQL_UPDATE).run
        insert = self.db.prepare(SQL_LOG).run
        transaction = self.db.transaction

        def txn(ids: list[int], n: int) -> None:
            with transaction():
                for rowid in ids:
                    update(rowid)
                    insert(rowid, n)

        return txn, _nothing


class ApswThreads(ThreadContender):
    """Raw APSW, a connection per thread (opened in it), ``cursor.execute(...).get``, tuples."""

    key = "apsw"
    label = "raw APSW"

    def describe(self) -> str:
        return f"APSW {apsw.apsw_version()}: a connection per thread, cursor.execute(...).get, tuples"

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path, statementcachesize=100)
        for statement in _busy_first(pragma_statements()):
            conn.execute(statement).fetchall()
        conn.transaction_mode = "IMMEDIATE"
        return conn

    def point_reader(self) -> tuple[Op, Close]:
        conn = self._connect()
        execute = conn.cursor().execute

        def op(ids: list[int]) -> None:
            for rowid in ids:
                execute(SQL_POINT, (rowid,)).get  # noqa: B018 - steps to the end, resets

        return op, conn.close

    def heavy_reader(self) -> tuple[Op, Close]:
        conn = self._connect()
        execute = conn.cursor().execute
        return (lambda _ids: execute(SQL_HEAVY).get), conn.close

    def writer(self) -> tuple[Callable[[list[int], int], object], Close]:
        conn = self._connect()
        execute = conn.cursor().execute

        def txn(ids: list[int], n: int) -> None:
            with conn:
                for rowid in ids:
                    execute(SQL_UPDATE, (rowid,))
                    execute(SQL_LOG, (rowid, n))

        return txn, conn.close


class Sqlite3Threads(ThreadContender):
    """stdlib ``sqlite3``, a connection per thread, autocommit, dict rows as the trials build them."""

    key = "sqlite3-dict"
    label = "sqlite3 dicts"

    def describe(self) -> str:
        return (
            f"stdlib sqlite3 (SQLite {sqlite3.sqlite_version}): a connection per thread, "
            "dict(zip(names, row)) with the names cached"
        )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        for statement in _busy_first(pragma_statements()):
            conn.execute(statement).fetchall()
        return conn

    def point_reader(self) -> tuple[Op, Close]:
        conn = self._connect()
        execute = conn.cursor().execute
        names = POINT_COLUMNS

        def op(ids: list[int]) -> None:
            for rowid in ids:
                row = execute(SQL_POINT, (rowid,)).fetchone()
                if row is not None:
                    dict(zip(names, row))

        return op, conn.close

    def heavy_reader(self) -> tuple[Op, Close]:
        conn = self._connect()
        execute = conn.cursor().execute
        return (lambda _ids: execute(SQL_HEAVY).fetchone()), conn.close

    def writer(self) -> tuple[Callable[[list[int], int], object], Close]:
        conn = self._connect()
        execute = conn.cursor().execute

        def txn(ids: list[int], n: int) -> None:
            execute("BEGIN IMMEDIATE")
            try:
                for rowid in ids:
                    execute(SQL_UPDATE, (rowid,))
                    execute(SQL_LOG, (rowid, n))
            except BaseException:
                execute("ROLLBACK")
                raise
            execute("COMMIT")

        return txn, conn.close


THREAD_KEYS = ("appdb", "appdb-r0", "apsw", "sqlite3-dict")
ASYNC_KEYS = ("appdb-aio", "aiosqlite", "aiosqlitepool")
LABELS = {
    "appdb": "appdb",
    "appdb-r0": "appdb readers=0",
    "apsw": "raw APSW",
    "sqlite3-dict": "sqlite3 dicts",
    "appdb-aio": "appdb.aio",
    "aiosqlite": "aiosqlite",
    "aiosqlitepool": "aiosqlitepool",
}
# (key, title, threads, writer, work); work "point" counts reads, "heavy" counts queries.
SCENARIOS = (
    ("point-1", "point reads/s, 1 thread", 1, False, "point"),
    ("point-4", "point reads/s, 4 threads", 4, False, "point"),
    ("point-4w", "point reads/s, 4 threads + writer", 4, True, "point"),
    # More threads than appdb has readers (default_readers() is 4 to 8): a server's thread pool.
    ("point-16", "point reads/s, 16 threads", 16, False, "point"),
    ("heavy-1", "heavy aggregate/s, 1 thread", 1, False, "heavy"),
    ("heavy-2", "heavy aggregate/s, 2 threads", 2, False, "heavy"),
    ("async-64", f"point reads/s, {TASKS} asyncio tasks", 0, False, "async"),
)
# The heavy query's reference contenders: stdlib's per-thread code is APSW's, measured once is enough.
_HEAVY_KEYS = ("appdb", "appdb-r0", "apsw")


@dataclass
class Window:
    """What one timed window measured."""

    ops: int
    seconds: float
    writes_per_s: float | None = None


def _thread_window(
    contender: ThreadContender, threads: int, writer: bool, work: str, seconds: float, seed: str
) -> Window:
    """Run ``threads`` readers (and the paced writer) together for ``seconds``; count reads."""
    barrier = threading.Barrier(threads + (1 if writer else 0) + 1)
    stop = threading.Event()
    errors: list[BaseException] = []
    spans: list[tuple[int, float, float]] = []
    writes: list[float] = []

    def reader(index: int) -> None:
        close: Close = _nothing
        try:
            rng = random.Random(f"{seed}-{index}")
            op, close = contender.point_reader() if work == "point" else contender.heavy_reader()
            per_op = CHUNK if work == "point" else 1
            chunks = [rng.choices(range(1, T_ROWS + 1), k=CHUNK) for _ in range(64)]
            op(chunks[0])  # warm-up: this connection's page cache and statement cache
            barrier.wait(timeout=60)
            start = time.perf_counter()
            done = 0
            while not stop.is_set():
                op(chunks[done & 63])
                done += 1
            spans.append((done * per_op, start, time.perf_counter()))
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            try:
                close()
            except BaseException as exc:
                errors.append(exc)

    def write() -> None:
        close: Close = _nothing
        try:
            rng = random.Random(f"{seed}-writer")
            txn, close = contender.writer()
            batches = [rng.choices(range(1, T_ROWS + 1), k=WRITE_IDS) for _ in range(64)]
            txn(batches[0], -1)  # warm-up
            period = 1 / WRITE_RATE
            barrier.wait(timeout=60)
            start = due = time.perf_counter()
            done = 0
            while not stop.is_set():
                txn(batches[done & 63], done)
                done += 1
                due += period
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.05:  # fell behind: carry on at the pace, never in a burst
                    due = time.perf_counter()
            writes.append(done / (time.perf_counter() - start))
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            try:
                close()
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=reader, args=(i,), name=f"bench-reader-{i}") for i in range(threads)]
    if writer:
        workers.append(threading.Thread(target=write, name="bench-writer"))
    gc.collect()
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=60)
        time.sleep(seconds)
    except threading.BrokenBarrierError:
        pass
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    if errors:
        raise RuntimeError(f"{contender.label}: a benchmark thread failed: {errors[0]!r}") from errors[0]
    ops = sum(span[0] for span in spans)
    window = max(span[2] for span in spans) - min(span[1] for span in spans)
    return Window(ops, window, writes[0] if writes else None)


# ---------------------------------------------------------------------------------------------
# asyncio contenders: ``open`` returns the coroutine function of one point read and of the slow
# query. aiosqlite's rows become dicts the way stdlib's do in part 1 (a negligible cost next to
# its thread hand-off), so every contender returns the same row type.

AsyncGet = Callable[[int], Awaitable[object]]


class AsyncContender:
    key = ""
    label = ""

    async def open(self, path: str) -> tuple[AsyncGet, Callable[[int], Awaitable[object]]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class AppdbAio(AsyncContender):
    key = "appdb-aio"
    label = "appdb.aio"

    def __init__(self) -> None:
        import appdb.aio  # ImportError: not built yet

        self.module = appdb.aio
        self.db: Any = None

    async def open(self, path: str) -> tuple[AsyncGet, Callable[[int], Awaitable[object]]]:
        self.db = await self.module.init_database(path)
        get = self.db.prepare(SQL_POINT).get
        slow = self.db.prepare(SQL_SLOW).get
        return get, slow

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()

    def describe(self) -> str:
        return "await st.get(id) on ONE shared `await appdb.aio.init_database(path)`, dict rows"


def _aiosqlite_factory(path: str) -> Callable[[], Awaitable[Any]]:
    import aiosqlite

    async def connect() -> Any:
        conn = await aiosqlite.connect(path, isolation_level=None)
        for statement in pragma_statements():
            await conn.execute_fetchall(statement)
        return conn

    return connect


class Aiosqlite(AsyncContender):
    key = "aiosqlite"
    label = "aiosqlite"

    def __init__(self) -> None:
        import aiosqlite

        self.version = getattr(aiosqlite, "__version__", "?")
        self.conn: Any = None

    async def open(self, path: str) -> tuple[AsyncGet, Callable[[int], Awaitable[object]]]:
        self.conn = conn = await _aiosqlite_factory(path)()
        fetch = conn.execute_fetchall  # one round trip to its thread (execute + fetchone is three)
        names = POINT_COLUMNS

        async def get(rowid: int) -> object:
            rows = await fetch(SQL_POINT, (rowid,))
            return dict(zip(names, rows[0])) if rows else None

        async def slow(n: int) -> object:
            return await fetch(SQL_SLOW, (n,))

        return get, slow

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    def describe(self) -> str:
        return f"aiosqlite {self.version}: one connection (its own thread), await execute_fetchall(), dicts"


class Aiosqlitepool(AsyncContender):
    key = "aiosqlitepool"
    label = "aiosqlitepool"

    def __init__(self) -> None:
        import aiosqlite  # noqa: F401 - its connections are aiosqlite's
        import aiosqlitepool

        self.module = aiosqlitepool
        self.pool: Any = None

    async def open(self, path: str) -> tuple[AsyncGet, Callable[[int], Awaitable[object]]]:
        self.pool = pool = self.module.SQLiteConnectionPool(_aiosqlite_factory(path), pool_size=POOL_SIZE)
        connection = pool.connection
        names = POINT_COLUMNS

        # Its idiomatic use: a connection per operation. Acquiring runs a `SELECT 1` health
        # check and releasing a rollback, each a round trip to the connection's thread.
        async def get(rowid: int) -> object:
            async with connection() as conn:
                rows = await conn.execute_fetchall(SQL_POINT, (rowid,))
            return dict(zip(names, rows[0])) if rows else None

        async def slow(n: int) -> object:
            async with connection() as conn:
                return await conn.execute_fetchall(SQL_SLOW, (n,))

        return get, slow

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def describe(self) -> str:
        version = getattr(self.module, "__version__", "?")
        return (
            f"aiosqlitepool {version}: {POOL_SIZE} aiosqlite connections, one acquired per read "
            "(health check on acquire, rollback on release), dicts"
        )


async def _async_window(get: AsyncGet, seconds: float, seed: str) -> Window:
    """``TASKS`` tasks doing point reads until a deadline; every started read is counted and timed."""
    start = asyncio.Event()
    deadline = [0.0]
    counts = [0] * TASKS

    async def task(index: int) -> None:
        rng = random.Random(f"{seed}-{index}")
        ids = rng.choices(range(1, T_ROWS + 1), k=256)
        await start.wait()
        done = 0
        end = deadline[0]
        clock = time.perf_counter
        # The deadline is checked per read, not a flag set by a sleeping coroutine: a read
        # that never yields to the loop would keep such a flag from ever being set.
        while clock() < end:
            await get(ids[done & 255])
            done += 1
        counts[index] = done

    jobs = [asyncio.create_task(task(i)) for i in range(TASKS)]
    await asyncio.sleep(0)  # every task now waits on `start`
    gc.collect()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.set()
    await asyncio.gather(*jobs)
    return Window(sum(counts), time.perf_counter() - began)


async def _stall(run: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Worst lateness (s) of a 5 ms ``asyncio.sleep`` loop while ``run()`` is awaited, and its duration."""
    worst = 0.0
    running = True

    async def probe() -> None:
        nonlocal worst
        while running:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_SLEEP)
            worst = max(worst, time.perf_counter() - before - PROBE_SLEEP)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.02)  # the probe is looping before the query starts
    began = time.perf_counter()
    await run()
    took = time.perf_counter() - began
    running = False
    await prober
    return worst, took


# ---------------------------------------------------------------------------------------------
# Orchestration and results.


@dataclass
class ConcurrencySettings:
    quick: bool
    rounds: int  # a cell's window is split into this many rounds, contender order rotated
    round_seconds: float
    stall_runs: int
    seed: int = 20240609
    write_rate: int = WRITE_RATE
    tasks: int = TASKS
    slow_rows: int = 0  # SQL_SLOW's parameter, calibrated
    slow_apsw_seconds: float = 0.0

    @classmethod
    def make(cls, quick: bool) -> ConcurrencySettings:
        if quick:
            return cls(quick=True, rounds=2, round_seconds=0.2, stall_runs=1)
        # Five short rounds rather than three long ones: the median of per-round ratios
        # then shrugs off a round that another process disturbed.
        return cls(quick=False, rounds=5, round_seconds=0.3, stall_runs=3)


@dataclass
class Cell:
    """One scenario of one contender: a rate (operations/s) per round, aligned by round."""

    rates: list[float] = field(default_factory=list)
    ops: int = 0
    seconds: float = 0.0
    writes_per_s: list[float] = field(default_factory=list)

    def add(self, window: Window) -> None:
        self.rates.append(window.ops / window.seconds)
        self.ops += window.ops
        self.seconds += window.seconds
        if window.writes_per_s is not None:
            self.writes_per_s.append(window.writes_per_s)

    def median(self) -> float:
        return statistics.median(self.rates)

    def spread(self) -> float | None:
        """Interquartile range of the rounds as a fraction of the median (as the trials report)."""
        if len(self.rates) < 2:
            return None
        q1, _, q3 = statistics.quantiles(self.rates, n=4, method="inclusive")
        return (q3 - q1) / self.median()


@dataclass
class Stall:
    worst_ms: list[float] = field(default_factory=list)
    query_seconds: list[float] = field(default_factory=list)


@dataclass
class ConcurrencyResults:
    settings: ConcurrencySettings
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # scenario -> contender -> cell
    unavailable: dict[str, str] = field(default_factory=dict)
    describe: dict[str, str] = field(default_factory=dict)
    stalls: dict[str, Stall] = field(default_factory=dict)
    idle_stall_ms: float | None = None
    parallel_capacity: float | None = None
    seconds: float = 0.0
    others_cores: float | None = None  # CPU used by other processes during the section, in cores
    steal_cores: float | None = None  # CPU time the hypervisor gave other machines, in cores

    def cell(self, scenario: str, key: str) -> Cell | None:
        cell = self.cells.get(scenario, {}).get(key)
        return cell if cell is not None and cell.rates else None

    def ratio(self, scenario: str, key: str, base_scenario: str, base_key: str) -> float | None:
        """Median over rounds of rate(scenario, key) / rate(base_scenario, base_key), side by side."""
        a, b = self.cell(scenario, key), self.cell(base_scenario, base_key)
        if a is None or b is None:
            return None
        return statistics.median(x / y for x, y in zip(a.rates, b.rates))

    def to_dict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "settings": vars(self.settings),
            "sql": {"point": SQL_POINT, "heavy": SQL_HEAVY, "slow": SQL_SLOW},
            "contenders": self.describe,
            "unavailable": self.unavailable,
            "cells": {
                scenario: {
                    key: {
                        "ops_per_second_per_round": cell.rates,
                        "median_ops_per_second": cell.median(),
                        "ops": cell.ops,
                        "seconds": cell.seconds,
                        "writer_txn_per_second": cell.writes_per_s or None,
                    }
                    for key, cell in per.items()
                    if cell.rates
                }
                for scenario, per in self.cells.items()
            },
            "loop_stall": {
                key: {"worst_ms": s.worst_ms, "query_seconds": s.query_seconds}
                for key, s in self.stalls.items()
            },
            "idle_loop_stall_ms": self.idle_stall_ms,
            "two_process_capacity": self.parallel_capacity,
            "other_processes_cores": self.others_cores,
            "steal_cores": self.steal_cores,
            "duration_seconds": round(self.seconds, 1),
            "targets": records,
        }


def _open_thread_contenders(results: ConcurrencyResults, template: str, folder: str) -> list[ThreadContender]:
    opened: list[ThreadContender] = []
    contenders: list[ThreadContender] = [AppdbThreads(None), AppdbThreads(0), ApswThreads(), Sqlite3Threads()]
    for contender in contenders:
        if contender.key == "appdb-r0" and not AppdbThreads.has_readers_option():
            results.unavailable[contender.key] = "n/a: appdb.init_database() has no `readers` option yet"
            continue
        contender.open(fresh_copy(template, os.path.join(folder, f"conc-{contender.key}.db")))
        results.describe[contender.key] = contender.describe()
        opened.append(contender)
    return opened


def _rotated(items: list[Any], shift: int) -> list[Any]:
    shift %= max(1, len(items))
    return items[shift:] + items[:shift]


def _run_threads(
    results: ConcurrencyResults, opened: list[ThreadContender], log: Callable[[str], None]
) -> None:
    """Every thread scenario, those of one kind of work (point reads, the aggregate) interleaved.

    Round by round, each scenario of the kind runs once for every contender (order rotated), so
    the ``vs 1 thread`` ratios divide windows measured seconds apart, not a whole scenario
    apart: on a shared virtual machine one thread's own rate drifted by a third between
    scenarios measured one after the other (204,000 to 294,000 reads/s), and the 4-vs-1 ratio
    with it (0.64x to 1.08x).
    """
    settings = results.settings
    for work in ("point", "heavy"):
        began = time.perf_counter()
        kind = [
            (number, scenario, threads, writer)
            for number, (scenario, _title, threads, writer, w) in enumerate(SCENARIOS)
            if w == work
        ]
        present = [c for c in opened if work == "point" or c.key in _HEAVY_KEYS]
        # An untimed window first: appdb opens pool readers lazily, when threads first read
        # at the same time, and that (like every connection's cold page cache) is set-up.
        for _number, _scenario, threads, writer in kind:
            for contender in present:
                _thread_window(contender, threads, writer, work, WARM_UP_SECONDS, "warm-up")
        for round_ in range(settings.rounds):
            for number, scenario, threads, writer in kind:
                per = results.cells.setdefault(scenario, {})
                for contender in _rotated(present, round_ + number):
                    seed = f"{settings.seed}-{scenario}-{round_}"
                    window = _thread_window(contender, threads, writer, work, settings.round_seconds, seed)
                    per.setdefault(contender.key, Cell()).add(window)
        log(f"[concurrency] {work} scenarios, interleaved: {time.perf_counter() - began:.1f} s")


def _calibrate_slow(template: str, folder: str) -> tuple[int, float]:
    """SQL_SLOW's row count for about SLOW_SECONDS with raw APSW (warm cache), and its measured time.

    Each timing is the best of two runs: on a busy virtual machine single runs vary by 30%.
    """
    path = fresh_copy(template, os.path.join(folder, "conc-calibrate.db"))
    conn = apsw.Connection(path)
    try:
        for statement in pragma_statements():
            conn.execute(statement).fetchall()
        execute = conn.execute

        def best(n: int) -> float:
            times = []
            for _ in range(2):
                began = time.perf_counter()
                execute(SQL_SLOW, (n,)).get  # noqa: B018
                times.append(time.perf_counter() - began)
            return min(times)

        execute(SQL_SLOW, (BIG_ROWS,)).get  # noqa: B018 - warm the page cache
        n = 50_000
        for _ in range(4):
            took = best(n)
            if abs(took - SLOW_SECONDS) < 0.15 * SLOW_SECONDS:
                break
            n = max(1000, round(n * SLOW_SECONDS / took))
        else:
            took = best(n)
        return n, took
    finally:
        conn.close()


def _async_contenders(results: ConcurrencyResults) -> list[AsyncContender]:
    contenders: list[AsyncContender] = []
    for key, cls in (("appdb-aio", AppdbAio), ("aiosqlite", Aiosqlite), ("aiosqlitepool", Aiosqlitepool)):
        try:
            contenders.append(cls())
        except ImportError as exc:
            if key == "appdb-aio":
                results.unavailable[key] = "n/a (appdb.aio not available)"
            else:
                results.unavailable[key] = (
                    f"n/a ({exc.name or key} is not installed: pip install '.[bench]' installs it)"
                )
    return contenders


async def _run_async(
    results: ConcurrencyResults, contenders: list[AsyncContender], template: str, folder: str
) -> None:
    settings = results.settings
    opened: list[tuple[AsyncContender, AsyncGet, Callable[[int], Awaitable[object]]]] = []
    try:
        for contender in contenders:
            path = fresh_copy(template, os.path.join(folder, f"conc-{contender.key}.db"))
            get, slow = await contender.open(path)
            opened.append((contender, get, slow))
            results.describe[contender.key] = contender.describe()
            await _async_window(get, WARM_UP_SECONDS, "warm-up")
        per = results.cells.setdefault("async-64", {})
        for round_ in range(settings.rounds):
            for contender, get, _slow in _rotated(opened, round_):
                window = await _async_window(get, settings.round_seconds, f"{settings.seed}-async-{round_}")
                per.setdefault(contender.key, Cell()).add(window)
        idle, _ = await _stall(lambda: asyncio.sleep(SLOW_SECONDS))
        results.idle_stall_ms = idle * 1000
        for contender, _get, slow in opened:
            if contender.key == "aiosqlitepool":  # the same connections and thread hand-off as aiosqlite
                continue
            stall = results.stalls.setdefault(contender.key, Stall())
            for _ in range(settings.stall_runs):
                worst, took = await _stall(lambda slow=slow: slow(settings.slow_rows))
                stall.worst_ms.append(worst * 1000)
                stall.query_seconds.append(took)
    finally:
        for contender, _get, _slow in opened:
            await contender.close()


def run_concurrency(quick: bool, folder: str, log: Callable[[str], None]) -> ConcurrencyResults:
    """Build the template in ``folder``, run every part, return the figures."""
    began = time.perf_counter()
    results = ConcurrencyResults(ConcurrencySettings.make(quick))
    before = _cpu_snapshot()
    template = os.path.join(folder, "concurrency-template.db")
    build_concurrency_template(template)
    results.parallel_capacity = parallel_capacity(0.1 if quick else 0.25)
    opened = _open_thread_contenders(results, template, folder)
    try:
        _run_threads(results, opened, log)
        for contender in opened:
            if isinstance(contender, AppdbThreads):
                contender.check_idle()
                results.describe[contender.key] = contender.describe()
    finally:
        for contender in opened:
            contender.close()
    settings = results.settings
    settings.slow_rows, settings.slow_apsw_seconds = _calibrate_slow(template, folder)
    started = time.perf_counter()
    asyncio.run(_run_async(results, _async_contenders(results), template, folder))
    log(f"[concurrency] asyncio, {TASKS} tasks, loop-stall probe: {time.perf_counter() - started:.1f} s")
    results.seconds = time.perf_counter() - began
    after = _cpu_snapshot()
    if before is not None and after is not None:
        wall = results.seconds
        results.others_cores = max(0.0, (after[0] - before[0]) - (after[2] - before[2])) / wall
        results.steal_cores = (after[1] - before[1]) / wall
    return results


# A child process: wait for the shared start time, run ? rows of pure SQLite work, print seconds.
_CAPACITY_CHILD = """
import sqlite3, sys, time
rows, start = int(sys.argv[1]), float(sys.argv[2])
conn = sqlite3.connect(":memory:")
sql = "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < ?) SELECT sum(i % 7) FROM k"
conn.execute(sql, (1000,)).fetchone()
while time.time() < start:
    time.sleep(0.001)
began = time.perf_counter()
conn.execute(sql, (rows,)).fetchone()
print(time.perf_counter() - began)
"""


def parallel_capacity(seconds: float) -> float | None:
    """How much more work 2 processes finish than 1 in the same time (2.0: two real cores).

    Processes share neither the GIL nor SQLite's mutexes, so this is the machine's own
    ceiling for any 2-thread speed-up: virtual machines can show 2 cores yet run about
    one at a time. None when the children cannot run.
    """
    import subprocess
    import sys

    def run(processes: int, rows: int) -> float:
        start = time.time() + 0.3  # every child has started Python by then
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CAPACITY_CHILD, str(rows), repr(start)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        times = [float(child.communicate()[0]) for child in children]
        if any(child.returncode for child in children):
            raise OSError("capacity probe failed")
        return max(times)

    try:
        rows = 200_000
        rows = max(10_000, round(rows * seconds / run(1, rows)))
        # Best of two each way: a disturbed single run would overstate the gain (above 2x).
        one = min(run(1, rows), run(1, rows))
        two = min(run(2, rows), run(2, rows))
    except (OSError, ValueError):
        return None
    return 2 * one / two


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(CPU seconds all processes used, seconds stolen by the hypervisor, seconds this process used).

    The difference of two snapshots says how much CPU other processes took while the
    section ran: the load average cannot, as it counts this run's own threads.
    Linux only (``/proc/stat``); None elsewhere.
    """
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = os.times()
    return (
        (user + nice + system + irq + softirq) / tick,
        steal / tick,
        own.user + own.system + own.children_user + own.children_system,
    )


# ---------------------------------------------------------------------------------------------
# Targets (issue 9) and the report.


def _ratio_target(
    scenario: str,
    key: str,
    base_scenario: str,
    base_key: str,
    context: tuple[str, str, str, str] | None = None,
) -> Callable[[ConcurrencyResults], tuple[float | None, str]]:
    def measure(results: ConcurrencyResults) -> tuple[float | None, str]:
        value = results.ratio(scenario, key, base_scenario, base_key)
        a, b = results.cell(scenario, key), results.cell(base_scenario, base_key)
        if value is None or a is None or b is None:
            missing = [k for k, c in ((key, a), (base_key, b)) if c is None]
            return None, "needs " + " and ".join(LABELS[k] for k in missing)
        detail = f"{fmt_rate(a.median())}/s vs {fmt_rate(b.median())}/s"
        if context is not None:
            other = results.ratio(*context)
            if other is not None:
                detail += f"; {LABELS[context[1]]} on the same: {other:.2f}x"
        return value, detail

    return measure


def _heavy_target(results: ConcurrencyResults) -> tuple[float | None, str]:
    value, detail = _ratio_target(
        "heavy-2", "appdb", "heavy-1", "appdb", ("heavy-2", "apsw", "heavy-1", "apsw")
    )(results)
    if results.parallel_capacity is not None:
        detail += f"; 2 processes on this machine: {results.parallel_capacity:.2f}x"
    return value, detail


def _stall_target(results: ConcurrencyResults) -> tuple[float | None, str]:
    stall = results.stalls.get("appdb-aio")
    if not stall or not stall.worst_ms:
        return None, "needs appdb.aio"
    detail = f"query {statistics.median(stall.query_seconds):.2f} s"
    reference = results.stalls.get("aiosqlite")
    if reference and reference.worst_ms:
        detail += f"; aiosqlite {max(reference.worst_ms):.1f} ms"
    if results.idle_stall_ms is not None:
        detail += f"; idle loop {results.idle_stall_ms:.1f} ms"
    return max(stall.worst_ms), detail


TARGETS: tuple[Target, ...] = (
    Target(
        "appdb point reads, 4 threads vs 1 thread: at least",
        0.85,
        False,
        "x",
        _ratio_target("point-4", "appdb", "point-1", "appdb", ("point-4", "apsw", "point-1", "apsw")),
    ),
    Target(
        "appdb point reads, 4 threads vs raw APSW 4 threads: at least",
        0.9,
        False,
        "x",
        _ratio_target("point-4", "appdb", "point-4", "apsw"),
    ),
    Target(
        "appdb point reads, 4 threads + writer vs raw APSW: at least",
        0.9,
        False,
        "x",
        _ratio_target("point-4w", "appdb", "point-4w", "apsw"),
    ),
    Target(
        "appdb point reads, 4 threads + writer vs sqlite3 dicts: at least",
        1.5,
        False,
        "x",
        _ratio_target("point-4w", "appdb", "point-4w", "sqlite3-dict"),
    ),
    Target(  # not one of issue 9's: threads outnumbering readers once made every read a switch
        "appdb point reads, 16 threads vs raw APSW 16 threads: at least",
        0.9,
        False,
        "x",
        _ratio_target("point-16", "appdb", "point-16", "apsw"),
    ),
    Target(
        "appdb heavy aggregate, 2 threads vs 1 thread: at least",
        1.6,
        False,
        "x",
        _heavy_target,
    ),
    Target(
        f"appdb.aio point reads, {TASKS} tasks vs aiosqlite: at least",
        10.0,
        False,
        "x",
        _ratio_target("async-64", "appdb-aio", "async-64", "aiosqlite"),
    ),
    Target("appdb.aio loop stall during a slow query: below", STALL_LIMIT_MS, True, " ms", _stall_target),
)


def concurrency_verdicts(results: ConcurrencyResults) -> tuple[list[str], list[dict[str, Any]]]:
    return judge(TARGETS, results)


_WIDTH = 38
_CELL_WIDTH = 17


def _rate_cell(cell: Cell | None, reason: str | None) -> str:
    if cell is None:
        return "n/a" if reason else "—"
    spread = cell.spread()
    return fmt_rate(cell.median()) + (f" ±{spread / 2:.0%}" if spread is not None else "")


def _rows(results: ConcurrencyResults, keys: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(label, cells) rows of the table for ``keys``' columns."""
    rows: list[tuple[str, list[str]]] = []
    scaling = {"point-4": "point-1", "point-16": "point-1", "heavy-2": "heavy-1"}
    for scenario, title, _threads, writer, work in SCENARIOS:
        if (work == "async") != (keys == ASYNC_KEYS):
            continue
        cells = [_rate_cell(results.cell(scenario, k), results.unavailable.get(k)) for k in keys]
        rows.append((title, cells))
        if writer:
            shown = []
            for key in keys:
                cell = results.cell(scenario, key)
                shown.append(
                    f"{statistics.median(cell.writes_per_s):,.0f}" if cell and cell.writes_per_s else ""
                )
            rows.append((f"  writer txn/s (paced at {WRITE_RATE})", shown))
        if scenario in scaling:
            ratios = [results.ratio(scenario, k, scaling[scenario], k) for k in keys]
            rows.append(
                (
                    f"  {title.split(', ')[1]} vs 1 thread",
                    [f"{r:.2f}x" if r is not None else "" for r in ratios],
                )
            )
    if keys == ASYNC_KEYS:
        worst = []
        took = []
        for key in keys:
            stall = results.stalls.get(key)
            worst.append(f"{max(stall.worst_ms):.1f}" if stall and stall.worst_ms else "")
            took.append(
                f"{statistics.median(stall.query_seconds):.2f}" if stall and stall.query_seconds else ""
            )
        slow = f"{results.settings.slow_apsw_seconds:.2f} s"
        rows.append((f"loop stall, worst ms (query {slow} in APSW)", worst))
        rows.append(("  slow query took, s", took))
    return rows


def _others(results: ConcurrencyResults) -> str:
    if results.others_cores is None:
        return "CPU use of other processes unknown (no /proc/stat)"
    return (
        f"other processes used {results.others_cores:.2f} cores during the section, "
        f"the hypervisor stole {results.steal_cores:.2f}"
    )


def _capacity(results: ConcurrencyResults) -> str:
    if results.parallel_capacity is None:
        return "parallel capacity not measured"
    return (
        f"2 processes do {results.parallel_capacity:.2f}x the work of 1 here "
        "(the ceiling of any 2-thread speed-up)"
    )


def concurrency_table(results: ConcurrencyResults) -> str:
    settings = results.settings
    lines = [
        f"Concurrency (issue 9): operations per second, summed over threads/tasks; {settings.rounds} rounds "
        f"of {settings.round_seconds:.2f} s",
        "per cell, contenders rotated; ±: half the interquartile range of the rounds, as % of the median;",
        _others(results) + ";",
        _capacity(results) + ". Contenders:",
    ]
    for key in (*THREAD_KEYS, *ASYNC_KEYS):
        text = results.describe.get(key) or results.unavailable.get(key, "not measured")
        lines.append(f"  {LABELS[key]:<16} {text}")
    for keys in (THREAD_KEYS, ASYNC_KEYS):
        lines.append("")
        head = "".ljust(_WIDTH) + "".join(LABELS[k].rjust(_CELL_WIDTH) for k in keys)
        lines += [head, "-" * len(head)]
        for label, cells in _rows(results, keys):
            lines.append(label.ljust(_WIDTH) + "".join(c.rjust(_CELL_WIDTH) for c in cells))
    return "\n".join(lines)


def concurrency_markdown(results: ConcurrencyResults) -> str:
    parts = []
    for keys in (THREAD_KEYS, ASYNC_KEYS):
        lines = ["| concurrency (issue 9) | " + " | ".join(LABELS[k] for k in keys) + " |"]
        lines.append("|---|" + "---:|" * len(keys))
        for label, cells in _rows(results, keys):
            lines.append(f"| {label.strip()} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    settings = results.settings
    parts.append(
        f"{settings.rounds} rounds of {settings.round_seconds:.2f} s per cell; {_others(results)}; "
        f"{_capacity(results)}."
    )
    return "\n\n".join(parts)


NOTES = """\
How to read: each cell is one contender's operations per second over the same wall-clock window,
summed over its threads (or tasks); reads only, the writer's transactions are listed below them.
appdb shares one database object between all threads, as an application would; raw APSW and
sqlite3 get a connection per thread (their best case, more connections for the same file). The
ratios are medians of per-round ratios of cells measured in the same round (the scenarios of one
kind of work take turns in every round). Threads share {cores}
cores and the GIL (switch interval {switch:.0f} ms): SQLite runs without the GIL, Python code with it."""
