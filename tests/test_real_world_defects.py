"""Defects found by applying real projects' migrations and statements (issue 12).

Each test goes through the public API, on both twins, with real files on disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb.migrations import Migration, MigrationRunner, verify_migrations


# -- 1. statements whose program holds a value that is not UTF-8 text ---------------------
def test_a_blob_literal_that_is_not_utf8_prepares_and_runs(db: appdb.AppDatabase) -> None:
    stmt = db.prepare("SELECT x'ff' AS b")
    assert stmt.get() == {"b": b"\xff"}
    assert stmt.scalar() == b"\xff"
    assert db.prepare("SELECT x'ff' AS b, 'é' AS t, x'41' AS a").get() == {"b": b"\xff", "t": "é", "a": b"A"}
    assert db.prepare("SELECT 'a' || x'ff' IS NOT NULL AS ok").scalar() == 1


def test_a_blob_default_in_the_schema_does_not_break_statements(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB DEFAULT x'fffe')")
    assert db.prepare("INSERT INTO t DEFAULT VALUES").run().changes == 1
    db.prepare("INSERT INTO t DEFAULT VALUES").run_many([(), ()])
    assert db.prepare("SELECT b FROM t WHERE id = ?").scalar(1) == b"\xff\xfe"
    assert db.prepare("SELECT count(*) FROM t").scalar() == 3


def test_a_view_filtering_on_a_blob_literal_can_be_read(db: appdb.AppDatabase) -> None:
    db.exec(
        """
        CREATE TABLE files (id INTEGER PRIMARY KEY, head BLOB);
        INSERT INTO files (head) VALUES (x'FFD8FFE0'), (x'89504E47');
        CREATE VIEW jpegs AS SELECT id FROM files WHERE substr(head, 1, 3) = x'FFD8FF';
        """
    )
    assert db.prepare("SELECT id FROM jpegs").all() == [{"id": 1}]
    assert db.prepare("SELECT id FROM jpegs WHERE id = ?").get(1) == {"id": 1}


def test_statements_around_a_blob_literal_keep_their_shape(db: appdb.AppDatabase) -> None:
    # Valid text in the program's P4 column still reads; a point lookup with a blob
    # literal stops after its row (a second row would raise: abs() overflows).
    db.exec(
        """
        CREATE TABLE v (id INTEGER PRIMARY KEY, n INTEGER, b BLOB);
        INSERT INTO v VALUES (1, 1, x'ff'), (2, -9223372036854775808, x'ff');
        """
    )
    assert db.prepare("SELECT 'é' AS t").get() == {"t": "é"}
    stmt = db.prepare("SELECT abs(n) AS a FROM v WHERE b = x'ff' ORDER BY id")
    assert stmt.get() == {"a": 1}
    with pytest.raises(apsw.SQLError, match="overflow"):
        stmt.all()
    created = db.prepare("CREATE TABLE w (b BLOB DEFAULT x'fffe')")
    created.run()
    assert db.prepare("SELECT * FROM w").columns == ("b",)


# -- 4. a closed database answers nothing --------------------------------------------------
def test_statement_cache_stats_after_close_raises(db: appdb.AppDatabase) -> None:
    db.prepare("SELECT 1").get()
    assert db.statement_cache_stats().misses == 1
    db.close()
    with pytest.raises(appdb.DatabaseClosedError, match="closed"):
        db.statement_cache_stats()


def test_entering_a_closed_database_raises(db: appdb.AppDatabase) -> None:
    with db as entered:
        assert entered is db
    assert db.closed
    with pytest.raises(appdb.DatabaseClosedError, match="closed"):
        with db:
            pass


# -- 6. a named parameter called with no values --------------------------------------------
def test_named_parameters_without_values_are_named(db: appdb.AppDatabase) -> None:
    message = "missing value for named parameter :a in statement 'SELECT :a'"
    for call in (
        lambda: db.prepare("SELECT :a").get(),
        lambda: db.prepare("SELECT :a").all(),
        lambda: db.prepare("SELECT :a").scalar(),
        lambda: db.prepare("SELECT :a").run(),
        lambda: list(db.prepare("SELECT :a").iterate()),
        lambda: db.prepare("SELECT :a").run_many([()]),
    ):
        with pytest.raises(apsw.BindingsError) as caught:
            call()
        assert message in str(caught.value)
    with pytest.raises(apsw.BindingsError, match=r"missing values for named parameters :a, :b in statement"):
        db.prepare("SELECT :a, $b").get()
    # positional parameters keep saying how many values they take
    with pytest.raises(apsw.BindingsError, match=r"takes 1 parameter value\(s\)"):
        db.prepare("SELECT ?").get()


# -- 7. detection lists what a migration drops before renaming its table -------------------
def test_an_index_dropped_before_its_table_is_renamed_is_listed(db: appdb.AppDatabase) -> None:
    db.exec(
        """
        CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT);
        CREATE INDEX ix ON a (name);
        CREATE INDEX kept ON a (id, name);
        CREATE TRIGGER tr AFTER INSERT ON a BEGIN SELECT 1; END;
        INSERT INTO a (name) VALUES ('x'), ('y');
        """
    )
    migration = Migration(1, "rename", "DROP INDEX ix; DROP TRIGGER tr; ALTER TABLE a RENAME TO b")
    (dry,) = MigrationRunner(db).run_migrations([migration], dry_run=True)
    expected = {
        ("drop_index", "ix", "drops index ix"),
        ("drop_trigger", "tr", "drops trigger tr"),
        ("rename_table", "a", "renames table a to b"),
    }
    assert {(f.kind, f.table, f.message) for f in dry.detected} == expected
    assert dry.status == "pending"
    (real,) = MigrationRunner(db).run_migrations([migration])
    assert real.status == "applied"
    assert {(f.kind, f.table, f.message) for f in real.detected} == expected
    assert db.prepare("SELECT count(*) FROM b").scalar() == 2


# -- 3. a mistyped migrations path creates nothing -----------------------------------------
def test_a_mistyped_migrations_path_creates_no_file_or_folder(
    impl: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "migrations").mkdir()
    target = tmp_path / "data" / "new.db"
    with pytest.raises(appdb.MigrationError, match=r"\./migrtions"):
        appdb.init_database(target, migrations="./migrtions")
    with pytest.raises(appdb.MigrationError, match="migrtions"):
        appdb.init_database(target, migrations=tmp_path / "migrtions")
    assert sorted(os.listdir(tmp_path)) == ["migrations"]
    # the right path still opens and creates the database
    with appdb.init_database(target, migrations="./migrations") as db:
        assert db.migration_results == []
    assert target.exists()


# -- 5. run_many names the item and the parameter that cannot be bound ---------------------
@pytest.fixture
def numbers(db: appdb.AppDatabase) -> appdb.AppDatabase:
    db.exec("CREATE TABLE n (id INTEGER PRIMARY KEY, v)")
    return db


def test_run_many_names_the_item_of_an_unsupported_value(numbers: appdb.AppDatabase) -> None:
    insert = numbers.prepare("INSERT INTO n (v) VALUES (?)")
    with pytest.raises(TypeError) as caught:
        insert.run_many([1, 2, object()])
    assert str(caught.value).startswith(
        "run_many item 2: unsupported type 'object' for parameter 1 of statement "
        "'INSERT INTO n (v) VALUES (?)'"
    )
    with pytest.raises(TypeError, match=r"\Arun_many item 1: unsupported type 'object' for parameter :v "):
        numbers.prepare("INSERT INTO n (v) VALUES (:v)").run_many([{"v": 1}, {"v": object()}])
    assert numbers.prepare("SELECT count(*) FROM n").scalar() == 0  # all or nothing


def test_run_many_says_which_integer_is_too_large_like_run(numbers: appdb.AppDatabase) -> None:
    insert = numbers.prepare("INSERT INTO n (id, v) VALUES (?, ?)")
    with pytest.raises(OverflowError) as single:
        insert.run(1, 2**70)
    with pytest.raises(OverflowError) as many:
        insert.run_many([(1, 1), (2, 2**70)])
    assert str(many.value) == f"run_many item 1: {single.value}"
    assert "parameter 2 of statement" in str(single.value)
    with pytest.raises(OverflowError, match=r"\Arun_many item 0: integer too large for parameter 1 "):
        numbers.prepare("SELECT ?").run_many([-(2**70)])
    with pytest.raises(OverflowError, match=r"\Arun_many item 0: integer too large for parameter :v "):
        numbers.prepare("INSERT INTO n (v) VALUES (:v)").run_many([{"v": 2**64}])
    assert numbers.prepare("SELECT count(*) FROM n").scalar() == 0


def test_run_many_names_the_item_with_the_wrong_values(numbers: appdb.AppDatabase) -> None:
    insert = numbers.prepare("INSERT INTO n (id, v) VALUES (?, ?)")
    with pytest.raises(apsw.BindingsError, match=r"\Arun_many item 1: statement .* takes 2 parameter"):
        insert.run_many([(1, 1), (2,)])
    named = numbers.prepare("INSERT INTO n (v) VALUES (:v)")
    with pytest.raises(apsw.BindingsError, match=r"\Arun_many item 2: missing value for named parameter :v"):
        named.run_many([{"v": 1}, {"v": 2}, {}])
    with pytest.raises(apsw.BindingsError, match=r"\Arun_many item 1: unexpected named value\(s\) 'w'"):
        named.run_many([{"v": 1}, {"v": 2, "w": 3}])
    # a constraint failure is SQLite's own error, unchanged
    with pytest.raises(apsw.ConstraintError, match=r"\AUNIQUE constraint failed: n.id\Z"):
        insert.run_many([(1, 1), (1, 2)])
    assert numbers.prepare("SELECT count(*) FROM n").scalar() == 0


def test_run_many_leaves_errors_of_the_callers_iterable_alone(numbers: appdb.AppDatabase) -> None:
    def items() -> Iterator[tuple[int]]:
        yield (1,)
        raise TypeError("the caller's own bug")

    with pytest.raises(TypeError, match=r"\Athe caller's own bug\Z"):
        numbers.prepare("INSERT INTO n (v) VALUES (?)").run_many(items())
    assert numbers.prepare("SELECT count(*) FROM n").scalar() == 0


def test_run_many_refuses_a_set_of_items(numbers: appdb.AppDatabase) -> None:
    insert = numbers.prepare("INSERT INTO n (v) VALUES (?)")
    for unordered in ({1, 2, 3}, frozenset({(1,), (2,)})):
        with pytest.raises(TypeError, match=r"not a (set|frozenset): the order"):
            insert.run_many(unordered)
    assert numbers.prepare("SELECT count(*) FROM n").scalar() == 0
    assert insert.run_many(sorted({3, 1, 2})).changes == 3  # an ordered copy is fine
    assert insert.run_many({"a": 1, "b": 2}.keys()).changes == 2  # dict keys keep their order


# -- 2. a migration never leaves connection settings changed -------------------------------
#: What ``sqlite3 app.db .dump`` writes: foreign keys off first, then one transaction.
DUMP = """\
-- transactional: false
-- migrate:up
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO parent VALUES(1,'one');
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id));
INSERT INTO child VALUES(1,1);
COMMIT;
"""

#: A transactional migration that switches settings SQLite lets it change.
SETTINGS_UP = "PRAGMA trusted_schema = ON; PRAGMA recursive_triggers = ON; CREATE TABLE counter (n INTEGER)"

#: Fills ``counter`` through a trigger: 2 rows without recursive triggers, endless with them.
TRIGGERED = Migration(
    3,
    "triggered",
    "CREATE TRIGGER more AFTER INSERT ON counter BEGIN INSERT INTO counter VALUES (new.n + 1); END;"
    "INSERT INTO counter VALUES (1)",
    "DROP TRIGGER more; DELETE FROM counter",
)
#: ``DUMP``'s statements as a non-transactional migration, and a down step like them.
DUMP_MIGRATION = Migration(
    2,
    "dump",
    DUMP.split("-- migrate:up\n")[1],
    "PRAGMA foreign_keys=OFF; DROP TABLE child; DROP TABLE parent",
    transactional=False,
)


def settings(db: appdb.AppDatabase) -> tuple[int, int, int]:
    return (
        db.pragma("foreign_keys"),
        db.pragma("trusted_schema"),
        db.pragma("recursive_triggers"),
    )


def orphans_refused(db: appdb.AppDatabase) -> bool:
    try:
        db.prepare("INSERT INTO child (parent_id) VALUES (99)").run()
    except apsw.ConstraintError:
        return True
    db.exec("DELETE FROM child WHERE parent_id = 99")
    return False


@pytest.fixture
def dumped(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_dump.sql").write_text(DUMP, encoding="utf-8")
    return folder


def test_a_dump_that_turns_foreign_keys_off_leaves_them_on(
    impl: ModuleType, dumped: Path, db_path: Path
) -> None:
    with appdb.init_database(db_path, migrations=dumped) as db:
        assert [r.status for r in db.migration_results] == ["applied"]
        assert settings(db) == (1, 0, 0)
        assert orphans_refused(db)
        assert db.prepare("SELECT count(*) FROM child").scalar() == 1
    # approved (no rehearsal on a copy first) and with the user's own pragmas
    db_path.unlink()
    chosen = {"recursive_triggers": "ON", "cache_size": -4000}
    with appdb.init_database(db_path, migrations=dumped, allow_destructive=True, pragmas=chosen) as db:
        assert settings(db) == (1, 0, 1)
        assert db.pragma("cache_size") == -4000
        assert orphans_refused(db)


def test_settings_changed_by_a_transactional_migration_are_restored(impl: ModuleType, db_path: Path) -> None:
    migrations = [Migration(1, "settings", SETTINGS_UP, "DROP TABLE counter"), TRIGGERED]
    with appdb.init_database(db_path, migrations=migrations) as db:
        assert [r.status for r in db.migration_results] == ["applied", "applied"]
        assert settings(db) == (1, 0, 0)
        # the trigger ran without recursion (with it, it would have run on forever)
        assert db.prepare("SELECT count(*) FROM counter").scalar() == 2
        # and when the migration fails, transactional or not
        broken = "PRAGMA foreign_keys=OFF; PRAGMA recursive_triggers=1; BEGIN; INSERT INTO missing VALUES(1)"
        for migration in (
            Migration(4, "broken", "PRAGMA trusted_schema = ON; INSERT INTO missing VALUES (1)"),
            Migration(4, "broken", broken, transactional=False),
        ):
            (failed,) = MigrationRunner(db).run_migrations([migration], allow_destructive=True)
            assert failed.status == "failed"
            assert "no such table: missing" in str(failed.error)
            assert settings(db) == (1, 0, 0)


def test_settings_changed_by_a_down_step_are_restored(impl: ModuleType, db_path: Path) -> None:
    counter = Migration(
        1, "counter", "CREATE TABLE counter (n)", "PRAGMA recursive_triggers = 1; DROP TABLE counter"
    )
    migrations = [counter, DUMP_MIGRATION]
    with appdb.init_database(db_path, migrations=migrations) as db:
        results = MigrationRunner(db).rollback(migrations, to_version=0, allow_destructive=True)
        assert [r.status for r in results] == ["rolled_back", "rolled_back"]
        assert settings(db) == (1, 0, 0)


def test_a_dry_run_predicts_the_real_run_with_settings_restored(impl: ModuleType, db_path: Path) -> None:
    # Without restoring, migration 2 would see recursive triggers on (and fail) in the
    # dry run, and 4 would insert an orphan row there while the real run refuses it.
    migrations = [
        Migration(1, "settings", SETTINGS_UP),
        DUMP_MIGRATION,
        TRIGGERED,
        Migration(4, "orphan", "INSERT INTO child (parent_id) VALUES (99)"),
    ]
    with appdb.init_database(db_path) as db:
        runner = MigrationRunner(db)
        dry = runner.run_migrations(migrations, dry_run=True)
        assert [r.status for r in dry] == ["pending", "pending", "pending", "failed"]
        assert "FOREIGN KEY constraint failed" in str(dry[3].error)
        assert settings(db) == (1, 0, 0)
        real = runner.run_migrations(migrations)
        assert [r.status for r in real] == ["applied", "applied", "applied", "failed"]
        assert settings(db) == (1, 0, 0)
        assert db.prepare("SELECT count(*) FROM counter").scalar() == 2


def test_verify_checks_each_migration_with_settings_restored(impl: ModuleType, db_path: Path) -> None:
    migrations = [Migration(1, "settings", SETTINGS_UP, "DROP TABLE counter"), TRIGGERED]
    with appdb.init_database(db_path) as db:
        reports = verify_migrations(db, migrations)
        assert [(r.version, r.problems) for r in reports] == [(1, []), (3, [])]
        assert settings(db) == (1, 0, 0)
    assert [r.ok for r in verify_migrations(None, migrations)] == [True, True]


def test_a_python_migration_cannot_leave_the_writer_reconfigured(impl: ModuleType, db_path: Path) -> None:
    def up(db: appdb.AppDatabase) -> None:
        connection = db.connection
        connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 0)
        connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, 1)
        connection.set_busy_timeout(0)
        db.exec(
            f"ATTACH DATABASE '{db_path.parent / 'other.db'}' AS other;"
            "PRAGMA case_sensitive_like = ON; PRAGMA wal_autocheckpoint = 0; PRAGMA query_only = 0;"
            "PRAGMA cell_size_check = ON; PRAGMA ignore_check_constraints = ON"
        )

    with appdb.init_database(db_path, migrations=[Migration(1, "python", up)]) as db:
        assert db.migration_results[0].status == "applied"
        connection = db.connection
        assert connection.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
        assert connection.config(apsw.SQLITE_DBCONFIG_DQS_DML, -1) == 0
        assert db.pragma("busy_timeout") == 5000
        assert [row["name"] for row in db.pragma("database_list")] == ["main"]
        assert db.prepare("SELECT 'a' LIKE 'A' AS same").scalar() == 1
        assert db.pragma("wal_autocheckpoint") == 1000  # the WAL guard is back
        assert db.pragma("cell_size_check") == 0
        assert db.pragma("ignore_check_constraints") == 0


def test_a_drop_column_migration_restores_settings_without_a_warning(
    impl: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from appdb.migrations import Migration

    migrations = [
        Migration(1, "t", "CREATE TABLE t (a, b)"),
        Migration(2, "drop_b", "ALTER TABLE t DROP COLUMN b"),  # SQLite opens temp for it
    ]
    with caplog.at_level("WARNING", logger="appdb"):
        with appdb.init_database(tmp_path / "app.db", migrations=migrations) as database:
            assert database.get_schema_version() == 2
    assert not [r for r in caplog.records if "could not restore" in r.getMessage()]
