"""Several real processes open one database with migrations at the same moment."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb.migrations import Migration, MigrationRunner
from conftest import impl_name

CHILD = Path(__file__).parent / "migration_fixtures" / "race_child.py"
PROCESSES = 8


def _migrations(folder: Path) -> None:
    folder.mkdir()
    (folder / "001_log.sql").write_text(
        "-- migrate:up\nCREATE TABLE log (version INTEGER NOT NULL, pid INTEGER NOT NULL);\n"
        "INSERT INTO log VALUES (1, 0);\n"
    )
    (folder / "002_bulk.py").write_text(
        "import os\n\n"
        "def up(db):\n"
        "    db.exec('CREATE TABLE bulk (id INTEGER PRIMARY KEY, v TEXT)')\n"
        "    db.prepare('INSERT INTO bulk (v) VALUES (?)').run_many((str(i),) for i in range(5000))\n"
        "    db.prepare('INSERT INTO log VALUES (2, ?)').run(os.getpid())\n"
    )
    (folder / "003_index.sql").write_text(
        "-- migrate:up\nCREATE INDEX bulk_v ON bulk (v);\nINSERT INTO log VALUES (3, 0);\n"
    )


def _race(db_path: Path, folder: Path, tmp_path: Path) -> list[dict[str, object]]:
    start = tmp_path / "start"
    env = dict(os.environ)
    source_root = str(Path(appdb.__file__).resolve().parents[1])  # this appdb, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(db_path), str(folder), str(start), str(tmp_path / f"ready{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(PROCESSES)
    ]
    while not all((tmp_path / f"ready{i}").exists() for i in range(PROCESSES)):
        time.sleep(0.005)
    start.touch()
    reports = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, f"child failed: {out} {err}"
        reports.append(json.loads(out))
    return reports


def test_processes_racing_on_a_new_database_apply_each_migration_once(tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    _migrations(folder)
    db_path = tmp_path / "data" / "app.db"
    reports = _race(db_path, folder, tmp_path)
    assert [r["version"] for r in reports] == [3] * PROCESSES
    assert all(r["other"] == [] for r in reports)
    applied = sorted(v for r in reports for v in r["applied"])  # type: ignore[attr-defined]
    assert applied == [1, 2, 3]
    with appdb.init_database(db_path) as db:
        assert db.prepare("SELECT version FROM log ORDER BY version", row_type="tuple").all() == [
            (1,),
            (2,),
            (3,),
        ]
        assert db.prepare("SELECT count(*) FROM bulk").scalar() == 5000
        assert [a.version for a in MigrationRunner(db).get_applied_migrations()] == [1, 2, 3]
        assert db.pragma("user_version") == 3
        assert db.pragma("integrity_check") == "ok"


SLOW_CHILD = """
import json, sys, time
from pathlib import Path
import appdb
assert appdb.IMPLEMENTATION == sys.argv[1], appdb.IMPLEMENTATION  # picked through its environment
db_path, folder, start = sys.argv[2:5]
while not Path(start).exists():
    time.sleep(0.001)
try:
    with appdb.init_database(db_path, migrations=folder, pragmas={"busy_timeout": 100}) as db:
        statuses = [r.status for r in db.migration_results]
        print(json.dumps({"version": db.get_schema_version(), "statuses": statuses}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


def _slow_migrations(folder: Path) -> None:
    folder.mkdir()
    (folder / "001_slow.py").write_text(
        "import time\n\n"
        "def up(db):\n"
        "    db.exec('CREATE TABLE big (x)')\n"
        "    time.sleep(1.0)  # a long backfill: 10 times busy_timeout\n"
    )
    (folder / "002_after.sql").write_text("-- migrate:up\nCREATE TABLE after (x);\n")


def test_processes_wait_for_a_migration_longer_than_busy_timeout(
    impl: ModuleType, impl_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    _slow_migrations(folder)
    db_path = tmp_path / "data" / "app.db"
    appdb.init_database(db_path).close()
    child = tmp_path / "slow_child.py"
    child.write_text(SLOW_CHILD)
    start = tmp_path / "start"
    env = dict(impl_env)
    source_root = str(Path(appdb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    children = [
        subprocess.Popen(
            [sys.executable, str(child), impl_name(impl), str(db_path), str(folder), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    time.sleep(0.3)  # let them import appdb
    start.touch()
    reports = []
    for process in children:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    assert [r.get("version", r) for r in reports] == [2] * 4
    statuses = sorted(s for r in reports for s in r["statuses"])
    assert statuses == ["applied", "applied"]  # each migration applied once, by whoever got the lock
    with appdb.init_database(db_path) as db:
        assert [a.version for a in MigrationRunner(db).get_applied_migrations()] == [1, 2]


def test_a_lock_held_past_the_wait_is_reported_as_locked_not_failed(
    impl: ModuleType, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    migrations = [Migration(1, "t", "CREATE TABLE t (x);")]
    with appdb.init_database(db_path, pragmas={"busy_timeout": 50}) as db:
        other = apsw.Connection(str(db_path))
        other.execute("BEGIN IMMEDIATE")
        try:
            with caplog.at_level(logging.WARNING, logger="appdb"):
                with pytest.raises(appdb.MigrationError) as info:
                    MigrationRunner(db, lock_wait=0.3).run_migrations(migrations)
        finally:
            other.execute("ROLLBACK")
            other.close()
        message = str(info.value)
        assert "migration 1 (t)" in message and "stayed locked" in message and "failed" not in message
        assert caplog.text.count("waits for the write lock") == 1
        assert db.get_schema_version() == 0
        (result,) = MigrationRunner(db).run_migrations(migrations)
        assert result.status == "applied"
