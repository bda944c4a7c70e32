"""Other tools' migration folders read as they are (goose, dbmate, sqlx, golang-migrate,
diesel), the header rule, byte-order marks and checksums across the formats."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

import appdb
from appdb.cli import main
from appdb.migrations import Migration, MigrationRunner, discover_migrations, parse_sql
from appdb.migrations.model import checksum_text

FORMATS = Path(__file__).parent / "migration_fixtures" / "formats"


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` (relative paths) under ``folder`` and return it."""
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def schema(db: appdb.AppDatabase) -> dict[str, list[str]]:
    """Each table, index and trigger of ``db`` (but appdb's own) with its columns (tables only)."""
    rows = db.prepare(
        "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite%' AND name NOT LIKE 'appdb%'"
    ).all()
    return {
        f"{row['type']} {row['name']}": (
            [c["name"] for c in db.pragma("table_info", row["name"])] if row["type"] == "table" else []
        )
        for row in rows
    }


def error_of(folder: Path) -> str:
    with pytest.raises(appdb.MigrationError) as info:
        discover_migrations(folder)
    return str(info.value)


# --- each tool's folder applies and rolls back --------------------------------------------

EXPECTED = {
    "goose": (
        [(1, "create_users", True), (2, "add_posts", True), (3, "index_posts", False)],
        {
            "table users": ["id", "email", "updated_at"],
            "trigger users_touch": [],
            "table posts": ["id", "user_id", "body"],
            "index posts_by_user": [],
        },
    ),
    "dbmate": (
        [(20151129054053, "create_users", True), (20151129060000, "index_users", False)],
        {"table users": ["id", "name", "email"], "index users_email": []},
    ),
    "golang_migrate": (
        [(1, "create_users", True), (2, "add-email", True), (3, "create_sessions", True)],
        {
            "table users": ["id", "name", "email"],
            "table sessions": ["token", "user_id"],
            "index sessions_user": [],
        },
    ),
    "sqlx": (
        [
            (20210422143411, "create_history", True),
            (20220505083406, "vacuum", False),
            (20230401000000, "add_deleted_at", True),
        ],
        {
            "table history": ["id", "timestamp", "duration", "command", "cwd", "deleted_at"],
            "index idx_history_timestamp": [],
        },
    ),
    "diesel": (
        [
            (20180114171611, "create_tables", True),
            (20180217205753, "create_devices", True),
            (20190912100000, "add_favorites", False),
        ],
        {
            "table users": ["uuid", "email", "name"],
            "table ciphers": ["uuid", "user_uuid", "data", "favorite"],
            "table devices": ["uuid", "user_uuid", "name"],
        },
    ),
}


@pytest.mark.parametrize("tool", sorted(EXPECTED))
def test_each_tools_folder_applies_as_it_is(impl: ModuleType, tmp_path: Path, tool: str) -> None:
    migrations, expected_schema = EXPECTED[tool]
    found = discover_migrations(FORMATS / tool)
    assert [(m.version, m.name, m.transactional) for m in found] == migrations
    with appdb.init_database(tmp_path / "app.db", migrations=FORMATS / tool) as db:
        assert [(r.version, r.status) for r in db.migration_results] == [
            (v, "applied") for v, _, _ in migrations
        ]
        assert db.get_schema_version() == migrations[-1][0]
        assert schema(db) == expected_schema
    with appdb.init_database(tmp_path / "app.db", migrations=FORMATS / tool) as again:
        assert again.migration_results == []  # checksums are stable from one discovery to the next


@pytest.mark.parametrize(
    ("tool", "to_version"), [("goose", 1), ("dbmate", 0), ("golang_migrate", 1), ("diesel", 0)]
)
def test_rollback_runs_the_down_steps(impl: ModuleType, tmp_path: Path, tool: str, to_version: int) -> None:
    migrations, _ = EXPECTED[tool]
    with appdb.init_database(tmp_path / "app.db", migrations=FORMATS / tool) as db:
        results = MigrationRunner(db).rollback(FORMATS / tool, to_version=to_version, allow_destructive=True)
        undone = [v for v, _, _ in reversed(migrations) if v > to_version]
        assert [(r.version, r.status) for r in results] == [(v, "rolled_back") for v in undone]
        left = {"goose": {"table users", "trigger users_touch"}, "golang_migrate": {"table users"}}
        assert set(schema(db)) == left.get(tool, set())
        assert db.get_schema_version() == to_version


