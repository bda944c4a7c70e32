"""The ``types`` section: what ``appdb.types`` costs, and what it does not.

``init_database(path, types=appdb.types.standard())`` adapts parameters through
APSW's ``Connection.convert_binding`` hook (called only for values SQLite cannot
store natively) and converts result columns by declared type through a
per-statement row converter that exists only when a column has a converter. The
claim checked here (the types issue): no cost without ``types``, and none for
native values and columns with it. So, for both twins (compiled and pure Python):

- ``get_native``, ``insert_native``: a table of INTEGER, TEXT and REAL columns,
  ``types=None`` against ``types=standard()``; the ratio should be 1.00;
- ``get_typed``: a row whose DATE, DATETIME and JSON columns are converted, against
  the same row read as text without types; ``get_date``: one DATE column, with
  stdlib ``sqlite3`` (``detect_types=PARSE_DECLTYPES`` and its default, deprecated
  date converter, against the same read without) as a reference point;
- ``insert_typed``: binding an aware ``datetime``, a ``date`` and a ``Decimal``
  through the adapters, against binding the same values pre-formatted as text
  without types.

Every variant is a contender of ``bench_measure``'s loop (its own copy of one WAL
template file, calibrated batches, variants interleaved and rotated in every
repeat, medians); ratios and differences are medians of per-repeat values, so the
two sides of a ratio always ran side by side.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import os
import sqlite3
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from bench_contenders import AppdbContender, Contender, Op, Sqlite3Contender
from bench_measure import Settings, Trial, TrialResult, run_trial
from bench_report import Target, fmt_us, judge
from bench_workload import SMALL_ROWS, fresh_copy, new_template, pragma_statements

__all__ = [
    "TYPES_TRIALS",
    "TypesResults",
    "run_types",
    "types_markdown",
    "types_table",
    "types_verdicts",
]

SQL_GET_NATIVE = "SELECT * FROM native WHERE id = ?"
SQL_INSERT_NATIVE = "INSERT INTO native_w (i, t, r) VALUES (?, ?, ?)"
SQL_GET_TYPED = "SELECT * FROM typed WHERE id = ?"
SQL_GET_DATE = "SELECT id, day FROM typed WHERE id = ?"
SQL_INSERT_TYPED = "INSERT INTO typed_w (at, day, price) VALUES (?, ?, ?)"

NATIVE_ROW: tuple[int, str, float] = (0x7FFFFFFF, "this is the text", 1 / 3)
AT = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
DAY = dt.date(2024, 1, 2)
DOC_TEXT = '{"tags":["a","é"],"n":1,"ok":true}'
#: Bound through the adapters (types=standard()) ...
TYPED_VALUES: tuple[Any, ...] = (AT, DAY, decimal.Decimal("12.34"))
#: ... and the same values, formatted once outside the loop, bound as text without types.
TEXT_VALUES: tuple[str, ...] = (AT.isoformat(), DAY.isoformat(), "12.34")

_SCHEMA = """
CREATE TABLE native (id INTEGER PRIMARY KEY, i INTEGER, t TEXT, r REAL);
CREATE TABLE native_w (id INTEGER PRIMARY KEY, i INTEGER, t TEXT, r REAL);
CREATE TABLE typed (id INTEGER PRIMARY KEY, day DATE, at DATETIME, doc JSON);
CREATE TABLE typed_w (id INTEGER PRIMARY KEY, at DATETIME, day DATE, price DECIMAL);
CREATE TABLE probe (x);
"""

TYPES_TRIALS: tuple[Trial, ...] = (
    Trial(
        "get_native",
        "get: INTEGER, TEXT, REAL columns",
        f"{SQL_GET_NATIVE}; types=None vs types=standard()",
        "call",
        "read",
        "ids",
    ),
    Trial(
        "insert_native",
        "run in txn: int, str, float",
        f"{SQL_INSERT_NATIVE} inside one transaction; types=None vs types=standard()",
        "insert",
        "write",
        "count",
    ),
    Trial(
        "get_typed",
        "get: DATE, DATETIME, JSON",
        f"{SQL_GET_TYPED}; the three columns as text without types vs converted with standard()",
        "call",
        "read",
        "ids",
    ),
    Trial(
        "get_date",
        "get: one DATE column",
        f"{SQL_GET_DATE}; text without types vs a date with them (stdlib: PARSE_DECLTYPES)",
        "call",
        "read",
        "ids",
    ),
    Trial(
        "insert_typed",
        "run in txn: datetime, date, Decimal",
        f"{SQL_INSERT_TYPED} inside one transaction; pre-formatted text without types vs adapted",
        "insert",
        "write",
        "count",
    ),
)

#: The table's groups: (heading, variant without types, variant with them).
TWINS: tuple[tuple[str, str, str], ...] = (
    ("compiled", "appdb", "appdb+types"),
    ("pure Python", "appdb-py", "appdb-py+types"),
)
#: stdlib sqlite3's reference pair (get_date only).
STDLIB = ("stdlib sqlite3, tuples", "sqlite3", "sqlite3+decltypes")


def build_types_template(path: str) -> None:
    """The section's template database: ``native`` and ``typed`` of ``SMALL_ROWS`` rows each, WAL."""
    conn = new_template(path)
    try:
        with conn:
            conn.execute(_SCHEMA)
            cursor = conn.cursor()
            native = "INSERT INTO native (i, t, r) VALUES (?, ?, ?)"
            cursor.executemany(native, repeat(NATIVE_ROW, SMALL_ROWS))
            typed_row = (DAY.isoformat(), AT.isoformat(), DOC_TEXT)  # what standard() stores
            typed = "INSERT INTO typed (day, at, doc) VALUES (?, ?, ?)"
            cursor.executemany(typed, repeat(typed_row, SMALL_ROWS))
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()


