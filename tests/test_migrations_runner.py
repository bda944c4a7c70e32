"""The migration runner: atomic application, bookkeeping, approval, checksums, rollback."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb.migrations import AppliedMigration, Migration, MigrationRunner, discover_migrations
from conftest import impl_name

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two plain migrations: users, then an index."""
    path = tmp_path / "migrations"
    write(
        path,
        "001_users.sql",
        """
        -- migrate:up
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
        -- migrate:down
        DROP TABLE users;
        """,
    )
    write(
        path,
        "002_users_name.py",
        """
        def up(db):
            db.exec("CREATE INDEX users_name ON users (name)")

        def down(db):
            db.exec("DROP INDEX users_name")
        """,
    )
    return path


def tables(db: appdb.AppDatabase) -> list[str]:
    rows = db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").all()
    return [row["name"] for row in rows]


def test_init_database_applies_pending_and_records_them(
    impl: ModuleType, db_path: Path, folder: Path
) -> None:
    with appdb.init_database(db_path, migrations=folder) as db:
        assert [(r.version, r.status) for r in db.migration_results] == [(1, "applied"), (2, "applied")]
        assert all(r.error is None and r.detected == [] and r.duration_ms >= 0 for r in db.migration_results)
        assert db.get_schema_version() == 2
        assert db.pragma("user_version") == 2
        applied = MigrationRunner(db).get_applied_migrations()
        expected = discover_migrations(folder)
        assert [(a.version, a.name, a.checksum) for a in applied] == [
            (m.version, m.name, m.checksum) for m in expected
        ]
        assert all(isinstance(a, AppliedMigration) and ISO_UTC.match(a.applied_at) for a in applied)
        columns = [r["name"] for r in db.pragma("table_info", appdb._ledger.MIGRATIONS_TABLE)]
        assert columns[:4] == ["version", "name", "applied_at", "checksum"]
    with appdb.init_database(db_path, migrations=str(folder)) as again:
        assert again.migration_results == []
        assert again.get_schema_version() == 2


def test_a_failing_migration_leaves_no_trace_and_names_itself(
    impl: ModuleType, db_path: Path, folder: Path
) -> None:
    write(
        folder,
        "003_half_done.py",
        """
        def up(db):
            db.exec("CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT)")
            db.prepare("INSERT INTO audit (what) VALUES (?)").run("first")
            db.exec("UPDATE users SET name = 'x'")
            raise RuntimeError("disk gremlins")
        """,
    )
    write(folder, "004_later.sql", "-- migrate:up\nCREATE TABLE later (id INTEGER);\n")
    with pytest.raises(appdb.MigrationError) as info:
        appdb.init_database(db_path, migrations=folder)
    message = str(info.value)
    assert "migration 3 (half_done) from" in message and "003_half_done.py" in message
    assert "failed and was rolled back: RuntimeError: disk gremlins" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    with appdb.init_database(db_path) as db:
        assert tables(db) == ["appdb_migrations", "users"]
        assert db.get_schema_version() == 2 and db.pragma("user_version") == 2
        results = MigrationRunner(db).run_migrations(discover_migrations(folder))
        assert [(r.version, r.status) for r in results] == [(3, "failed"), (4, "skipped")]
        assert isinstance(results[0].error, appdb.MigrationError) and results[1].error is None
        assert tables(db) == ["appdb_migrations", "users"]


def test_an_sql_error_names_the_migration_file(impl: ModuleType, db: appdb.AppDatabase, folder: Path) -> None:
    write(folder, "003_typo.sql", "-- migrate:up\nCREATE TABLE ok (id INTEGER);\nCREAT TABLE broken (id);\n")
    results = MigrationRunner(db).run_migrations(folder)
    assert [r.status for r in results] == ["applied", "applied", "failed"]
    assert "migration 3 (typo) from" in str(results[2].error)
    assert "SQLError" in str(results[2].error) and "ok" not in tables(db)