def test_goose_statement_markers_are_dropped_and_the_statements_kept() -> None:
    first = discover_migrations(FORMATS / "goose")[0]
    assert isinstance(first.up, str) and isinstance(first.down, str)
    assert "+goose" not in first.up and "+goose" not in first.down
    assert "BEGIN\n    UPDATE users SET updated_at = 'touched' WHERE id = NEW.id;\nEND;" in first.up
    assert first.down == "DROP TRIGGER users_touch;\nDROP TABLE users;"


def test_goose_trigger_between_statement_markers_works(impl: ModuleType, tmp_path: Path) -> None:
    with appdb.init_database(tmp_path / "app.db", migrations=FORMATS / "goose") as db:
        db.exec("INSERT INTO users (email) VALUES ('a@x'); UPDATE users SET email = 'b@x'")
        assert db.prepare("SELECT updated_at FROM users").all()[0]["updated_at"] == "touched"


def test_diesel_initial_setup_is_skipped_and_versions_are_the_timestamp_digits() -> None:
    found = discover_migrations(FORMATS / "diesel")
    assert 0 not in [m.version for m in found]
    assert found[0].source == str(FORMATS / "diesel" / "2018-01-14-171611_create_tables")
    assert found[-1].down == "ALTER TABLE ciphers DROP COLUMN favorite;"


def test_sqlx_plain_file_is_the_up_step_as_a_whole() -> None:
    history, vacuum, deleted = discover_migrations(FORMATS / "sqlx")
    text = (FORMATS / "sqlx" / "20210422143411_create_history.sql").read_text()
    assert history.up == text.strip() and history.down is None
    assert vacuum.up == "-- no-transaction\nvacuum;" and not vacuum.transactional
    assert deleted.down == "alter table history drop column deleted_at;"


def test_formats_mix_across_versions(impl: ModuleType, tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "2018-01-14-171611_users/up.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY);",
            "20190101000000_posts.sql": "-- +goose Up\nCREATE TABLE posts (id);",
            "20200101000000_tags.up.sql": "CREATE TABLE tags (id);",
            "20210101000000_notes.sql": "-- migrate:up\nCREATE TABLE notes (id);",
            "20220101000000_logs.sql": "CREATE TABLE logs (id);",
            "fixtures/seed.csv": "not a migration folder\n",
        },
    )
    with appdb.init_database(tmp_path / "app.db", migrations=folder) as db:
        assert db.get_schema_version() == 20220101000000
        assert set(schema(db)) == {f"table {t}" for t in ("users", "posts", "tags", "notes", "logs")}


def test_a_package_with_diesel_folders(
    monkeypatch: pytest.MonkeyPatch, impl: ModuleType, tmp_path: Path
) -> None:
    package = tmp_path / "pkgs" / "diesel_migrations_for_appdb_tests"
    shutil.copytree(FORMATS / "diesel", package)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    found = discover_migrations("diesel_migrations_for_appdb_tests")
    assert found[0].source == "diesel_migrations_for_appdb_tests/2018-01-14-171611_create_tables"
    assert [m.checksum for m in found] == [m.checksum for m in discover_migrations(FORMATS / "diesel")]
    with appdb.init_database(tmp_path / "app.db", migrations="diesel_migrations_for_appdb_tests") as db:
        assert db.get_schema_version() == 20190912100000


# --- pairs and plain files ------------------------------------------------------------------


