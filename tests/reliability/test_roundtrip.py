"""Property-based round trips of every bindable value through both twins, with identical results."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import open_with, twin_modules

import appdb

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
EDGE_INTS = st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 2**32, 2**53 + 1, 2**63 - 1, -(2**63)])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308, 2.0**63]
)
TEXT = st.text() | st.sampled_from(
    ["", "\x00", "a\x00b", "日本語", "😀" * 100, "\u202e", "'; DROP TABLE t; --"]
)
BLOBS = (
    st.binary(max_size=4096)
    | st.sampled_from([b"", b"\x00" * 10])
    | st.integers(0, 3).map(
        lambda n: bytes(range(256)) * (4096 * (n + 1))  # up to 4 MiB
    )
)
VALUES = st.none() | INT64 | EDGE_INTS | FLOATS | TEXT | BLOBS | st.booleans()


def expected(value: Any) -> Any:
    """What SQLite gives back: NaN is stored as NULL, a bool as its integer."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool):
        return int(value)
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # -0.0 keeps its sign
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, appdb.AppDatabase]]:
    folder: Path = tmp_path_factory.mktemp("roundtrip")
    databases = {}
    for name, module in twin_modules().items():
        db = open_with(module, folder / f"{name}.db")
        db.exec("CREATE TABLE v (id INTEGER PRIMARY KEY, x, typed_real REAL, typed_text TEXT)")
        databases[name] = db
        tuple_db = open_with(module, folder / f"{name}.db", row_type="tuple")
        databases[f"{name}-tuple"] = tuple_db
    yield databases
    for db in databases.values():
        db.close()


def roundtrip(db: appdb.AppDatabase, values: list[Any]) -> list[Any]:
    """Write through run/run_many/named bindings, read back through every read method."""
    insert = db.prepare("INSERT INTO v (x) VALUES (?)")
    named = db.prepare("INSERT INTO v (x) VALUES (:x)")
    with db.transaction():
        db.prepare("DELETE FROM v").run()
        ids = [insert.run(values[0]).last_insert_rowid] if values else []
        if len(values) > 1:
            insert.run_many([(v,) for v in values[1:]])
    read = db.prepare("SELECT x FROM v ORDER BY id")
    rows = read.all()
    iterated = list(read.iterate())
    assert rows == iterated or all(r != r for r in rows)  # NaN-free after storage, so equal
    out = [row["x"] if isinstance(row, dict) else row[0] for row in rows]
    first = db.prepare("SELECT x FROM v WHERE id = ?")
    if ids:
        got = first.scalar(ids[0])
        assert same(got, out[0])
    # the value as a bound parameter read straight back, positional and named
    direct = [db.prepare("SELECT ? AS x").scalar(v) for v in values[:5]]
    via_name = [db.prepare("SELECT :x AS x").scalar(x=v) for v in values[:5]]
    with db.transaction():
        db.prepare("DELETE FROM v").run()
        for v in values[:5]:
            named.run({"x": v})
    stored_named = db.prepare("SELECT x FROM v ORDER BY id").all()
    return [out, direct, via_name, stored_named]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(values=st.lists(VALUES, min_size=1, max_size=8))
def test_every_bindable_value_round_trips_identically(
    twins: dict[str, appdb.AppDatabase], values: list[Any]
) -> None:
    results = {name: roundtrip(db, values) for name, db in twins.items()}
    stored = results["python"][0]
    assert len(stored) == len(values)
    for value, back in zip(values, stored):
        assert same(back, expected(value)), (value, back)
    for value, back in zip(values[:5], results["python"][1]):
        assert same(back, expected(value)), (value, back)
    reference = results["python"]
    for name, result in results.items():
        # dict rows and tuple rows differ in shape only; compare the values
        flat = [
            [
                next(iter(r.values())) if isinstance(r, dict) else r[0] if isinstance(r, tuple) else r
                for r in part
            ]
            for part in result
        ]
        ref = [
            [
                next(iter(r.values())) if isinstance(r, dict) else r[0] if isinstance(r, tuple) else r
                for r in part
            ]
            for part in reference
        ]
        assert len(flat) == len(ref)
        for a_part, b_part in zip(flat, ref):
            assert all(same(a, b) for a, b in zip(a_part, b_part)), name


@settings(max_examples=40, deadline=None)
@given(value=st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1))
def test_out_of_range_integers_fail_the_same_way(twins: dict[str, appdb.AppDatabase], value: int) -> None:
    outcomes = set()
    for db in twins.values():
        try:
            db.prepare("SELECT ?").scalar(value)
        except Exception as exc:
            outcomes.add((type(exc).__name__, str(exc)))
        else:
            outcomes.add(("ok", ""))
    assert len(outcomes) == 1 and next(iter(outcomes))[0] == "OverflowError"
