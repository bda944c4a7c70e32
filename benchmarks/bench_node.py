"""better-sqlite3 12 (Node), the engine of appdb's original TypeScript design, as an optional contender.

It takes part in the single-connection trials only when ``node`` is on PATH and
``better-sqlite3`` can be required from ``$APPDB_BETTER_SQLITE3_DIR/node_modules``
or, failing that, ``benchmarks/node/node_modules`` (``cd benchmarks/node && npm
install better-sqlite3@12``); otherwise the header says how to enable it and the
run goes on without it. Nothing is downloaded at benchmark time.

Node runs in its own process (``node/better_sqlite3_bench.js``), after the Python
contenders, on its own copy of the template file with appdb's pragma statements.
It cannot join the harness's interleaved loop, so it gets the same trials, batch
sizes (the ones the harness calibrated), repeats and kind of random rowids, times
each batch itself (a full V8 garbage collection first, as ``gc.collect()`` before
every Python batch) and returns per-operation µs on both clocks as JSON. Its
speed-ups are ratios of medians, not medians of per-repeat ratios.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_contenders import Contender
from bench_measure import Settings, Trial, TrialResult, _workload
from bench_workload import (
    ROW,
    SQL_ALL,
    SQL_GET,
    SQL_INSERT,
    SQL_PROBE_COUNT,
    SQL_PROBE_INSERT,
    SQL_SCAN,
    fresh_copy,
    pragma_statements,
)

__all__ = ["ENV_DIR", "NODE_KEY", "NOTE", "BetterSqlite3Contender", "find_better_sqlite3", "run_node_trials"]

NODE_KEY = "better-sqlite3"
ENV_DIR = "APPDB_BETTER_SQLITE3_DIR"
MAJOR = 12
ENABLE = f"cd benchmarks/node && npm install better-sqlite3@{MAJOR}"
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "node" / "better_sqlite3_bench.js"

#: Appended to the report's notes when better-sqlite3 ran.
NOTE = """\
better-sqlite3 runs in its own Node process after the others, so it is NOT interleaved per repeat:
same trials, batch sizes and repeats, timed by the script itself (hrtime; --clock cpu: the whole
process's CPU time, V8's helper threads included); its speed-ups are ratios of medians. It runs its
own SQLite ({sqlite}), built multi-threaded (no connection mutex) with memory statistics off."""


class BetterSqlite3Contender(Contender):
    """better-sqlite3 in a Node child process; the Python loop never calls its ops (all None)."""

    key = NODE_KEY
    label = f"better-sqlite3 {MAJOR}"
    rows = "dict"  # plain objects, its default: compared with the dict contenders
    writes = True

    def __init__(self, node: str, modules: str, versions: dict[str, str]) -> None:
        self.node = node
        self.modules = modules
        self.versions = versions

    def open(self, path: str) -> None:
        """Nothing to open here: the Node script opens its own copy."""

    def close(self) -> None:
        """Nothing to close: the Node process has ended."""

    def describe(self) -> str:
        v = self.versions
        return (
            f"better-sqlite3 {v['better_sqlite3']} on Node {v['node']}, SQLite {v['sqlite']}, "
            f"rows as objects; its own process, not interleaved ({self.modules})"
        )

    @property
    def sqlite_version(self) -> str:
        return self.versions["sqlite"]

    def holds_read_snapshot(self) -> bool:
        return False  # the Node script checks itself, after every warm-up and every trial


def _candidates() -> list[Path]:
    """node_modules folders to look in, in order: the environment's, then the local one."""
    folders = []
    if os.environ.get(ENV_DIR):
        folders.append(Path(os.environ[ENV_DIR]).expanduser() / "node_modules")
    folders.append(HERE / "node" / "node_modules")
    return folders