def test_an_up_file_alone_has_no_down_step(impl: ModuleType, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"1_users.up.sql": "CREATE TABLE users (id);"})
    (users,) = discover_migrations(folder)
    assert (users.up, users.down) == ("CREATE TABLE users (id);", None)
    with appdb.init_database(tmp_path / "app.db", migrations=folder) as db:
        with pytest.raises(appdb.MigrationError, match=r"1 \(users\).*has no down step"):
            MigrationRunner(db).rollback(folder, to_version=0)


def test_a_down_file_without_sql_is_no_down_step(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "2019-01-01-000000_x/up.sql": "-- Your SQL goes here\nCREATE TABLE x (id);",
            "2019-01-01-000000_x/down.sql": "-- This file should undo anything in `up.sql`\n",
        },
    )
    (x,) = discover_migrations(folder)
    assert x.up == "-- Your SQL goes here\nCREATE TABLE x (id);" and x.down is None


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"3_x.down.sql": "DROP TABLE x;"}, "3_x.down.sql: a .down.sql without its .up.sql (add 3_x.up.sql"),
        (
            {"3_x.up.sql": "CREATE TABLE x (id);", "3_y.down.sql": "DROP TABLE x;"},
            "the up and down files of version 3 have different names",
        ),
        ({"3_x.sql": "-- migrate:up\nSELECT 1;", "3_x.up.sql": "SELECT 1;"}, "duplicate migration version 3"),
        ({"3_x.up.sql": "SELECT 1;", "03_x.up.sql": "SELECT 2;"}, "duplicate migration version 3"),
        ({"3_x.up.sql": "-- migrate:up\nSELECT 1;"}, "3_x.up.sql, line 1: this file is one step as a whole"),
        ({"3_x.up.sql": "-- comment only\n"}, "3_x.up.sql: no SQL in it"),
        ({"3_x.down.py": "def up(db): pass"}, "3_x.down.py: the name does not match"),
        ({"3_x y.sql": "SELECT 1;"}, "3_x y.sql: the name does not match"),
        ({"3_x.sql": "\n-- just a comment\n"}, "3_x.sql: no SQL in it (a file without '-- migrate:up'"),
        (
            {"3_x.sql": "-- migrate up\nSELECT 1;\n-- migrate down\nSELECT 2;"},
            "3_x.sql, line 1: '-- migrate up' looks",
        ),
        (
            {"3_x.sql": "-- +migrate Up\nSELECT 1;"},
            "3_x.sql, line 1: appdb does not read '-- +migrate' directives",
        ),
    ],
)
def test_pair_and_plain_file_errors_name_the_file(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    assert expected in error_of(write(tmp_path, files))


def test_sqlx_no_transaction_in_a_reversible_pair(tmp_path: Path) -> None:
    folder = write(tmp_path, {"5_v.up.sql": "-- no-transaction\nVACUUM;", "5_v.down.sql": "SELECT 1;"})
    assert not discover_migrations(folder)[0].transactional


# --- goose ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "-- +goose Up\nSELECT 1;\n-- +goose Sideways\n",
            "line 3: unknown goose directive '-- +goose Sideways'",
        ),
        ("-- +goose Up\n-- +goose StatementEnd\n", "line 2: '-- +goose StatementEnd' without"),
        ("-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n", "line 2: '-- +goose StatementBegin' has no"),
        (
            "-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n-- +goose Down\nSELECT 2;",
            "line 4: the '-- +goose StatementBegin' of line 2 has no '-- +goose StatementEnd'",
        ),
        (
            "-- +goose StatementBegin\n-- +goose Up\n",
            "line 1: '-- +goose StatementBegin' before '-- +goose Up'",
        ),
        (
            "-- +goose Down\nSELECT 1;\n-- +goose Up\nSELECT 2;",
            "line 1: '-- +goose Down' before '-- +goose Up'",
        ),
        ("-- +goose Up\nSELECT 1;\n-- +goose Up\nSELECT 2;", "line 3: a second '-- +goose Up'"),
        ("CREATE TABLE t (x);\n-- +goose Up\nSELECT 1;", "line 1: SQL before '-- +goose Up'"),
        ("-- +goose Up\n-- +goose Down\nSELECT 1;", "no '-- +goose Up' section with SQL in it"),
        (
            "-- +goose ENVSUB ON\n-- +goose Up\nSELECT '${X}';",
            "line 1: appdb does not substitute environment",
        ),
        ("-- +goose Up\nSELECT 1;\n-- migrate:down\nSELECT 2;", "mixes goose's '-- +goose' markers (line 1)"),
        ("-- goose Up\nSELECT 1;", "line 1: '-- goose Up' looks like a section marker"),
        (
            "-- transactional: true\n-- +goose NO TRANSACTION\n-- +goose Up\nVACUUM;",
            "line 2: sets transactional",
        ),
    ],
)
def test_goose_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(appdb.MigrationError) as info:
        parse_sql(text, 7, "g", "m/007_g.sql")
    assert "m/007_g.sql" in str(info.value) and expected in str(info.value)


