"""Reporting: machine description, results tables, target verdicts, JSON and the plot."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw

from bench_contenders import CONTENDER_KEYS, Contender
from bench_measure import Settings, TrialResult
from bench_node import ENABLE, NODE_KEY

__all__ = [
    "TARGETS",
    "Results",
    "Target",
    "fmt_rate",
    "judge",
    "machine_info",
    "matplotlib_available",
    "memory_table",
    "plot",
    "results_table",
    "to_json",
    "verdicts",
]

_HEADS = {
    "appdb": ("appdb", "compiled", "dicts"),
    "appdb-py": ("appdb", "pure Python", "dicts"),
    "apsw": ("raw APSW", "", "tuples"),
    "sqlite3": ("sqlite3", "stdlib", "tuples"),
    "sqlite3-dict": ("sqlite3", "stdlib", "dicts"),
    NODE_KEY: ("better-sqlite3", "12", "objects"),
}
_LABEL_WIDTH = 35
_UNIT_WIDTH = 9
_CELL = 13
MB = 1_000_000


@dataclass
class Results:
    """Everything one run measured."""

    settings: Settings
    contenders: list[Contender]
    unavailable: dict[str, str]
    trials: dict[str, TrialResult]
    memory: dict[str, dict[str, Any]]

    def keys(self) -> list[str]:
        present = {c.key for c in self.contenders}
        return [k for k in (*CONTENDER_KEYS, NODE_KEY) if k in present]


def machine_info() -> dict[str, str]:
    """CPU, core count, OS, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import appdb

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "apsw": apsw.apsw_version(),
        "apsw_sqlite": apsw.sqlite_lib_version(),
        "stdlib_sqlite": sqlite3.sqlite_version,
        "appdb": f"{appdb.__version__} ({os.path.dirname(appdb.__file__)})",
    }


