"""Many processes opening (creating) the same new database file at the same moment."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from appdb import _select
from conftest import impl_name

CHILD = """
import sys, time
from pathlib import Path
import appdb
assert appdb.IMPLEMENTATION == sys.argv[1], appdb.IMPLEMENTATION  # picked through its environment
path, start = sys.argv[2:4]
while not Path(start).exists():
    time.sleep(0.0005)
with appdb.init_database(path) as db:
    print(db.pragma("journal_mode"), db.is_healthy())
"""

PROCESSES = 8
ROUNDS = 5


def test_processes_creating_one_file_at_once_all_open(impl: ModuleType, tmp_path: Path) -> None:
    # Switching a new file to WAL takes an exclusive lock; racing openers used to get
    # "database is locked" (about 1 open in 15) instead of waiting.
    for round_ in range(ROUNDS):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        start = folder / "start"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, impl_name(impl), str(folder / "app.db"), str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_select.environment(impl_name(impl)),
            )
            for _ in range(PROCESSES)
        ]
        time.sleep(0.2)  # let every child reach the start line
        start.touch()
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            assert out.split() == ["wal", "True"]
