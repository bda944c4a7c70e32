"""Load and concurrency: many processes, many threads, and readers that must not starve the WAL."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from reliability_support import expect_line, integrity, spawn

import appdb
from appdb import _walguard
from appdb._walguard import WAL_GUARD_FACTOR
from conftest import open_snapshots

PROCESSES = 8
TRANSACTIONS = 2_000


def test_eight_processes_commit_every_row_exactly_once(impl: ModuleType, tmp_path: Path) -> None:
    """8 processes x 2,000 ``db.transaction`` calls (a row plus its audit row), default options."""
    path = tmp_path / "load.db"
    go = tmp_path / "go"
    children = [spawn(impl, "load", path, worker, TRANSACTIONS, go) for worker in range(PROCESSES)]
    for child in children:  # every writer has opened the database and prepared its statements
        expect_line(child, "ready")
    go.touch()
    for child in children:
        out, err = child.communicate(timeout=300)
        # a BusyError (or anything else) reaching the caller kills the child with a traceback
        assert child.returncode == 0, err
        assert out.strip() == f"done {TRANSACTIONS}"
        assert "Error" not in err

    assert integrity(path) == ["ok"]
    with appdb.init_database(path, row_type="tuple") as db:
        total = PROCESSES * TRANSACTIONS
        assert db.prepare("SELECT count(*) FROM items").scalar() == total
        # every (worker, seq) committed is there exactly once, and nothing else is
        per_worker = db.prepare(
            "SELECT worker, count(*), count(DISTINCT seq), min(seq), max(seq) FROM items GROUP BY worker"
        ).all()
        assert per_worker == [(w, TRANSACTIONS, TRANSACTIONS, 0, TRANSACTIONS - 1) for w in range(PROCESSES)]
        # each item has exactly one audit row, committed in the same transaction
        assert db.prepare("SELECT count(*), count(DISTINCT item_id) FROM audit").get() == (total, total)
        orphans = db.prepare(
            "SELECT count(*) FROM items LEFT JOIN audit ON audit.item_id = items.id WHERE audit.id IS NULL"
        ).scalar()
        assert orphans == 0
        assert (
            db.prepare("SELECT count(*) FROM items WHERE payload != 'w' || worker || '-s' || seq").scalar()
            == 0
        )


THREADS = 8
ROUNDS = 400


def test_eight_threads_share_one_database(db: appdb.AppDatabase) -> None:
    """Threads mix prepare/get/iterate/run and nested transactions on the very same statements."""
    db.exec(
        """
        CREATE TABLE parent (id INTEGER PRIMARY KEY, thread INTEGER NOT NULL, round INTEGER NOT NULL);
        CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent(id),
                            n INTEGER NOT NULL);
        """
    )
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    class Boom(Exception):
        pass

    def work(thread: int) -> None:
        try:
            start.wait()
            for rnd in range(ROUNDS):
                insert_parent = db.prepare("INSERT INTO parent (thread, round) VALUES (?, ?)")
                insert_child = db.prepare("INSERT INTO child (parent, n) VALUES (:parent, :n)")
                with db.transaction():
                    pid = insert_parent.run(thread, rnd).last_insert_rowid
                    insert_child.run(parent=pid, n=1)
                    try:
                        with db.transaction():  # savepoint: rolled back alone
                            insert_child.run(parent=pid, n=2)
                            if rnd % 3 == 0:
                                raise Boom
                    except Boom:
                        pass
                    # reads inside the transaction see its own writes
                    assert db.prepare("SELECT count(*) FROM child WHERE parent = ?").scalar(pid) == (
                        1 if rnd % 3 == 0 else 2
                    )
                row = db.prepare("SELECT thread, round FROM parent WHERE id = ?").get(pid)
                assert row == {"thread": thread, "round": rnd}
                # the same statement used inside its own iterate loop, by every thread at once
                mine = db.prepare("SELECT id FROM parent WHERE thread = ? ORDER BY id")
                seen = 0
                for _item in mine.iterate(thread):
                    assert mine.get(thread) is not None
                    seen += 1
                    if seen == 5:
                        break
                assert seen == min(5, rnd + 1)
                assert len(mine.all(thread)) == rnd + 1
        except BaseException:  # reported below, with the thread's traceback
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[0]
    assert not any(thread.is_alive() for thread in threads)
    assert db.prepare("SELECT count(*) FROM parent").scalar() == THREADS * ROUNDS
    kept_inner = sum(1 for rnd in range(ROUNDS) if rnd % 3 != 0)
    assert db.prepare("SELECT count(*) FROM child").scalar() == THREADS * (ROUNDS + kept_inner)
    assert db.prepare("SELECT count(*) FROM parent GROUP BY thread").all() == [{"count(*)": ROUNDS}] * THREADS
    assert not db.in_transaction
    assert open_snapshots(db) == 0  # no statement left holding a read snapshot
    assert db.pragma("integrity_check") == "ok"


WAL_SECONDS = 20.0


def wal_bound(page_size: int, autocheckpoint: int) -> int:
    """Largest -wal the writer below may ever produce with appdb's default settings.

    appdb's WAL hook truncates the WAL once it holds ``WAL_GUARD_FACTOR x
    wal_autocheckpoint`` frames (waiting for readers of older snapshots), so the file
    never holds more than that plus the frames of the transaction that crossed the
    line (a writer transaction here dirties about 12 pages; 64 leaves room). Each
    frame is a page plus a 24-byte header; the file has a 32-byte header. With the
    defaults (4,096-byte pages, 1,000-page autocheckpoint) that is 16.7 MB, a
    quarter of ``journal_size_limit`` (64 MiB).
    """
    return (WAL_GUARD_FACTOR * autocheckpoint + 64) * (page_size + 24) + 32


def test_readers_do_not_starve_the_wal(impl: ModuleType, tmp_path: Path) -> None:
    """A reader process loops over queries while a writer commits for 20 s: the -wal stays bounded."""
    path = tmp_path / "wal.db"
    stop = tmp_path / "stop"
    with appdb.init_database(path) as db:
        db.exec("CREATE TABLE log (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        bound = wal_bound(db.pragma("page_size"), db.pragma("wal_autocheckpoint"))
    assert bound < appdb.JOURNAL_SIZE_LIMIT
    reader = spawn(impl, "wal-reader", path, stop)
    expect_line(reader, "ready")
    writer = spawn(impl, "wal-writer", path, stop)
    largest = 0
    deadline = time.monotonic() + WAL_SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                largest = max(largest, os.path.getsize(str(path) + "-wal"))
            except FileNotFoundError:
                pass
            time.sleep(0.005)
    finally:
        stop.touch()
    w_out, w_err = writer.communicate(timeout=120)
    r_out, r_err = reader.communicate(timeout=120)
    assert writer.returncode == 0, w_err
    assert reader.returncode == 0, r_err
    _, commits, _, writer_largest = w_out.split()
    _, queries = r_out.split()
    largest = max(largest, int(writer_largest))
    # The test means something only if far more was written than the bound allows
    # the WAL to hold, while the reader kept a read transaction open most of the time.
    written = int(commits) * 20 * 1500
    assert written > 10 * bound, (commits, written, bound)
    assert int(queries) > 1000
    assert largest <= bound, f"-wal reached {largest:,} bytes; bound {bound:,}"
    assert integrity(path) == ["ok"]


def test_wal_guard_survives_pragma_changes(db: appdb.AppDatabase) -> None:
    """Setting ``wal_autocheckpoint`` keeps the guard (with the new size); 0 turns checkpoints off."""
    db.exec("CREATE TABLE t (x BLOB)")
    insert = db.prepare("INSERT INTO t VALUES (?)")
    assert db.pragma("wal_autocheckpoint") == 1000
    assert db.pragma("wal_autocheckpoint", 10) == 10
    assert db.pragma("wal_autocheckpoint") == 10
    wal = db.path + "-wal"
    for _ in range(200):
        insert.run(os.urandom(3000))
    # 10-page autocheckpoint, truncated at 40 frames: far below 200 single-page commits
    assert os.path.getsize(wal) <= wal_bound(4096, 10)
    assert db.pragma("wal_autocheckpoint", 0) == 0
    assert db.pragma("wal_autocheckpoint") == 0
    for _ in range(200):
        insert.run(os.urandom(3000))
    assert os.path.getsize(wal) > wal_bound(4096, 10)  # off means off
    assert db.checkpoint("truncate").wal_frames == 0
    assert db.connection.execute("SELECT 1").get == 1  # the connection is fine after all of it


def test_a_long_lived_reader_never_stalls_commits_for_long(
    db: appdb.AppDatabase, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read transaction held open for good: commits wait briefly and ever more rarely for it.

    The truncating checkpoint cannot succeed while the reader holds its snapshot;
    it must not wait the whole ``busy_timeout`` (5 s, with the connection's lock
    held) and must back off exponentially instead of retrying every stride. The
    waits are counted (and their limits read) through the guard's busy handler,
    so nothing here depends on how fast the machine is.
    """
    waits: list[int] = []
    real_short_waits = _walguard._short_waits

    def counting_short_waits(timeout_ms: int) -> Callable[[int], bool]:
        waits.append(timeout_ms)
        return real_short_waits(timeout_ms)

    monkeypatch.setattr(_walguard, "_short_waits", counting_short_waits)
    assert db.pragma("busy_timeout") == 5000
    db.pragma("wal_autocheckpoint", 10)  # a truncation attempt every 40 frames at first
    db.exec("CREATE TABLE t (v BLOB)")
    insert = db.prepare("INSERT INTO t VALUES (randomblob(3000))")
    with appdb.init_database(db_path) as reader, reader.transaction(mode="deferred"):
        assert reader.prepare("SELECT count(*) FROM t").scalar() == 0  # holds its snapshot from here
        for _ in range(1000):
            insert.run()
        wal_frames = db.checkpoint("passive").wal_frames
    assert wal_frames > 2000
    # each attempt waits at most TRUNCATE_WAIT_MS, never the whole busy_timeout
    assert waits and all(ms <= _walguard.TRUNCATE_WAIT_MS for ms in waits)
    # Retrying every 40 frames would wait ~75 times; doubling the distance (40, 80,
    # ... capped at 16 strides of 40 frames) waits 8 times in ~3,000 frames.
    assert 3 <= len(waits) <= 15, (len(waits), wal_frames)
    # with the reader gone the WAL empties again
    assert db.checkpoint("truncate").wal_frames == 0
    for _ in range(200):
        insert.run()
    assert db.prepare("SELECT count(*) FROM t").scalar() == 1200