def syscall_costs(folder: str) -> dict[str, float]:
    """µs per ``fcntl`` lock+unlock pair (and per ``fstat``, for scale).

    In WAL mode SQLite takes and drops a read lock in the ``-shm`` file (two
    ``fcntl`` calls, seen with strace) for every autocommit read transaction. On
    virtual machines these calls can dominate a point query, for every contender alike.
    """
    try:
        import fcntl
        import struct
        import timeit
    except ImportError:  # not POSIX
        return {}
    path = os.path.join(folder, "syscalls.probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        lock = struct.pack("hhqqi", fcntl.F_RDLCK, 0, 1 << 30, 1, 0)
        unlock = struct.pack("hhqqi", fcntl.F_UNLCK, 0, 0, 0, 0)

        def pair() -> None:
            fcntl.fcntl(fd, fcntl.F_SETLK, lock)
            fcntl.fcntl(fd, fcntl.F_SETLK, unlock)

        def best(fn: Callable[[], object]) -> float:
            return min(timeit.repeat(fn, number=5000, repeat=3)) / 5000 * 1e6

        return {"fstat_us": best(lambda: os.fstat(fd)), "fcntl_lock_unlock_us": best(pair)}
    except OSError:
        return {}
    finally:
        os.close(fd)
        os.remove(path)


def fmt_us(value: float | None) -> str:
    """Microseconds with about three significant digits."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_rate(value: float) -> str:
    """Operations per second with about three significant digits."""
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _width(key: str) -> int:
    """Column width: the usual cell, wider when a heading word would not fit (better-sqlite3)."""
    return max(_CELL, max(len(word) for word in _HEADS[key]) + 2)


def _speedup(result: TrialResult, base: str, key: str) -> float | None:
    """Speed-up of ``key`` against ``base``: median per-repeat ratio when both were interleaved.

    better-sqlite3 ran in its own process, so its repeats pair with nothing: ratio of medians.
    """
    if NODE_KEY not in (base, key):
        return result.ratio(base, key)
    slower, faster = result.median(base), result.median(key)
    return slower / faster if slower is not None and faster else None


def _cells(result: TrialResult, keys: list[str], rows: dict[str, str]) -> tuple[list[str], list[str]]:
    times: list[str] = []
    ratios: list[str] = []
    for key in keys:
        median = result.median(key)
        if median is None:
            times.append("n/a" if key in result.skipped else "—")
            ratios.append("")
            continue
        spread = result.spread(key)
        times.append(fmt_us(median) + (f" ±{spread / 2:.0%}" if spread is not None else ""))
        base = result.baseline(rows[key])
        if result.trial.kind == "prepare" or base not in result.samples:
            ratios.append("")
        elif base == key:
            ratios.append("1 (base)")
        else:
            ratio = _speedup(result, base, key)
            ratios.append(f"{ratio:.2f}x" if ratio is not None else "")
    return times, ratios


def _head(keys: list[str], first: str, second: str) -> list[str]:
    lines = []
    for row, label in enumerate((first, second, "")):
        lines.append(label.ljust(_LABEL_WIDTH) + "".join(_HEADS[k][row].rjust(_width(k)) for k in keys))
    return lines


def results_table(results: Results) -> str:
    """The main table: µs per operation and speed-up against stdlib sqlite3, per trial."""
    keys = results.keys()
    rows = {c.key: c.rows for c in results.contenders}
    lines = _head(keys, "", f"{'trial':<{_LABEL_WIDTH - _UNIT_WIDTH}}{'µs per':>{_UNIT_WIDTH}}")
    lines.append("-" * len(lines[0]))
    for result in results.trials.values():
        times, ratios = _cells(result, keys, rows)
        label = f"{result.title:<{_LABEL_WIDTH - _UNIT_WIDTH}}{result.trial.unit:>{_UNIT_WIDTH}}"
        lines.append(label + "".join(t.rjust(_width(k)) for t, k in zip(times, keys)))
        if any(ratios):
            lines.append(
                "  speed-up vs sqlite3".ljust(_LABEL_WIDTH)
                + "".join(r.rjust(_width(k)) for r, k in zip(ratios, keys))
            )
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    """The same figures as a Markdown table (µs per operation, speed-up vs sqlite3)."""
    keys = results.keys()
    rows = {c.key: c.rows for c in results.contenders}
    head = "| trial (µs per) | " + " | ".join(" ".join(w for w in _HEADS[k] if w) for k in keys) + " |"
    lines = [head, "|---|" + "---:|" * len(keys)]
    for result in results.trials.values():
        times, ratios = _cells(result, keys, rows)
        cells = [f"{t} µs" + (f" ({r})" if r and r != "1 (base)" else "") for t, r in zip(times, ratios)]
        cells = [c.replace("n/a µs", "n/a").replace("— µs", "—") for c in cells]
        lines.append(f"| {result.title} ({result.trial.unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(results: Results) -> str:
    """Peak memory of the full scan, per contender, in MB (10^6 bytes)."""
    keys = [k for k in results.keys() if k in results.memory]
    if not keys:
        return ""
    rows_label = f"{results.settings.scan_rows:,}"
    lines = [
        f"Peak memory of iterate over {rows_label} rows, in MB (10^6 bytes); a fresh process per contender",
        *_head(keys, "", ""),
    ]
    for field, label in (
        ("rss_warm_bytes", "RSS growth, warm page cache"),
        ("rss_cold_bytes", "RSS growth, cold page cache"),
        ("python_heap_bytes", "Python heap peak (tracemalloc)"),
    ):
        cells = []
        for key in keys:
            value = results.memory[key].get(field)
            cells.append("n/a" if value is None else f"{value / MB:.2f}")
        lines.append(label.ljust(_LABEL_WIDTH) + "".join(c.rjust(_width(k)) for c, k in zip(cells, keys)))
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One speed or memory target; ``measure`` reads the results of its section (trials: ``Results``)."""

    text: str
    limit: float
    at_most: bool  # True: value <= limit; False: value >= limit
    unit: str
    measure: Callable[[Any], tuple[float | None, str]]

    def judge(self, results: Any) -> tuple[str, float | None, str]:
        value, detail = self.measure(results)
        if value is None:
            return "not measured", None, detail
        met = value <= self.limit if self.at_most else value >= self.limit
        return ("met" if met else "NOT MET"), value, detail


def _ratio(
    trial: str, slower: str, faster: str, context: str | None = None
) -> Callable[[Results], tuple[float | None, str]]:
    """Median per-repeat ratio of two contenders in ``trial``; ``context`` adds the same ratio there."""

    def measure(results: Results) -> tuple[float | None, str]:
        result = results.trials.get(trial)
        if result is None:
            return None, f"trial {trial!r} not run"
        value = result.ratio(slower, faster)
        a, b = result.median(slower), result.median(faster)
        if value is None or a is None or b is None:
            return None, f"needs {slower} and {faster}"
        detail = f"{slower} {fmt_us(a)} µs vs {faster} {fmt_us(b)} µs"
        other = results.trials.get(context) if context else None
        inside = other.ratio(slower, faster) if other else None
        if inside is not None:
            detail += f"; inside a read transaction, without the per-call locking system calls: {inside:.2f}x"
        return value, detail

    return measure


def _prepare_time(results: Results) -> tuple[float | None, str]:
    result = results.trials.get("prepare")
    value = result.median("appdb") if result else None
    if value is None:
        return None, "needs appdb (compiled) and the prepare trial"
    return value, "median per call, loop overhead included"


def _scan_memory(results: Results) -> tuple[float | None, str]:
    memory = results.memory.get("appdb")
    if not memory or memory.get("rss_warm_bytes") is None:
        return None, "needs appdb (compiled), the scan trial and Linux /proc"
    heap = memory["python_heap_bytes"] / MB
    cold = memory["rss_cold_bytes"] / MB
    detail = (
        f"RSS growth over {results.settings.scan_rows:,} rows with a warm page cache; "
        f"Python heap peak {heap:.1f} MB; cold-cache RSS growth {cold:.1f} MB (SQLite page cache)"
    )
    return memory["rss_warm_bytes"] / MB, detail


def _versus_better_sqlite3(results: Results) -> tuple[float | None, str]:
    """Slowest appdb (compiled) / better-sqlite3 ratio of medians over the trials both ran."""
    if NODE_KEY in results.unavailable:
        return None, f"needs better-sqlite3 12: `{ENABLE}`"
    ratios: dict[str, float] = {}
    for key, result in results.trials.items():
        a, b = result.median("appdb"), result.median(NODE_KEY)
        if a is not None and b:
            ratios[key] = a / b
    if not ratios:
        return None, "needs appdb (compiled) and better-sqlite3 in the same trials"
    listed = ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items())
    return max(ratios.values()), f"appdb/better-sqlite3, ratio of medians, not interleaved: {listed}"


