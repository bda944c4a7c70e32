#!/usr/bin/env python3
"""appdb benchmarks: appdb (compiled and pure Python) against raw APSW and stdlib sqlite3.

better-sqlite3 12 (Node) joins the trials when installed (``bench_node``; else the header says how).

    python benchmarks/run.py            # full run (a few minutes), table + verdicts
    python benchmarks/run.py --quick    # CI smoke run, well under a minute
    python benchmarks/run.py --json out.json --plot out.png
    python benchmarks/run.py --section concurrency --quick   # threads and asyncio only (issue 9)
    python benchmarks/run.py --section types          # what appdb.types costs, and what it does not

Trials follow better-sqlite3's published benchmark (a 10,000-row table of null,
integer, real, text and blob columns; WAL; the same pragmas for everyone) plus
appdb's own. Each contender works on its own fresh copy of one database file in
a temporary folder, removed at the end. Contenders are interleaved inside every
repeat; the table shows medians, their spread and the speed-up against stdlib
sqlite3 returning the same row type. A second section (``bench_types``) measures
``appdb.types`` against no types on both twins, a third (``bench_concurrency``)
threads sharing one database and asyncio against aiosqlite. Timing never fails the
run: only errors do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench_concurrency import ConcurrencyResults
    from bench_contenders import Contender
    from bench_measure import Settings
    from bench_report import Results
    from bench_types import TypesResults

HERE = Path(__file__).resolve().parent
SECTIONS = ("all", "trials", "types", "concurrency")


def _ensure_appdb_importable() -> str | None:
    """Import appdb; from a checkout that was not installed, fall back to ``src/``."""
    try:
        import appdb
    except ImportError:
        source = HERE.parent / "src"
        if not (source / "appdb" / "__init__.py").exists():
            raise
        sys.path.insert(0, str(source))
        import appdb  # noqa: F401

        return str(source)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench_measure import TRIALS

    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Benchmark appdb against raw APSW and stdlib sqlite3, and check its speed targets.",
    )
    parser.add_argument("--quick", action="store_true", help="short CI smoke run: small tables, few repeats")
    parser.add_argument(
        "--json", metavar="PATH", help="write every figure (samples, medians, verdicts) as JSON"
    )
    parser.add_argument("--plot", metavar="PATH.png", help="bar chart of the speed-ups (needs matplotlib)")
    parser.add_argument("--markdown", metavar="PATH", help="write the results table as Markdown")
    parser.add_argument(
        "--trials",
        metavar="KEYS",
        help="comma-separated subset of: " + ", ".join(t.key for t in TRIALS),
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default) or this thread's CPU time (steadier on a busy machine)",
    )
    parser.add_argument("--repeats", type=int, metavar="N", help="repeats per trial (default 21, quick 5)")
    parser.add_argument(
        "--section",
        choices=SECTIONS,
        help="what to run: all (default), trials (single-connection trials and memory), types (the cost "
        "of appdb.types, with and without) or concurrency (threads and asyncio, issue 9); "
        "--trials alone implies trials",
    )
    args = parser.parse_args(argv)
    if args.section is None:
        args.section = "trials" if args.trials else "all"
    if args.trials:
        known = {t.key for t in TRIALS}
        wanted = [k.strip() for k in args.trials.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in known]
        if unknown:
            parser.error(f"unknown trial(s): {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        args.trials = wanted
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _settings(args: argparse.Namespace) -> Settings:
    from bench_measure import Settings

    if args.quick:
        settings = Settings(
            quick=True,
            clock=args.clock,
            repeats=5,
            batch_seconds=0.002,
            run_many_rows=10_000,
            scan_rows=100_000,
            scan_repeats=2,
        )
    else:
        settings = Settings(
            quick=False,
            clock=args.clock,
            repeats=21,
            batch_seconds=0.02,
            run_many_rows=100_000,
            scan_rows=1_000_000,
            scan_repeats=5,
        )
    if args.repeats:
        settings.repeats = args.repeats
        settings.scan_repeats = min(settings.scan_repeats, args.repeats)
    return settings


def _make_contenders() -> tuple[list[Contender], dict[str, str]]:
    from bench_contenders import CONTENDER_KEYS, create

    contenders: list[Contender] = []
    unavailable: dict[str, str] = {}
    for key in CONTENDER_KEYS:
        try:
            contenders.append(create(key))
        except ImportError as exc:
            unavailable[key] = (
                f"the compiled extension cannot be imported ({exc}); build it with "
                "`pip install .` or `python setup.py build_ext --inplace`"
            )
    return contenders, unavailable


def _machine_header(machine: dict[str, str], quick: bool, clock: str | None) -> list[str]:
    """What ran where; ``clock`` None: the concurrency section alone (always wall time)."""
    note = " (--quick: small tables, few repeats, short windows; figures indicative only)" if quick else ""
    clock_text = _CLOCKS[clock] if clock else "wall time, windows shared by threads and tasks"
    return [
        "appdb benchmarks" + note,
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}",
        f"python: {machine['python']}; appdb {machine['appdb']}",
        f"clock: {clock_text}; load average before the run: {_load()}",
    ]


def _header(
    machine: dict[str, str], contenders: list[Contender], unavailable: dict[str, str], settings: Settings
) -> str:
    lines = [
        *_machine_header(machine, settings.quick, settings.clock),
        "contenders (each on its own copy of the same database file, same pragmas as appdb's defaults):",
    ]
    for contender in contenders:
        lines.append(f"  {contender.label:<20} {contender.describe()}")
    for key, reason in unavailable.items():
        lines.append(f"  {key:<20} NOT MEASURED: {reason}")
    if os.environ.get("APPDB_NO_EXTENSIONS"):
        lines.append("  note: APPDB_NO_EXTENSIONS is set; both twins are still measured explicitly")
    return "\n".join(lines)


_CLOCKS = {
    "wall": "wall time (time.perf_counter); on a busy machine try --clock cpu",
    "cpu": "this thread's CPU time (time.thread_time), system calls included, waits excluded",
}


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


_NOTES = """\
How to read: µs per operation, median of {repeats} repeats, contenders interleaved in every repeat;
±: half the interquartile range of the repeats, as % of the median. "speed-up vs sqlite3" is the
median of the per-repeat ratios against stdlib sqlite3 returning the same row type (writes: sqlite3);
above 1 is faster. Loop overhead and garbage collection are included for every contender.
Fairness: raw APSW uses one reused cursor and tuples; its `run` equivalent is execute() then
changes() and last_insert_rowid(), what appdb's RunResult carries (sqlite3: rowcount, lastrowid).
No contender keeps a read snapshot open between operations (checked after every trial).
stdlib sqlite3 runs its own, older SQLite ({stdlib}) against APSW's {apsw}: some gaps are the library's."""


def _run(args: argparse.Namespace) -> int:
    from bench_measure import log
    from bench_report import machine_info, markdown_table, matplotlib_available, plot, to_json

    started = time.perf_counter()
    if args.plot and not matplotlib_available():
        log("--plot: matplotlib is not installed, so no chart will be drawn (pip install '.[bench]')")
    machine = machine_info()
    results: Results | None = None
    records: list[dict[str, Any]] = []
    concurrency: ConcurrencyResults | None = None
    concurrency_records: list[dict[str, Any]] = []
    types: TypesResults | None = None
    types_records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="appdb-bench-") as folder:
        if args.section in ("all", "trials"):
            results, records = _run_trials(args, machine, folder)
        elif args.section == "types":
            print("\n".join(_machine_header(machine, args.quick, args.clock)), flush=True)
        else:
            print("\n".join(_machine_header(machine, args.quick, None)), flush=True)
        if args.section in ("all", "types"):
            types, types_records = _run_types(args, machine, folder)
        if args.section in ("all", "concurrency"):
            concurrency, concurrency_records = _run_concurrency(args, machine, folder)
    seconds = time.perf_counter() - started
    print(f"\nTotal time: {seconds:.1f} s", flush=True)
    if args.json:
        document = concurrency.to_dict(concurrency_records) if concurrency else None
        text = to_json(results, machine, records, seconds, document)
        if types is not None:
            full = json.loads(text)
            full["types"] = types.to_dict(types_records)
            text = json.dumps(full, indent=2)
        Path(args.json).write_text(text + "\n")
        log(f"wrote {args.json}")
    if args.markdown:
        from bench_concurrency import concurrency_markdown
        from bench_types import types_markdown

        tables = [markdown_table(results)] if results else []
        tables += [types_markdown(types)] if types else []
        tables += [concurrency_markdown(concurrency)] if concurrency else []
        Path(args.markdown).write_text("\n\n".join(tables) + "\n")
        log(f"wrote {args.markdown}")
    if args.plot and matplotlib_available():
        if results is None:
            log("--plot draws the trials' speed-ups, and no trials ran: no chart")
        else:
            plot(results, args.plot)
            log(f"wrote {args.plot}")
    return 0


def _run_types(
    args: argparse.Namespace, machine: dict[str, str], folder: str
) -> tuple[TypesResults, list[dict[str, Any]]]:
    """The types section: appdb.types against no types, on both twins; print its table and verdicts."""
    from bench_measure import log
    from bench_types import NOTES, run_types, types_table, types_verdicts

    settings = _settings(args)
    if not args.quick and not args.repeats:
        # Ratios near 1.00 are the point here: twice the repeats of half the length (same time),
        # so each per-repeat ratio compares batches closer in time and the median has more of them.
        settings.repeats, settings.batch_seconds = 41, settings.batch_seconds / 2
    log("types section: appdb.types (types=standard()) against no types, compiled and pure Python")
    results = run_types(settings, folder, log)
    lines, records = types_verdicts(results)
    skipped = [f"  {key}: NOT MEASURED: {reason}" for key, reason in results.unavailable.items()]
    report = [
        "",
        "appdb.types: what it costs, and what it does not (µs per operation)",
        *skipped,
        types_table(results),
        "",
        "Targets of appdb.types (native values and columns never pay):",
        *lines,
        "",
        NOTES.format(repeats=settings.repeats, stdlib=machine["stdlib_sqlite"]),
        f"Types section: {results.seconds:.1f} s",
    ]
    print("\n".join(report), flush=True)
    return results, records


def _run_concurrency(
    args: argparse.Namespace, machine: dict[str, str], folder: str
) -> tuple[ConcurrencyResults, list[dict[str, Any]]]:
    """The concurrency section (issue 9): run it, print its table and verdicts."""
    from bench_concurrency import NOTES, concurrency_table, concurrency_verdicts, run_concurrency
    from bench_measure import log

    log("concurrency section: threads sharing one database, a CPU-heavy read, asyncio (issue 9)")
    results = run_concurrency(args.quick, folder, log)
    lines, records = concurrency_verdicts(results)
    report = [
        "",
        concurrency_table(results),
        "",
        "Targets of concurrent use (issue 9):",
        *lines,
        "",
        NOTES.format(cores=machine["cores"], switch=sys.getswitchinterval() * 1000),
        f"Concurrency section: {results.seconds:.1f} s",
    ]
    print("\n".join(report), flush=True)
    return results, records


def _run_trials(
    args: argparse.Namespace, machine: dict[str, str], folder: str
) -> tuple[Results, list[dict[str, Any]]]:
    """The single-connection trials and the memory probe: run them, print their table and verdicts."""
    from bench_measure import TRIALS, TrialResult, log, run_trial
    from bench_memory import measure_all
    from bench_node import NODE_KEY, NOTE, find_better_sqlite3, run_node_trials
    from bench_report import Results, memory_table, results_table, syscall_costs, verdicts
    from bench_workload import build_template, fresh_copy

    settings = _settings(args)
    contenders, unavailable = _make_contenders()
    node, reason = find_better_sqlite3()  # optional, in its own process: never in `contenders`
    if node is None:
        unavailable[NODE_KEY] = reason
    shown = [*contenders, node] if node else contenders
    print(_header(machine, shown, unavailable, settings), flush=True)
    trials = [t for t in TRIALS if not args.trials or t.key in args.trials]
    opened: list[Contender] = []
    costs = syscall_costs(folder)
    if costs:
        machine["syscalls"] = (
            f"fcntl lock+unlock {costs['fcntl_lock_unlock_us']:.2f} µs (SQLite's WAL read lock: one pair "
            f"per autocommit read transaction, for every contender); fstat {costs['fstat_us']:.2f} µs"
        )
        print(f"system calls: {machine['syscalls']}", flush=True)
    template = os.path.join(folder, "template.db")
    log(f"building the template database ({settings.scan_rows:,}-row scan table) in {folder}")
    build_template(template, settings.scan_rows if any(t.key == "scan" for t in trials) else 0)
    paths: dict[str, str] = {}
    try:
        for contender in contenders:
            paths[contender.key] = fresh_copy(template, os.path.join(folder, f"{contender.key}.db"))
            contender.open(paths[contender.key])
            opened.append(contender)
        measured: dict[str, TrialResult] = {}
        for number, trial in enumerate(trials, 1):
            begun = time.perf_counter()
            result = run_trial(trial, opened, settings)
            measured[trial.key] = result
            log(f"[{number}/{len(trials)}] {result.title}: {time.perf_counter() - begun:.1f} s")
        if node is not None:
            begun = time.perf_counter()
            run_node_trials(node, template, folder, measured, settings, log)
            log(f"better-sqlite3: {time.perf_counter() - begun:.1f} s")
        memory: dict[str, dict[str, object]] = {}
        if any(t.key == "scan" for t in trials):
            memory = measure_all(paths, _import_paths(), log)
    finally:
        for contender in opened:
            contender.close()
    results = Results(settings, [*opened, node] if node else opened, unavailable, measured, memory)
    lines, records = verdicts(results)
    memory_lines = memory_table(results)
    report = [
        "",
        results_table(results),
        *(["", memory_lines] if memory_lines else []),
        "",
        "Targets of the compiled path (issues 4 and 10; the native hot path is " + _native_state() + "):",
        *lines,
        "",
        _NOTES.format(repeats=settings.repeats, stdlib=machine["stdlib_sqlite"], apsw=machine["apsw_sqlite"]),
        *([NOTE.format(sqlite=node.sqlite_version)] if node else []),
    ]
    print("\n".join(report), flush=True)
    return results, records


def _native_state() -> str:
    import appdb

    return "on" if appdb.NATIVE else f"{appdb.NATIVE_STATUS}"


def _import_paths() -> list[str]:
    """Where the memory probe's child process finds these modules and appdb."""
    import appdb

    return [str(HERE), os.path.dirname(os.path.dirname(os.path.abspath(appdb.__file__)))]


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run the trials, print the report."""
    sys.path.insert(0, str(HERE))
    source = _ensure_appdb_importable()
    args = parse_args(argv)
    if source:
        print(f"note: appdb is not installed; using the checkout at {source}", file=sys.stderr)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