def test_goose_directives_ignore_case_and_spaces() -> None:
    text = "-- +goose no transaction\n-- +goose ENVSUB OFF\n--+goose UP\nVACUUM;\n-- +goose  down\nSELECT 1;"
    migration = parse_sql(text, 7, "g", "007_g.sql")
    assert (migration.up, migration.down, migration.transactional) == ("VACUUM;", "SELECT 1;", False)


def test_goose_file_may_carry_appdb_headers() -> None:
    migration = parse_sql("-- destructive: true\n-- +goose Up\nDROP TABLE t;", 7, "g", "007_g.sql")
    assert migration.destructive and migration.up == "DROP TABLE t;"


# --- dbmate -----------------------------------------------------------------------------------


def test_dbmate_transaction_false_applies(impl: ModuleType, tmp_path: Path) -> None:
    """Defect 1: this used to be blamed as 'line 2: SQL before -- migrate:up'."""
    folder = write(
        tmp_path / "m", {"20151129054053_vacuum.sql": "-- migrate:up transaction:false\nVACUUM;\n"}
    )
    assert not discover_migrations(folder)[0].transactional
    with appdb.init_database(tmp_path / "app.db", migrations=folder) as db:
        assert [r.status for r in db.migration_results] == ["applied"]


@pytest.mark.parametrize(
    ("text", "transactional"),
    [
        ("-- migrate:up transaction:false\nSELECT 1;\n-- migrate:down\nSELECT 2;", False),
        ("-- migrate:up\nSELECT 1;\n-- migrate:down transaction:false\nSELECT 2;", False),
        ("-- migrate:up transaction:false\nSELECT 1;\n-- migrate:down transaction:false\nSELECT 2;", False),
        ("-- migrate:up   transaction:true  \nSELECT 1;", True),
    ],
)
def test_dbmate_transaction_option_on_either_marker(text: str, transactional: bool) -> None:
    assert parse_sql(text, 1, "x", "001_x.sql").transactional is transactional


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-- migrate:up transaction:maybe\nSELECT 1;", "line 1: unknown option 'transaction:maybe'"),
        ("-- migrate:up foo:bar\nSELECT 1;", "line 1: unknown option 'foo:bar'"),
        ("-- migrate:up transaction\nSELECT 1;", "line 1: unknown option 'transaction'"),
        (
            "-- migrate:up transaction:false\nSELECT 1;\n-- migrate:down transaction:true\nSELECT 2;",
            "001_x.sql, line 3: sets transactional true but 001_x.sql, line 1 set it false",
        ),
    ],
)
def test_dbmate_option_errors(text: str, expected: str) -> None:
    with pytest.raises(appdb.MigrationError, match=r"001_x\.sql") as info:
        parse_sql(text, 1, "x", "001_x.sql")
    assert expected in str(info.value)