class AppdbTypesVariant(AppdbContender):
    """appdb on one twin, with ``types=standard()`` or without types (dict rows, public API)."""

    def __init__(self, twin: str, typed: bool) -> None:
        super().__init__(twin)
        self.typed = typed
        if typed:
            self.key += "+types"
            self.label += ", types=standard()"
        else:
            self.label += ", types=None"

    def open(self, path: str) -> None:
        import appdb
        from appdb import _select
        from appdb.types import standard

        name = "cython" if self.module.__name__ == "appdb._fastcache" else "python"
        with _select.using(name):
            self.db = appdb.init_database(path, types=standard() if self.typed else None)
        actual = type(self.db.prepare("SELECT 1")).__module__
        if actual != self.twin:
            raise RuntimeError(f"{self.label} runs on {actual}, expected {self.twin}")
        if (self.db.types is not None) != self.typed:
            raise RuntimeError(f"{self.label}: the database's types are {self.db.types!r}")

    def describe(self) -> str:
        return super().describe() + ("; types=standard()" if self.typed else "; no types")

    def _get(self, sql: str, ids: list[int]) -> Op:
        get = self.db.prepare(sql).get

        def op() -> None:
            for rowid in ids:
                get(rowid)

        return op

    def _insert(self, sql: str, values: tuple[Any, ...], n: int) -> Op:
        run = self.db.prepare(sql).run
        transaction = self.db.transaction

        def op() -> None:
            with transaction():
                for _ in repeat(None, n):
                    run(values)

        return op

    def get_native(self, ids: list[int]) -> Op:
        return self._get(SQL_GET_NATIVE, ids)

    def insert_native(self, n: int) -> Op:
        return self._insert(SQL_INSERT_NATIVE, NATIVE_ROW, n)

    def get_typed(self, ids: list[int]) -> Op:
        return self._get(SQL_GET_TYPED, ids)

    def get_date(self, ids: list[int]) -> Op:
        return self._get(SQL_GET_DATE, ids)

    def insert_typed(self, n: int) -> Op:
        return self._insert(SQL_INSERT_TYPED, TYPED_VALUES if self.typed else TEXT_VALUES, n)

    def check(self) -> str | None:
        """Why this variant would not measure what it claims (values of the wrong type), or None."""
        row = self.db.prepare(SQL_GET_TYPED).get(1)
        wanted: tuple[type, ...] = (dt.date, dt.datetime, dict) if self.typed else (str, str, str)
        got = tuple(type(row[name]) for name in ("day", "at", "doc"))
        if got != wanted:
            return f"{self.label} reads day, at, doc as {got}, expected {wanted}"
        return None