def test_declared_destructive_migration_waits_for_approval(
    impl: ModuleType, db_path: Path, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(
        folder,
        "003_drop_email.sql",
        "-- destructive: true\n-- migrate:up\nALTER TABLE users DROP COLUMN email;\n",
    )
    write(folder, "004_posts.sql", "-- migrate:up\nCREATE TABLE posts (id INTEGER);\n")
    with (
        caplog.at_level(logging.WARNING, logger="appdb"),
        appdb.init_database(db_path, migrations=folder) as db,
    ):
        statuses = [(r.version, r.status, r.destructive) for r in db.migration_results]
        assert statuses == [
            (1, "applied", False),
            (2, "applied", False),
            (3, "blocked", True),
            (4, "skipped", False),
        ]
        assert isinstance(db.migration_results[2].error, appdb.DestructiveMigrationError)
        assert db.get_schema_version() == 2
        assert "email" in [c["name"] for c in db.pragma("table_info", "users")]
        assert "posts" not in tables(db)
    warning = caplog.records[-1]
    assert warning.levelno == logging.WARNING and warning.name == "appdb"
    assert "migration 3 (drop_email)" in warning.getMessage()
    assert "allow_destructive=True" in warning.getMessage() and "--allow-destructive" in warning.getMessage()
    assert "stays at version 2" in warning.getMessage()
    with appdb.init_database(db_path, migrations=folder, allow_destructive=True) as db:
        assert [(r.version, r.status) for r in db.migration_results] == [(3, "applied"), (4, "applied")]
        assert db.get_schema_version() == 4


def test_readonly_database_with_pending_migrations_changes_nothing(
    impl: ModuleType, db_path: Path, folder: Path
) -> None:
    appdb.init_database(
        db_path, migrations=[m for m in discover_migrations(folder) if m.version == 1]
    ).close()
    before = db_path.read_bytes()
    with pytest.raises(
        appdb.MigrationError, match=r"open read-only but 1 migration\(s\) are pending \(2 \(users_name\)"
    ):
        appdb.init_database(db_path, readonly=True, migrations=folder)
    assert db_path.read_bytes() == before
    with appdb.init_database(db_path, readonly=True, migrations=folder, run_migrations=False) as db:
        assert db.get_schema_version() == 1
    appdb.init_database(db_path, migrations=folder).close()
    with appdb.init_database(db_path, readonly=True, migrations=folder) as db:
        assert db.migration_results == [] and db.get_schema_version() == 2


def test_target_stops_at_a_version(impl: ModuleType, db: appdb.AppDatabase, folder: Path) -> None:
    runner = MigrationRunner(db)
    assert [r.version for r in runner.run_migrations(folder, target=1)] == [1]
    assert db.get_schema_version() == 1
    assert [m.version for m in runner.pending(folder)] == [2]
    assert [r.version for r in runner.run_migrations(folder)] == [2]


def test_callables_get_the_app_database_and_may_nest_transactions(
    impl: ModuleType, db: appdb.AppDatabase
) -> None:
    seen: list[object] = []

    def up(database: appdb.AppDatabase) -> None:
        seen.append(database)
        database.exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        database.prepare("INSERT INTO kv VALUES (?, ?)").run("a", "1")
        try:
            with database.transaction():
                database.prepare("INSERT INTO kv VALUES (?, ?)").run("b", "2")
                raise ValueError("inner part only")
        except ValueError:
            pass

    (result,) = MigrationRunner(db).run_migrations([Migration(1, "kv", up)])
    assert result.status == "applied" and seen == [db]
    assert db.prepare("SELECT k FROM kv").all() == [{"k": "a"}]


def test_runner_accepts_a_bare_apsw_connection(impl: ModuleType, db_path: Path, folder: Path) -> None:
    connection = apsw.Connection(str(folder.parent / "bare.db"))
    try:
        runner = MigrationRunner(connection)
        assert [r.status for r in runner.run_migrations(folder)] == ["applied", "applied"]
        assert connection.execute("PRAGMA user_version").get == 2
        assert [a.version for a in runner.get_applied_migrations()] == [1, 2]
    finally:
        connection.close()
    with pytest.raises(TypeError, match=r"AppDatabase or apsw\.Connection"):
        MigrationRunner("app.db")  # type: ignore[arg-type]


def test_transaction_control_inside_a_migration_is_refused(impl: ModuleType, db: appdb.AppDatabase) -> None:
    migrations = [Migration(1, "sneaky", "CREATE TABLE t (x);\nCOMMIT;\nBEGIN;\nCREATE TABLE u (x);")]
    (result,) = MigrationRunner(db).run_migrations(migrations)
    assert result.status == "failed"
    assert "migration 1 (sneaky) was refused and rolled back: it runs COMMIT itself" in str(result.error)
    assert "t" not in tables(db) and db.get_schema_version() == 0 and not db.in_transaction


def test_non_transactional_migration_runs_outside_a_transaction(
    impl: ModuleType, db: appdb.AppDatabase
) -> None:
    states: list[bool] = []
    migrations = [
        Migration(1, "table", "CREATE TABLE t (x); INSERT INTO t VALUES (1);"),
        Migration(2, "vacuum", "VACUUM", transactional=False),
        Migration(3, "check", lambda d: states.append(d.in_transaction), transactional=False),
    ]
    results = MigrationRunner(db).run_migrations(migrations)
    assert [r.status for r in results] == ["applied", "applied", "applied"]
    # once on the private copy that checks it loses no data, once on the database
    assert states == [False, False] and db.get_schema_version() == 3
    failing = Migration(4, "bad_vacuum", "CREATE TABLE partial (x); VACUUM nowhere", transactional=False)
    (result,) = MigrationRunner(db).run_migrations([*migrations, failing])
    assert result.status == "failed" and "runs outside a transaction" in str(result.error)
    assert "failed on a private copy of the database, so it was not run on the database itself" in str(
        result.error
    )
    assert db.get_schema_version() == 3 and "partial" not in tables(db)  # the real file was not touched


REBUILD = """
CREATE TABLE new_parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born INTEGER);
INSERT INTO new_parents (id, name) SELECT id, name FROM parents;
DROP TABLE parents;
ALTER TABLE new_parents RENAME TO parents;
"""


def _families(db: appdb.AppDatabase) -> None:
    db.exec(
        """
        CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parents(id)
                               ON DELETE CASCADE);
        INSERT INTO parents VALUES (1, 'ann'), (2, 'bob');
        INSERT INTO children VALUES (10, 1), (11, 2), (12, 2);
        """
    )


def test_table_rebuild_with_foreign_keys_off(impl: ModuleType, db: appdb.AppDatabase) -> None:
    _families(db)
    (result,) = MigrationRunner(db).run_migrations([Migration(1, "rebuild", REBUILD, foreign_keys=False)])
    assert result.status == "applied", result.error
    assert [f.kind for f in result.detected] == ["rebuild_table"]
    assert "rebuilds table parents (all 2 rows kept)" in str(result.detected[0])
    assert db.prepare("SELECT count(*) FROM children").scalar() == 3
    assert db.pragma("foreign_keys") == 1
    assert [c["name"] for c in db.pragma("table_info", "parents")] == ["id", "name", "born"]


def test_rebuild_with_foreign_keys_on_cascades_and_is_blocked(
    impl: ModuleType, db: appdb.AppDatabase
) -> None:
    _families(db)
    (result,) = MigrationRunner(db).run_migrations([Migration(1, "rebuild", REBUILD)])
    assert result.status == "blocked"
    assert "deletes 3 rows from children (3 -> 0)" in str(result.error)
    assert db.prepare("SELECT count(*) FROM children").scalar() == 3


def test_foreign_key_violations_roll_the_migration_back(impl: ModuleType, db: appdb.AppDatabase) -> None:
    _families(db)
    orphaning = REBUILD.replace("SELECT id, name FROM parents;", "SELECT id, name FROM parents WHERE id = 1;")
    (result,) = MigrationRunner(db).run_migrations(
        [Migration(1, "orphans", orphaning, foreign_keys=False)], allow_destructive=True
    )
    assert result.status == "failed"
    assert "would leave 2 foreign-key violation(s)" in str(result.error)
    assert "children row 11 refers to a missing row of parents" in str(result.error)
    assert db.prepare("SELECT count(*) FROM parents").scalar() == 2
    assert db.pragma("foreign_keys") == 1 and db.get_schema_version() == 0


def test_setting_foreign_keys_inside_a_transactional_migration_is_refused(
    impl: ModuleType, db: appdb.AppDatabase
) -> None:
    (result,) = MigrationRunner(db).run_migrations([Migration(1, "fk", "PRAGMA foreign_keys=OFF;")])
    assert result.status == "failed" and "foreign_keys=False" in str(result.error)
    assert db.pragma("foreign_keys") == 1


def test_changed_checksum_is_refused_until_repaired(impl: ModuleType, db_path: Path, folder: Path) -> None:
    appdb.init_database(db_path, migrations=folder).close()
    write(folder, "001_users.sql", "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n")
    with pytest.raises(appdb.MigrationError, match=r"migration 1 \(users\) from .*001_users.sql \(recorded"):
        appdb.init_database(db_path, migrations=folder)
    with appdb.init_database(db_path) as db:
        runner = MigrationRunner(db)
        report = runner.validate(folder)
        assert not report.ok and [a.version for a in report.changed] == [1]
        assert report.problems() == ["migration 1 (users) changed after it was applied (checksum differs)"]
        assert [a.version for a in runner.repair(folder)] == [1]
        assert runner.validate(folder).ok
    appdb.init_database(db_path, migrations=folder).close()
    write(
        folder, "002_users_name.py", "def up(db):\n    db.exec('CREATE INDEX users_name ON users (name)')\n"
    )
    with appdb.init_database(db_path) as db:
        assert MigrationRunner(db).run_migrations(folder, repair_checksums=True) == []
        assert MigrationRunner(db).validate(folder).ok


def test_validate_reports_missing_and_out_of_order(
    impl: ModuleType, db: appdb.AppDatabase, folder: Path
) -> None:
    runner = MigrationRunner(db)
    runner.run_migrations(folder)
    (folder / "001_users.sql").unlink()
    write(folder, "005_c.sql", "-- migrate:up\nCREATE TABLE c (x);\n")
    runner.run_migrations(folder)
    write(folder, "001_users_again.sql", "-- migrate:up\nCREATE TABLE users2 (x);\n")
    report = runner.validate(folder)
    assert [a.version for a in report.missing] == [] and [m.version for m in report.out_of_order] == []
    assert [a.version for a in report.changed] == [1]
    (folder / "001_users_again.sql").unlink()
    write(folder, "003_between.sql", "-- migrate:up\nCREATE TABLE between_ (x);\n")
    report = runner.validate(folder)
    assert [a.version for a in report.missing] == [1]
    assert [m.version for m in report.out_of_order] == [3]
    assert "migration 1 (users) is applied but its file is missing" in report.problems()


def test_rollback_runs_down_steps_newest_first(impl: ModuleType, db: appdb.AppDatabase, folder: Path) -> None:
    runner = MigrationRunner(db)
    runner.run_migrations(folder)
    results = runner.rollback(folder, to_version=0)
    assert [(r.version, r.status) for r in results] == [(2, "rolled_back"), (1, "rolled_back")]
    assert (
        tables(db) == ["appdb_migrations"] and db.get_schema_version() == 0 and db.pragma("user_version") == 0
    )
    assert runner.rollback(folder, to_version=0) == []
    assert [r.status for r in runner.run_migrations(folder)] == ["applied", "applied"]


def test_rollback_without_down_changes_nothing(impl: ModuleType, db: appdb.AppDatabase, folder: Path) -> None:
    write(folder, "003_posts.sql", "-- migrate:up\nCREATE TABLE posts (id INTEGER);\n")
    runner = MigrationRunner(db)
    runner.run_migrations(folder)
    with pytest.raises(
        appdb.MigrationError, match=r"migration 3 \(posts\) from .* has no down step; nothing was"
    ):
        runner.rollback(folder, to_version=1)
    assert db.get_schema_version() == 3 and "posts" in tables(db)
    with pytest.raises(appdb.MigrationError, match=r"migration 3 \(posts\) is applied but not among"):
        runner.rollback([m for m in discover_migrations(folder) if m.version < 3], to_version=1)
    with pytest.raises(ValueError, match="to_version must be an int >= 0"):
        runner.rollback(folder, to_version=-1)


def test_rollback_that_loses_data_needs_approval(
    impl: ModuleType, db: appdb.AppDatabase, folder: Path
) -> None:
    runner = MigrationRunner(db)
    runner.run_migrations(folder)
    db.prepare("INSERT INTO users (name) VALUES (?)").run("ann")
    results = runner.rollback(folder, to_version=0)
    assert [(r.version, r.status) for r in results] == [(2, "rolled_back"), (1, "blocked")]
    assert "rolling back migration 1 (users)" in str(results[1].error)
    assert "drops table users (1 row)" in str(results[1].error)
    assert db.get_schema_version() == 1 and db.prepare("SELECT name FROM users").scalar() == "ann"
    (result,) = runner.rollback(folder, to_version=0, allow_destructive=True)
    assert result.status == "rolled_back" and db.get_schema_version() == 0


def test_dry_run_leaves_the_file_untouched(
    impl: ModuleType, db: appdb.AppDatabase, db_path: Path, folder: Path
) -> None:
    db.exec("CREATE TABLE keep (x); INSERT INTO keep VALUES (1);")
    db.checkpoint("truncate")
    before = db_path.read_bytes()
    changes = db.connection.total_changes()
    results = MigrationRunner(db).run_migrations(folder, dry_run=True)
    assert [(r.version, r.status) for r in results] == [(1, "pending"), (2, "pending")]
    assert db.connection.total_changes() == changes
    assert tables(db) == ["keep"] and db.get_schema_version() == 0
    db.checkpoint("truncate")
    assert db_path.read_bytes() == before


def test_a_full_disk_during_a_migration_rolls_it_back_cleanly(
    impl: ModuleType, db: appdb.AppDatabase
) -> None:
    db.exec("CREATE TABLE keep (x); INSERT INTO keep VALUES (1);")
    pages = db.pragma("page_count")
    db.pragma("max_page_count", pages + 3)
    fill = Migration(
        1,
        "fill",
        "CREATE TABLE big (b BLOB); "
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) "
        "INSERT INTO big SELECT randomblob(4000) FROM n;",
    )
    (result,) = MigrationRunner(db).run_migrations([fill])
    assert result.status == "failed" and "migration 1 (fill) failed and was rolled back: FullError" in str(
        result.error
    )
    assert not db.in_transaction and db.is_healthy()
    assert tables(db) == ["keep"] and db.get_schema_version() == 0
    db.pragma("max_page_count", 1_000_000)
    (result,) = MigrationRunner(db).run_migrations([fill])
    assert result.status == "applied" and db.prepare("SELECT count(*) FROM big").scalar() == 50


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DELETE FROM t", "deletes 2 rows from t (2 -> 0)"),
        ("DROP TABLE t; VACUUM", "drops table t (2 rows)"),
    ],
)
def test_non_transactional_data_loss_is_blocked_before_it_runs(
    impl: ModuleType, db_path: Path, sql: str, message: str
) -> None:
    with appdb.init_database(db_path) as db:
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
    migrations = [Migration(1, "purge", sql, transactional=False)]
    with appdb.init_database(db_path, migrations=migrations) as db:
        (result,) = db.migration_results
        assert result.status == "blocked" and [str(f) for f in result.detected] == [message]
        assert isinstance(result.error, appdb.DestructiveMigrationError) and message in str(result.error)
        assert db.get_schema_version() == 0
        assert db.prepare("SELECT count(*) FROM t").scalar() == 2  # found out on a private copy
    with appdb.init_database(db_path, migrations=migrations, allow_destructive=True) as db:
        (result,) = db.migration_results
        assert result.status == "applied" and [str(f) for f in result.detected] == [message]
        assert db.get_schema_version() == 1