# The native hot path's targets (issue 10), which tightened issue 4's (get at most
# 1.15x raw APSW, run and run_many 1.15x, get 1.8x and all 2.0x faster than sqlite3).
TARGETS: tuple[Target, ...] = (
    Target("get as dict vs raw APSW tuple: at most", 0.95, True, "x", _ratio("get", "appdb", "apsw")),
    Target(
        "get as dict, faster than sqlite3 dicts: at least",
        2.2,
        False,
        "x",
        _ratio("get", "sqlite3-dict", "appdb", "get_in_read_txn"),
    ),
    Target(
        "get inside a read transaction vs raw APSW tuple: at most",
        0.9,
        True,
        "x",
        _ratio("get_in_read_txn", "appdb", "apsw"),
    ),
    Target("all 100 dicts vs raw APSW tuples: at most", 1.0, True, "x", _ratio("all", "appdb", "apsw")),
    Target(
        "all 100 dicts, faster than sqlite3 dicts: at least",
        2.5,
        False,
        "x",
        _ratio("all", "sqlite3-dict", "appdb"),
    ),
    Target(
        "iterate dicts vs APSW tuples, per row: at most", 1.0, True, "x", _ratio("iterate", "appdb", "apsw")
    ),
    Target(
        "run in a transaction vs raw APSW: at most", 1.0, True, "x", _ratio("insert_in_txn", "appdb", "apsw")
    ),
    Target("run_many vs raw APSW: at most", 1.0, True, "x", _ratio("run_many", "appdb", "apsw")),
    Target("prepare of a cached statement: at most", 0.15, True, " µs", _prepare_time),
    Target(
        "get, compiled faster than pure Python: at least",
        1.3,
        False,
        "x",
        _ratio("get", "appdb-py", "appdb", "get_in_read_txn"),
    ),
    Target(
        "all, compiled faster than pure Python: at least", 1.3, False, "x", _ratio("all", "appdb-py", "appdb")
    ),
    Target("full-scan iterate, peak memory growth: below", 20.0, True, " MB", _scan_memory),
    Target(
        "appdb faster than better-sqlite3 on every trial, slowest appdb/better-sqlite3: at most",
        1.0,
        True,
        "x",
        _versus_better_sqlite3,
    ),
)


