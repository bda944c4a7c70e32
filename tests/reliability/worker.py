"""Child-process helper for the reliability tests (run as a script, never imported by pytest).

    python worker.py IMPL COMMAND DB [ARGS...]

``IMPL`` is ``cython`` or ``python``: the twin the parent made this process pick
through its environment (``APPDB_NO_EXTENSIONS``, as users pick theirs), checked
before anything runs so a fallback cannot go unnoticed. Every command
reports on stdout, one flushed line per event, so a parent that kills the child
still reads everything it reported before dying.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def check_impl(name: str) -> None:
    import appdb

    if appdb.IMPLEMENTATION != name:
        raise SystemExit(f"the parent asked for the {name} twin; this process picked {appdb.IMPLEMENTATION}")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


LOAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, worker INTEGER NOT NULL, seq INTEGER NOT NULL,
                                  payload TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id),
                                  action TEXT NOT NULL);
"""


def load_writer(path: str, worker: int, count: int, go_file: str) -> None:
    """``count`` transactions, each one item row plus one audit row, with default options."""
    import appdb

    db = appdb.init_database(path)
    db.exec(LOAD_SCHEMA)
    insert_item = db.prepare("INSERT INTO items (worker, seq, payload) VALUES (?, ?, ?)")
    insert_audit = db.prepare("INSERT INTO audit (item_id, action) VALUES (?, 'insert')")
    say("ready")
    while not os.path.exists(go_file):  # start all writers together
        time.sleep(0.002)

    def one(database: appdb.AppDatabase, seq: int) -> None:
        item = insert_item.run(worker, seq, f"w{worker}-s{seq}").last_insert_rowid
        insert_audit.run(item)

    for seq in range(count):
        db.transaction(one, seq)
    db.close()
    say(f"done {count}")


def wal_writer(path: str, stop_file: str) -> None:
    """Commit small transactions until ``stop_file`` exists; report the largest -wal seen."""
    import appdb

    db = appdb.init_database(path)
    insert = db.prepare("INSERT INTO log (payload) VALUES (?)")
    trim = db.prepare("DELETE FROM log WHERE id < ?")
    wal = path + "-wal"
    largest = commits = 0
    payload = "x" * 1500
    while not os.path.exists(stop_file):
        with db.transaction():
            for _ in range(20):
                rowid = insert.run(payload).last_insert_rowid
            trim.run(rowid - 5000)  # keep the table (and so the database) small
        commits += 1
        if commits % 10 == 0:
            try:
                largest = max(largest, os.path.getsize(wal))
            except FileNotFoundError:
                pass
    db.close()
    say(f"commits {commits} largest_wal {largest}")


def wal_reader(path: str, stop_file: str) -> None:
    """Loop over point queries, partial reads, scans and iterations until ``stop_file`` exists."""
    import appdb

    db = appdb.init_database(path)
    count = db.prepare("SELECT count(*) FROM log")
    newest = db.prepare("SELECT id, payload FROM log ORDER BY id DESC")  # get() reads one row of many
    scan = db.prepare("SELECT id FROM log ORDER BY id")
    queries = 0
    say("ready")
    while not os.path.exists(stop_file):
        count.scalar()
        newest.get()
        for i, _row in enumerate(scan.iterate()):
            if i == 50:
                break  # an abandoned loop must not keep a read snapshot
        queries += 3
    db.close()
    say(f"queries {queries}")


BULK_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, size INTEGER NOT NULL, total INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL REFERENCES batches(id),
                                 value INTEGER NOT NULL, pad BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS rows_batch ON rows(batch);
"""


def bulk_writer(path: str, seed: int) -> None:
    """Bulk transactions forever: a batch header plus its rows; ``committed N`` after each commit.

    Each batch also updates earlier rows and deletes a few, so a crash can land in the
    middle of page splits, frees and WAL checkpoints, not only appends.
    """
    import random

    import appdb

    rng = random.Random(seed)
    db = appdb.init_database(path)
    db.exec(BULK_SCHEMA)
    header = db.prepare("INSERT INTO batches (id, size, total) VALUES (?, ?, ?)")
    insert = db.prepare("INSERT INTO rows (batch, value, pad) VALUES (?, ?, ?)")
    last = db.prepare("SELECT coalesce(max(id), 0) FROM batches")
    touch = db.prepare("UPDATE rows SET pad = ? WHERE batch = ?")
    say("ready")
    batch = last.scalar()
    while True:
        batch += 1
        size = rng.randint(20, 400)
        values = [rng.randint(-(2**40), 2**40) for _ in range(size)]

        def write(database: appdb.AppDatabase, batch: int = batch, values: list[int] = values) -> None:
            header.run(batch, len(values), sum(values))
            insert.run_many((batch, v, os.urandom(rng.randint(10, 300))) for v in values)
            if batch > 3:
                touch.run(os.urandom(rng.randint(10, 300)), rng.randint(1, batch - 1))

        db.transaction(write)
        say(f"committed {batch}")


def migrate(path: str, migrations: str) -> None:
    """Open with migrations (the parent kills this at a random moment)."""
    import appdb

    say("ready")
    db = appdb.init_database(path, migrations=migrations)
    say(f"version {db.get_schema_version()}")
    db.close()


def main(argv: list[str]) -> None:
    impl, command, path, *args = argv
    check_impl(impl)
    if command == "load":
        load_writer(path, int(args[0]), int(args[1]), args[2])
    elif command == "wal-writer":
        wal_writer(path, args[0])
    elif command == "wal-reader":
        wal_reader(path, args[0])
    elif command == "migrate":
        migrate(path, args[0])
    elif command == "bulk":
        bulk_writer(path, int(args[0]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
