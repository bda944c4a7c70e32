"""Several real processes open one database with migrations at the same moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import appdb
from appdb.migrations import MigrationRunner

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
