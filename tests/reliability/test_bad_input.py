"""Bad input: each gives a clear error naming the problem, and changes nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest
from reliability_support import open_with, twin_modules

import appdb
from conftest import open_snapshots


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_db(path: Path, rows: int = 2000) -> None:
    with appdb.init_database(path) as db:
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
        db.prepare("INSERT INTO t (value) VALUES (?)").run_many([(os.urandom(500),) for _ in range(rows)])
        db.checkpoint("truncate")


def companions(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_not_a_database(impl: ModuleType, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_text("name,score\nann,3\n" * 200)
    before = digest(db_path)
    with pytest.raises(appdb.DatabaseOpenError, match="not a SQLite database") as info:
        appdb.init_database(db_path)
    assert str(db_path) in str(info.value)
    assert digest(db_path) == before
    assert companions(db_path) == []


@pytest.mark.parametrize("damage", ["truncated", "header", "schema-page"])
def test_damaged_database_refused(impl: ModuleType, db_path: Path, damage: str) -> None:
    db_path.parent.mkdir(parents=True)
    make_db(db_path)
    with open(db_path, "r+b") as handle:
        if damage == "truncated":
            handle.truncate(db_path.stat().st_size // 3)
        elif damage == "header":
            handle.write(b"SQLite format 2\x00")
        else:  # the b-tree of page 1 (sqlite_schema), after the 100-byte file header
            handle.seek(100)
            handle.write(b"\xde\xad\xbe\xef" * 200)
    before = digest(db_path)
    with pytest.raises(appdb.DatabaseOpenError, match="not a SQLite database or is corrupted") as info:
        appdb.init_database(db_path)
    assert str(db_path) in str(info.value)
    assert digest(db_path) == before
    with pytest.raises(appdb.DatabaseOpenError):
        appdb.init_database(db_path, readonly=True)
    assert digest(db_path) == before


def test_corrupted_table_page_surfaces_as_corrupt_error(impl: ModuleType, db_path: Path) -> None:
    """Damage past the schema is found when read (a full check at open would cost O(size))."""
    db_path.parent.mkdir(parents=True)
    make_db(db_path)
    with open(db_path, "r+b") as handle:
        handle.seek(4096 * 40)
        handle.write(b"\xff" * 4096 * 4)
    with appdb.init_database(db_path) as db:
        with pytest.raises(apsw.CorruptError):
            db.prepare("SELECT sum(length(value)) FROM t").scalar()
        try:
            assert db.pragma("quick_check") != "ok"
        except apsw.CorruptError:
            pass
        assert not db.in_transaction


@pytest.mark.parametrize("event", ["deleted", "replaced", "overwritten"])
def test_is_healthy_notices_the_file_going_bad(impl: ModuleType, db_path: Path, event: str) -> None:
    db_path.parent.mkdir(parents=True)
    make_db(db_path, rows=10)
    db = appdb.init_database(db_path)
    assert db.is_healthy()
    if event == "deleted":
        db_path.unlink()
    elif event == "replaced":
        spare = db_path.with_name("spare.db")
        shutil.copy(db_path, spare)
        os.replace(spare, db_path)  # the connection still writes to the old, now unlinked, file
    else:
        with open(db_path, "r+b") as handle:
            handle.write(b"\x00" * 4096)
    assert db.is_healthy() is False
    db.close()
    assert db.is_healthy() is False


def test_directory_path(impl: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(appdb.DatabaseOpenError, match="is a directory") as info:
        appdb.init_database(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "where", ["/proc/appdb-missing/data/app.db", "/sys/appdb-missing/app.db", "{file}/sub/app.db"]
)
def test_missing_read_only_location(impl: ModuleType, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    path = where.format(file=blocker)
    with pytest.raises(appdb.DatabaseOpenError, match="cannot create the directory") as info:
        appdb.init_database(path)
    assert path in str(info.value)
    assert blocker.read_text() == "x"


def test_readonly_missing_file_is_not_created(impl: ModuleType, db_path: Path) -> None:
    with pytest.raises(appdb.DatabaseOpenError, match="does not exist"):
        appdb.init_database(db_path, readonly=True)
    assert not db_path.exists() and not db_path.parent.exists()


def test_readonly_never_modifies_the_file(impl: ModuleType, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    make_db(db_path, rows=50)
    before = digest(db_path)
    with appdb.init_database(db_path, readonly=True) as db:
        for sql in ("INSERT INTO t (value) VALUES (x'00')", "DELETE FROM t", "CREATE TABLE u (x)"):
            with pytest.raises(apsw.ReadOnlyError):
                db.exec(sql)
        with pytest.raises(apsw.ReadOnlyError):
            with db.transaction():
                db.prepare("DELETE FROM t").run()
        assert db.prepare("SELECT count(*) FROM t").scalar() == 50
        assert db.is_healthy()
    assert digest(db_path) == before


# -- options that reach SQL text ----------------------------------------------------------


class EvilInt(int):
    def __str__(self) -> str:
        return "1; CREATE TABLE pwned (x)"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return str(self)


class EvilStr(str):
    def __format__(self, spec: str) -> str:
        return "ON; CREATE TABLE pwned (x)"

    def __str__(self) -> str:
        return "ON; CREATE TABLE pwned (x)"

    def lower(self) -> str:  # type: ignore[override]
        return "foreign_keys; CREATE TABLE pwned (x)"


INJECTIONS: list[tuple[Any, Any]] = [
    ("journal_mode", "WAL; DROP TABLE canary"),
    ("journal_mode", "WAL'; DROP TABLE canary; --"),
    ("user_version", "1; DROP TABLE canary"),
    ("user_version", "1 OR 1=1"),
    ("user_version", 1.5),
    ("user_version", b"1"),
    ("user_version", EvilInt(1)),
    ("foreign_keys", EvilStr("ON")),
    ("user_version; DROP TABLE canary", 1),
    ("main.user_version; DROP TABLE canary; --", 1),
    ("x; DROP TABLE canary; --.user_version", 1),
    ("temp_store=MEMORY; DROP TABLE canary", None),
    ("no_such_pragma", 1),
    (EvilStr("user_version"), 1),
    ("", 1),
    (None, 1),
]


def tables(db: appdb.AppDatabase) -> list[str]:
    return [row["name"] for row in db.prepare("SELECT name FROM sqlite_schema ORDER BY name").all()]


@pytest.mark.parametrize(("name", "value"), INJECTIONS, ids=[repr(i) for i in range(len(INJECTIONS))])
def test_pragma_injection_refused(impl: ModuleType, db: appdb.AppDatabase, name: Any, value: Any) -> None:
    db.exec("CREATE TABLE canary (x); INSERT INTO canary VALUES (1)")
    expected_error: type[Exception] = appdb.InvalidPragmaError
    if isinstance(value, (EvilInt, EvilStr)) or isinstance(name, EvilStr):
        # subclasses of int/str carry valid data; only that data may reach the SQL
        db.pragma(name, value)
    else:
        with pytest.raises(expected_error) as info:
            db.pragma(name, value)
        assert isinstance(info.value, ValueError)
        if isinstance(name, str) and name:
            assert repr(name) in str(info.value) or repr(value) in str(info.value)
    assert tables(db) == ["canary"]
    assert db.prepare("SELECT count(*) FROM canary").scalar() == 1


@pytest.mark.parametrize(("name", "value"), INJECTIONS, ids=[repr(i) for i in range(len(INJECTIONS))])
def test_pragma_injection_at_open(impl: ModuleType, db_path: Path, name: Any, value: Any) -> None:
    options = {name: value} if value is not None else {name: "x; DROP TABLE canary"}
    if isinstance(value, (EvilInt, EvilStr)) or isinstance(name, EvilStr):
        with appdb.init_database(db_path, pragmas=options) as db:
            assert tables(db) == []
        return
    with pytest.raises(appdb.InvalidPragmaError):
        appdb.init_database(db_path, pragmas=options)
    assert not db_path.exists()  # validated before anything is created


def test_other_options_reaching_sql_are_validated(impl: ModuleType, db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE canary (x); INSERT INTO canary VALUES (1)")
    with pytest.raises(ValueError, match="transaction mode"):
        db.transaction(mode="immediate; DROP TABLE canary")
    with pytest.raises(ValueError, match="checkpoint mode"):
        db.checkpoint("truncate); DROP TABLE canary; --")
    with pytest.raises(ValueError, match="row_type"):
        db.prepare("SELECT 1", row_type="dict; DROP TABLE canary")
    # savepoint names are generated, never taken from input: deep nesting stays valid
    with db.transaction():
        with db.transaction():
            with db.transaction(mode="exclusive"):
                db.prepare("INSERT INTO canary VALUES (?)").run("'); DROP TABLE canary; --")
    # values are bound, never spliced into SQL
    hostile = "x'); DROP TABLE canary; --"
    assert db.prepare("SELECT ? AS v").get(hostile) == {"v": hostile}
    assert db.prepare("SELECT x FROM canary ORDER BY rowid").all() == [
        {"x": 1},
        {"x": "'); DROP TABLE canary; --"},
    ]
    with pytest.raises(ValueError, match="exactly one SQL statement"):
        db.prepare("SELECT 1; DROP TABLE canary")
    assert tables(db) == ["canary"]


# -- bindings and closed databases, identical on both twins -----------------------------


def _outcome(call: Any) -> tuple[str, str]:
    try:
        return ("ok", repr(call()))
    except Exception as exc:
        return (type(exc).__qualname__, str(exc))


BINDING_CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("SELECT ? AS a, ? AS b", (1,), {}),
    ("SELECT ? AS a, ? AS b", (1, 2, 3), {}),
    ("SELECT ?", (), {}),
    ("SELECT :a, :b", (), {"a": 1}),
    ("SELECT :a", (), {"a": 1, "zz": 2}),
    ("SELECT :a", ({"a": 1, "zz": 2},), {}),
    ("SELECT :a", (1,), {"a": 1}),
    ("SELECT ?", (object(),), {}),
    ("SELECT ? AS a, ? AS b", (1, {1, 2}), {}),
    ("SELECT :a", (), {"a": [1]}),
    ("SELECT ?", (2**63,), {}),
    ("SELECT ?", (-(2**63) - 1,), {}),
    ("SELECT ?", ("\ud800",), {}),
    ("SELECT ?", (1,), {}),
]


def run_binding_cases(module: ModuleType, tmp_path: Path) -> list[list[tuple[str, str]]]:
    db = open_with(module, tmp_path / f"{module.__name__}.db")
    results = []
    with db:
        for sql, params, named in BINDING_CASES:
            statement = db.prepare(sql)
            results.append(
                [
                    _outcome(lambda s=statement, p=params, n=named: s.get(*p, **n)),
                    _outcome(lambda s=statement, p=params, n=named: s.all(*p, **n)),
                    _outcome(lambda s=statement, p=params, n=named: list(s.iterate(*p, **n))),
                    _outcome(lambda s=statement, p=params, n=named: s.run(*p, **n)),
                ]
            )
            assert open_snapshots(db) == 0
        results.append([_outcome(lambda: db.prepare(42)), _outcome(lambda: db.prepare(""))])  # type: ignore[arg-type]
        results.append([_outcome(lambda: db.prepare("SELEC 1")), _outcome(lambda: db.exec(42))])  # type: ignore[arg-type]
        results.append([_outcome(lambda: db.prepare("INSERT INTO nope VALUES (1)"))])
        results.append(
            [
                _outcome(lambda: db.prepare(EvilStr("SELECT 1 AS a")).get()),
                _outcome(lambda: db.prepare(["SELECT 1"])),  # type: ignore[arg-type]
                _outcome(lambda: db.prepare(b"SELECT 1")),  # type: ignore[arg-type]
            ]
        )
    return results


def test_wrong_bindings_same_errors_on_both_twins(tmp_path: Path) -> None:
    outcomes = {name: run_binding_cases(module, tmp_path) for name, module in twin_modules().items()}
    reference = outcomes["python"]
    for result in reference[: len(BINDING_CASES)]:
        assert result[0][0] in ("BindingsError", "TypeError", "OverflowError", "UnicodeEncodeError", "ok")
    assert [r[0][0] for r in reference[:9]] == ["BindingsError"] * 7 + ["TypeError"] * 2
    assert "parameter 1" in reference[7][0][1] and "parameter 2" in reference[8][0][1]
    assert ":b" in reference[3][0][1] and "'zz'" in reference[4][0][1]
    for name, result in outcomes.items():
        assert result == reference, f"{name} twin differs from the python twin"


def test_closed_database_says_so_everywhere(impl: ModuleType, db_path: Path) -> None:
    db = appdb.init_database(db_path)
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)")
    statement = db.prepare("SELECT x FROM t")
    rows = statement.iterate()
    assert next(rows) == {"x": 1}
    db.close()
    db.close()  # idempotent
    calls = [
        lambda: db.prepare("SELECT 1"),
        lambda: db.exec("SELECT 1"),
        lambda: db.transaction().__enter__(),
        lambda: db.transaction(lambda d: None),
        lambda: db.pragma("user_version"),
        lambda: db.checkpoint(),
        lambda: db.backup(db_path.with_name("copy.db")),
        lambda: db.get_schema_version(),
        lambda: db.connection,
        statement.get,
        statement.all,
        statement.scalar,
        statement.run,
        lambda: statement.run_many([()]),
        lambda: list(statement.iterate()),
        lambda: next(rows),
    ]
    for call in calls:
        with pytest.raises(appdb.DatabaseClosedError, match="the database is closed"):
            call()
    assert db.is_healthy() is False
    assert db.closed and not db.in_transaction
    assert not db_path.with_name("copy.db").exists()
