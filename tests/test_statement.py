"""Statements: cache identity, row shapes, bindings, reset behaviour, errors."""

from __future__ import annotations

import gc

import apsw
import pytest

import appdb
from conftest import open_snapshots


def test_prepare_returns_the_same_statement(small: appdb.AppDatabase) -> None:
    sql = "SELECT * FROM t WHERE id = ?"
    first = small.prepare(sql)
    assert small.prepare(sql) is first
    assert small.prepare(sql, row_type="tuple") is not first
    assert small.prepare(sql, row_type="tuple") is small.prepare(sql, row_type="tuple")
    assert small.prepare(sql, row_type="dict") is first  # the default row type shares the entry
    stats = small.statement_cache_stats()
    assert stats.hits == 4 and stats.misses == 2 and stats.size == 2 and stats.capacity == 256


def test_lru_eviction(impl: object, tmp_path: object) -> None:
    with appdb.init_database(":memory:", statement_cache_size=3) as db:
        a = db.prepare("SELECT 1")
        b = db.prepare("SELECT 2")
        db.prepare("SELECT 3")
        assert db.prepare("SELECT 1") is a  # refreshes 1: 2 is now the oldest
        db.prepare("SELECT 4")  # evicts 2
        stats = db.statement_cache_stats()
        assert (stats.size, stats.evictions) == (3, 1)
        assert db.prepare("SELECT 1") is a
        assert db.prepare("SELECT 2") is not b  # was evicted, compiled again
        assert b.scalar() == 2  # an evicted statement keeps working
        assert db.statement_cache_stats().evictions == 2


def test_cache_size_zero_disables_caching(impl: object) -> None:
    with appdb.init_database(":memory:", statement_cache_size=0) as db:
        assert db.prepare("SELECT 1") is not db.prepare("SELECT 1")
        assert db.statement_cache_stats().size == 0