CALLABLE_MIGRATIONS = """
import functools

from appdb.migrations import Migration


def create(db, table, marker=None):
    db.exec(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")


class AddIndex:
    def __call__(self, db):
        db.exec("CREATE INDEX users_id ON users (id)")


MIGRATIONS = [
    Migration(1, "users", functools.partial(create, table="users", marker=object())),
    Migration(2, "index", AddIndex()),
    Migration(3, "nested", functools.partial(functools.partial(create, table="other"))),
]
"""

CALLABLE_CHILD = """
import json, sys
import appdb
assert appdb.IMPLEMENTATION == sys.argv[1], appdb.IMPLEMENTATION  # picked through its environment
from callable_migrations import MIGRATIONS
try:
    with appdb.init_database(sys.argv[2], migrations=MIGRATIONS) as db:
        print(json.dumps({"version": db.get_schema_version(), "checksums": [m.checksum for m in MIGRATIONS]}))
except appdb.MigrationError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_callable_migrations_keep_their_checksum_across_processes(
    impl: ModuleType, impl_env: dict[str, str], db_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "callable_migrations.py").write_text(CALLABLE_MIGRATIONS)
    child = tmp_path / "child.py"
    child.write_text(CALLABLE_CHILD)
    env = dict(impl_env)
    source_root = str(Path(appdb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, str(tmp_path), env.get("PYTHONPATH")) if p)
    reports = []
    for _ in range(2):  # a restart: a fresh process builds the same migrations again
        done = subprocess.run(
            [sys.executable, str(child), impl_name(impl), str(db_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    # the second start opens: no checksum changed (the marker's repr holds a memory address)
    assert reports[0] == reports[1] and reports[1]["version"] == 3