class Sqlite3TypesVariant(Sqlite3Contender):
    """stdlib ``sqlite3`` (tuples), with ``detect_types=PARSE_DECLTYPES`` or without, for ``get_date``.

    With it, the DATE column goes through the converter ``sqlite3`` registers by
    default (deprecated since Python 3.12, where each call warns: the batches run
    with DeprecationWarning ignored, the warning's cost included).
    """

    writes = False

    def __init__(self, decltypes: bool) -> None:
        super().__init__(dicts=False)
        self.decltypes = decltypes
        self.writes = False
        if decltypes:
            self.key = "sqlite3+decltypes"
            self.label = "sqlite3, PARSE_DECLTYPES"

    def open(self, path: str) -> None:
        self.path = path
        detect = sqlite3.PARSE_DECLTYPES if self.decltypes else 0
        self.conn = conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, detect_types=detect
        )
        for statement in pragma_statements():
            conn.execute(statement).fetchall()
        self.cursor = conn.cursor()

    def get_date(self, ids: list[int]) -> Op:
        execute = self.cursor.execute

        def op() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                for rowid in ids:
                    execute(SQL_GET_DATE, (rowid,)).fetchone()

        return op

    def check(self) -> str | None:
        """Why the stdlib reference cannot be measured (no default DATE converter), or None."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            row = self._conn().execute(SQL_GET_DATE, (1,)).fetchone()
        wanted = dt.date if self.decltypes else str
        if type(row[1]) is not wanted:
            return (
                f"{self.label} reads DATE as {type(row[1]).__name__}, not {wanted.__name__} "
                "(this Python's sqlite3 has no default date converter)"
            )
        return None


#: Which variants take part in which trial (a trial measures exactly these, interleaved).
_APPDB_KEYS = ("appdb", "appdb+types", "appdb-py", "appdb-py+types")
PARTICIPANTS: dict[str, tuple[str, ...]] = {
    "get_native": _APPDB_KEYS,
    "insert_native": _APPDB_KEYS,
    "get_typed": _APPDB_KEYS,
    "get_date": (*_APPDB_KEYS, "sqlite3", "sqlite3+decltypes"),
    "insert_typed": _APPDB_KEYS,
}


@dataclass
class TypesResults:
    """Everything the section measured."""

    settings: Settings
    variants: Sequence[Contender]
    unavailable: dict[str, str]
    trials: dict[str, TrialResult] = field(default_factory=dict)
    seconds: float = 0.0

    def delta(self, trial: str, base: str, other: str) -> float | None:
        """Median over repeats of time(other) - time(base), µs: what ``other`` adds per operation."""
        result = self.trials.get(trial)
        a = result.samples.get(base) if result else None
        b = result.samples.get(other) if result else None
        if not a or not b:
            return None
        return statistics.median(y - x for x, y in zip(a, b))

    def other_clock_ratio(self, trial: str, base: str, other: str) -> float | None:
        """``TrialResult.ratio`` on the clock not chosen (wall time: this thread's CPU time)."""
        result = self.trials.get(trial)
        a = result.other_clock.get(base) if result else None
        b = result.other_clock.get(other) if result else None
        if not a or not b:
            return None
        return statistics.median(y / x for x, y in zip(a, b))

    def to_dict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The section's JSON object: every sample, medians, spreads, ratios, differences, verdicts."""
        trials = []
        other_clock = "cpu" if self.settings.clock == "wall" else "wall"
        for result in self.trials.values():
            per = {
                key: {
                    "samples_us": samples,
                    f"{other_clock}_samples_us": result.other_clock.get(key),
                    "median_us": result.median(key),
                    "iqr_fraction": result.spread(key),
                }
                for key, samples in result.samples.items()
            }
            pairs = []
            for heading, base, other in _pairs(result.trial.key):
                if base in result.samples and other in result.samples:
                    pairs.append(
                        {
                            "group": heading,
                            "without": base,
                            "with": other,
                            "ratio": result.ratio(other, base),
                            "other_clock_ratio": self.other_clock_ratio(result.trial.key, base, other),
                            "delta_us": self.delta(result.trial.key, base, other),
                        }
                    )
            trials.append(
                {
                    "key": result.trial.key,
                    "title": result.title,
                    "detail": result.trial.detail,
                    "unit": result.trial.unit,
                    "ops_per_batch": result.ops_per_batch,
                    "results": per,
                    "comparisons": pairs,
                    "skipped": result.skipped,
                }
            )
        return {
            "settings": vars(self.settings),
            "variants": [{"key": v.key, "label": v.label, "about": v.describe()} for v in self.variants],
            "unavailable": self.unavailable,
            "trials": trials,
            "targets": records,
            "duration_seconds": round(self.seconds, 1),
        }


def _pairs(trial: str) -> tuple[tuple[str, str, str], ...]:
    return (*TWINS, STDLIB) if trial == "get_date" else TWINS


Variant = AppdbTypesVariant | Sqlite3TypesVariant


def _make_variants() -> tuple[list[Variant], dict[str, str]]:
    variants: list[Variant] = []
    unavailable: dict[str, str] = {}
    for twin in ("appdb._fastcache", "appdb._fastcache_py"):
        for typed in (False, True):
            try:
                variants.append(AppdbTypesVariant(twin, typed))
            except ImportError as exc:
                key = ("appdb" if twin == "appdb._fastcache" else "appdb-py") + ("+types" if typed else "")
                unavailable[key] = f"the compiled extension cannot be imported ({exc})"
    variants += [Sqlite3TypesVariant(decltypes=False), Sqlite3TypesVariant(decltypes=True)]
    return variants, unavailable


def run_types(settings: Settings, folder: str, log: Callable[[str], None]) -> TypesResults:
    """Build the template, open every variant on its own copy, run the trials, close."""
    started = time.perf_counter()
    importlib.import_module("appdb.types")  # fails loudly on an appdb without types
    variants, unavailable = _make_variants()
    template = os.path.join(folder, "types-template.db")
    build_types_template(template)
    opened: list[Variant] = []
    results = TypesResults(settings, opened, unavailable)
    try:
        for variant in variants:
            variant.open(fresh_copy(template, os.path.join(folder, f"types-{variant.key}.db")))
            opened.append(variant)
            problem = variant.check()
            if problem is None:
                continue
            if isinstance(variant, Sqlite3TypesVariant):  # a reference only: skip it
                unavailable[variant.key] = problem
                opened.remove(variant)
                variant.close()
            else:
                raise RuntimeError(problem)
        if "sqlite3+decltypes" in unavailable:  # the plain stdlib variant has nothing to compare with
            for variant in [v for v in opened if v.key == "sqlite3"]:
                unavailable[variant.key] = "skipped with sqlite3+decltypes"
                opened.remove(variant)
                variant.close()
        for number, trial in enumerate(TYPES_TRIALS, 1):
            begun = time.perf_counter()
            taking_part: list[Contender] = [v for v in opened if v.key in PARTICIPANTS[trial.key]]
            results.trials[trial.key] = run_trial(trial, taking_part, settings)
            log(f"[types {number}/{len(TYPES_TRIALS)}] {trial.title}: {time.perf_counter() - begun:.1f} s")
    finally:
        for variant in opened:
            variant.close()
    results.seconds = time.perf_counter() - started
    return results


# -- report ----------------------------------------------------------------------------------
_LABEL = 42
_WIDTHS = (11, 11, 8, 8)  # no types, types, ratio, +µs
_GROUP = ("no types", "types", "ratio", "+µs")


def _group_cells(results: TypesResults, result: TrialResult, base: str, other: str) -> list[str]:
    if base not in result.samples or other not in result.samples:
        return ["n/a", "n/a", "", ""]
    cells = []
    for key in (base, other):
        spread = result.spread(key)
        cells.append(fmt_us(result.median(key)) + (f" ±{spread / 2:.0%}" if spread is not None else ""))
    ratio = result.ratio(other, base)
    delta = results.delta(result.trial.key, base, other)
    cells.append(f"{ratio:.2f}x" if ratio is not None else "")
    cells.append(f"{delta:+.2f}" if delta is not None else "")
    return cells


def _lines(results: TypesResults) -> list[tuple[str, str, list[list[str]]]]:
    """(label, unit, cells per group) for every line of the table."""
    lines = []
    for result in results.trials.values():
        groups = [_group_cells(results, result, base, other) for _, base, other in TWINS]
        lines.append((result.title, result.trial.unit, groups))
        if result.trial.key == "get_date" and any(k.startswith("sqlite3") for k in result.samples):
            heading, base, other = STDLIB
            cells = _group_cells(results, result, base, other)
            lines.append((f"  reference: {heading}", result.trial.unit, [cells]))
    return lines


def types_table(results: TypesResults) -> str:
    """µs per operation without and with types, their ratio and difference, for both twins."""
    width = sum(_WIDTHS)
    head1 = " " * _LABEL + "".join(f"{heading:^{width}}" for heading, _, _ in TWINS)
    group = "".join(c.rjust(w) for c, w in zip(_GROUP, _WIDTHS))
    head2 = f"{'trial':<{_LABEL - 8}}{'µs per':>8}" + group * len(TWINS)
    out = [head1, head2, "-" * len(head2)]
    for label, unit, groups in _lines(results):
        text = f"{label:<{_LABEL - 8}}{unit:>8}"
        for cells in groups:
            text += "".join(c.rjust(w) for c, w in zip(cells, _WIDTHS))
        out.append(text)
    return "\n".join(out)


def types_markdown(results: TypesResults) -> str:
    """The same figures as a Markdown table."""
    head = "| types trial (µs per) | " + " | ".join(
        f"{heading}: {c}" for heading, _, _ in TWINS for c in _GROUP
    )
    lines = [head + " |", "|---|" + "---:|" * (len(_GROUP) * len(TWINS))]
    for label, unit, groups in _lines(results):
        cells = [c for group in groups for c in group]
        cells += [""] * (len(_GROUP) * len(TWINS) - len(cells))
        lines.append(f"| {label.strip()} ({unit}) | " + " | ".join(cells) + " |")
    if any(label.startswith("  reference") for label, _, _ in _lines(results)):
        lines += [
            "",
            "Reference row: stdlib sqlite3 (tuple rows) without and with `detect_types=PARSE_DECLTYPES`"
            " (its default date converter), in the first four columns; only its +µs compares with appdb's.",
        ]
    return "\n".join(lines)


def _ratio(trial: str, base: str, other: str) -> Callable[[TypesResults], tuple[float | None, str]]:
    def measure(results: TypesResults) -> tuple[float | None, str]:
        result = results.trials.get(trial)
        if result is None:
            return None, f"trial {trial!r} not run"
        value = result.ratio(other, base)
        a, b = result.median(base), result.median(other)
        delta = results.delta(trial, base, other)
        if value is None or a is None or b is None or delta is None:
            return None, f"needs {base} and {other}"
        detail = f"{base} {fmt_us(a)} µs vs {other} {fmt_us(b)} µs, {delta:+.3f} µs per {result.trial.unit}"
        second = results.other_clock_ratio(trial, base, other)
        if second is not None:
            clock = "CPU time" if results.settings.clock == "wall" else "wall time"
            detail += f"; {clock}: {second:.2f}x"
        return value, detail

    return measure


_NATIVE_TRIALS = (("get_native", "get of native columns"), ("insert_native", "run in txn of native values"))
TYPES_TARGETS: tuple[Target, ...] = tuple(
    Target(
        f"{what}, types=standard() vs types=None, {heading}: at most",
        1.05,
        True,
        "x",
        _ratio(trial, base, other),
    )
    for trial, what in _NATIVE_TRIALS
    for heading, base, other in TWINS
)


def types_verdicts(results: TypesResults) -> tuple[list[str], list[dict[str, Any]]]:
    """One line per target of the types section (native values and columns never pay)."""
    return judge(TYPES_TARGETS, results)


NOTES = """\
How to read: µs per operation, median of {repeats} repeats; in every repeat all the variants of a
trial run one batch each, in a rotating order, each on its own copy of one WAL database file.
"ratio" is the median of the per-repeat ratios with types / without (1.00: no cost), "+µs" the
median of the per-repeat differences: what types add per operation. appdb returns dict rows.
No types: the two native trials run types=None; get DATE, DATETIME, JSON and get one DATE column
read the same columns as text; run in txn: datetime, date, Decimal binds the same values
pre-formatted as text (formatted once, outside the loop). Types: types=standard(), the values
converted (date, aware datetime, dict) or adapted (ISO 8601 text, decimal text).
stdlib sqlite3 (tuples): without vs with detect_types=PARSE_DECLTYPES and its default date
converter (deprecated since Python 3.12), on its own SQLite {stdlib}; only its +µs compares."""
