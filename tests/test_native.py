"""The compiled twin's native path behaves exactly like APSW's cursors (the pure-Python twin).

Every test here runs against both twins: values, errors and their attributes must
be the same whether SQLite is reached through its C API or through APSW's cursor.
The native path's own switches (``appdb.NATIVE``, ``APPDB_NO_NATIVE``) are checked
in child processes, the way users set them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from decimal import Decimal
from types import ModuleType
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import appdb
import appdb.types
from appdb import _select
from conftest import impl_name

COMPILED_BUILT = not _select.NO_EXTENSIONS


def test_native_is_on_for_the_compiled_twin_unless_switched_off(impl: ModuleType) -> None:
    if impl_name(impl) == "python":
        assert impl.NATIVE is False
        assert impl.NATIVE_STATUS.startswith("off:")
        return
    if os.environ.get("APPDB_NO_NATIVE", "") not in ("", "0"):
        assert impl.NATIVE is False
        assert "APPDB_NO_NATIVE" in impl.NATIVE_STATUS
        return
    # A build whose native path silently fell back would pass every other test: fail here.
    assert impl.NATIVE is True, impl.NATIVE_STATUS
    assert impl.NATIVE_STATUS.startswith("on:")
    assert apsw.sqlite_lib_version() in impl.NATIVE_STATUS


@pytest.mark.skipif(not COMPILED_BUILT, reason="the compiled twin is not built here")
@pytest.mark.parametrize("value", ["1", ""])
def test_app_no_native_switches_to_apsw_cursors(value: str) -> None:
    env = _select.environment("cython")
    env["APPDB_NO_NATIVE"] = value
    code = (
        "import appdb; db = appdb.init_database(':memory:');"
        "answer = db.prepare('SELECT 40 + ?').scalar(2);"
        "print(appdb.IMPLEMENTATION, appdb.NATIVE, answer, appdb.NATIVE_STATUS)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    implementation, native, answer, status = done.stdout.split(" ", 3)
    assert (implementation, answer) == ("cython", "42")
    if value == "1":
        assert native == "False"
        assert "APPDB_NO_NATIVE" in status
    else:
        assert native == "True", status


# -- values: every type APSW binds, both ways -------------------------------------------
VALUES: list[Any] = [
    None,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    True,
    False,
    0.0,
    -0.0,
    1.5,
    1e308,
    math.inf,
    -math.inf,
    "",
    "text",
    "é ü 漢字 🙂",
    "nul\x00inside",
    b"",
    b"\x00\xff",
    bytearray(b"ba"),
    memoryview(b"mv"),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_bindable_value_round_trips(db: appdb.AppDatabase, value: Any) -> None:
    echo = db.prepare("SELECT ? AS v")
    expected = bytes(value) if isinstance(value, (bytearray, memoryview)) else value
    got = echo.scalar(value)
    assert got == expected and type(got) is type(expected if not isinstance(value, bool) else int(value))
    assert echo.get(value) == {"v": expected}
    assert echo.all(value) == [{"v": expected}]
    assert list(echo.iterate(value)) == [{"v": expected}]
    named = db.prepare("SELECT :v AS v")
    assert named.scalar({"v": value}) == expected
    db.exec("CREATE TABLE IF NOT EXISTS box (v)")
    db.prepare("INSERT INTO box VALUES (?)").run_many([(value,), (value,)])
    assert db.prepare("SELECT v FROM box").all() == [{"v": expected}] * 2
    db.exec("DELETE FROM box")


def test_nan_reads_back_as_nan(db: appdb.AppDatabase) -> None:
    # SQLite stores a bound NaN as NULL
    assert db.prepare("SELECT ?").scalar(math.nan) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row=st.tuples(
        st.none() | st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
    )
)
def test_rows_round_trip(db: appdb.AppDatabase, row: tuple[Any, ...]) -> None:
    db.exec("CREATE TABLE IF NOT EXISTS rt (a, b, c, d)")
    result = db.prepare("INSERT INTO rt VALUES (?, ?, ?, ?) RETURNING *", row_type="tuple").get(*row)
    assert result == row
    assert (
        db.prepare("SELECT * FROM rt WHERE rowid = ?", row_type="tuple").get(
            db.prepare("SELECT max(rowid) FROM rt").scalar()
        )
        == row
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (2**63, OverflowError),
        ("\ud800", UnicodeEncodeError),
        (object(), TypeError),
        ({1, 2}, TypeError),
    ],
    ids=["int past 64 bits", "lone surrogate", "object", "set"],
)
def test_values_apsw_refuses_raise_its_errors(db: appdb.AppDatabase, value: Any, error: type) -> None:
    echo = db.prepare("SELECT ?")
    with pytest.raises(error):
        echo.scalar(value)
    with pytest.raises(error):
        echo.get(value)
    assert echo.scalar(7) == 7  # still usable, nothing half-bound left behind


def test_adapted_values_go_through_the_type_map(impl: ModuleType, tmp_path: Any) -> None:
    with appdb.init_database(tmp_path / "t.db", types=appdb.types.standard()) as db:
        db.exec("CREATE TABLE m (d DECIMAL TEXT)")
        db.prepare("INSERT INTO m VALUES (?)").run(Decimal("1.10"))
        db.prepare("INSERT INTO m VALUES (?)").run_many([(Decimal("2.5"),), (3,)])
        assert db.prepare("SELECT d FROM m").all() == [
            {"d": Decimal("1.10")},
            {"d": Decimal("2.5")},
            {"d": Decimal("3")},
        ]


# -- errors: the same class, message and attributes as APSW's ----------------------------
def _error_fields(exc: BaseException) -> tuple[Any, ...]:
    return (
        type(exc),
        exc.args,
        getattr(exc, "result", None),
        getattr(exc, "extendedresult", None),
        getattr(exc, "error_offset", None),
    )


def _apsw_error(sql: str, setup: str, *values: Any) -> tuple[Any, ...]:
    connection = apsw.Connection(":memory:")
    connection.execute(setup)
    with pytest.raises(apsw.Error) as caught:
        connection.execute(sql, values).fetchall()
    return _error_fields(caught.value)


SETUP = (
    "CREATE TABLE u (id INTEGER PRIMARY KEY, x TEXT NOT NULL UNIQUE CHECK (x <> 'bad'));"
    "INSERT INTO u VALUES (1, 'a')"
)


@pytest.mark.parametrize(
    ("sql", "values"),
    [
        ("INSERT INTO u VALUES (?, 'b')", (1,)),
        ("INSERT INTO u VALUES (2, ?)", ("a",)),
        ("INSERT INTO u VALUES (3, ?)", (None,)),
        ("INSERT INTO u VALUES (4, ?)", ("bad",)),
        ("SELECT abs(?)", (-(2**63),)),
        ("SELECT json(?)", ("{",)),
        ("INSERT INTO u VALUES (5, 'c') RETURNING x / 0, json('[')", ()),
    ],
    ids=["primary key", "unique", "not null", "check", "integer overflow", "malformed json", "returning"],
)
def test_sqlite_errors_match_apsw(db: appdb.AppDatabase, sql: str, values: tuple[Any, ...]) -> None:
    db.exec(SETUP)
    expected = _apsw_error(sql, SETUP, *values)
    statement = db.prepare(sql)
    for call in (
        statement.run,
        statement.get,
        statement.all,
        statement.scalar,
        lambda *v: list(statement.iterate(*v)),
    ):
        with pytest.raises(apsw.Error) as caught:
            call(*values)
        assert _error_fields(caught.value) == expected
    with pytest.raises(apsw.Error) as caught:
        statement.run_many([values])
    assert type(caught.value) is expected[0]
    assert db.prepare("SELECT count(*) FROM u").scalar() == 1  # nothing half-done


def test_an_exception_from_a_sql_function_propagates_unchanged(impl: ModuleType, tmp_path: Any) -> None:
    class Boom(Exception):
        pass

    def boom(x: int) -> int:
        if x == 3:
            raise Boom(f"boom at {x}")
        return x

    def on_connect(connection: apsw.Connection) -> None:
        connection.create_scalar_function("boom", boom, 1)

    with appdb.init_database(tmp_path / "f.db", on_connect=on_connect) as db:
        db.exec("CREATE TABLE n (x); INSERT INTO n VALUES (1), (2), (3), (4)")
        statement = db.prepare("SELECT boom(x) AS b FROM n ORDER BY x")
        for call in (statement.all, lambda: list(statement.iterate())):
            with pytest.raises(Boom, match="boom at 3"):
                call()
        assert db.prepare("SELECT boom(x) FROM n WHERE x < 3 ORDER BY x").all() == [
            {"boom(x)": 1},
            {"boom(x)": 2},
        ]
        with db.transaction():
            with pytest.raises(Boom):
                db.prepare("INSERT INTO n SELECT boom(x) FROM n").run()
        assert db.prepare("SELECT count(*) FROM n").scalar() == 4


def test_schema_change_under_a_cached_statement(impl: ModuleType, tmp_path: Any) -> None:
    """``SELECT *`` re-prepared by SQLite after another connection adds a column: rows follow."""
    path = tmp_path / "s.db"
    with appdb.init_database(path) as db:
        db.exec("CREATE TABLE s (a); INSERT INTO s VALUES (1)")
        star = db.prepare("SELECT * FROM s")
        assert star.get() == {"a": 1}
        other = apsw.Connection(str(path))
        other.execute("ALTER TABLE s ADD COLUMN b DEFAULT 2")
        other.close()
        assert star.get() == {"a": 1, "b": 2}
        assert star.all() == [{"a": 1, "b": 2}]
        assert list(star.iterate()) == [{"a": 1, "b": 2}]