def test_get_all_iterate_scalar(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT id, name, score FROM t WHERE id >= ? ORDER BY id")
    assert stmt.get(4) == {"id": 4, "name": "d", "score": 4.0}
    assert stmt.get(99) is None
    assert stmt.all(4) == [{"id": 4, "name": "d", "score": 4.0}, {"id": 5, "name": "e", "score": 5.0}]
    assert stmt.all(99) == []
    assert [row["name"] for row in stmt.iterate(2)] == ["b", "c", "d", "e"]
    assert small.prepare("SELECT count(*) FROM t").scalar() == 5
    assert small.prepare("SELECT score FROM t WHERE id = 3").scalar() is None
    assert small.prepare("SELECT name FROM t WHERE id = 99").scalar() is None
    tuples = small.prepare("SELECT id, name FROM t ORDER BY id", row_type="tuple")
    assert tuples.get() == (1, "a")
    assert tuples.all()[-1] == (5, "e")
    assert list(tuples.iterate())[1] == (2, "b")


def test_properties(small: appdb.AppDatabase) -> None:
    select = small.prepare("SELECT id AS key, name FROM t WHERE id = :id")
    assert select.sql == "SELECT id AS key, name FROM t WHERE id = :id"
    assert select.columns == ("key", "name")  # known without executing
    assert select.readonly is True
    insert = small.prepare("INSERT INTO t (name) VALUES (?)")
    assert insert.columns == ()
    assert insert.readonly is False
    assert small.prepare("INSERT INTO t (name) VALUES (?) RETURNING id").columns == ("id",)


def test_run_and_run_many(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (name, score) VALUES (?, ?)")
    assert insert.run("f", 6.0) == appdb.RunResult(changes=1, last_insert_rowid=6)
    result = insert.run_many([("g", 7.0), ["h", 8.0], {"1": "ignored"} if False else ("i", None)])
    assert result == appdb.RunResult(changes=3, last_insert_rowid=9)
    update = small.prepare("UPDATE t SET score = 0 WHERE id > ?")
    assert update.run(5).changes == 4
    assert small.prepare("DELETE FROM t WHERE id = ?").run_many([1, 2, 99]).changes == 2
    returning = small.prepare("INSERT INTO t (name) VALUES (?) RETURNING id")
    assert returning.run("z") == appdb.RunResult(1, 10)
    assert open_snapshots(small) == 0


def test_run_many_is_atomic_outside_a_transaction(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (id, name) VALUES (?, ?)")
    with pytest.raises(apsw.ConstraintError):
        insert.run_many([(10, "x"), (11, "y"), (1, "duplicate id")])
    assert small.prepare("SELECT count(*) FROM t").scalar() == 5
    assert not small.in_transaction


def test_run_many_inside_a_transaction_joins_it(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (name) VALUES (?)")
    with pytest.raises(RuntimeError):
        with small.transaction():
            insert.run_many([("x",), ("y",)])
            raise RuntimeError("undo")
    assert small.prepare("SELECT count(*) FROM t").scalar() == 5


def test_positional_bindings(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT name FROM t WHERE id = ? OR id = ?2 ORDER BY id", row_type="tuple")
    assert stmt.all(1, 2) == [("a",), ("b",)]
    assert stmt.all((1, 2)) == [("a",), ("b",)]
    assert stmt.all([1, 2]) == [("a",), ("b",)]


@pytest.mark.parametrize("prefix", [":", "@", "$"])
def test_named_bindings(small: appdb.AppDatabase, prefix: str) -> None:
    stmt = small.prepare(f"SELECT name FROM t WHERE id = {prefix}id AND name = {prefix}name")
    assert stmt.get(id=2, name="b") == {"name": "b"}
    assert stmt.get({"id": 2, "name": "b"}) == {"name": "b"}
    assert stmt.get({"id": 2, "name": "x"}) is None


def test_too_few_and_too_many_values(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t WHERE id = ? AND name = ?")
    with pytest.raises(apsw.BindingsError, match="takes 2 parameter"):
        stmt.get(1)
    with pytest.raises(apsw.BindingsError, match="takes 2 parameter"):
        stmt.all(1, "a", 3)
    with pytest.raises(apsw.BindingsError):
        small.prepare("SELECT 1").get(1)
    assert stmt.get(1, "a") is not None  # the statement still works afterwards


def test_missing_extra_and_mixed_named_values(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t WHERE id = :id AND name = :name")
    with pytest.raises(apsw.BindingsError, match=":name"):
        stmt.get(id=1)
    with pytest.raises(apsw.BindingsError, match=":name"):
        stmt.get({"id": 1})
    with pytest.raises(apsw.BindingsError, match="'nme'"):
        stmt.get(id=1, nme="a")
    with pytest.raises(apsw.BindingsError, match="'extra'"):
        stmt.get(id=1, name="a", extra=2)
    with pytest.raises(apsw.BindingsError, match="either positional or named"):
        stmt.get(1, name="a")
    with pytest.raises(apsw.BindingsError, match="'extra'"):
        stmt.run_many([{"id": 1, "name": "a", "extra": 1}])
    assert stmt.get(id=1, name="a") == {"id": 1, "name": "a", "score": 1.5}


def test_unsupported_value_type_names_the_parameter(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t WHERE id = :id AND name = :name")
    with pytest.raises(TypeError, match=r"parameter :name") as info:
        stmt.get(id=1, name={"a"})
    assert "set" in str(info.value)
    with pytest.raises(TypeError, match="parameter 2"):
        small.prepare("SELECT ? AS a, ? AS b").get(1, object())


def test_no_statement_left_active(small: appdb.AppDatabase) -> None:
    many = small.prepare("SELECT * FROM t ORDER BY id")
    assert many.get() is not None
    assert open_snapshots(small) == 0
    assert many.scalar() == 1
    assert open_snapshots(small) == 0
    assert len(many.all()) == 5
    assert open_snapshots(small) == 0
    small.prepare("INSERT INTO t (name) VALUES (?) RETURNING id").run("q")
    assert open_snapshots(small) == 0


def test_iterate_resets_on_break_close_and_collection(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t ORDER BY id")
    for _row in stmt.iterate():
        assert open_snapshots(small) == 1
        break
    gc.collect()
    assert open_snapshots(small) == 0
    rows = stmt.iterate()
    next(rows)
    rows.close()
    assert open_snapshots(small) == 0
    assert list(rows) == []
    with stmt.iterate() as rows:
        next(rows)
    assert open_snapshots(small) == 0
    rows = stmt.iterate()
    next(rows)
    del rows
    gc.collect()
    assert open_snapshots(small) == 0
    assert len(list(stmt.iterate())) == 5
    assert open_snapshots(small) == 0


def test_same_statement_inside_its_own_iterate(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT id FROM t WHERE id >= ? ORDER BY id", row_type="tuple")
    pairs = []
    for (outer,) in stmt.iterate(4):
        for (inner,) in stmt.iterate(outer):
            pairs.append((outer, inner, stmt.get(inner), len(stmt.all(inner))))
    assert pairs == [(4, 4, (4,), 2), (4, 5, (5,), 1), (5, 5, (5,), 1)]


def test_writes_while_iterating(small: appdb.AppDatabase) -> None:
    update = small.prepare("UPDATE t SET score = ? WHERE id = ?")
    for row in small.prepare("SELECT id FROM t ORDER BY id").iterate():
        update.run(row["id"] * 10, row["id"])
    assert small.prepare("SELECT sum(score) FROM t").scalar() == 150


def test_columns_follow_schema_changes(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t WHERE id = 1")
    assert stmt.get() == {"id": 1, "name": "a", "score": 1.5}
    small.exec("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'x'")
    assert stmt.get() == {"id": 1, "name": "a", "score": 1.5, "extra": "x"}
    assert stmt.all()[0]["extra"] == "x"
    assert stmt.columns == ("id", "name", "score", "extra")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("", "no statement"),
        ("  -- only a comment\n", "no statement"),
        ("SELECT 1; SELECT 2", "exactly one SQL statement"),
    ],
)
def test_prepare_rejects_non_single_statements(db: appdb.AppDatabase, sql: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        db.prepare(sql)


def test_prepare_accepts_trailing_semicolon_and_comment(db: appdb.AppDatabase) -> None:
    assert db.prepare("SELECT 1 AS one; -- trailing\n").get() == {"one": 1}


def test_sql_errors_surface_as_apsw_errors(db: appdb.AppDatabase) -> None:
    with pytest.raises(apsw.SQLError, match="no such table"):
        db.prepare("SELECT * FROM missing")
    with pytest.raises(TypeError):
        db.prepare(b"SELECT 1")  # type: ignore[arg-type]


def test_constraint_error_leaves_statement_usable(small: appdb.AppDatabase) -> None:
    insert = small.prepare("INSERT INTO t (id, name) VALUES (?, ?)")
    with pytest.raises(apsw.ConstraintError):
        insert.run(1, "dup")
    assert insert.run(100, "ok").last_insert_rowid == 100
    assert open_snapshots(small) == 0


def test_closed_database(small: appdb.AppDatabase) -> None:
    stmt = small.prepare("SELECT * FROM t")
    rows = stmt.iterate()
    next(rows)
    small.close()
    small.close()  # idempotent
    for call in (
        stmt.get,
        stmt.all,
        stmt.scalar,
        stmt.run,
        stmt.iterate,
        lambda: stmt.run_many([()]),
        lambda: next(rows),
        lambda: small.prepare("SELECT 1"),
        lambda: small.exec("SELECT 1"),
        lambda: small.transaction(lambda d: None),
        small.get_schema_version,
        small.checkpoint,
        lambda: small.pragma("user_version"),
        lambda: small.connection,
        small.statement_cache_stats,
        small.__enter__,
    ):
        with pytest.raises(appdb.DatabaseClosedError, match="closed"):
            call()
    assert small.closed and not small.is_healthy() and not small.in_transaction
