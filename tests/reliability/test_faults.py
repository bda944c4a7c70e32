"""Injected I/O faults (through an APSW VFS that inherits SQLite's default one) and a full disk."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import apsw
import pytest
from reliability_support import integrity

import appdb

_names = itertools.count()


class FaultVFS(apsw.VFS):
    """SQLite's default VFS with switchable write, sync and read failures.

    ``fail`` holds ``(operation, kind)`` pairs: operation is ``write``, ``sync`` or
    ``read``; kind is ``db`` (the main file) or ``wal``. ``chance`` makes a listed
    fault fire only on that fraction of calls (from a seeded generator).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fail: set[tuple[str, str]] = set()
        self.chance = 1.0
        self.rng = random.Random(7)
        self.fired = 0
        super().__init__(name, base="")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> FaultFile:
        return FaultFile(self, name, flags)

    def should_fail(self, operation: str, kind: str) -> bool:
        if (operation, kind) in self.fail and self.rng.random() < self.chance:
            self.fired += 1
            return True
        return False


class FaultFile(apsw.VFSFile):
    def __init__(self, vfs: FaultVFS, name: str | apsw.URIFilename | None, flags: list[int]) -> None:
        self.vfs = vfs
        filename = name.filename() if isinstance(name, apsw.URIFilename) else (name or "")
        self.kind = "wal" if filename.endswith("-wal") else ("db" if filename.endswith(".db") else "other")
        super().__init__("", name, flags)  # inherit everything else from the default VFS

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.vfs.should_fail("write", self.kind):
            raise apsw.IOError("injected write failure")
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        if self.vfs.should_fail("sync", self.kind):
            raise apsw.IOError("injected sync failure")
        super().xSync(flags)

    def xRead(self, amount: int, offset: int) -> bytes:
        if self.vfs.should_fail("read", self.kind):
            raise apsw.IOError("injected read failure")
        return super().xRead(amount, offset)


@pytest.fixture
def vfs() -> Iterator[FaultVFS]:
    fault = FaultVFS(f"appdb-fault-{next(_names)}")
    yield fault
    fault.unregister()


def open_faulty(impl: ModuleType, path: Path, vfs: FaultVFS, **options: object) -> appdb.AppDatabase:
    db = appdb.init_database(path, vfs=vfs.name, **options)  # type: ignore[arg-type]
    db.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
    return db


def values(db: appdb.AppDatabase) -> list[str]:
    return [row["value"] for row in db.prepare("SELECT value FROM t ORDER BY id").all()]


def reopened_values(path: Path) -> list[str]:
    """What a fresh connection through SQLite's default VFS finds on disk."""
    assert integrity(path) == ["ok"]
    with appdb.init_database(path) as fresh:
        return values(fresh)


def assert_keeps_working(db: appdb.AppDatabase, expected: list[str]) -> None:
    assert not db.in_transaction
    assert db.is_healthy()
    assert values(db) == expected
    db.prepare("INSERT INTO t (value) VALUES (?)").run("after")
    assert values(db) == [*expected, "after"]
    assert db.pragma("integrity_check") == "ok"


def test_write_failure_in_a_transaction(impl: ModuleType, db_path: Path, vfs: FaultVFS) -> None:
    db = open_faulty(impl, db_path, vfs)
    insert = db.prepare("INSERT INTO t (value) VALUES (?)")
    insert.run("before")
    vfs.fail = {("write", "wal")}
    with pytest.raises(apsw.IOError):
        with db.transaction():
            insert.run("lost-1")
            insert.run("lost-2")
    with pytest.raises(apsw.IOError):
        insert.run_many([("lost-3",), ("lost-4",)])
    with pytest.raises(apsw.IOError):
        insert.run("lost-5")
    assert vfs.fired
    vfs.fail = set()
    assert_keeps_working(db, ["before"])
    db.close()
    assert reopened_values(db_path) == ["before", "after"]


def test_write_failure_in_a_checkpoint(impl: ModuleType, db_path: Path, vfs: FaultVFS) -> None:
    """In WAL mode the main file is written only by checkpoints: committed data must survive."""
    db = open_faulty(impl, db_path, vfs)
    db.prepare("INSERT INTO t (value) VALUES (?)").run_many([(f"v{i}",) for i in range(300)])
    vfs.fail = {("write", "db")}
    with pytest.raises(apsw.IOError):
        db.checkpoint("truncate")
    # the automatic checkpoints of later commits fail too, but never fail the commit
    db.pragma("wal_autocheckpoint", 1)
    db.prepare("INSERT INTO t (value) VALUES (?)").run("committed")
    assert vfs.fired > 1
    vfs.fail = set()
    expected = [*(f"v{i}" for i in range(300)), "committed"]
    assert_keeps_working(db, expected)
    db.checkpoint("truncate")
    db.close()
    assert reopened_values(db_path) == [*expected, "after"]


