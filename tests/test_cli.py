"""The ``appdb`` command line: every command, table and JSON output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import appdb
from appdb.cli import main


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, impl: ModuleType) -> Path:
    """A project folder (the working directory) with ./migrations holding two migrations."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_users.sql").write_text(
        "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT);\n"
        "INSERT INTO users (name, email) VALUES ('ann', 'ann@example.com'), ('bob', NULL);\n"
        "-- migrate:down\nDROP TABLE users;\n"
    )
    (folder / "002_users_name.sql").write_text(
        "-- migrate:up\nCREATE INDEX users_name ON users (name);\n-- migrate:down\nDROP INDEX users_name;\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli(capsys, "--json", *args)
    return code, json.loads(out)


def add_drop_email(project: Path) -> None:
    (project / "migrations" / "003_drop_email.sql").write_text(
        "-- migrate:up\nALTER TABLE users DROP COLUMN email;\n"
        "-- migrate:down\nALTER TABLE users ADD COLUMN email TEXT;\n"
    )


def test_migrate_with_defaults_creates_and_migrates(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "migrate")
    assert code == 0
    assert "applied 2 migration(s); the database is at version 2" in out
    assert "version  name" in out and "users_name" in out
    with appdb.init_database(project / "data" / "app.db") as db:
        assert db.get_schema_version() == 2
    code, out, _ = cli(capsys, "migrate")
    assert code == 0 and "applied 0 migration(s)" in out


def test_status_without_a_database_does_not_create_it(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = cli_json(capsys, "status")
    assert code == 0 and data["exists"] is False and data["version"] == 0
    assert [p["status"] for p in data["pending"]] == ["pending", "pending"]
    assert not (project / "data" / "app.db").exists()


def test_destructive_migration_waits_with_exit_code_3(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "migrate")[0] == 0
    add_drop_email(project)
    code, out, _ = cli(capsys, "status")
    assert code == 3
    assert "blocked" in out and "drops column users.email (1 non-null value)" in out
    code, data = cli_json(capsys, "migrate", "--dry-run")
    assert code == 3 and data["dry_run"] is True
    (result,) = data["results"]
    assert result["status"] == "blocked" and result["error_type"] == "DestructiveMigrationError"
    assert result["detected"][0]["kind"] == "drop_column" and result["detected"][0]["count"] == 1
    code, out, _ = cli(capsys, "migrate")
    assert code == 3 and "--allow-destructive" in out
    code, data = cli_json(capsys, "migrate", "--allow-destructive")
    assert code == 0 and data["version"] == 3 and data["ok"] is True


def test_migrate_to_and_rollback(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = cli_json(capsys, "migrate", "--to", "1")
    assert code == 0 and data["version"] == 1
    assert cli(capsys, "migrate")[0] == 0
    code, out, _ = cli(capsys, "rollback", "--to", "1")
    assert code == 0 and "rolled_back" in out and "the database is at version 1" in out
    code, out, _ = cli(capsys, "rollback", "--to", "0")
    assert code == 3 and "drops table users (2 rows)" in out
    code, data = cli_json(capsys, "rollback", "--to", "0", "--allow-destructive")
    assert code == 0 and data["version"] == 0
    assert [r["status"] for r in data["results"]] == ["rolled_back"]


def test_rollback_without_down_fails_cleanly(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "migrations" / "003_no_down.sql").write_text("-- migrate:up\nCREATE TABLE t (x);\n")
    assert cli(capsys, "migrate")[0] == 0
    code, out, err = cli(capsys, "rollback", "--to", "0")
    assert code == 1 and out == ""
    assert "migration 3 (no_down)" in err and "has no down step" in err
    code, data = cli_json(capsys, "rollback", "--to", "0")
    assert code == 1 and data["ok"] is False and "has no down step" in str(data["error"])


def test_new_creates_the_next_numbered_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "new", "Add audit log")
    assert code == 0
    created = project / "migrations" / "003_add_audit_log.py"
    assert created.exists() and str(created.relative_to(project)) in out
    code, data = cli_json(capsys, "new", "tags", "--sql")
    assert code == 0 and data["version"] == 4 and data["path"].endswith("004_tags.sql")
    migrations = appdb.migrations.discover_migrations(project / "migrations")
    assert [m.version for m in migrations] == [1, 2, 3, 4]
    assert cli(capsys, "migrate")[0] == 0
    code, data = cli_json(capsys, "verify")
    assert code == 0 and data["migrations"] == []


def test_new_in_an_empty_project_starts_at_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = cli(capsys, "--migrations", str(tmp_path / "fresh"), "new", "init", "--sql")
    assert code == 0 and (tmp_path / "fresh" / "001_init.sql").exists()
    with pytest.raises(SystemExit) as info:
        main(["--migrations", str(tmp_path / "fresh"), "new", "!!!"])
    assert info.value.code == 2


@pytest.mark.parametrize("layout", ["dbmate", "diesel"])
def test_new_in_a_folder_of_timestamp_versions_uses_the_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    import datetime

    folder = tmp_path / "m"
    if layout == "dbmate":
        folder.mkdir()
        (folder / "20151129054053_create_users.sql").write_text("-- migrate:up\nCREATE TABLE users (id);\n")
    else:
        (folder / "2015-11-29-054053_create_users").mkdir(parents=True)
        (folder / "2015-11-29-054053_create_users" / "up.sql").write_text("CREATE TABLE users (id);\n")
    before = int(datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S"))
    code, data = cli_json(capsys, "--migrations", str(folder), "new", "add_tags", "--sql")
    assert code == 0 and data["version"] >= before
    assert data["path"].endswith(f"{data['version']}_add_tags.sql")
    versions = [m.version for m in appdb.migrations.discover_migrations(folder)]
    assert versions == [20151129054053, data["version"]]


def test_validate_status_and_repair(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "migrate")[0] == 0
    assert cli(capsys, "validate")[0] == cli(capsys, "status")[0] == 0
    (project / "migrations" / "002_users_name.sql").write_text(
        "-- migrate:up\nCREATE INDEX users_name ON users (name);\n"
    )
    code, out, _ = cli(capsys, "validate")
    assert code == 1 and "migration 2 (users_name) changed after it was applied" in out
    code, _, err = cli(capsys, "migrate")
    assert code == 1 and "appdb validate --repair" in err
    # status fails too, like validate and migrate
    code, out, _ = cli(capsys, "status")
    assert code == 1 and "problem: migration 2 (users_name) changed after it was applied" in out
    code, data = cli_json(capsys, "status")
    assert code == 1 and data["ok"] is False and len(data["problems"]) == 1
    code, data = cli_json(capsys, "validate", "--repair")
    assert code == 0 and [r["version"] for r in data["repaired"]] == [2]
    assert cli(capsys, "migrate")[0] == cli(capsys, "status")[0] == 0


def test_verify_reports_irreversible_migrations(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    migrations = project / "migrations"
    (migrations / "003_no_down.sql").write_text("-- migrate:up\nCREATE TABLE t (x);\n")
    (migrations / "004_bad_down.sql").write_text(
        "-- migrate:up\nCREATE TABLE u (x);\nCREATE TABLE v (x);\n-- migrate:down\nDROP TABLE u;\n"
    )
    code, data = cli_json(capsys, "verify")
    assert code == 1
    by_version = {m["version"]: m for m in data["migrations"]}
    assert by_version[1]["ok"] and by_version[2]["ok"]
    assert by_version[3]["problems"] == ["not reversible: it has no down step"]
    restore, again = by_version[4]["problems"]
    assert restore == "down does not restore the schema: it adds table v"
    assert (
        again.startswith("up fails after down: migration 4 (bad_down)") and "table v already exists" in again
    )
    assert not (project / "data" / "app.db").exists()


def test_health_checkpoint_and_backup(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "health")
    assert code == 1 and "does not exist" in err
    assert cli(capsys, "migrate")[0] == 0
    code, data = cli_json(capsys, "health")
    assert code == 0 and data["healthy"] is True and data["quick_check"] == "ok"
    assert data["schema_version"] == 2 and data["pending_migrations"] == 0 and data["journal_mode"] == "wal"
    code, data = cli_json(capsys, "checkpoint", "--mode", "truncate")
    assert code == 0 and data["mode"] == "truncate"
    code, out, _ = cli(capsys, "backup", "copy.db")
    assert code == 0 and "copy.db" in out
    with appdb.init_database(project / "copy.db", readonly=True) as copy:
        assert copy.get_schema_version() == 2
        assert copy.prepare("SELECT count(*) FROM users").scalar() == 2
    code, _, err = cli(capsys, "backup", "copy.db")
    assert code == 1 and "already exists" in err


def test_a_broken_migrations_folder_is_a_failure(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "migrations" / "bad-name.sql").write_text("-- migrate:up\nSELECT 1;\n")
    code, _, err = cli(capsys, "migrate")
    assert code == 1 and "bad-name.sql: the name does not match" in err
    assert not (project / "data" / "app.db").exists()


def test_options_after_the_command_and_explicit_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], impl: ModuleType
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001_a.sql").write_text("-- migrate:up\nCREATE TABLE a (x);\n")
    db = tmp_path / "elsewhere" / "x.db"
    code, out, _ = cli(capsys, "migrate", "--db", str(db), "--migrations", str(folder), "--json")
    assert code == 0 and json.loads(out)["version"] == 1
    assert cli(capsys, "--db", str(db), "--migrations", str(folder), "status")[0] == 0


@pytest.mark.parametrize(
    "args", [[], ["frobnicate"], ["rollback"], ["migrate", "--to", "x"], ["migrate", "--to", "-1"]]
)
def test_usage_errors_exit_with_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "usage: appdb" in capsys.readouterr().err


def run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` in a child process, its output as text."""
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_python_dash_m_appdb(tmp_path: Path) -> None:
    env = dict(os.environ)
    source_root = str(Path(appdb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_a.sql").write_text(textwrap.dedent("-- migrate:up\nCREATE TABLE a (x);\n"))
    done = run(
        [
            sys.executable,
            "-m",
            "appdb",
            "--db",
            str(tmp_path / "app.db"),
            "--migrations",
            str(folder),
            "migrate",
        ],
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "applied 1 migration(s)" in done.stdout
    usage = run([sys.executable, "-m", "appdb", "nope"], env)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def dbmate_database(project: Path) -> Path:
    """./data/app.db as dbmate leaves it after applying ./migrations' 001 (version '001')."""
    path = project / "data" / "app.db"
    with appdb.init_database(path, run_migrations=False) as db:
        db.exec(
            'create table if not exists "schema_migrations" (version varchar(128) primary key);'
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT);"
            "insert into \"schema_migrations\" (version) values ('001');"
        )
    return path


def test_adopt_command(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbmate_database(project)
    code, out, _ = cli(capsys, "adopt")
    assert code == 0
    assert "users" in out and "recorded at" in out
    assert "adopted 1 migration(s) from dbmate's schema_migrations without running them" in out
    assert "the database is at version 1" in out
    code, data = cli_json(capsys, "adopt", "--from", "dbmate")
    assert code == 0 and data["adopted"] == [] and data["source"] == "dbmate" and data["version"] == 1
    code, data = cli_json(capsys, "migrate")
    assert code == 0 and [(r["version"], r["status"]) for r in data["results"]] == [(2, "applied")]


def test_adopt_command_failures(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "adopt")
    assert code == 1 and "does not exist" in err
    assert not (project / "data" / "app.db").exists()
    path = dbmate_database(project)
    with appdb.init_database(path, run_migrations=False) as db:
        db.exec("insert into \"schema_migrations\" (version) values ('7')")
    code, data = cli_json(capsys, "adopt")
    assert code == 1 and "records version(s) 7 with no migration" in data["error"]
    code, _, err = cli(capsys, "adopt", "--from", "goose")
    assert code == 1 and "no goose migration table goose_db_version" in err
    with pytest.raises(SystemExit) as info:
        main(["adopt", "--from", "flyway"])
    assert info.value.code == 2 and "invalid choice: 'flyway'" in capsys.readouterr().err


def test_appdb_script_imports_a_migrations_package_from_the_working_folder(
    tmp_path: Path, impl_env: dict[str, str]
) -> None:
    script = Path(sys.executable).with_name("appdb")
    assert script.exists(), f"the appdb console script is not installed next to {sys.executable}"
    package = tmp_path / "myapp" / "migrations"
    package.mkdir(parents=True)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "001_a.sql").write_text("-- migrate:up\nCREATE TABLE a (x);\n")
    env = dict(impl_env)
    env.pop("PYTHONPATH", None)  # as a user runs it: nothing but the working folder names ./myapp
    done = run([str(script), "--db", "app.db", "--migrations", "myapp.migrations", "migrate"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "applied 1 migration(s)" in done.stdout
