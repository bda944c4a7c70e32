"""Adopting another tool's ledger (dbmate, goose, sqlx, golang-migrate, diesel), and
``PRAGMA user_version`` for versions that do not fit in 32 bits."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import apsw
import pytest

import appdb
from appdb.migrations import Migration, MigrationRunner, discover_migrations

# -- the other tools' tables, with the DDL each one runs on SQLite ----------------------------
DBMATE = 'create table if not exists "schema_migrations" (version varchar(128) primary key)'
GOLANG_MIGRATE = """
CREATE TABLE IF NOT EXISTS schema_migrations (version uint64,dirty bool);
CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version);
"""
GOOSE = """CREATE TABLE goose_db_version (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version_id INTEGER NOT NULL,
    is_applied INTEGER NOT NULL,
    tstamp TIMESTAMP DEFAULT (datetime('now'))
)"""
SQLX = """CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)"""
DIESEL = """CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (
    version VARCHAR(50) PRIMARY KEY NOT NULL,
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
)"""

USERS = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
EMAIL = "ALTER TABLE users ADD COLUMN email TEXT;"
POSTS = "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users (id), body TEXT);"

#: Timestamp versions (dbmate, sqlx, diesel) and small ones (goose, golang-migrate).
STAMPS = (20151129054053, 20151201093000, 20160105120000)
SMALL = (1, 2, 3)


def write_folder(folder: Path, versions: tuple[int, int, int]) -> Path:
    """An appdb-format folder: users, users.email, posts at ``versions``."""
    folder.mkdir(parents=True, exist_ok=True)
    for version, name, up, down in zip(
        versions,
        ("create_users", "add_email", "create_posts"),
        (USERS, EMAIL, POSTS),
        ("DROP TABLE users;", "ALTER TABLE users DROP COLUMN email;", "DROP TABLE posts;"),
    ):
        text = f"-- migrate:up\n{up}\n-- migrate:down\n{down}\n"
        (folder / f"{version:03d}_{name}.sql").write_text(text, encoding="utf-8")
    return folder


def sqlx_checksum(sql: str) -> bytes:
    return hashlib.sha384(sql.encode()).digest()


def run_as_dbmate(db: appdb.AppDatabase, versions: tuple[int, ...]) -> None:
    db.exec(DBMATE)
    for version in versions:
        db.prepare('insert into "schema_migrations" (version) values (?)').run(str(version))


def run_as_golang_migrate(db: appdb.AppDatabase, versions: tuple[int, ...], dirty: bool = False) -> None:
    db.exec(GOLANG_MIGRATE)
    for version in versions:  # SetVersion: delete every row, insert the current one
        db.exec("DELETE FROM schema_migrations")
        db.prepare("INSERT INTO schema_migrations (version, dirty) VALUES (?, ?)").run(version, int(dirty))


def run_as_goose(db: appdb.AppDatabase, versions: tuple[int, ...]) -> None:
    db.exec(GOOSE)
    insert = db.prepare("INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)")
    insert.run(0, 1)  # goose's own first row
    for version in versions:
        insert.run(version, 1)


def run_as_sqlx(db: appdb.AppDatabase, versions: tuple[int, ...], success: bool = True) -> None:
    db.exec(SQLX)
    for version, (name, sql) in zip(versions, (("create users", USERS), ("add email", EMAIL))):
        db.prepare(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) "
            "VALUES (?1, ?2, ?3, ?4, ?5)"
        ).run(version, name, int(success), sqlx_checksum(sql), 1_734_208)


def run_as_diesel(db: appdb.AppDatabase, versions: tuple[int, ...]) -> None:
    db.exec(DIESEL)
    for version in versions:
        db.prepare("INSERT INTO __diesel_schema_migrations (version) VALUES (?)").run(str(version))


TOOLS: dict[str, tuple[Callable[[appdb.AppDatabase, tuple[int, ...]], None], str, tuple[int, int, int]]] = {
    "dbmate": (run_as_dbmate, "schema_migrations", STAMPS),
    "goose": (run_as_goose, "goose_db_version", SMALL),
    "sqlx": (run_as_sqlx, "_sqlx_migrations", STAMPS),
    "golang-migrate": (run_as_golang_migrate, "schema_migrations", SMALL),
    "diesel": (run_as_diesel, "__diesel_schema_migrations", STAMPS),
}


def migrated_by(tool: str, db: appdb.AppDatabase, versions: tuple[int, int, int]) -> None:
    """What ``tool`` leaves behind after applying the first two migrations."""
    db.exec(USERS + EMAIL)
    TOOLS[tool][0](db, versions[:2])


def raw_rows(db_path: Path, table: str) -> tuple[list[Any], list[Any]]:
    """Every row of ``table`` (typed values, in rowid order) and its schema entries, read from disk."""
    connection = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
        quoted = ", ".join(f'quote("{c}")' for c in columns)  # type and value, byte for byte
        rows = list(connection.execute(f'SELECT {quoted} FROM "{table}" ORDER BY rowid'))
        schema = list(connection.execute("SELECT * FROM sqlite_schema WHERE tbl_name = ?", (table,)))
    finally:
        connection.close()
    return rows, schema


def user_version(db_path: Path) -> int:
    connection = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(connection.execute("PRAGMA user_version").get)
    finally:
        connection.close()


def ledger_rows(db: appdb.AppDatabase) -> list[Any]:
    if "appdb_migrations" not in {r["name"] for r in db.prepare("SELECT name FROM sqlite_schema").all()}:
        return []
    return db.prepare(
        "SELECT version, name, checksum, duration_ms FROM appdb_migrations ORDER BY version"
    ).all()


# -- adopting -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", list(TOOLS))
def test_adopt_records_what_the_other_tool_applied_and_migrate_runs_the_rest(
    tool: str, db: appdb.AppDatabase, db_path: Path, tmp_path: Path
) -> None:
    _, table, versions = TOOLS[tool]
    folder = write_folder(tmp_path / "migrations", versions)
    migrated_by(tool, db, versions)
    before = raw_rows(db_path, table)
    migrations = discover_migrations(folder)
    runner = MigrationRunner(db)

    adopted = runner.adopt(migrations)  # source="auto" finds the one tool

    assert [(a.version, a.name) for a in adopted] == [
        (versions[0], "create_users"),
        (versions[1], "add_email"),
    ]
    assert [a.checksum for a in adopted] == [m.checksum for m in migrations[:2]]
    assert runner.get_applied_migrations() == adopted
    assert [r["duration_ms"] for r in ledger_rows(db)] == [0.0, 0.0]
    assert db.get_schema_version() == versions[1]
    # the same user_version a migrate would have left: 2 for small versions, 1 + 1 for timestamps
    assert user_version(db_path) == 2
    assert runner.validate(migrations).ok
    assert raw_rows(db_path, table) == before  # the other tool's table is only read

    assert runner.adopt(migrations) == []  # idempotent
    (result,) = runner.run_migrations(migrations)
    assert (result.version, result.status) == (versions[2], "applied")
    assert db.prepare("SELECT count(*) FROM posts").scalar() == 0
    assert db.get_schema_version() == versions[2] and user_version(db_path) == 3
    assert raw_rows(db_path, table) == before


def test_adopted_rows_match_those_of_a_real_run(
    db: appdb.AppDatabase, tmp_path: Path, impl: ModuleType
) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    migrations = discover_migrations(folder)
    migrated_by("diesel", db, STAMPS)
    MigrationRunner(db).adopt(migrations, source="diesel")
    with appdb.init_database(tmp_path / "ran.db", migrations=migrations[:2]) as ran:
        assert [r["version"] for r in ledger_rows(ran)] == [r["version"] for r in ledger_rows(db)]
        assert [(r["name"], r["checksum"]) for r in ledger_rows(ran)] == [
            (r["name"], r["checksum"]) for r in ledger_rows(db)
        ]
        assert ran.pragma("user_version") == db.pragma("user_version") == 2


def test_adopt_with_migrations_built_in_code(db: appdb.AppDatabase) -> None:
    migrations = [Migration(1, "users", USERS), Migration(2, "email", EMAIL), Migration(3, "posts", POSTS)]
    migrated_by("goose", db, SMALL)
    db.prepare("INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)").run(3, 1)
    db.exec(POSTS)
    adopted = MigrationRunner(db).adopt(migrations, source="goose")
    assert [a.version for a in adopted] == [1, 2, 3]
    assert [a.checksum for a in adopted] == [m.checksum for m in migrations]
    assert MigrationRunner(db).run_migrations(migrations) == []


def test_goose_reads_the_latest_row_of_each_version(db: appdb.AppDatabase) -> None:
    migrations = [Migration(1, "users", USERS), Migration(2, "email", EMAIL), Migration(3, "posts", POSTS)]
    db.exec(USERS + EMAIL)
    run_as_goose(db, (1, 2, 3))
    # goose before v3.? recorded a down as a new row with is_applied = false
    db.prepare("INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)").run(3, 0)
    assert [a.version for a in MigrationRunner(db).adopt(migrations)] == [1, 2]
    assert [r.status for r in MigrationRunner(db).run_migrations(migrations)] == ["applied"]


def test_golang_migrate_applies_every_version_up_to_its_current_one(db: appdb.AppDatabase) -> None:
    migrations = [Migration(v, f"m{v}", f"CREATE TABLE t{v} (x);") for v in (1, 4, 7, 9)]
    for version in (1, 4, 7):
        db.exec(f"CREATE TABLE t{version} (x);")
    run_as_golang_migrate(db, (1, 4, 7))
    assert db.prepare("SELECT version, dirty FROM schema_migrations").all() == [{"version": 7, "dirty": 0}]
    adopted = MigrationRunner(db).adopt(migrations, source="golang-migrate")
    assert [a.version for a in adopted] == [1, 4, 7]
    assert db.pragma("user_version") == 7


def test_an_empty_ledger_adopts_nothing(db: appdb.AppDatabase) -> None:
    db.exec(DIESEL)
    assert MigrationRunner(db).adopt([Migration(1, "a", "SELECT 1")]) == []
    assert ledger_rows(db) == [] and db.pragma("user_version") == 0


# -- refusals: nothing is recorded ------------------------------------------------------------
def assert_nothing_recorded(db: appdb.AppDatabase, db_path: Path) -> None:
    assert ledger_rows(db) == []
    assert db.get_schema_version() == 0 and user_version(db_path) == 0


def test_a_dirty_golang_migrate_database_is_refused(
    db: appdb.AppDatabase, db_path: Path, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "migrations", SMALL)
    db.exec(USERS)
    run_as_golang_migrate(db, (1, 2), dirty=True)
    with pytest.raises(
        appdb.MigrationError, match=r"version 2 is dirty.*migrate force V.*nothing was recorded"
    ):
        MigrationRunner(db).adopt(folder)
    assert_nothing_recorded(db, db_path)


def test_a_failed_sqlx_migration_is_refused(db: appdb.AppDatabase, db_path: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    run_as_sqlx(db, STAMPS[:1])
    run_as_sqlx_failed = db.prepare(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) "
        "VALUES (?, 'add email', FALSE, ?, -1)"
    )
    run_as_sqlx_failed.run(STAMPS[1], sqlx_checksum(EMAIL))
    with pytest.raises(
        appdb.MigrationError, match=rf"migration {STAMPS[1]} \(add email\) failed \(success = false\)"
    ):
        MigrationRunner(db).adopt(folder)
    assert_nothing_recorded(db, db_path)


@pytest.mark.parametrize("tool", ["dbmate", "golang-migrate"])
def test_a_version_without_a_migration_is_refused(
    tool: str, db: appdb.AppDatabase, db_path: Path, tmp_path: Path
) -> None:
    versions = STAMPS if tool == "dbmate" else SMALL
    folder = write_folder(tmp_path / "migrations", versions)
    extra = versions[2] + 1
    TOOLS[tool][0](db, (versions[0], versions[1], extra))
    with pytest.raises(
        appdb.MigrationError, match=rf"records version\(s\) {extra} with no migration.*nothing was recorded"
    ):
        MigrationRunner(db).adopt(folder)
    assert_nothing_recorded(db, db_path)


def test_bad_versions_in_a_text_column_are_named(db: appdb.AppDatabase, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    run_as_dbmate(db, ())
    db.prepare('insert into "schema_migrations" (version) values (?)').run("2015-11-29")
    with pytest.raises(appdb.MigrationError, match=r"dbmate's schema_migrations holds version '2015-11-29'"):
        MigrationRunner(db).adopt(folder)
    assert ledger_rows(db) == []


def test_source_auto_needs_exactly_one_table(db: appdb.AppDatabase, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    runner = MigrationRunner(db)
    with pytest.raises(appdb.MigrationError, match=r"no other tool's migration table") as info:
        runner.adopt(folder)
    assert "goose_db_version (goose)" in str(info.value) and "--from takes auto|dbmate|goose" in str(
        info.value
    )
    db.exec(GOOSE + ";" + SQLX)
    assert runner.ledger_sources() == ["goose", "sqlx"]
    with pytest.raises(
        appdb.MigrationError, match=r"several tools: goose \(goose_db_version\), sqlx"
    ) as info:
        runner.adopt(folder)
    assert "--from goose|sqlx" in str(info.value)
    assert runner.adopt(folder, source="sqlx") == []
    with pytest.raises(ValueError, match=r"unknown migration tool 'flyway'"):
        runner.adopt(folder, source="flyway")
    assert ledger_rows(db) == []


def test_dbmate_and_golang_migrate_are_told_apart_by_the_dirty_column(
    db: appdb.AppDatabase, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "migrations", SMALL)
    db.exec(USERS)
    run_as_golang_migrate(db, (1,))
    runner = MigrationRunner(db)
    assert runner.ledger_sources() == ["golang-migrate"]
    with pytest.raises(appdb.MigrationError, match=r"golang-migrate's: use --from golang-migrate"):
        runner.adopt(folder, source="dbmate")
    assert [a.version for a in runner.adopt(folder)] == [1]


def test_versions_appdb_already_recorded_are_skipped_and_changed_files_refused(
    db: appdb.AppDatabase, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    runner = MigrationRunner(db)
    runner.run_migrations(folder, target=STAMPS[0])
    first = runner.get_applied_migrations()
    db.exec(EMAIL)
    run_as_dbmate(db, STAMPS[:2])
    (path,) = folder.glob(f"{STAMPS[1]}_*.sql")
    original = path.read_text()
    (first_path,) = folder.glob(f"{STAMPS[0]}_*.sql")
    first_path.write_text(first_path.read_text() + "\n-- edited\n")
    with pytest.raises(appdb.MigrationError, match=r"changed after they were applied.*validate --repair"):
        runner.adopt(folder)
    assert runner.get_applied_migrations() == first
    first_path.write_text(first_path.read_text().replace("\n-- edited\n", ""))
    adopted = runner.adopt(folder)
    assert [a.version for a in adopted] == [STAMPS[1]] and path.read_text() == original
    assert runner.get_applied_migrations() == [*first, *adopted]


def test_a_readonly_database_refuses_to_adopt(impl: ModuleType, db_path: Path, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    with appdb.init_database(db_path) as db:
        migrated_by("dbmate", db, STAMPS)
    with appdb.init_database(db_path, readonly=True) as db:
        with pytest.raises(appdb.MigrationError, match=r"cannot adopt .* read-only"):
            MigrationRunner(db).adopt(folder)


def test_adopt_takes_the_write_lock(
    impl: ModuleType, db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    with appdb.init_database(db_path, pragmas={"busy_timeout": 50}) as db:
        migrated_by("dbmate", db, STAMPS)
        other = apsw.Connection(str(db_path))
        other.execute("BEGIN IMMEDIATE")
        try:
            with caplog.at_level(logging.WARNING, logger="appdb"):
                with pytest.raises(appdb.MigrationError, match=r"adopting .* did not happen.*stayed locked"):
                    MigrationRunner(db, lock_wait=0.3).adopt(folder)
            assert "waits for the write lock" in caplog.text
            # once the other writer lets go, a waiting adopt goes ahead
            release = threading.Timer(0.3, lambda: other.execute("ROLLBACK"))
            release.start()
            adopted = MigrationRunner(db, lock_wait=10).adopt(folder)
            release.join()
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
        assert [a.version for a in adopted] == list(STAMPS[:2])


# -- user_version -------------------------------------------------------------------------------
def steps(versions: list[int]) -> list[Migration]:
    return [Migration(v, f"m{v}", f"CREATE TABLE t{v} (x);", f"DROP TABLE t{v};") for v in versions]


def test_user_version_of_small_versions_is_the_highest_applied(db: appdb.AppDatabase, db_path: Path) -> None:
    migrations = steps([1, 2, 5, 10])
    runner = MigrationRunner(db)
    seen = []
    for migration in migrations:
        runner.run_migrations(migrations, target=migration.version)
        seen.append(user_version(db_path))
    assert seen == [1, 2, 5, 10]
    runner.rollback(migrations, to_version=2)
    assert user_version(db_path) == 2


def test_user_version_of_timestamp_versions_is_non_zero_and_grows(
    db: appdb.AppDatabase, db_path: Path
) -> None:
    # a folder that started with small versions and switched to timestamps
    migrations = steps([1, 5, 20151129054053, 20151201093000, 20160105120000])
    runner = MigrationRunner(db)
    seen = []
    for migration in migrations:
        runner.run_migrations(migrations, target=migration.version)
        seen.append(user_version(db_path))
    assert seen == [1, 5, 6, 7, 8]  # highest small version + one per timestamp version
    runner.rollback(migrations, to_version=20151129054053)
    assert user_version(db_path) == 6
    runner.rollback(migrations, to_version=1)
    assert user_version(db_path) == 1
    runner.run_migrations(migrations)
    assert user_version(db_path) == 8
    assert db.get_schema_version() == 20160105120000  # the real version is in appdb_migrations


def test_user_version_with_timestamps_only_and_at_the_32_bit_limit(impl: ModuleType, tmp_path: Path) -> None:
    with appdb.init_database(tmp_path / "a.db", migrations=steps([20151129054053, 20151201093000])) as db:
        assert db.pragma("user_version") == 2
    limit = 2**31 - 1
    with appdb.init_database(tmp_path / "b.db", migrations=steps([limit - 1, limit, limit + 1])) as db:
        assert db.pragma("user_version") == limit  # never more than a signed 32-bit value holds


def test_init_database_with_an_adopted_folder_applies_only_newer(
    impl: ModuleType, db_path: Path, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "migrations", STAMPS)
    with appdb.init_database(db_path, run_migrations=False) as db:
        migrated_by("sqlx", db, STAMPS)
        MigrationRunner(db).adopt(folder)
    with appdb.init_database(db_path, migrations=folder) as db:
        assert [(r.version, r.status) for r in db.migration_results] == [(STAMPS[2], "applied")]
        assert db.pragma("user_version") == 3
