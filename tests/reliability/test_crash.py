"""Crashes: a writer killed with SIGKILL at random moments loses nothing it reported committed."""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

from reliability_support import expect_line, integrity, spawn

import appdb

#: How a killed child's return code reads (SIGKILL on POSIX, 1 from TerminateProcess).
KILLED = 1 if sys.platform == "win32" else -signal.SIGKILL

KILLS = 50


def check_after_crash(path: Path, reported: set[int]) -> int:
    """The database opens, is intact, holds every reported batch, and no partial one."""
    assert integrity(path) == ["ok"]
    with appdb.init_database(path, row_type="tuple") as db:
        assert db.is_healthy()
        batches = db.prepare("SELECT id, size, total FROM batches ORDER BY id").all()
        present = {batch for batch, _, _ in batches}
        missing = reported - present
        assert not missing, f"committed batches lost: {sorted(missing)[:10]}"
        # all-or-nothing: every batch header has exactly its rows, and no row lacks its header
        actual = dict(
            (batch, (size, total))
            for batch, size, total in db.prepare(
                "SELECT batch, count(*), sum(value) FROM rows GROUP BY batch"
            ).all()
        )
        for batch, size, total in batches:
            assert actual.pop(batch, None) == (size, total), f"batch {batch} is partial"
        assert not actual, f"rows without their batch header: {sorted(actual)[:10]}"
        # batches are numbered densely: a later batch never survives without an earlier one
        assert [batch for batch, _, _ in batches] == list(range(1, len(batches) + 1))
        return len(batches)


def test_sigkill_during_bulk_transactions(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(20240605)
    reported: set[int] = set()
    killed_mid_run = 0
    for kill in range(KILLS):
        child = spawn(impl, "bulk", path, kill)
        expect_line(child, "ready")
        assert child.stdout is not None
        # let it commit a random number of batches (sometimes none), then kill it a
        # random moment later: inside a transaction, a commit, a checkpoint or between
        for _ in range(rng.randint(0, 6)):
            line = child.stdout.readline().split()
            reported.add(int(line[1]))
        time.sleep(rng.uniform(0, 0.03))
        child.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        rest, err = child.communicate(timeout=60)
        assert child.returncode == KILLED, err
        killed_mid_run += 1
        reported.update(int(line.split()[1]) for line in rest.splitlines() if line.startswith("committed"))
        count = check_after_crash(path, reported)
        assert count >= len(reported)
    assert killed_mid_run == KILLS
    assert len(reported) > KILLS  # the children did real work between the kills
