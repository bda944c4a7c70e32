"""``appdb.types``: everyday Python values bound and read back, on both implementations."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
from appdb import aio
from appdb.types import TypeMap, declared_type_key, standard

UTC = dt.timezone.utc
AT = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1


SCHEMA = """
CREATE TABLE v (
    id INTEGER PRIMARY KEY,
    at DATETIME, stamp TIMESTAMP, day DATE, clock TIME,
    price DECIMAL(10, 2), exact DECIMAL TEXT,
    u UUID, doc JSON, ok BOOLEAN, color TEXT, plain
)
"""
INSERT = (
    "INSERT INTO v (at, stamp, day, clock, price, exact, u, doc, ok, color, plain) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
VALUES: tuple[Any, ...] = (
    AT,
    AT.astimezone(UTC),
    dt.date(2024, 1, 2),
    dt.time(13, 14, 15, 500),
    decimal.Decimal("12.34"),
    decimal.Decimal("1.100000000000000000000000001"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"tags": ["a", "é"], "n": 1},
    True,
    Color.RED,
    "text",
)
EXPECTED = {
    "id": 1,
    "at": AT,
    "stamp": AT.astimezone(UTC),
    "day": dt.date(2024, 1, 2),
    "clock": dt.time(13, 14, 15, 500),
    "price": decimal.Decimal("12.34"),
    "exact": decimal.Decimal("1.100000000000000000000000001"),
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "doc": {"tags": ["a", "é"], "n": 1},
    "ok": True,
    "color": "red",
    "plain": "text",
}


@pytest.fixture
def typed(impl: ModuleType, db_path: Path) -> Any:
    database = appdb.init_database(db_path, types=standard())
    database.exec(SCHEMA)
    yield database
    database.close()


def test_standard_values_round_trip_as_dicts_and_tuples(typed: appdb.AppDatabase) -> None:
    typed.prepare(INSERT).run(*VALUES)
    assert typed.prepare("SELECT * FROM v").get() == EXPECTED
    assert typed.prepare("SELECT * FROM v").all() == [EXPECTED]
    assert list(typed.prepare("SELECT * FROM v").iterate()) == [EXPECTED]
    assert typed.prepare("SELECT * FROM v", row_type="tuple").get() == tuple(EXPECTED.values())
    assert typed.prepare("SELECT * FROM v", row_type="tuple").all() == [tuple(EXPECTED.values())]
    assert typed.prepare("SELECT day FROM v").scalar() == dt.date(2024, 1, 2)
    with typed.transaction():  # on the writer, as well as on the pool's readers above
        assert typed.prepare("SELECT * FROM v").get() == EXPECTED


def test_stored_values_are_plain_sqlite_values_other_tools_read(typed: appdb.AppDatabase) -> None:
    typed.prepare(INSERT).run(*VALUES)
    raw = apsw.Connection(typed.path)
    try:
        sql = "SELECT at, stamp, day, clock, price, exact, u, doc, ok, color FROM v"
        row = raw.execute(sql).fetchall()[0]
    finally:
        raw.close()
    assert row == (
        "2024-05-06T07:08:09.123456+02:00",
        "2024-05-06T05:08:09.123456+00:00",
        "2024-01-02",
        "13:14:15.000500",
        12.34,  # DECIMAL has NUMERIC affinity: SQLite keeps it as a number
        "1.100000000000000000000000001",  # "DECIMAL TEXT" has TEXT affinity: exact text
        "12345678-1234-5678-1234-567812345678",
        '{"tags":["a","é"],"n":1}',
        1,
        "red",
    )


def test_null_stays_none_and_expressions_are_not_converted(typed: appdb.AppDatabase) -> None:
    typed.prepare("INSERT INTO v (day) VALUES (NULL)").run()
    assert typed.prepare("SELECT day, doc, '2024-01-02' AS text FROM v").get() == {
        "day": None,
        "doc": None,
        "text": "2024-01-02",
    }
    # CAST gives an expression without a declared type: the way to read the raw text
    typed.prepare("UPDATE v SET day = ?").run(dt.date(2020, 2, 3))
    assert typed.prepare("SELECT CAST(day AS TEXT) AS d FROM v").scalar() == "2020-02-03"


def test_naive_datetime_is_refused_and_nothing_is_written(typed: appdb.AppDatabase) -> None:
    insert = typed.prepare("INSERT INTO v (at) VALUES (:at)")
    with pytest.raises(appdb.ConversionError) as info:
        insert.run(at=dt.datetime(2024, 1, 1, 12, 0))
    message = str(info.value)
    assert "parameter :at of statement 'INSERT INTO v (at) VALUES (:at)'" in message
    assert "naive datetime" in message and "timezone" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(appdb.ConversionError):
        typed.prepare("INSERT INTO v (at) VALUES (?)").run_many([(AT,), (dt.datetime(2024, 1, 1),)])
    assert typed.prepare("SELECT count(*) FROM v").scalar() == 0  # the batch is atomic


def test_json_refuses_nan_and_unserialisable_values(typed: appdb.AppDatabase) -> None:
    insert = typed.prepare("INSERT INTO v (doc) VALUES (?)")
    with pytest.raises(appdb.ConversionError, match=r"parameter 1 of statement .*nan.*not JSON compliant"):
        insert.run(({"x": float("nan")},))
    with pytest.raises(appdb.ConversionError, match="not JSON serializable"):
        insert.run(([object()],))
    insert.run(([1, "two", None],))
    assert typed.prepare("SELECT doc FROM v").scalar() == [1, "two", None]


def test_a_value_without_adapter_fails_as_it_does_without_types(
    typed: appdb.AppDatabase, impl: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(TypeError) as with_types:
        typed.prepare("SELECT ?").get(object())
    plain = appdb.init_database(tmp_path / "plain.db")
    try:
        with pytest.raises(TypeError) as without:
            plain.prepare("SELECT ?").get(object())
        with pytest.raises(TypeError, match=r"unsupported type 'datetime\.date' for parameter 1"):
            plain.prepare("SELECT ?").get(dt.date(2020, 1, 1))  # no map: today's behaviour
    finally:
        plain.close()
    assert str(with_types.value) == str(without.value)
    assert "unsupported type 'object' for parameter 1 of statement 'SELECT ?'" in str(without.value)


def test_without_types_rows_are_not_converted(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path) as database:
        assert database.types is None
        database.exec(SCHEMA + "; INSERT INTO v (day, doc) VALUES ('2024-01-02', '[1]')")
        assert database.prepare("SELECT day, doc FROM v").get() == {"day": "2024-01-02", "doc": "[1]"}


def test_enums_bind_their_value_and_int_enums_bind_natively(typed: appdb.AppDatabase) -> None:
    row = typed.prepare("SELECT ? AS c, ? AS l", row_type="tuple").get(Color.BLUE, Level.LOW)
    assert row == ("blue", 1)


def test_bad_stored_text_names_the_column_and_statement(typed: appdb.AppDatabase) -> None:
    typed.exec("INSERT INTO v (day) VALUES ('not a date')")
    with pytest.raises(appdb.ConversionError) as info:
        typed.prepare("SELECT day FROM v").all()
    assert "column 'day' (declared DATE) of statement 'SELECT day FROM v'" in str(info.value)
    assert "'not a date'" in str(info.value)


def test_readers_and_run_many_use_the_map(typed: appdb.AppDatabase) -> None:
    days = [dt.date(2024, 1, d) for d in range(1, 6)]
    assert typed.prepare("INSERT INTO v (day) VALUES (?)").run_many(days).changes == 5
    named = typed.prepare("INSERT INTO v (day) VALUES (:d)")
    assert named.run_many([{"d": dt.date(2025, 1, 1)}]).changes == 1
    got = [r["day"] for r in typed.prepare("SELECT day FROM v ORDER BY id").all()]
    assert got == [*days, dt.date(2025, 1, 1)]
    assert typed.prepare("SELECT count(*) FROM v WHERE day > ?").scalar(dt.date(2024, 1, 3)) == 3


def test_other_tools_text_reads_back(typed: appdb.AppDatabase) -> None:
    typed.exec(
        "INSERT INTO v (at, stamp, price, u, doc, ok) VALUES "
        "(CURRENT_TIMESTAMP, '2024-01-02T03:04:05Z', 7, "
        "x'12345678123456781234567812345678', 5, 0)"
    )
    row = typed.prepare("SELECT at, stamp, price, u, doc, ok FROM v").get()
    assert isinstance(row["at"], dt.datetime) and row["at"].tzinfo is None  # SQLite's text has no offset
    assert row["stamp"] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert row["price"] == decimal.Decimal(7)
    assert row["u"] == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert row["doc"] == 5
    assert row["ok"] is False


def test_custom_adapters_and_converters(impl: ModuleType, db_path: Path) -> None:
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

    class Point3(Point):
        pass

    types = TypeMap().adapt(Point, lambda p: f"{p.x};{p.y}")
    types.convert("point", lambda text: tuple(int(v) for v in text.split(";")))
    assert types.adapted_types == (Point,) and types.converted_types == ("POINT",)
    with appdb.init_database(db_path, types=types) as database:
        types.convert("TEXT", str.upper)  # after opening: not seen by this database
        database.exec("CREATE TABLE p (at Point, label TEXT)")
        database.prepare("INSERT INTO p VALUES (?, ?)").run(Point3(1, 2), "x")  # a subclass uses its base
        assert database.prepare("SELECT at, label FROM p").get() == {"at": (1, 2), "label": "x"}
        assert database.types is not None and database.types is not types


@pytest.mark.parametrize("bad", [int, bool, str, bytes, float, type(None), Level])
def test_native_types_cannot_be_adapted(bad: type) -> None:
    with pytest.raises(ValueError, match="natively"):
        TypeMap().adapt(bad, repr)


def test_map_arguments_are_checked(impl: ModuleType, db_path: Path) -> None:
    with pytest.raises(TypeError, match="takes a type"):
        TypeMap().adapt("date", str)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        TypeMap().adapt(dt.date, "iso")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one word"):
        TypeMap().convert("DECIMAL(10,2)", decimal.Decimal)
    with pytest.raises(TypeError, match=r"appdb\.types\.TypeMap"):
        appdb.init_database(db_path, types={"date": str})  # type: ignore[arg-type]
    assert not db_path.exists()


def test_declared_type_key() -> None:
    assert declared_type_key("DECIMAL(10, 2)") == "DECIMAL"
    assert declared_type_key("decimal text") == "DECIMAL"
    assert declared_type_key("timestamp with time zone") == "TIMESTAMP"
    assert declared_type_key(None) is None
    assert declared_type_key("") is None


def test_adapters_returning_adaptable_values_chain_and_cycles_fail(impl: ModuleType, db_path: Path) -> None:
    class Day(enum.Enum):
        NEW_YEAR = dt.date(2024, 1, 1)

    class Loop:
        pass

    types = standard().adapt(Loop, lambda value: value)
    with appdb.init_database(db_path, types=types) as database:
        assert database.prepare("SELECT ?").scalar(Day.NEW_YEAR) == "2024-01-01"
        with pytest.raises(appdb.ConversionError, match="kept returning"):
            database.prepare("SELECT ?").scalar(Loop())


def test_async_api_uses_the_map(typed: appdb.AppDatabase) -> None:
    async def main() -> Any:
        async with aio.AsyncDatabase(typed) as adb:
            await adb.prepare("INSERT INTO v (day, doc) VALUES (?, ?)").run(dt.date(2024, 3, 4), {"a": 1})
            return await adb.prepare("SELECT day, doc FROM v").get()

    assert asyncio.run(main()) == {"day": dt.date(2024, 3, 4), "doc": {"a": 1}}


# -- dict rows never drop a value ------------------------------------------------------
def test_duplicate_result_columns_are_refused_for_dict_rows(db: appdb.AppDatabase) -> None:
    db.exec(
        "CREATE TABLE artist (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE track (id INTEGER PRIMARY KEY, name TEXT, artist_id INTEGER);"
        "INSERT INTO artist VALUES (1, 'AC/DC'); INSERT INTO track VALUES (1, 'Go Down', 1);"
    )
    sql = "SELECT t.name, ar.name, t.id, ar.id FROM track t JOIN artist ar ON ar.id = t.artist_id"
    with pytest.raises(appdb.DuplicateColumnError) as info:
        db.prepare(sql)
    message = str(info.value)
    assert "'name', 'id'" in message and "AS" in message and "row_type='tuple'" in message
    assert isinstance(info.value, ValueError)
    assert db.prepare(sql, row_type="tuple").get() == ("Go Down", "AC/DC", 1, 1)
    renamed = "SELECT t.name AS track, ar.name AS artist FROM track t JOIN artist ar ON ar.id = t.artist_id"
    assert db.prepare(renamed).get() == {"track": "Go Down", "artist": "AC/DC"}


def test_a_schema_change_that_creates_duplicates_is_refused_at_the_next_call(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE a (id INTEGER PRIMARY KEY, x); CREATE TABLE b (a_id, y)")
    db.exec("INSERT INTO a VALUES (1, 2)")
    db.exec("INSERT INTO b VALUES (1, 3)")
    statement = db.prepare("SELECT * FROM a JOIN b ON b.a_id = a.id")
    assert statement.get() == {"id": 1, "x": 2, "a_id": 1, "y": 3}
    db.exec("ALTER TABLE b ADD COLUMN x")
    with pytest.raises(appdb.DuplicateColumnError, match="'x'"):
        statement.get()


def test_migrations_bind_with_the_map_in_dry_runs_too(impl: ModuleType, db_path: Path) -> None:
    from appdb.migrations import Migration, MigrationRunner

    def seed(database: appdb.AppDatabase) -> None:
        database.prepare("INSERT INTO holiday (day) VALUES (?)").run(dt.date(2025, 12, 25))

    migrations = [
        Migration(1, "holiday", "CREATE TABLE holiday (day DATE)"),
        Migration(2, "seed", seed),
    ]
    with appdb.init_database(db_path, types=standard()) as database:
        runner = MigrationRunner(database)
        dry = runner.run_migrations(migrations, dry_run=True)
        assert [r.status for r in dry] == ["pending", "pending"], [r.error for r in dry]
        assert [r.status for r in runner.run_migrations(migrations)] == ["applied", "applied"]
        assert database.prepare("SELECT day FROM holiday").scalar() == dt.date(2025, 12, 25)


def test_async_init_database_takes_types(impl: ModuleType, db_path: Path) -> None:
    async def main() -> Any:
        adb = await aio.init_database(db_path, types=standard(), checkpoints="auto")
        async with adb:
            await adb.exec("CREATE TABLE d (day DATE)")
            await adb.prepare("INSERT INTO d VALUES (?)").run(dt.date(2024, 2, 29))
            return await adb.prepare("SELECT day FROM d").scalar()

    assert asyncio.run(main()) == dt.date(2024, 2, 29)
