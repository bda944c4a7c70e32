"""Trials and the interleaved measurement loop.

Every trial builds one op per contender (a closure running a whole batch of
operations, see ``bench_contenders``), then measures the contenders in turn,
rotating their order on each repeat so none always runs first or last. The
garbage collector stays enabled (the dict rows it has to track are part of the
real cost) and is run before each batch so every batch starts from the same state.
Per-operation times are batch time / operations, loop overhead included for all.
The clock is wall time by default; ``cpu`` (this thread's CPU time, system calls
included) leaves out the time other processes take the core away.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench_contenders import Contender, Op
from bench_workload import ROW, SMALL_ROWS

__all__ = ["TRIALS", "Settings", "Trial", "TrialResult", "run_trial"]


@dataclass(frozen=True)
class Trial:
    """One benchmark trial: what is measured and how its batches are sized."""

    key: str
    title: str
    detail: str
    unit: str  # what one operation is: "call", "row", "100-row transaction"
    kind: str  # "read", "write" or "prepare"
    workload: str  # "ids", "starts", "count", "rows" or "scan"
    target_ops: int = 0  # fixed operations per batch (0: calibrate to the batch time)


TRIALS: tuple[Trial, ...] = (
    Trial("get", "get: 1 row by rowid", "SELECT * FROM small WHERE rowid = ?", "call", "read", "ids"),
    Trial("all", "all: 100 rows", "SELECT * FROM small WHERE rowid >= ? LIMIT 100", "call", "read", "starts"),
    Trial(
        "iterate", "iterate: 100 rows", "the same query, rows read one by one", "100 rows", "read", "starts"
    ),
    Trial(
        "get_in_read_txn",
        "get, in a read txn",
        "point selects between BEGIN DEFERRED and COMMIT",
        "call",
        "read",
        "ids",
    ),
    Trial("prepare", "prepare: cache hit", "db.prepare(sql) on a cache hit", "call", "prepare", "count"),
    Trial(
        "insert",
        "run: insert, autocommit",
        "each insert commits on its own",
        "insert",
        "write",
        "count",
    ),
    Trial(
        "insert_in_txn",
        "run: insert, in a txn",
        "many inserts inside one BEGIN IMMEDIATE ... COMMIT",
        "insert",
        "write",
        "count",
    ),
    Trial(
        "txn100",
        "txn of 100 inserts",
        "BEGIN, 100 single-row inserts, COMMIT",
        "txn",
        "write",
        "count",
    ),
    Trial(
        "run_many",
        "run_many: {rows} rows",
        "executemany of one insert in one transaction",
        "row",
        "write",
        "rows",
    ),
    Trial("scan", "iterate: {scan} rows", "SELECT * FROM big", "row", "read", "scan"),
)


@dataclass
class Settings:
    """How long and how often to measure."""

    quick: bool
    clock: str  # "wall" (perf_counter) or "cpu" (this thread's CPU time)
    repeats: int
    batch_seconds: float
    run_many_rows: int
    scan_rows: int
    scan_repeats: int
    seed: int = 20240604


@dataclass
class TrialResult:
    """Per-operation samples (µs) of every contender in one trial, aligned by repeat."""

    trial: Trial
    title: str
    ops_per_batch: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    other_clock: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None

    def spread(self, key: str) -> float | None:
        """Interquartile range of the repeats as a fraction of the median."""
        values = self.samples.get(key)
        if not values or len(values) < 2:
            return None
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return (q3 - q1) / statistics.median(values)

    def ratio(self, slower: str, faster: str) -> float | None:
        """Median over repeats of time(slower) / time(faster), measured side by side."""
        a, b = self.samples.get(slower), self.samples.get(faster)
        if not a or not b:
            return None
        return statistics.median(x / y for x, y in zip(a, b))

    def baseline(self, contender_rows: str) -> str:
        """The stdlib contender a contender is compared with (same row type on reads)."""
        if self.trial.kind == "read" and contender_rows == "dict":
            return "sqlite3-dict"
        return "sqlite3"


def _title(trial: Trial, settings: Settings) -> str:
    return trial.title.format(rows=f"{settings.run_many_rows:,}", scan=f"{settings.scan_rows:,}")


def _workload(trial: Trial, n: int, settings: Settings, rng: random.Random) -> tuple[Any, int]:
    """The argument of the contender's op factory, and the number of operations it runs."""
    if trial.workload == "ids":
        return rng.choices(range(1, SMALL_ROWS + 1), k=n), n
    if trial.workload == "starts":
        return rng.choices(range(1, SMALL_ROWS - 100 + 2), k=n), n
    if trial.workload == "count":
        return n, n
    if trial.workload == "rows":
        return [ROW] * settings.run_many_rows, settings.run_many_rows
    return None, settings.scan_rows


