"""Child process of the multi-process migration test.

Usage: race_child.py DB MIGRATIONS START_FILE READY_FILE. Signals it is ready,
waits for the start file, then opens the database with migrations and prints a
JSON line with the schema version and the migrations it applied itself.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import appdb


def main() -> int:
    db_path, migrations, start, ready = sys.argv[1:5]
    Path(ready).touch()
    while not Path(start).exists():
        time.sleep(0.001)
    try:
        with appdb.init_database(db_path, migrations=migrations) as db:
            applied = [r.version for r in db.migration_results if r.status == "applied"]
            other = [r.status for r in db.migration_results if r.status != "applied"]
            print(json.dumps({"version": db.get_schema_version(), "applied": applied, "other": other}))
    except Exception as exc:  # reported to the parent, which fails the test
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
