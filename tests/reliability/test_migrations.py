"""Migrations under crashes, a full disk, read-only opens and broken files."""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

import apsw
import pytest
from reliability_support import expect_line, integrity, spawn

import appdb

#: How a killed child's return code reads (SIGKILL on POSIX, 1 from TerminateProcess).
KILLED = 1 if sys.platform == "win32" else -signal.SIGKILL

ROWS = 3000


def write_migrations(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "001_init.sql").write_text(
        "-- migrate:up\nCREATE TABLE a (id INTEGER PRIMARY KEY, v BLOB NOT NULL);\n"
        "-- migrate:down\nDROP TABLE a;\n"
    )
    (folder / "002_fill.py").write_text(
        "import time\n"
        "def up(db):\n"
        "    db.exec('CREATE TABLE b (id INTEGER PRIMARY KEY, v BLOB NOT NULL)')\n"
        "    insert = db.prepare('INSERT INTO b (v) VALUES (randomblob(1500))')\n"
        f"    for i in range({ROWS}):\n"
        "        insert.run()\n"
        "        if i % 100 == 0:\n"
        "            time.sleep(0.01)  # at least 0.3 s of migrating, however fast the machine\n"
        "    db.exec('CREATE INDEX b_v ON b(v)')\n"
    )
    (folder / "003_more.sql").write_text(
        "-- migrate:up\nCREATE TABLE c (x);\nINSERT INTO c SELECT id FROM b;\n"
    )
    return folder


def schema_state(path: Path) -> tuple[int, set[str], int | None]:
    connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            )
        }
        version = 0
        if "appdb_migrations" in names:
            version = connection.execute("SELECT coalesce(max(version), 0) FROM appdb_migrations").get
        assert connection.execute("PRAGMA user_version").get == version
        rows = connection.execute("SELECT count(*) FROM b").get if "b" in names else None
    finally:
        connection.close()
    return version, names - {"appdb_migrations"}, rows


EXPECTED = {0: set(), 1: {"a"}, 2: {"a", "b"}, 3: {"a", "b", "c"}}


def test_sigkill_during_migrations(impl: ModuleType, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations")
    rng = random.Random(5)
    interrupted = 0
    for kill in range(20):
        path = tmp_path / f"kill{kill}" / "app.db"
        path.parent.mkdir()
        child = spawn(impl, "migrate", path, folder)
        expect_line(child, "ready")
        time.sleep(rng.uniform(0.0, 0.25))
        child.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        out, err = child.communicate(timeout=60)
        if "version" not in out:  # killed before init_database returned
            assert child.returncode == KILLED, err
            interrupted += 1
        if path.exists():
            assert integrity(path) == ["ok"]
            version, tables, rows = schema_state(path)
            # the schema is exactly what the recorded version says: no half-applied migration
            assert tables == EXPECTED[version], (version, tables)
            assert rows in (None, ROWS)
        # the next start finishes the work cleanly
        with appdb.init_database(path, migrations=folder) as db:
            assert db.get_schema_version() == 3
            assert db.prepare("SELECT count(*) FROM c").scalar() == ROWS
            assert db.is_healthy()
        assert integrity(path) == ["ok"]
    assert interrupted >= 10  # most kills landed while migrating


def test_full_disk_during_a_migration(impl: ModuleType, db_path: Path, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations")
    with pytest.raises((appdb.MigrationError, apsw.FullError)) as info:
        appdb.init_database(db_path, migrations=folder, pragmas={"max_page_count": 200})
    text = str(info.value) + str(info.value.__cause__ or "")
    assert "full" in text
    assert "2" in str(info.value) or "fill" in str(info.value)  # names the migration
    version, tables, _ = schema_state(db_path)
    assert version == 1 and tables == EXPECTED[1]
    assert integrity(db_path) == ["ok"]
    with appdb.init_database(db_path, migrations=folder) as db:
        assert db.get_schema_version() == 3 and db.is_healthy()


def test_readonly_with_pending_migrations(impl: ModuleType, db_path: Path, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "migrations")
    (folder / "003_more.sql").unlink()
    appdb.init_database(db_path, migrations=folder).close()
    write_migrations(folder)
    before = db_path.read_bytes()
    with pytest.raises(appdb.MigrationError, match=r"read-only.*pending") as info:
        appdb.init_database(db_path, readonly=True, migrations=folder)
    assert "003" in str(info.value) or "more" in str(info.value)
    assert db_path.read_bytes() == before
    with appdb.init_database(db_path, readonly=True, run_migrations=False) as db:
        assert db.get_schema_version() == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("004_bad.py", "def up(db:\n", "syntax error"),
        ("004_bad.py", "import no_such_module_appdb\n", "no_such_module_appdb"),
        ("004_bad.sql", "CREATE TABLE z (x);\n-- migrate:up\nSELECT 1;\n", "SQL before"),
        ("4x_bad.sql", "-- migrate:up\nCREATE TABLE z (x);\n", "4x_bad"),
        ("003_again.sql", "-- migrate:up\nCREATE TABLE z (x);\n", "duplicate|003"),
        (
            "004_boom.py",
            "def up(db):\n    db.exec('CREATE TABLE z (x)')\n    raise RuntimeError('boom')\n",
            "boom",
        ),
    ],
)
def test_broken_migration_files(
    impl: ModuleType, db_path: Path, tmp_path: Path, name: str, content: str, message: str
) -> None:
    folder = write_migrations(tmp_path / "migrations")
    appdb.init_database(db_path, migrations=folder).close()
    (folder / name).write_text(content)
    with pytest.raises(appdb.MigrationError, match=message) as info:
        appdb.init_database(db_path, migrations=folder)
    if name != "003_again.sql":
        assert name in str(info.value) or name.split("_", 1)[1].split(".")[0] in str(info.value)
    version, tables, rows = schema_state(db_path)
    assert (version, tables, rows) == (3, EXPECTED[3], ROWS)  # nothing changed, no table z
    assert integrity(db_path) == ["ok"]