# --- diesel -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"0000-00-00-000000_setup/up.sql": "SELECT 1;"},
            "0000-00-00-000000_setup: the version must be 1 or more",
        ),
        ({"2019-01-01-000000_x/down.sql": "SELECT 1;"}, "2019-01-01-000000_x: no up.sql"),
        ({"create_users/up.sql": "SELECT 1;"}, "create_users: the name does not match diesel's"),
        (
            {
                "2019-01-01-000000_x/up.sql": "SELECT 1;",
                "2019-01-01-000000_x/metadata.toml": "run_in_tx = false",
            },
            "metadata.toml: unknown key 'run_in_tx'",
        ),
        (
            {
                "2019-01-01-000000_x/up.sql": "SELECT 1;",
                "2019-01-01-000000_x/metadata.toml": "run_in_transaction = 1",
            },
            "'run_in_transaction' must be true or false, not 1",
        ),
        (
            {
                "2019-01-01-000000_x/up.sql": "SELECT 1;",
                "2019-01-01-000000_x/metadata.toml": "run_in_transaction =",
            },
            "metadata.toml: not valid TOML",
        ),
        (
            {"2019-01-01-000000_x/up.sql": "SELECT 1;", "20190101000000_y.sql": "SELECT 2;"},
            "duplicate migration version 20190101000000",
        ),
    ],
)
def test_diesel_folder_errors(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert expected in error_of(write(tmp_path, files))


def test_diesel_metadata_without_tomllib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Python 3.10 has no tomllib: the one key diesel uses is still read."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    metadata = "# VACUUM needs it\nrun_in_transaction = false  # see up.sql\n"
    folder = write(
        tmp_path / "a",
        {"2019-01-01-000000_x/up.sql": "VACUUM;", "2019-01-01-000000_x/metadata.toml": metadata},
    )
    assert not discover_migrations(folder)[0].transactional
    (folder / "2019-01-01-000000_x" / "metadata.toml").write_text("run_in_transaction = true\n")
    assert discover_migrations(folder)[0].transactional
    (folder / "2019-01-01-000000_x" / "metadata.toml").write_text("[table]\n")
    assert "metadata.toml, line 1: on Python 3.10 appdb reads only" in error_of(folder)


def test_other_folders_are_ignored(tmp_path: Path) -> None:
    folder = write(
        tmp_path, {"1_a.sql": "SELECT 1;", "docs/notes.md": "# notes\n", "seeds/users.sql": "SELECT 2;"}
    )
    assert [m.version for m in discover_migrations(folder)] == [1]


# --- headers (defect 4) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "-- destructive: true        (optional; true = needs approval)",
            "line 1: '-- destructive:' must be true or false (or on/off, yes/no, 1/0) with nothing after it",
        ),
        ("-- transactional: false  -- VACUUM", "line 1: '-- transactional:' must be true or false"),
        ("-- destructive:", "line 1: '-- destructive:' must be true or false"),
        ("-- destructiv: true", "line 1: unknown header '-- destructiv:'; did you mean '-- destructive:'?"),
        ("-- Transaction: false", "did you mean '-- transactional:'?"),
        ("-- foreign-keys: off", "did you mean '-- foreign_keys:'?"),
        ("-- foreign keys: off", "did you mean '-- foreign_keys:'?"),
        ("-- destructive true", "line 1: a header needs a colon and a value: write '-- destructive: true'"),
        ("-- transactional = false", "write '-- transactional: false'"),
        ("-- destructive", "write '-- destructive: true'"),
    ],
)
@pytest.mark.parametrize(
    "body", ["-- migrate:up\nDROP TABLE t;", "-- +goose Up\nDROP TABLE t;", "DROP TABLE t;"]
)
def test_malformed_headers_are_errors_never_comments(
    tmp_path: Path, header: str, expected: str, body: str
) -> None:
    folder = write(tmp_path, {"001_x.sql": f"{header}\n{body}\n"})
    message = error_of(folder)
    assert str(folder / "001_x.sql") in message and expected in message


def test_a_header_with_trailing_text_does_not_run_unapproved(impl: ModuleType, tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_t.sql": "-- migrate:up\nCREATE TABLE t (x); INSERT INTO t VALUES (1);",
            "002_drop.sql": "-- destructive: true   (drops t)\n-- migrate:up\nDROP TABLE t;",
        },
    )
    with pytest.raises(appdb.MigrationError, match=r"002_drop.sql, line 1: '-- destructive:' must be"):
        appdb.init_database(tmp_path / "app.db", migrations=folder)
    assert not (tmp_path / "app.db").exists()