def find_better_sqlite3() -> tuple[BetterSqlite3Contender | None, str]:
    """The contender when Node can load better-sqlite3 12, else None and the one-line reason."""
    node = shutil.which("node")
    if node is None:
        return None, f"node is not on PATH; to enable: install Node.js, then `{ENABLE}`"
    folders = _candidates()
    found = next((f for f in folders if (f / "better-sqlite3" / "package.json").is_file()), None)
    if found is None:
        where = " or ".join(str(f) for f in folders)
        return None, f"better-sqlite3 is not installed in {where}; to enable: `{ENABLE}`"
    try:
        probe = subprocess.run(
            [node, str(SCRIPT), "--probe", str(found)], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"node could not run the probe ({exc}); to enable: `{ENABLE}`"
    if probe.returncode != 0:
        return None, f"Node cannot load better-sqlite3 from {found} ({_error(probe.stderr)}); `{ENABLE}`"
    versions = json.loads(probe.stdout)
    if not versions["better_sqlite3"].startswith(f"{MAJOR}."):
        return None, f"better-sqlite3 {versions['better_sqlite3']} in {found}, not {MAJOR}; `{ENABLE}`"
    return BetterSqlite3Contender(node, str(found), versions), ""


def _error(stderr: str) -> str:
    """The line of a Node failure that names the error (Node ends with its own version line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = (line for line in lines if re.match(r"[A-Za-z]*Error\b", line))
    return next(named, lines[-1] if lines else "no message")


def _trial_spec(trial: Trial, result: TrialResult, settings: Settings) -> dict[str, Any]:
    """One trial for the script: batch size and repeats of the harness, and its own random rowids."""
    ops = result.ops_per_batch
    repeats = settings.scan_repeats if trial.workload == "scan" else settings.repeats
    spec: dict[str, Any] = {"key": trial.key, "ops": ops, "repeats": repeats, "ids": None}
    if trial.workload in ("ids", "starts"):
        # Same distribution as the Python contenders (bench_measure's own draw), another seed.
        rng = random.Random(f"{settings.seed}-{trial.key}-node")
        spec["ids"] = _workload(trial, ops, settings, rng)[0]
    return spec


def run_node_trials(
    contender: BetterSqlite3Contender,
    template: str,
    folder: str,
    measured: dict[str, TrialResult],
    settings: Settings,
    log: Callable[[str], None],
) -> None:
    """Run every measured trial better-sqlite3 can take part in; add its samples to ``measured``."""
    trials = []
    for result in measured.values():
        if result.trial.kind == "prepare":
            result.skipped[NODE_KEY] = "no statement cache: db.prepare() compiles the SQL on every call"
        elif result.ops_per_batch:
            trials.append(_trial_spec(result.trial, result, settings))
    if not trials:
        return
    path = fresh_copy(template, os.path.join(folder, f"{NODE_KEY}.db"))
    spec = {
        "modules": contender.modules,
        "path": path,
        "pragmas": pragma_statements(),
        "sql": {
            "get": SQL_GET,
            "all": SQL_ALL,
            "insert": SQL_INSERT,
            "scan": SQL_SCAN,
            "probe_insert": SQL_PROBE_INSERT,
            "probe_count": SQL_PROBE_COUNT,
        },
        "row": [*ROW[:4], ROW[4].hex()],
        "trials": trials,
    }
    spec_path = os.path.join(folder, f"{NODE_KEY}-spec.json")
    Path(spec_path).write_text(json.dumps(spec))
    log(f"better-sqlite3: {len(trials)} trial(s) in a Node process (not interleaved)")
    # stderr is inherited: the script's progress lines join the harness's.
    done = subprocess.run(
        [contender.node, "--expose-gc", str(SCRIPT), spec_path], stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the better-sqlite3 script failed (exit status {done.returncode}); see above")
    output = json.loads(done.stdout)
    contender.versions = output["versions"]
    chosen, other = ("cpu_us", "wall_us") if settings.clock == "cpu" else ("wall_us", "cpu_us")
    for key, samples in output["trials"].items():
        measured[key].samples[NODE_KEY] = samples[chosen]
        measured[key].other_clock[NODE_KEY] = samples[other]
