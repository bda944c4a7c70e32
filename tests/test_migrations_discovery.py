"""Discovery of migration files in directories and packages, and its errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import appdb
from appdb.migrations import Migration, discover_migrations

FIXTURES = Path(__file__).parent / "migration_fixtures"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_directory_with_sql_and_python_files_sorted_by_version(tmp_path: Path) -> None:
    write(tmp_path, "010_late.sql", "-- migrate:up\nCREATE TABLE late (id INTEGER);\n")
    write(
        tmp_path,
        "002_audit.py",
        """
        from appdb.migrations import Migration

        migration = Migration(2, "audit", "CREATE TABLE audit (id INTEGER)", "DROP TABLE audit")
        """,
    )
    write(
        tmp_path,
        "001_init.sql",
        """
        -- destructive: true
        -- transactional: false
        -- foreign_keys: off
        -- migrate:up
        CREATE TABLE a (id INTEGER);
        -- migrate:down
        DROP TABLE a;
        """,
    )
    write(tmp_path, "003_funcs.py", "def up(db):\n    db.exec('CREATE TABLE f (x)')\ndestructive = True\n")
    write(tmp_path, "_helpers.py", "raise RuntimeError('helpers are not migrations')\n")
    write(tmp_path, "notes.txt", "ignored\n")
    migrations = discover_migrations(tmp_path)
    assert [(m.version, m.name) for m in migrations] == [
        (1, "init"),
        (2, "audit"),
        (3, "funcs"),
        (10, "late"),
    ]
    first, audit, funcs, late = migrations
    assert first.up == "CREATE TABLE a (id INTEGER);" and first.down == "DROP TABLE a;"
    assert (first.destructive, first.transactional, first.foreign_keys) == (True, False, False)
    assert audit.down == "DROP TABLE audit" and not audit.destructive
    assert callable(funcs.up) and funcs.down is None and funcs.destructive
    assert late.down is None and late.transactional and late.foreign_keys
    assert first.source is not None and first.source.endswith("001_init.sql")


def test_string_path_and_pathlike_are_the_same_source(tmp_path: Path) -> None:
    write(tmp_path, "001_a.sql", "-- migrate:up\nSELECT 1;\n")
    assert discover_migrations(str(tmp_path)) == discover_migrations(tmp_path)


def test_package_name_uses_importlib_resources(
    monkeypatch: pytest.MonkeyPatch, impl: ModuleType, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    migrations = discover_migrations("shipped_migrations")
    assert [(m.version, m.name) for m in migrations] == [(1, "create_notes"), (2, "add_tags")]
    assert migrations[0].source == "shipped_migrations/001_create_notes.sql"
    with appdb.init_database(tmp_path / "app.db", migrations="shipped_migrations") as db:
        assert db.get_schema_version() == 2
        assert [r.status for r in db.migration_results] == ["applied", "applied"]


def test_checksum_ignores_line_endings(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "001_x.sql").write_bytes(b"-- migrate:up\nCREATE TABLE x (id);\n")
    (tmp_path / "b" / "001_x.sql").write_bytes(b"-- migrate:up\r\nCREATE TABLE x (id);\r\n")
    (one,) = discover_migrations(tmp_path / "a")
    (two,) = discover_migrations(tmp_path / "b")
    assert one.checksum == two.checksum
    (tmp_path / "b" / "001_x.sql").write_bytes(b"-- migrate:up\nCREATE TABLE x (id, y);\n")
    assert discover_migrations(tmp_path / "b")[0].checksum != one.checksum


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"001_a.sql": "-- migrate:up\nSELECT 1;", "001_b.sql": "-- migrate:up\nSELECT 2;"},
            "duplicate migration version 1",
        ),
        ({"init.sql": "-- migrate:up\nSELECT 1;"}, "init.sql: the name does not match"),
        ({"001-init.py": "def up(db): pass"}, "001-init.py: the name does not match"),
        ({"000_zero.sql": "-- migrate:up\nSELECT 1;"}, "000_zero.sql: the version must be 1 or more"),
        (
            {"001_a.sql": "CREATE TABLE t (x);\n-- migrate:up\nSELECT 1;"},
            "001_a.sql, line 1: SQL before '-- migrate:up'",
        ),
        ({"001_a.sql": "-- migrate:down\nDROP TABLE t;"}, "001_a.sql: no '-- migrate:up' section"),
        (
            {"001_a.sql": "-- migrate:up\n\n-- migrate:down\nDROP TABLE t;"},
            "001_a.sql: no '-- migrate:up' section",
        ),
        ({"001_a.sql": "-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;"}, "001_a.sql, line 3: a second"),
        ({"001_a.sql": "-- destructive: maybe\n-- migrate:up\nSELECT 1;"}, "must be true or false"),
        ({"001_a.sql": "-- migrate:sideways\nSELECT 1;"}, "unknown section 'migrate:sideways'"),
        (
            {"002_a.py": "from appdb.migrations import Migration\nmigration = Migration(3, 'a', 'SELECT 1')"},
            "002_a.py: the file name says version 2 but the Migration inside says 3",
        ),
        (
            {"002_a.py": "version = 5\ndef up(db): pass"},
            "002_a.py: the file name says version 2 but 'version'",
        ),
        ({"001_a.py": "def up(db):\n    return (\n"}, "001_a.py: syntax error at line"),
        (
            {"001_a.py": "import no_such_module_for_appdb_tests\n"},
            "001_a.py failed to import: ModuleNotFoundError",
        ),
        ({"001_a.py": "x = 1\n"}, "001_a.py: defines neither 'migration = Migration(...)' nor 'up(db)'"),
        (
            {"001_a.py": "migration = 'CREATE TABLE t (x)'\n"},
            "'migration' must be an appdb.migrations.Migration",
        ),
        ({"001_a.py": "def up(db): pass\ndestructive = 'yes'\n"}, "'destructive' must be True or False"),
        ({"001_a.py": "def up(db): pass\ndown = 'DROP TABLE t'\n"}, "'down' must be a function"),
        ({"001_a.sql": b"-- migrate:up\nSELECT '\xff';"}, "001_a.sql: not valid UTF-8"),
    ],
)
def test_bad_sources_raise_migration_error_naming_the_file(
    tmp_path: Path, files: dict[str, str | bytes], expected: str
) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(appdb.MigrationError) as info:
        discover_migrations(tmp_path)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("no/such/dir", "neither a directory nor an importable package name"),
        ("no_such_package_for_appdb_tests", "neither a directory nor an importable package"),
        ("json.decoder", "is a module, not a package"),
    ],
)
def test_missing_source_is_a_clear_error(source: str, expected: str) -> None:
    with pytest.raises(appdb.MigrationError, match=expected):
        discover_migrations(source)


def test_a_file_is_not_a_source(tmp_path: Path) -> None:
    path = write(tmp_path, "001_a.sql", "-- migrate:up\nSELECT 1;\n")
    with pytest.raises(appdb.MigrationError, match="is not a directory"):
        discover_migrations(path)


def test_migration_objects_check_their_fields() -> None:
    with pytest.raises(ValueError, match="version must be an int >= 1"):
        Migration(0, "zero", "SELECT 1")
    with pytest.raises(ValueError, match="needs a non-empty name"):
        Migration(1, "", "SELECT 1")
    with pytest.raises(TypeError, match=r"migration 1 \(x\): up must be SQL text or a callable"):
        Migration(1, "x", 42)  # type: ignore[arg-type]
    assert Migration(1, "x", "SELECT 1").checksum != Migration(1, "x", "SELECT 2").checksum


def test_duplicate_versions_in_a_list_are_refused(impl: ModuleType, tmp_path: Path) -> None:
    migrations = [Migration(1, "a", "SELECT 1"), Migration(1, "b", "SELECT 2")]
    with pytest.raises(appdb.MigrationError, match="duplicate migration version 1: a and b"):
        appdb.init_database(tmp_path / "app.db", migrations=migrations)