@pytest.mark.parametrize(
    "comment",
    [
        "-- create the users table",
        "-- Note: this adds users",
        "-- author: ann",
        "-- description: users and their emails",
        "-- Destructive migration: see ticket 12",
        "-- TODO: index the email column",
        "-- transactions are handled by appdb",
        "--",
    ],
)
def test_ordinary_comments_before_the_sections_stay_comments(comment: str) -> None:
    for text in (
        f"{comment}\n-- migrate:up\nSELECT 1;",
        f"{comment}\n-- +goose Up\nSELECT 1;",
        f"{comment}\nSELECT 1;",
    ):
        migration = parse_sql(text, 1, "x", "001_x.sql")
        assert (migration.destructive, migration.transactional, migration.foreign_keys) == (False, True, True)


@pytest.mark.parametrize(
    "text",
    [
        "-- destructive: yes\n-- transactional: off\n-- foreign_keys: 0\n-- migrate:up\nSELECT 1;",
        "-- DESTRUCTIVE: TRUE\n--transactional:false\n-- Foreign_Keys: Off\n-- +goose Up\nSELECT 1;",
        "-- destructive: on\n-- transactional: no\n-- foreign_keys: false\nSELECT 1;",
    ],
)
def test_valid_headers_in_every_single_file_format(text: str) -> None:
    migration = parse_sql(text, 1, "x", "001_x.sql")
    assert (migration.destructive, migration.transactional, migration.foreign_keys) == (True, False, False)


def test_header_lines_in_up_and_down_files_combine(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        {
            "4_x.up.sql": "-- destructive: true\nDROP TABLE a;",
            "4_x.down.sql": "-- transactional: false\nVACUUM;",
        },
    )
    (x,) = discover_migrations(folder)
    assert x.destructive and not x.transactional
    (folder / "4_x.down.sql").write_text("-- destructive: false\nSELECT 1;")
    assert "4_x.down.sql, line 1: sets destructive false but" in error_of(folder)


# --- byte-order mark (defect 2) and checksums ---------------------------------------------------


def test_a_file_with_a_byte_order_mark_is_read(impl: ModuleType, tmp_path: Path) -> None:
    text = "-- destructive: true\n-- migrate:up\nCREATE TABLE t (x);\n-- migrate:down\nDROP TABLE t;\n"
    plain = write(tmp_path / "plain", {"001_t.sql": text})
    marked = write(tmp_path / "bom", {"001_t.sql": b"\xef\xbb\xbf" + text.encode()})
    (with_bom,) = discover_migrations(marked)
    (without,) = discover_migrations(plain)
    assert with_bom == without and with_bom.destructive and with_bom.up == "CREATE TABLE t (x);"
    assert with_bom.checksum == without.checksum == hashlib.sha256(text.encode()).hexdigest()
    assert parse_sql("\ufeff-- migrate:up\nSELECT 1;", 1, "x", "001_x.sql").up == "SELECT 1;"
    with appdb.init_database(tmp_path / "app.db", migrations=marked, allow_destructive=True) as db:
        assert db.get_schema_version() == 1
    with appdb.init_database(tmp_path / "app.db", migrations=plain) as db:
        assert db.migration_results == []  # the same migration: saving without the mark changes nothing


@pytest.mark.parametrize("tool", ["dbmate", "goose", "sqlx"])
def test_single_file_checksum_is_the_files_text(tool: str) -> None:
    files = {p.name: p for p in (FORMATS / tool).iterdir() if not p.name.endswith((".up.sql", ".down.sql"))}
    checked = 0
    for migration in discover_migrations(FORMATS / tool):
        path = files.get(Path(migration.source or "").name)
        if path is not None:
            assert migration.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
            checked += 1
    assert checked >= 2