def _factory(contender: Contender, trial: Trial) -> Callable[..., Op | None]:
    method: Callable[..., Op | None] = getattr(contender, trial.key)
    return method


def _build(contender: Contender, trial: Trial, argument: Any) -> Op | None:
    factory = _factory(contender, trial)
    return factory() if trial.workload == "scan" else factory(argument)


def time_batch(op: Op) -> tuple[float, float]:
    """Wall-clock and thread CPU seconds of one call of ``op``, after a garbage collection."""
    gc.collect()
    cpu = time.thread_time_ns()
    wall = time.perf_counter_ns()
    op()
    wall_end = time.perf_counter_ns()
    cpu_end = time.thread_time_ns()
    return (wall_end - wall) / 1e9, (cpu_end - cpu) / 1e9


def _calibrate(trial: Trial, probe: Contender, settings: Settings, rng: random.Random) -> int:
    """Operations per batch so one batch of ``probe`` lasts about ``settings.batch_seconds``."""
    if trial.workload in ("rows", "scan"):
        return 1
    n = 20 if trial.kind == "write" else 200
    for _ in range(4):
        argument, _ops = _workload(trial, n, settings, rng)
        op = _build(probe, trial, argument)
        assert op is not None
        op()
        seconds = max(time_batch(op)[0], 1e-6)
        wanted = int(n * settings.batch_seconds / seconds)
        if seconds > settings.batch_seconds / 4:
            break
        n = max(n, min(wanted, n * 20))
    return max(10, min(wanted, 2_000_000))


def _check_snapshot(contender: Contender, trial: Trial) -> None:
    if contender.holds_read_snapshot():
        raise RuntimeError(
            f"{contender.label} kept a read snapshot open after the {trial.key!r} trial: "
            "the harness would not be measuring it fairly"
        )


def run_trial(
    trial: Trial,
    contenders: list[Contender],
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> TrialResult:
    """Measure ``trial`` on every contender it applies to, interleaved, ``settings.repeats`` times."""
    rng = random.Random(f"{settings.seed}-{trial.key}")
    result = TrialResult(trial, _title(trial, settings), 0)
    applicable = [c for c in contenders if _build_probe(c, trial)]
    for contender in contenders:
        if contender not in applicable:
            result.skipped[contender.key] = _skip_reason(contender, trial)
    if not applicable:
        return result
    probe = next((c for c in applicable if c.key == "sqlite3"), applicable[0])
    n = _calibrate(trial, probe, settings, rng)
    argument, ops_per_batch = _workload(trial, n, settings, rng)
    result.ops_per_batch = ops_per_batch
    ops: dict[str, Op] = {}
    for contender in applicable:
        op = _build(contender, trial, argument)
        assert op is not None
        op()  # warm-up: statement caches, first-call costs
        _check_snapshot(contender, trial)
        ops[contender.key] = op
        result.samples[contender.key] = []
        result.other_clock[contender.key] = []
    repeats = settings.scan_repeats if trial.workload == "scan" else settings.repeats
    for r in range(repeats):
        shift = r % len(applicable)
        for contender in applicable[shift:] + applicable[:shift]:
            wall, cpu = time_batch(ops[contender.key])
            chosen, other = (cpu, wall) if settings.clock == "cpu" else (wall, cpu)
            result.samples[contender.key].append(chosen * 1e6 / ops_per_batch)
            result.other_clock[contender.key].append(other * 1e6 / ops_per_batch)
        if progress is not None:
            progress(f"{result.title}: repeat {r + 1}/{repeats}")
    for contender in applicable:
        _check_snapshot(contender, trial)
    return result


def _build_probe(contender: Contender, trial: Trial) -> bool:
    """Whether ``contender`` takes part in ``trial`` (a factory returning None means no)."""
    if trial.kind == "write" and not contender.writes:
        return False
    if trial.kind == "prepare":
        return contender.key.startswith("appdb")
    return True


def _skip_reason(contender: Contender, trial: Trial) -> str:
    if trial.kind == "prepare":
        return "no statement object: the library caches statements internally"
    if trial.kind == "write":
        return "writes are the same code as sqlite3 tuples"
    return "not applicable"


def log(message: str) -> None:
    """Progress line on stderr (the results go to stdout)."""
    print(message, file=sys.stderr, flush=True)