def verdicts(results: Results) -> tuple[list[str], list[dict[str, Any]]]:
    """One line per target of the compiled path, and the same as records for the JSON file."""
    return judge(TARGETS, results)


def judge(targets: tuple[Target, ...], results: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """One verdict line per target, and the same as records for the JSON file."""
    lines: list[str] = []
    records: list[dict[str, Any]] = []
    for target in targets:
        verdict, value, detail = target.judge(results)
        shown = (
            "—"
            if value is None
            else f"{value:.3f}{target.unit}"
            if target.unit == " µs"
            else (f"{value:.2f}{target.unit}")
        )
        limit = f"{target.limit}{target.unit}"
        lines.append(f"[{verdict:^12}] {target.text} {limit}: measured {shown}  ({detail})")
        records.append(
            {
                "target": f"{target.text} {limit}",
                "verdict": verdict,
                "value": value,
                "limit": target.limit,
                "detail": detail,
            }
        )
    return lines, records


def to_json(
    results: Results | None,
    machine: dict[str, str],
    records: list[dict[str, Any]],
    seconds: float,
    concurrency: dict[str, Any] | None = None,
) -> str:
    """All figures: every sample, medians, spreads, ratios, memory, verdicts; each section run."""
    document: dict[str, Any] = {"machine": machine, "duration_seconds": round(seconds, 1)}
    if results is not None:
        document.update(_trials_document(results, records))
    if concurrency is not None:
        document["concurrency"] = concurrency
    return json.dumps(document, indent=2)


def _trials_document(results: Results, records: list[dict[str, Any]]) -> dict[str, Any]:
    trials = []
    rows = {c.key: c.rows for c in results.contenders}
    for result in results.trials.values():
        per: dict[str, Any] = {}
        for key, samples in result.samples.items():
            base = result.baseline(rows[key])
            kind = result.trial.kind
            other = "cpu" if results.settings.clock == "wall" else "wall"
            per[key] = {
                "samples_us": samples,
                f"{other}_samples_us": result.other_clock.get(key),
                "median_us": result.median(key),
                "iqr_fraction": result.spread(key),
                "baseline": base if kind != "prepare" else None,
                "speedup_vs_baseline": _speedup(result, base, key) if kind != "prepare" else None,
            }
        trials.append(
            {
                "key": result.trial.key,
                "title": result.title,
                "detail": result.trial.detail,
                "unit": result.trial.unit,
                "ops_per_batch": result.ops_per_batch,
                "results": per,
                "skipped": result.skipped,
            }
        )
    return {
        "settings": vars(results.settings),
        "contenders": [
            {
                "key": c.key,
                "label": c.label,
                "rows": c.rows,
                "sqlite_version": c.sqlite_version,
                "about": c.describe(),
            }
            for c in results.contenders
        ],
        "unavailable": results.unavailable,
        "trials": trials,
        "memory_bytes": results.memory,
        "targets": records,
    }


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def plot(results: Results, path: str) -> None:
    """Bar chart of the speed-up against stdlib sqlite3, per trial and contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = results.keys()
    rows = {c.key: c.rows for c in results.contenders}
    trials = [r for r in results.trials.values() if r.trial.kind != "prepare"]
    width = 0.8 / max(1, len(keys))
    figure, axes = plt.subplots(figsize=(12, 5.5))
    for index, key in enumerate(keys):
        values = []
        for result in trials:
            ratio = _speedup(result, result.baseline(rows[key]), key) if key in result.samples else None
            values.append(ratio or 0.0)
        positions = [t + (index - (len(keys) - 1) / 2) * width for t in range(len(trials))]
        axes.bar(positions, values, width, label=" ".join(w for w in _HEADS[key] if w))
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(trials)))
    axes.set_xticklabels([r.title for r in trials], rotation=25, ha="right", fontsize=8)
    axes.set_ylabel("speed-up vs stdlib sqlite3 (same row type; higher is faster)")
    axes.set_title("appdb benchmarks: median of interleaved repeats")
    # Beside the bars, not over the last trial's.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