def test_several_files_checksum_is_stable_and_follows_every_file(tmp_path: Path) -> None:
    def checksums(files: dict[str, str | bytes]) -> list[str]:
        folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        return [m.checksum for m in discover_migrations(write(folder, files))]

    pair = {"1_x.up.sql": "CREATE TABLE x (id);\n", "1_x.down.sql": "DROP TABLE x;\n"}
    diesel = {"2019-01-01-000000_x/up.sql": "VACUUM;\n", "2019-01-01-000000_x/down.sql": "SELECT 1;\n"}
    (base,) = checksums(pair)
    assert base == checksum_text("-- up.sql --\nCREATE TABLE x (id);\n\n-- down.sql --\nDROP TABLE x;\n")
    assert checksums(pair) == [base]
    assert checksums({k: v.replace("\n", "\r\n") for k, v in pair.items()}) == [base]
    assert checksums({**pair, "1_x.up.sql": "CREATE TABLE x (id, y);\n"}) != [base]
    assert checksums({**pair, "1_x.down.sql": "DROP TABLE IF EXISTS x;\n"}) != [base]
    assert checksums({"1_x.up.sql": pair["1_x.up.sql"]}) == [checksum_text(pair["1_x.up.sql"])]
    (folder,) = checksums(diesel)
    metadata = {**diesel, "2019-01-01-000000_x/metadata.toml": "run_in_transaction = false\n"}
    assert checksums(metadata) not in (
        [folder],
        checksums({**metadata, "2019-01-01-000000_x/metadata.toml": ""}),
    )


def test_appdb_file_checksums_are_unchanged(tmp_path: Path) -> None:
    """Databases already record these: SHA-256 of the file's text, line endings normalised."""
    text = "-- destructive: true\r\n-- migrate:up\r\nDROP TABLE t;\r\n"
    folder = write(tmp_path, {"001_x.sql": text, "002_y.py": "def up(db):\n    pass\n"})
    x, y = discover_migrations(folder)
    assert x.checksum == hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()
    assert y.checksum == hashlib.sha256(b"def up(db):\n    pass\n").hexdigest()


# --- a .dump's PRAGMA foreign_keys (defect 3) ---------------------------------------------------


def test_pragma_foreign_keys_with_the_header_already_says_remove_the_pragma(
    impl: ModuleType, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {"001_dump.sql": "-- foreign_keys: off\n-- migrate:up\nPRAGMA foreign_keys=OFF;\nCREATE TABLE t;"},
    )
    with pytest.raises(appdb.MigrationError) as info:
        appdb.init_database(tmp_path / "app.db", migrations=folder)
    message = str(info.value)
    assert "remove" in message and "PRAGMA foreign_keys" in message
    assert "or '-- foreign_keys: off' in an SQL file" not in message


def test_migration_objects_keep_their_checksum_rule() -> None:
    assert Migration(1, "x", "SELECT 1").checksum == checksum_text("SELECT 1\n-- down\n")


def test_the_appdb_command_reads_a_goose_folder(
    impl: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--db", str(tmp_path / "app.db"), "--migrations", str(FORMATS / "goose")]
    assert main([*common, "migrate"]) == 0
    assert main([*common, "validate"]) == 0
    assert "ok: migrations match the database" in capsys.readouterr().out


def test_a_diesel_project_adopts_its_folder_as_it_is(impl: ModuleType, tmp_path: Path) -> None:
    """diesel ran the migrations; appdb records them from the same folder without running them."""
    folder = FORMATS / "diesel"
    with appdb.init_database(tmp_path / "app.db") as db:
        db.exec(
            "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, "
            "run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        for migration in discover_migrations(folder):
            assert isinstance(migration.up, str)
            db.exec(migration.up)
            db.prepare("INSERT INTO __diesel_schema_migrations (version) VALUES (?)").run(
                str(migration.version)
            )
        adopted = MigrationRunner(db).adopt(folder, source="diesel")
        assert [a.version for a in adopted] == [20180114171611, 20180217205753, 20190912100000]
    with appdb.init_database(tmp_path / "app.db", migrations=folder) as db:
        assert db.migration_results == [] and db.get_schema_version() == 20190912100000