def test_sync_failure(impl: ModuleType, db_path: Path, vfs: FaultVFS) -> None:
    # synchronous=FULL syncs the WAL at every commit; with the default NORMAL only
    # checkpoints sync, which the second half covers.
    db = open_faulty(impl, db_path, vfs, pragmas={"synchronous": "FULL"})
    insert = db.prepare("INSERT INTO t (value) VALUES (?)")
    insert.run("before")
    vfs.fail = {("sync", "wal")}
    with pytest.raises(apsw.IOError):
        with db.transaction():
            insert.run("lost")
    vfs.fail = set()
    assert_keeps_working(db, ["before"])
    db.close()
    assert reopened_values(db_path) == ["before", "after"]

    db = open_faulty(impl, db_path, vfs)
    db.prepare("INSERT INTO t (value) VALUES (?)").run("committed")
    vfs.fail = {("sync", "wal"), ("sync", "db")}
    with pytest.raises(apsw.IOError):
        db.checkpoint("truncate")
    vfs.fail = set()
    assert_keeps_working(db, ["before", "after", "committed"])
    db.checkpoint("truncate")
    db.close()
    assert reopened_values(db_path) == ["before", "after", "committed", "after"]


@pytest.mark.parametrize("kind", ["wal", "db"])
def test_read_failure(impl: ModuleType, db_path: Path, vfs: FaultVFS, kind: str) -> None:
    with appdb.init_database(db_path) as setup:
        setup.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        setup.prepare("INSERT INTO t (value) VALUES (?)").run_many([(f"v{i}",) for i in range(500)])
        if kind == "db":
            setup.checkpoint("truncate")
        else:  # keep the rows in the WAL when it closes
            setup.connection.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    expected = [f"v{i}" for i in range(500)]
    db = open_faulty(impl, db_path, vfs)
    vfs.fail = {("read", kind)}
    with pytest.raises(apsw.IOError):
        db.prepare("SELECT value FROM t ORDER BY id").all()
    with pytest.raises(apsw.IOError):
        with db.transaction():
            db.prepare("INSERT INTO t (value) VALUES (?)").run("lost")
            db.prepare("SELECT sum(length(value)) FROM t").scalar()
    assert vfs.fired
    vfs.fail = set()
    assert_keeps_working(db, expected)
    db.close()
    assert reopened_values(db_path) == [*expected, "after"]


def test_random_faults_lose_no_commit_and_keep_no_failed_one(
    impl: ModuleType, db_path: Path, vfs: FaultVFS
) -> None:
    """200 transactions with 5% of writes, syncs and reads failing at random (seeded)."""
    db = open_faulty(impl, db_path, vfs, pragmas={"synchronous": "FULL", "cache_size": 10})
    insert = db.prepare("INSERT INTO t (value) VALUES (?)")
    rng = random.Random(99)
    committed: list[str] = []
    failures = 0
    vfs.chance = 0.05
    vfs.fail = {(op, kind) for op in ("write", "sync", "read") for kind in ("db", "wal")}
    for n in range(200):
        batch = [f"{n}-{i}-" + "x" * rng.randint(0, 3000) for i in range(rng.randint(1, 20))]
        try:
            with db.transaction():
                for value in batch:
                    insert.run(value)
        except apsw.IOError:
            failures += 1
        else:
            committed.extend(batch)
    vfs.fail = set()
    assert failures > 10 and len(committed) > 500  # both outcomes really happened
    assert_keeps_working(db, committed)
    db.close()
    assert reopened_values(db_path) == [*committed, "after"]


def test_full_disk_rolls_back_cleanly(db: appdb.AppDatabase) -> None:
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
    insert = db.prepare("INSERT INTO t (value) VALUES (?)")
    insert.run_many([(b"k" * 100,) for _ in range(10)])
    db.pragma("max_page_count", db.pragma("page_count") + 4)
    with pytest.raises(apsw.FullError, match="full"):
        with db.transaction():
            insert.run(b"small")
            insert.run(b"x" * 200_000)
    assert not db.in_transaction
    with pytest.raises(apsw.FullError):
        insert.run_many([(b"y" * 10_000,) for _ in range(50)])
    # caught inside the block: SQLite already rolled back, so the commit must not pretend
    with pytest.raises(appdb.TransactionError, match="already ended"):
        with db.transaction():
            insert.run(b"small")
            with pytest.raises(apsw.FullError):
                insert.run(b"x" * 200_000)
    # in a savepoint
    with pytest.raises(apsw.FullError):
        with db.transaction():
            insert.run(b"small")
            with db.transaction():
                insert.run(b"x" * 200_000)
    assert db.is_healthy()
    assert db.prepare("SELECT count(*) FROM t").scalar() == 10
    db.pragma("max_page_count", 1_073_741_823)
    insert.run(b"x" * 200_000)
    assert db.prepare("SELECT count(*) FROM t").scalar() == 11
    assert db.pragma("integrity_check") == "ok"
