"""The checkpoint policy: "external" leaves the WAL to its owner (Litestream), every process agrees.

Real WAL files on disk, both implementations. A checkpoint shows as pages reaching
the database file; a reset as the ``-wal`` file shrinking (TRUNCATE empties it).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb.cli import main
from appdb.migrations import Migration

#: A small autocheckpoint size: the WAL guard would truncate at 4 x 20 = 80 frames.
SMALL = {"wal_autocheckpoint": 20}
#: Each transaction writes ~5 pages by default (rows of 3 kB fill a page each).
TRANSACTIONS = 60
#: Rows in a transaction larger than the guard's truncation point (80 frames).
BIG = 100


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_many(
    db: appdb.AppDatabase, path: Path, transactions: int = TRANSACTIONS, rows: int = 4
) -> list[int]:
    """Commit ``transactions`` transactions of ``rows`` 3 kB rows; the WAL size after each commit."""
    db.exec("CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, data BLOB)")
    sizes = []
    for _ in range(transactions):
        with db.transaction():
            for _ in range(rows):
                db.prepare("INSERT INTO blobs (data) VALUES (randomblob(3000))").run()
        sizes.append(wal_size(path))
    return sizes


def count(db: appdb.AppDatabase) -> int:
    return int(db.prepare("SELECT count(*) FROM blobs", row_type="tuple").get()[0])


def run_child(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


# -- under "external" appdb never checkpoints -------------------------------------------
def test_external_never_checkpoints_or_truncates_the_wal(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, checkpoints="external", pragmas=SMALL) as db:
        assert db.checkpoints == "external"
        assert db.pragma("wal_autocheckpoint") == 0  # Litestream's tip, whatever pragmas say
        database_bytes = db_path.stat().st_size
        sizes = write_many(db, db_path)
        assert sizes == sorted(sizes), "the WAL shrank: something truncated it"
        assert db_path.stat().st_size == database_bytes, "pages reached the database file: a checkpoint ran"
        frames, done = db.checkpoint("passive")  # the first checkpoint ever: every frame is still there
        page = db.pragma("page_size")
        assert frames == (sizes[-1] - 32) // (page + 24)
        assert frames > 3 * 4 * SMALL["wal_autocheckpoint"]  # well past the guard's truncation point
        assert done == frames


def test_auto_keeps_checkpointing_and_truncating(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, pragmas=SMALL) as db:
        assert db.checkpoints == "auto" and db.pragma("wal_autocheckpoint") == 20
        database_bytes = db_path.stat().st_size
        sizes = write_many(db, db_path, 10, rows=BIG)
        assert min(sizes) == 0  # the WAL guard truncated it
        assert db_path.stat().st_size > database_bytes
    assert not Path(f"{db_path}-wal").exists()  # the last close checkpointed and deleted it


def test_closing_under_external_leaves_the_wal_in_place(impl: ModuleType, db_path: Path) -> None:
    db = appdb.init_database(db_path, checkpoints="external", readers=2)
    write_many(db, db_path, 10)
    assert count(db) == 40  # on a pool reader
    assert db.pool_status().open >= 1
    before, database_bytes = wal_size(db_path), db_path.stat().st_size
    db.close()
    assert wal_size(db_path) >= before > 0
    assert db_path.stat().st_size == database_bytes
    with appdb.init_database(db_path) as again:  # and nothing was lost
        assert again.checkpoints == "external"
        assert count(again) == 40


def test_external_migrations_run_without_checkpoints(impl: ModuleType, db_path: Path) -> None:
    migrations = [
        Migration(1, "blobs", "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);"),
        Migration(
            2,
            "fill",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
            "INSERT INTO blobs (data) SELECT randomblob(3000) FROM n;",
        ),
    ]
    with appdb.init_database(db_path, checkpoints="external", pragmas=SMALL, migrations=migrations) as db:
        assert db.get_schema_version() == 2
        assert [r.status for r in db.migration_results] == ["applied", "applied"]
        assert db.pragma("wal_autocheckpoint") == 0  # migration steps do not leave it changed
        frames, _ = db.checkpoint("passive")
        assert frames > 200  # never reset while the migrations ran


def test_pragma_wal_autocheckpoint_does_not_bring_the_guard_back(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, checkpoints="external") as db:
        db.pragma("wal_autocheckpoint", 0)
        sizes = write_many(db, db_path)
        assert sizes == sorted(sizes)


# -- checkpoint modes ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["full", "restart", "truncate"])
def test_external_refuses_blocking_and_resetting_checkpoints(
    impl: ModuleType, db_path: Path, mode: str
) -> None:
    with appdb.init_database(db_path, checkpoints="external") as db:
        write_many(db, db_path, 5)
        before = wal_size(db_path)
        with pytest.raises(appdb.CheckpointPolicyError) as info:
            db.checkpoint(mode)
        message = str(info.value)
        assert "'external'" in message and mode.upper() in message and "force=True" in message
        assert wal_size(db_path) == before
        assert db.checkpoint("passive").checkpointed_frames > 0  # PASSIVE is what Litestream runs itself


def test_forced_truncate_runs_under_external(impl: ModuleType, db_path: Path) -> None:
    with appdb.init_database(db_path, checkpoints="external") as db:
        write_many(db, db_path, 5)
        assert wal_size(db_path) > 0
        assert db.checkpoint("truncate", force=True) == (0, 0)
        assert wal_size(db_path) == 0


@pytest.mark.parametrize("mode", ["passive", "full", "restart", "truncate"])
def test_auto_runs_every_checkpoint_mode(impl: ModuleType, db_path: Path, mode: str) -> None:
    with appdb.init_database(db_path) as db:
        write_many(db, db_path, 3)
        db.checkpoint(mode)


# -- the record ------------------------------------------------------------------------------
def test_external_is_recorded_and_followed(impl: ModuleType, db_path: Path) -> None:
    appdb.init_database(db_path).close()
    with apsw.Connection(str(db_path)) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'appdb_settings'").get == 0
    appdb.init_database(db_path, checkpoints="external").close()
    with apsw.Connection(str(db_path)) as raw:
        recorded = raw.execute("SELECT key, value FROM appdb_settings").fetchall()
        assert recorded == [("checkpoints", "external")]
    with appdb.init_database(db_path) as db:  # None follows the record
        assert db.checkpoints == "external"
    with appdb.init_database(db_path, checkpoints="external") as db:
        assert db.checkpoints == "external"


def test_another_process_opening_with_auto_is_refused_and_nothing_changes(
    impl: ModuleType, impl_env: dict[str, str], db_path: Path
) -> None:
    child = """
        import sys, appdb
        try:
            appdb.init_database(sys.argv[1], checkpoints="auto")
        except appdb.CheckpointPolicyError as exc:
            print(exc)
            sys.exit(3)
    """
    with appdb.init_database(db_path, checkpoints="external") as db:
        write_many(db, db_path, 10)
        done = run_child(child, impl_env, str(db_path))  # while this process has it open
        assert done.returncode == 3, done.stderr
        for text in ("checkpoints='external'", "checkpoints='auto'", str(db_path), "set_checkpoint_policy"):
            assert text in done.stdout
        assert count(db) == 40
    # with no other connection: the refused process must not checkpoint on its way out either
    wal, database = digest(Path(f"{db_path}-wal")), digest(db_path)
    done = run_child(child, impl_env, str(db_path))
    assert done.returncode == 3, done.stderr
    assert digest(Path(f"{db_path}-wal")) == wal and digest(db_path) == database
    with appdb.init_database(db_path, readonly=True) as db:
        assert count(db) == 40
        assert db.pragma("integrity_check") == "ok"


def test_a_recorded_auto_refuses_external(impl: ModuleType, db_path: Path) -> None:
    appdb.init_database(db_path).close()
    assert appdb.set_checkpoint_policy(db_path, "auto") == "auto"
    with pytest.raises(appdb.CheckpointPolicyError, match="records checkpoints='auto'"):
        appdb.init_database(db_path, checkpoints="external")


def test_set_checkpoint_policy_changes_the_record_without_checkpointing(
    impl: ModuleType, db_path: Path
) -> None:
    with appdb.init_database(db_path, checkpoints="external") as db:
        write_many(db, db_path, 5)
    database_bytes = db_path.stat().st_size
    assert appdb.set_checkpoint_policy(db_path, "auto") == "external"
    assert db_path.stat().st_size == database_bytes and wal_size(db_path) > 0
    with appdb.init_database(db_path) as db:
        assert db.checkpoints == "auto"
    with pytest.raises(ValueError, match="checkpoints must be"):
        appdb.set_checkpoint_policy(db_path, "manual")
    with pytest.raises(appdb.DatabaseOpenError, match="does not exist"):
        appdb.set_checkpoint_policy(db_path.with_name("missing.db"), "auto")


def test_readonly_opens_check_but_never_write(impl: ModuleType, db_path: Path) -> None:
    appdb.init_database(db_path).close()
    before = digest(db_path)
    with appdb.init_database(db_path, readonly=True, checkpoints="external") as db:
        assert db.checkpoints == "external"  # this process only: nothing is recorded
    assert digest(db_path) == before and wal_size(db_path) == 0
    with apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'appdb_settings'").get == 0
    with appdb.init_database(db_path) as db:
        assert db.checkpoints == "auto"
    appdb.set_checkpoint_policy(db_path, "external")
    with pytest.raises(appdb.CheckpointPolicyError):
        appdb.init_database(db_path, readonly=True, checkpoints="auto")
    with appdb.init_database(db_path, readonly=True) as db:
        assert db.checkpoints == "external"


def test_an_open_auto_process_stops_truncating_once_external_is_recorded(
    impl: ModuleType, db_path: Path
) -> None:
    with appdb.init_database(db_path, pragmas=SMALL) as running:  # opened before the record
        with appdb.init_database(db_path, checkpoints="external"):  # records it
            sizes = write_many(running, db_path, 10, rows=BIG)
    assert min(sizes) > 0, "the WAL guard truncated the WAL after 'external' was recorded"


def test_invalid_policy_is_a_value_error(impl: ModuleType, db_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoints must be 'auto' or 'external' or None"):
        appdb.init_database(db_path, checkpoints="manual")
    assert not db_path.exists()


# -- the command line -------------------------------------------------------------------------
def test_cli_follows_the_recorded_policy(
    impl: ModuleType, db_path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with appdb.init_database(db_path, checkpoints="external") as db:
        write_many(db, db_path, 5)
    db = str(db_path)
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_t.sql").write_text("-- migrate:up\nCREATE TABLE t (x);\n-- migrate:down\nDROP TABLE t;\n")

    assert main(["--db", db, "--migrations", str(folder), "migrate"]) == 0
    capsys.readouterr()
    assert main(["--db", db, "--json", "health"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == "external"
    assert wal_size(db_path) > 0  # neither command checkpointed on close

    assert main(["--db", db, "checkpoint", "--mode", "truncate"]) == 1
    err = capsys.readouterr().err
    assert "'external'" in err and "--force" in err
    assert main(["--db", db, "--json", "checkpoint"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == "external"
    assert main(["--db", db, "checkpoint", "--mode", "truncate", "--force"]) == 0
    assert wal_size(db_path) == 0
    capsys.readouterr()

    assert main(["--db", db, "checkpoint-policy"]) == 0
    assert capsys.readouterr().out.strip().endswith(": external")
    assert main(["--db", db, "checkpoint-policy", "auto"]) == 0
    assert "external -> auto" in capsys.readouterr().out
    assert main(["--db", db, "checkpoint", "--mode", "truncate"]) == 0
    with appdb.init_database(db_path) as opened:
        assert opened.checkpoints == "auto" and opened.get_schema_version() == 1
