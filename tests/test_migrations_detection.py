"""Data-loss detection by execution: what a migration really does decides approval."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

import appdb
from appdb.migrations import Migration, MigrationRunner


@pytest.fixture
def people(db: appdb.AppDatabase) -> appdb.AppDatabase:
    """``users`` with 1,300 rows, 1,234 of them with an email; ``sessions`` with 5 rows."""
    db.exec(
        """
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
        CREATE INDEX users_name ON users (name);
        CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER, expired INTEGER NOT NULL);
        CREATE TABLE empty_table (x);
        """
    )
    with db.transaction():
        insert = db.prepare("INSERT INTO users (name, email) VALUES (?, ?)")
        insert.run_many((f"u{i}", f"u{i}@example.com" if i < 1234 else None) for i in range(1300))
        db.prepare("INSERT INTO sessions (user_id, expired) VALUES (?, ?)").run_many(
            [(1, 0), (2, 1), (3, 1), (4, 1), (5, 0)]
        )
    return db


def run(db: appdb.AppDatabase, sql: str, **options: object) -> appdb.migrations.MigrationResult:
    (result,) = MigrationRunner(db).run_migrations([Migration(1, "change", sql)], **options)  # type: ignore[arg-type]
    return result


def columns(db: appdb.AppDatabase, table: str) -> list[str]:
    return [row["name"] for row in db.pragma("table_info", table)]


def test_undeclared_column_drop_is_blocked_and_rolled_back(
    impl: ModuleType, people: appdb.AppDatabase
) -> None:
    result = run(people, "ALTER TABLE users DROP COLUMN email;")
    assert result.status == "blocked" and not result.destructive
    assert isinstance(result.error, appdb.DestructiveMigrationError)
    assert "drops column users.email (1,234 non-null values)" in str(result.error)
    assert [(f.kind, f.table, f.column, f.count, f.loses_data) for f in result.detected] == [
        ("drop_column", "users", "email", 1234, True)
    ]
    assert columns(people, "users") == ["id", "name", "email"]
    assert people.get_schema_version() == 0


def test_allow_destructive_approves_detected_loss(impl: ModuleType, people: appdb.AppDatabase) -> None:
    result = run(people, "ALTER TABLE users DROP COLUMN email;", allow_destructive=True)
    assert result.status == "applied" and result.error is None
    assert [str(f) for f in result.detected] == ["drops column users.email (1,234 non-null values)"]
    assert columns(people, "users") == ["id", "name"]


def test_declared_destructive_migration_is_approved_like_detected_ones(
    impl: ModuleType, people: appdb.AppDatabase
) -> None:
    migration = Migration(1, "drop", "DROP TABLE sessions;", destructive=True)
    (blocked,) = MigrationRunner(people).run_migrations([migration])
    assert blocked.status == "blocked" and blocked.destructive and blocked.detected == []
    assert "is marked destructive" in str(blocked.error)
    (applied,) = MigrationRunner(people).run_migrations([migration], allow_destructive=True)
    assert applied.status == "applied"
    assert [str(f) for f in applied.detected] == ["drops table sessions (5 rows)"]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DROP TABLE users;", "drops table users (1,300 rows)"),
        ("DELETE FROM sessions WHERE expired = 1;", "deletes 3 rows from sessions (5 -> 2)"),
        (
            """
            CREATE TABLE new_users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
            INSERT INTO new_users SELECT id, name FROM users;
            DROP TABLE users;
            ALTER TABLE new_users RENAME TO users;
            """,
            "drops column users.email (1,234 non-null values)",
        ),
        (
            """
            CREATE TABLE new_users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
            INSERT INTO new_users SELECT * FROM users WHERE id <= 1000;
            DROP TABLE users;
            ALTER TABLE new_users RENAME TO users;
            """,
            "deletes 300 rows from users (1,300 -> 1,000)",
        ),
    ],
)
def test_data_loss_is_detected_by_execution(
    impl: ModuleType, people: appdb.AppDatabase, sql: str, message: str
) -> None:
    result = run(people, sql)
    assert result.status == "blocked"
    assert message in [f.message for f in result.detected if f.loses_data]
    assert message in str(result.error)
    assert people.prepare("SELECT count(*) FROM users").scalar() == 1300
    assert people.prepare("SELECT count(*) FROM sessions").scalar() == 5
    assert columns(people, "users") == ["id", "name", "email"]


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(
            "ALTER TABLE users DROP COLUMN email; ALTER TABLE users ADD COLUMN email TEXT;",
            id="drop-and-re-add-column",
        ),
        pytest.param(
            """
            CREATE TABLE new_users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
            INSERT INTO new_users (id, name) SELECT id, name FROM users;
            DROP TABLE users;
            ALTER TABLE new_users RENAME TO users;
            """,
            id="rebuild-not-copying-a-column",
        ),
        pytest.param(
            """
            ALTER TABLE users RENAME TO old_users;
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
            INSERT INTO users (id, name) SELECT id, name FROM old_users;
            DROP TABLE old_users;
            """,
            id="rename-away-rebuild",
        ),
        pytest.param(
            """
            CREATE TABLE users_copy AS SELECT id, name FROM users;
            DROP TABLE users;
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
            INSERT INTO users (id, name) SELECT id, name FROM users_copy;
            DROP TABLE users_copy;
            """,
            id="drop-and-recreate",
        ),
    ],
)
def test_values_lost_by_a_rebuild_or_re_added_column_are_data_loss(
    impl: ModuleType, people: appdb.AppDatabase, sql: str
) -> None:
    result = run(people, sql)
    assert result.status == "blocked", result.detected
    message = "loses values of column users.email (1,234 non-null values before, 0 after)"
    assert [(f.kind, f.column, f.count, f.message) for f in result.detected if f.loses_data] == [
        ("lose_values", "email", 1234, message)
    ]
    assert isinstance(result.error, appdb.DestructiveMigrationError) and message in str(result.error)
    assert "rows kept" not in " ".join(str(f) for f in result.detected)
    assert people.prepare("SELECT count(email) FROM users").scalar() == 1234
    assert people.get_schema_version() == 0
    (approved,) = MigrationRunner(people).run_migrations(
        [Migration(1, "change", sql)], allow_destructive=True
    )
    assert approved.status == "applied"
    assert people.prepare("SELECT count(email) FROM users").scalar() == 0


@pytest.fixture
def notes(people: appdb.AppDatabase) -> appdb.AppDatabase:
    """``people`` plus an FTS5 table ``notes`` with 50 rows (and its shadow tables)."""
    people.exec("CREATE VIRTUAL TABLE notes USING fts5(body)")
    people.prepare("INSERT INTO notes (body) VALUES (?)").run_many((f"note {i}",) for i in range(50))
    return people


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DROP TABLE notes;", "drops table notes (50 rows)"),
        ("DELETE FROM notes WHERE rowid > 10;", "deletes 40 rows from notes (50 -> 10)"),
    ],
)
def test_data_loss_in_a_virtual_table_is_detected(
    impl: ModuleType, notes: appdb.AppDatabase, sql: str, message: str
) -> None:
    result = run(notes, sql)
    assert result.status == "blocked"
    assert [str(f) for f in result.detected] == [message]  # one finding: shadow tables are not listed
    assert message in str(result.error)
    assert notes.prepare("SELECT count(*) FROM notes WHERE notes MATCH 'note'").scalar() == 50
    (approved,) = MigrationRunner(notes).run_migrations([Migration(1, "change", sql)], allow_destructive=True)
    assert approved.status == "applied" and [str(f) for f in approved.detected] == [message]


def test_virtual_tables_that_keep_their_rows_apply(impl: ModuleType, notes: appdb.AppDatabase) -> None:
    result = run(
        notes,
        """
        CREATE VIRTUAL TABLE tags USING fts5(tag);
        INSERT INTO tags (tag) VALUES ('a');
        INSERT INTO notes (notes) VALUES ('rebuild');
        ALTER TABLE notes RENAME TO memos;
        """,
    )
    assert result.status == "applied", result.error
    assert [(f.kind, str(f)) for f in result.detected] == [("rename_table", "renames table notes to memos")]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            """
            CREATE TABLE new_users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, age INTEGER);
            INSERT INTO new_users (id, name, email) SELECT id, name, email FROM users;
            DROP TABLE users;
            ALTER TABLE new_users RENAME TO users;
            CREATE INDEX users_name ON users (name);
            """,
            [("rebuild_table", "rebuilds table users (all 1,300 rows kept)")],
        ),
        (
            "ALTER TABLE users RENAME COLUMN email TO mail;",
            [("rename_column", "renames column users.email to users.mail")],
        ),
        ("ALTER TABLE sessions RENAME TO logins;", [("rename_table", "renames table sessions to logins")]),
        ("DROP INDEX users_name;", [("drop_index", "drops index users_name")]),
        ("DROP TABLE empty_table;", [("drop_table", "drops table empty_table (it was empty)")]),
        ("ALTER TABLE users ADD COLUMN age INTEGER; UPDATE users SET email = lower(email);", []),
        # plain UPDATEs are not judged, even next to schema changes of the same table
        ("ALTER TABLE users ADD COLUMN age INTEGER; UPDATE users SET email = NULL WHERE id < 100;", []),
        ("CREATE TABLE IF NOT EXISTS users (x); UPDATE users SET email = NULL WHERE id < 100;", []),
        (  # changing a column's type through a new column keeps its values
            """
            ALTER TABLE users ADD COLUMN email_new BLOB;
            UPDATE users SET email_new = CAST(email AS BLOB);
            ALTER TABLE users DROP COLUMN email;
            ALTER TABLE users RENAME COLUMN email_new TO email;
            """,
            [],
        ),
        (
            "DELETE FROM sessions WHERE id = 1;"
            "INSERT INTO sessions (user_id, expired) VALUES (9, 0), (9, 0);",
            [("delete_rows", "deletes rows from sessions, but the table did not shrink (5 -> 6 rows)")],
        ),
    ],
)
def test_changes_that_keep_data_apply_with_findings(
    impl: ModuleType, people: appdb.AppDatabase, sql: str, expected: list[tuple[str, str]]
) -> None:
    result = run(people, sql)
    assert result.status == "applied", result.error
    assert [(f.kind, f.message) for f in result.detected] == expected
    assert not any(f.loses_data for f in result.detected)


def test_dry_run_shows_findings_of_every_pending_migration(
    impl: ModuleType, people: appdb.AppDatabase, db_path: Path
) -> None:
    migrations = [
        Migration(1, "add_age", "ALTER TABLE users ADD COLUMN age INTEGER;"),
        Migration(2, "drop_email", "ALTER TABLE users DROP COLUMN email;"),
        Migration(3, "purge", "DELETE FROM sessions;"),
        Migration(4, "broken", "SELECT * FROM nowhere;"),
        Migration(5, "after_broken", "DROP TABLE users;"),
    ]
    runner = MigrationRunner(people)
    results = runner.run_migrations(migrations, dry_run=True)
    assert [(r.version, r.status) for r in results] == [
        (1, "pending"),
        (2, "blocked"),
        (3, "skipped"),
        (4, "skipped"),
        (5, "skipped"),
    ]
    assert [str(f) for f in results[1].detected] == ["drops column users.email (1,234 non-null values)"]
    assert [str(f) for f in results[2].detected] == ["deletes 5 rows from sessions (5 -> 0)"]
    assert results[3].detected == [] and results[4].detected == []
    assert columns(people, "users") == ["id", "name", "email"] and people.get_schema_version() == 0
    approved = runner.run_migrations(migrations, dry_run=True, allow_destructive=True)
    assert [r.status for r in approved] == ["pending", "pending", "pending", "failed", "skipped"]
    assert "migration 4 (broken)" in str(approved[3].error)
    assert people.prepare("SELECT count(*) FROM sessions").scalar() == 5


def test_a_blocked_migration_stops_later_ones(impl: ModuleType, people: appdb.AppDatabase) -> None:
    migrations = [
        Migration(1, "purge", "DELETE FROM sessions;"),
        Migration(2, "index", "CREATE INDEX sessions_user ON sessions (user_id);"),
    ]
    results = MigrationRunner(people).run_migrations(migrations)
    assert [(r.version, r.status) for r in results] == [(1, "blocked"), (2, "skipped")]
    assert people.prepare("SELECT count(*) FROM sessions").scalar() == 5
    assert people.prepare("SELECT count(*) FROM sqlite_schema WHERE name = 'sessions_user'").scalar() == 0
